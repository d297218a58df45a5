#!/usr/bin/env python3
"""Counts what adding a domain crate touched outside its own folder.

    python3 scripts/domain_footprint.py [ROOT] [CRATE]      (default: . batch-example)

A domain is its crate folder plus two lines in batch-launcher: its dependency line in
batch-launcher/Cargo.toml and its `&batch_<domain>::MODULE,` line in batch-launcher/src/modules.rs
(the example domain adds a third, its `#[cfg(feature = ...)]` gate, because only the test command
registers it). Any other mention of the crate in code — another crate, a test, a script, a
pipeline, a list of migrations, jobs or schedules — is a failure. Prose (Markdown) and Cargo.lock
are not counted, nor the test command's feature flag (scripts/test.sh).
"""

import pathlib
import sys

ALLOWED = {
    "batch-launcher/Cargo.toml": 1,
    "batch-launcher/src/modules.rs": 2,  # the module line and its feature gate
}
SKIP_DIRS = {".git", "target", "data", "node_modules"}
SKIP_FILES = {"Cargo.lock", "scripts/test.sh", "scripts/domain_footprint.py"}


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    crate = sys.argv[2] if len(sys.argv) > 2 else "batch-example"
    names = {crate, crate.replace("-", "_")}
    if not (root / crate / "Cargo.toml").is_file():
        print(f"{crate}: no such crate folder under {root}")
        return 1
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if (
            not path.is_file()
            or rel.parts[0] == crate
            or any(p in SKIP_DIRS for p in rel.parts)
            or rel.suffix == ".md"
            or rel.as_posix() in SKIP_FILES
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines = [line.strip() for line in text.splitlines() if any(n in line for n in names)]
        if lines:
            found[rel.as_posix()] = lines
    failed = False
    for rel, lines in sorted(found.items()):
        allowed = ALLOWED.get(rel, 0)
        mark = "ok" if len(lines) <= allowed else "NOT ALLOWED"
        failed |= len(lines) > allowed
        for line in lines:
            print(f"{mark:>11}  {rel}: {line}")
    touched = sum(len(v) for v in found.values())
    print(f"{crate}: its folder plus {touched} line(s) elsewhere ({', '.join(sorted(found)) or 'none'})")
    if failed:
        print(f"{crate}: mentioned outside its folder and the launcher's registration lines")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
