#!/usr/bin/env bash
# README's test command: brings up the services, then checks formatting and lints, then runs
# every test (SQLite, PostgreSQL, MariaDB and Redis on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
python3 scripts/module_cycles.py .
cargo test --workspace --all-targets
