#!/usr/bin/env bash
# README's first command: runs pointBalanceSyncJob end to end on the embedded default.
# Starts the local Redis if needed, builds the launcher, seeds demo data into the SQLite file
# data/batch.db if it is empty, then syncs balances to Redis and writes yesterday's report, and
# prints the result summary. Extra arguments go to `run` (e.g. date=2026-11-20, --rerun).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh redis
# The `demo` profile (Cargo.toml): dependencies at opt-level 1, our crates unoptimised; about
# 3½ minutes on a fresh 2-core machine (a release build: 11).
cargo build --profile demo --quiet -p batch-launcher
launcher=target/demo/batch-launcher
"$launcher" seed-demo --users "${DEMO_USERS:-10000}" --if-empty
exec "$launcher" run pointBalanceSyncJob "$@"
