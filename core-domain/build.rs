//! Re-embeds the domain migrations whenever a file under `migrations/domain/` changes.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/domain");
}
