#!/usr/bin/env bash
# README's test command: brings up the services, then checks formatting and lints, then runs
# every test (SQLite, PostgreSQL, MariaDB and Redis on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The launcher is built with the example domain registered (batch-example, a domain with a table
# of its own), exactly as a real domain is, so the launcher's generic tests cover it. Clippy and
# the tests use the same flags, so nothing is built twice.
FEATURES=(--features batch-launcher/batch-example)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets "${FEATURES[@]}" -- -D warnings
python3 scripts/module_cycles.py .
# Adding the example domain touched its folder and the launcher's registration lines only.
python3 scripts/domain_footprint.py . batch-example
cargo test --workspace --all-targets "${FEATURES[@]}"
# The deployment examples (Kubernetes manifests, Dockerfile) offline against the Kubernetes
# schemas, and each workload's command through the launcher the tests just built.
BATCH_LAUNCHER_BIN="$PWD/target/debug/batch-launcher" scripts/check_deploy.sh
# The HTTP API against its own OpenAPI document (GET /openapi.json): schemathesis (PyPI) in
# negative and positive mode through a real `serve`; no 5xx, every answer documented and
# matching, no schema-violating request accepted.
BATCH_LAUNCHER_BIN="$PWD/target/debug/batch-launcher" scripts/api_check.sh
