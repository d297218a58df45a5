#!/bin/sh
# Runs one batch job for a generated Jenkins pipeline, from the workspace root:
#
#   jenkins/run-job.sh <JOB> [run options ...]
#
# execs `$LAUNCHER --log-format json run <JOB> [run options ...] [name=value ...] [--rerun]`.
#
# JOB_PARAMS lists the job's parameters as `VAR=name` words, e.g. `DATE=date VERIFY=verify`; the
# generated pipeline (`batch-launcher jenkinsfile <JOB>`) sets it in its `environment`. For each
# word whose variable VAR is not empty, `name=$VAR` is passed, as one argument whatever the value
# holds: Jenkins exports each build parameter as an environment variable of its name, and an
# empty one means the job's own default. Build parameters are named after the job parameter,
# uppercased, `.` and `-` as `_` (jenkins/README.md), which is why the mapping is needed:
# `batch.size` is not a shell variable name. `--rerun` only when RERUN is `true`. The exit code
# is the launcher's (the pipeline maps it to a build result), 2 for a bad RERUN or JOB_PARAMS,
# 127 without a launcher. JSON log lines, because Jenkins has no terminal.
#
# LAUNCHER defaults to the binary the pipelines' Build stage makes. Nothing here prints the
# environment: the BATCH__* credentials stay out of the log.
#
# batch-launcher/tests/pipelines.rs runs this script for every registered job's generated
# pipeline (with --validate-only, through the real launcher) and checks the arguments it passes.
set -u
set -f # JOB_PARAMS is split into words below, never globbed.
IFS=' 	
'

launcher=${LAUNCHER:-target/release/batch-launcher}
if [ "$#" -lt 1 ]; then
    echo "usage: jenkins/run-job.sh <JOB> [run options ...]" >&2
    exit 2
fi
for entry in ${JOB_PARAMS:-}; do
    var=${entry%%=*}
    name=${entry#*=}
    case $entry in
        *=*) ;;
        *) var= ;;
    esac
    case $var in
        '' | [0-9]* | *[!A-Za-z0-9_]*) var= ;;
    esac
    case $name in
        '' | *[!A-Za-z0-9_.-]*) var= ;;
    esac
    if [ -z "$var" ]; then
        echo "run-job.sh: JOB_PARAMS entry \`$entry' is not VARIABLE=parameter" >&2
        exit 2
    fi
    # $var is a checked variable name; the value is assigned, not evaluated.
    eval "value=\${$var-}"
    if [ -n "$value" ]; then
        set -- "$@" "$name=$value"
    fi
done
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
