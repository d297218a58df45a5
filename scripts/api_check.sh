#!/usr/bin/env bash
# The HTTP API against its own OpenAPI description (GET /openapi.json), driven by schemathesis
# (PyPI) through a real `batch-launcher serve` on a fresh SQLite database with some history
# (a completed run, a run with item failures), the fake asset API and the local Redis:
#   1. negative mode (schema-violating requests): no 5xx, every answer documented and matching
#      its schema, every violation refused with a 4xx — and of the state-changing requests the
#      server accepted (2xx), none outside the document (scripts/api_check_started.py);
#   2. positive mode: no 5xx, every answer documented and matching its schema.
# Usage: scripts/api_check.sh (BATCH_LAUNCHER_BIN: the launcher, default target/debug's;
# API_CHECK_EXAMPLES: cases per operation and mode, default 40). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
BIN=${BATCH_LAUNCHER_BIN:-$PWD/target/debug/batch-launcher}
EXAMPLES=${API_CHECK_EXAMPLES:-40}
CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/batch-api-check
VENV=$CACHE/venv-schemathesis$SCHEMATHESIS_VERSION
TOKEN="api-check-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

log() { echo "api_check: $*" >&2; }
die() { echo "api_check: ERROR: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

[ -x "$BIN" ] || die "no launcher at $BIN (build it: cargo build -p batch-launcher)"

venv_ok() { [ -f "$VENV/.complete" ] && [ -x "$VENV/bin/schemathesis" ]; }
make_venv() {
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    minor=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends python3-venv "python$minor-venv" >/dev/null
  fi
  log "making $VENV (schemathesis $SCHEMATHESIS_VERSION)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "schemathesis==$SCHEMATHESIS_VERSION"
  touch "$VENV/.complete"
}
mkdir -p "$CACHE"
if ! venv_ok; then
  exec 9>"$CACHE/.lock"
  flock 9
  venv_ok || make_venv
  venv_ok || die "schemathesis did not install into $VENV"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -p 6379 --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -p 6379 DEL >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(free_port)
ASSET_PORT=$(free_port)
PREFIX="api-check:$$:point:balance:"
export BATCH__DATABASE__URL="sqlite://$WORK/batch.db"
export BATCH__SERVER__TOKEN="$TOKEN"
export BATCH__SERVER__BIND="127.0.0.1:$PORT"
export BATCH__ASSET__API_BASE_URL="http://127.0.0.1:$ASSET_PORT"
export BATCH__ASSET__MAX_ATTEMPTS=1
export BATCH__POINT__CACHE_KEY_PREFIX="$PREFIX"
# Every job of every module this launcher has: no schedule (a tick would start runs).
while read -r job; do
  export "BATCH__SCHEDULE__${job^^}=off"
done < <("$BIN" list | awk '/^[a-z][A-Za-z0-9]*Job/ {print $1}')

"$BIN" fake-asset-api --port "$ASSET_PORT" --fail-users 3=500,5=500 >"$WORK/fake.log" 2>&1 &
PIDS+=($!)
"$BIN" -q seed-demo --users 60 --date 2026-11-20 >/dev/null
"$BIN" -q run pointBalanceSyncJob date=2026-11-20 >/dev/null
# Item failures to page through (exit 3: completed with failures).
"$BIN" -q run assetRefreshJob date=2026-11-20 >/dev/null || [ $? -eq 3 ] || die "the asset run failed"

"$BIN" serve >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || { cat "$WORK/serve.log" >&2; die "serve did not come up"; }

# Positive mode also with the executions made above: 1 (pointBalanceSyncJob, COMPLETED) and 2
# (assetRefreshJob, COMPLETED with 2 item failures). Random ids are mostly 404; with execution 2
# the real views (the execution, its failures page) are checked against their schemas and the
# verbs give their real refusals (stop/abandon 409 not running, restart 400 completed).
cp scripts/api_check.toml "$WORK/negative.toml"
{ cat scripts/api_check.toml; cat <<'EOF'

[[operations]]
include-path-regex = "^/executions/\\{id\\}"
parameters = { id = 2 }
EOF
} >"$WORK/positive.toml"

run_schemathesis() { # <mode>
  # In the scratch folder: schemathesis keeps its replay data in `.schemathesis/` there.
  (cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$WORK/$1.toml" run "http://127.0.0.1:$PORT/openapi.json" \
    --mode "$1" --checks all --max-examples "$EXAMPLES" --workers 1 --seed 24 \
    --header "Authorization: Bearer $TOKEN" --generation-database none \
    --no-color --output-sanitize true --request-timeout 20 \
    --report junit,ndjson --report-dir "$WORK/report-$1") \
    || { tail -n 40 "$WORK/serve.log" >&2; die "schemathesis ($1 mode) found problems (above)"; }
}

curl -fsS "http://127.0.0.1:$PORT/openapi.json" >"$WORK/openapi.json"
log "negative mode: schema-violating requests ($EXAMPLES per operation)"
run_schemathesis negative
# Of the requests the server accepted (2xx) on the operations that start or change runs, none
# may be outside the document (a kick without a body is inside it: the defaults).
"$VENV/bin/python" scripts/api_check_started.py "$WORK/openapi.json" "$WORK"/report-negative/*.ndjson
log "positive mode"
run_schemathesis positive
grep -q " ERROR " "$WORK/serve.log" && log "serve logged errors (runs the fuzzer started may fail: expected)" || true
log "ok"
