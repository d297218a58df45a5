//! The `parameters` block of a pipeline: one build parameter per declared job parameter, named
//! by [`build_parameter_name`], of a kind and with a description that follow the job parameter.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use batch_common::job::{JobDescriptor, ParamDefault, ParamKind, ParameterSpec};

use super::names::build_parameter_name;
use super::{groovy_string, one_line};

/// What the build parameter of `spec` says about it: the job parameter, its kind, whether it
/// identifies the job instance, its description, and what an empty value means.
fn parameter_description(spec: &ParameterSpec) -> String {
    let mut text = format!(
        "{} ({}{})",
        spec.name,
        spec.kind,
        if spec.identifying {
            ", identifying"
        } else {
            ""
        }
    );
    let description = one_line(spec.description);
    if !description.is_empty() {
        text.push_str(": ");
        text.push_str(&description);
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    match (boolean_default(spec), spec.default) {
        (Some(_), default) => {
            let _ = write!(text, " Default: {default} (the job's default).");
        }
        (None, ParamDefault::Required) => {
            text.push_str(" Required: a build without it is refused (exit 2).")
        }
        (None, ParamDefault::None) => {
            text.push_str(" Empty: not passed (default: unset, the job's own handling).")
        }
        (None, default) => {
            let _ = write!(text, " Empty: the job's default, {default}.");
        }
    }
    one_line(&text)
}

/// The default of a Bool parameter with a `true`/`false` default: a checkbox. Other Bool
/// parameters (unset or required by default) are a choice with an empty first entry.
fn boolean_default(spec: &ParameterSpec) -> Option<bool> {
    match (spec.kind, spec.default) {
        (ParamKind::Bool, ParamDefault::Value(v)) => {
            batch_common::params::parse_bool(spec.name, v).ok()
        }
        _ => None,
    }
}

/// One build parameter's declaration, indented for the `parameters` block.
pub(super) fn build_parameter(spec: &ParameterSpec, name: &str) -> String {
    let description = groovy_string(&parameter_description(spec));
    let choices = |names: &[&str]| {
        let mut all = vec![groovy_string("")];
        all.extend(names.iter().map(|n| groovy_string(n)));
        all.join(", ")
    };
    if let Some(default) = boolean_default(spec) {
        return format!(
            "        booleanParam(name: '{name}', defaultValue: {default},\n                     description: {description})\n"
        );
    }
    match spec.kind {
        ParamKind::OneOf(names) => format!(
            "        choice(name: '{name}', choices: [{}],\n               description: {description})\n",
            choices(names)
        ),
        ParamKind::Bool => format!(
            "        choice(name: '{name}', choices: [{}],\n               description: {description})\n",
            choices(&["true", "false"])
        ),
        // Text is passed as typed; the other kinds are trimmed like the launcher trims them.
        kind => format!(
            "        string(name: '{name}', defaultValue: '', trim: {},\n               description: {description})\n",
            !matches!(kind, ParamKind::Text | ParamKind::Custom(_))
        ),
    }
}

/// The build parameters of a job: (job parameter, build parameter), in declaration order. Two
/// job parameters with one build parameter are an error.
pub fn build_parameters(descriptor: &JobDescriptor) -> Result<Vec<(&'static str, String)>, String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for spec in descriptor.parameters {
        let valid = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!(
                "{}: parameter name `{}` is not [A-Za-z0-9_.-]",
                descriptor.name, spec.name
            ));
        }
        let name = build_parameter_name(spec.name);
        if let Some(other) = seen.insert(name.clone(), spec.name) {
            return Err(format!(
                "{}: parameters `{other}` and `{}` would both be the build parameter {name}: rename one",
                descriptor.name, spec.name
            ));
        }
        out.push((spec.name, name));
    }
    Ok(out)
}
