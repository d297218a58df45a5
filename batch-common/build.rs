//! Re-embeds the batch metadata migrations whenever a file under `migrations/batch/` changes.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/batch");
}
