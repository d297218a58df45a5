//! The names a pipeline uses: a build parameter per job parameter (clear of the variables shells
//! and Jenkins reserve), and a Jenkins credential per deployment setting.

/// The build parameter for `--rerun`.
pub const RERUN_PARAM: &str = "RERUN";

/// The setting every job needs from the deployment.
pub const DATABASE_SETTING: &str = "database.url";

/// The prefix of a build parameter whose plain name is taken (see [`build_parameter_name`]).
pub const RESERVED_PREFIX: &str = "PARAM_";

/// Names a build parameter must not have: Jenkins exports build parameters as environment
/// variables, so one of these would change what the shell, Jenkins, the pipeline, run-job.sh or
/// the launcher see.
pub(super) const RESERVED_NAMES: &[&str] = &[
    "_",
    "CDPATH",
    "CI",
    "ENV",
    "EXECUTOR_NUMBER",
    "HOME",
    "HOSTNAME",
    "IFS",
    "LANG",
    "LANGUAGE",
    "LAUNCHER",
    "LINENO",
    "LOGNAME",
    "MAIL",
    "OLDPWD",
    "OPTARG",
    "OPTIND",
    "PATH",
    "PPID",
    "PS1",
    "PS2",
    "PS4",
    "PWD",
    RERUN_PARAM,
    "SHELL",
    "STAGE_NAME",
    "TERM",
    "TMPDIR",
    "TZ",
    "USER",
    "WORKSPACE",
];

/// Prefixes of the same (`BATCH_` covers the launcher's `BATCH_CONFIG`, `BATCH_LOG_FORMAT` and
/// every `BATCH__SECTION__KEY`; `JOB_` covers `JOB_PARAMS` and Jenkins' `JOB_NAME`, ...).
const RESERVED_PREFIXES: &[&str] = &[
    "BATCH_",
    "BRANCH_",
    "BUILD_",
    "CARGO",
    "CHANGE_",
    "DYLD_",
    "GIT_",
    "HUDSON_",
    "JENKINS_",
    "JOB_",
    "LC_",
    "LD_",
    "NODE_",
    RESERVED_PREFIX,
    "RUST",
    "SLACK_",
    "WORKSPACE_",
];

/// The Jenkins build parameter (and so the environment variable) of the job parameter `name`:
/// `name` uppercased with `.` and `-` as `_` (`date` → `DATE`, `page-size` → `PAGE_SIZE`),
/// or that with the prefix `PARAM_` when it would start with a digit or is a name the shell,
/// Jenkins, the pipeline or the launcher use (`path` → `PARAM_PATH`, `rerun` → `PARAM_RERUN`,
/// `batch.size` → `PARAM_BATCH_SIZE`). Job parameter names are `[A-Za-z0-9_.-]`, so the result is a
/// valid shell variable name; two parameters of one job that differ only in case or in `.`, `-`
/// and `_` map to the same name, which [`generate`](super::generate) refuses.
pub fn build_parameter_name(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    let reserved = base.is_empty()
        || base.starts_with(|c: char| c.is_ascii_digit())
        || RESERVED_NAMES.contains(&base.as_str())
        || RESERVED_PREFIXES.iter().any(|p| base.starts_with(p));
    if reserved {
        format!("{RESERVED_PREFIX}{base}")
    } else {
        base
    }
}

/// A deployment setting bound from a Jenkins *Secret text* credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The setting, e.g. `asset.api_token`.
    pub setting: String,
    /// Its environment variable, e.g. `BATCH__ASSET__API_TOKEN`.
    pub env_var: String,
    /// The Jenkins credential id, e.g. `batch-asset-api-token`.
    pub id: String,
}

/// The credential of a setting `section.key`: the variable `BATCH__<SECTION>__<KEY>` (uppercased,
/// each `.` a `__`) and the id `batch-<section>-<key>` (each `.` and `_` a `-`):
/// `redis.url` → `BATCH__REDIS__URL` from `batch-redis-url`.
pub fn credential(setting: &str) -> Result<Credential, String> {
    let parts: Vec<&str> = setting.split('.').collect();
    let valid = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if !valid {
        return Err(format!(
            "deployment setting `{setting}` is not `section.key` (lowercase letters, digits, `_`)"
        ));
    }
    Ok(Credential {
        setting: setting.to_owned(),
        env_var: format!("BATCH__{}", parts.join("__").to_ascii_uppercase()),
        id: format!("batch-{}", setting.replace(['.', '_'], "-")),
    })
}

/// The credentials a job's pipeline binds: `database.url`, then each deployment setting.
pub fn credentials(deployment_settings: &[&str]) -> Result<Vec<Credential>, String> {
    let mut out: Vec<Credential> = Vec::new();
    for setting in std::iter::once(&DATABASE_SETTING).chain(deployment_settings) {
        let c = credential(setting)?;
        if out.iter().any(|o| o.setting == c.setting) {
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.id == c.id || o.env_var == c.env_var) {
            return Err(format!(
                "deployment settings `{}` and `{}` would share the credential {} / {}",
                o.setting, c.setting, c.id, c.env_var
            ));
        }
        out.push(c);
    }
    Ok(out)
}
