#!/bin/sh
# Runs one batch job for a Jenkins pipeline, from the workspace root:
#
#   jenkins/run-job.sh <JOB> [run options ...]
#
# execs `$LAUNCHER --log-format json run <JOB> [run options ...] [date=$DATE] [--rerun]`:
# `date=$DATE` only when the DATE build parameter is not empty (empty: the job's own default
# date), `--rerun` only when the RERUN build parameter is `true`. Jenkins exports build
# parameters as environment variables. The exit code is the launcher's; the pipeline maps it to
# a build result (jenkins/README.md). JSON log lines, because Jenkins has no terminal.
#
# LAUNCHER defaults to the binary the pipelines' Build stage makes. Nothing here prints the
# environment: the BATCH__* credentials stay out of the log.
#
# batch-launcher/tests/pipelines.rs runs this script with every parameter combination of every
# pipeline (plus --validate-only) and checks the arguments it passes.
set -u

launcher=${LAUNCHER:-target/release/batch-launcher}
if [ "$#" -lt 1 ]; then
    echo "usage: jenkins/run-job.sh <JOB> [run options ...]" >&2
    exit 2
fi
if [ -n "${DATE:-}" ]; then
    set -- "$@" "date=$DATE"
fi
case ${RERUN:-false} in
    true) set -- "$@" --rerun ;;
    false) ;;
    *)
        echo "run-job.sh: RERUN must be true or false, not \`$RERUN'" >&2
        exit 2
        ;;
esac
if [ ! -x "$launcher" ]; then
    echo "run-job.sh: no launcher at $launcher: build it first (cargo build --release --locked -p batch-launcher) or set LAUNCHER" >&2
    exit 127
fi
exec "$launcher" --log-format json run "$@"
