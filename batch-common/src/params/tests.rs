//! Parsing, resolving and declaring parameters.

use super::*;
use crate::descriptor::ParameterSpec;

const JOB: JobDescriptor = JobDescriptor {
    name: "testJob",
    description: "",
    steps: &[],
    parameters: &[
        ParameterSpec {
            name: "date",
            kind: ParamKind::Date,
            identifying: true,
            description: "",
            default: ParamDefault::None,
        },
        ParameterSpec {
            name: "verify",
            kind: ParamKind::Bool,
            identifying: false,
            description: "",
            default: ParamDefault::None,
        },
    ],
};

#[test]
fn pairs_are_parsed_and_errors_name_the_argument() {
    let p = parse_pairs(&["date=2026-11-20", "verify=true", "note=a=b"]).unwrap();
    assert_eq!(p["date"], "2026-11-20");
    assert_eq!(p["note"], "a=b");
    assert!(
        parse_pairs(&["date"])
            .unwrap_err()
            .message
            .contains("`date`")
    );
    assert!(parse_pairs(&["=x"]).is_err());
    assert!(parse_pairs(&["a b=1"]).is_err());
    assert!(
        parse_pairs(&["date=1", "date=2"])
            .unwrap_err()
            .message
            .contains("twice")
    );
}

#[test]
fn unknown_parameters_are_refused() {
    let e =
        JobParameters::from_declared(&JOB, parse_pairs(&["dat=2026-11-20"]).unwrap()).unwrap_err();
    assert_eq!(e.name.as_deref(), Some("dat"));
    assert!(e.message.contains("accepted: date, verify"), "{e}");
}

#[test]
fn values_are_checked_against_their_kind() {
    let e =
        JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-13-01"]).unwrap()).unwrap_err();
    assert_eq!(e.name.as_deref(), Some("date"));
    assert!(e.message.contains("2026-13-01"), "{e}");
    let e =
        JobParameters::from_declared(&JOB, parse_pairs(&["verify=perhaps"]).unwrap()).unwrap_err();
    assert_eq!(e.name.as_deref(), Some("verify"));
}

#[test]
fn only_identifying_parameters_make_the_key() {
    let a = JobParameters::from_declared(
        &JOB,
        parse_pairs(&["date=2026-11-20", "verify=true"]).unwrap(),
    )
    .unwrap();
    let b = JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-20"]).unwrap()).unwrap();
    let c = JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-21"]).unwrap()).unwrap();
    assert_eq!(a.job_key(), b.job_key());
    assert_ne!(a.job_key(), c.job_key());
    assert_eq!(a.job_key().len(), 64);
    assert_eq!(a.identifying_json(), r#"{"date":"2026-11-20"}"#);
    assert_eq!(a.to_json(), r#"{"date":"2026-11-20","verify":"true"}"#);
}

#[test]
fn values_are_parsed_once_into_their_kind_and_canonical() {
    let p = JobParameters::from_declared(
        &JOB,
        parse_pairs(&["date= 2026-11-20", "verify=YES"]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        p.date("date").unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
    );
    assert!(p.bool("verify").unwrap());
    assert_eq!(p.to_json(), r#"{"date":"2026-11-20","verify":"true"}"#);
    // The same date written differently is the same instance.
    let q = JobParameters::from_declared(&JOB, parse_pairs(&["date=2026-11-20"]).unwrap()).unwrap();
    assert_eq!(p.job_key(), q.job_key());
    let e = p.count("date").unwrap_err();
    assert!(
        e.message.contains("`date`") && e.message.contains("not a count"),
        "{e}"
    );
    let e = q.bool("verify").unwrap_err();
    assert!(e.message.contains("not set"), "{e}");
}

#[test]
fn typed_values() {
    assert_eq!(
        parse_date("date", "2026-11-20").unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
    );
    let e = parse_date("date", "2026-02-30").unwrap_err();
    assert!(
        e.message.contains("2026-02-30") && e.message.contains("`date`"),
        "{e}"
    );
    assert!(parse_bool("verify", "TRUE").unwrap());
    assert!(!parse_bool("verify", "0").unwrap());
    assert!(
        parse_bool("verify", "maybe")
            .unwrap_err()
            .message
            .contains("maybe")
    );
}

fn currency(raw: &str) -> Result<String, String> {
    let v = raw.trim().to_ascii_uppercase();
    if v.len() == 3 && v.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(v)
    } else {
        Err("three letters".to_owned())
    }
}

const KINDS: JobDescriptor = JobDescriptor {
    name: "kindsJob",
    description: "",
    steps: &[],
    parameters: &[
        ParameterSpec::new("month", ParamKind::Month)
            .identifying()
            .default(ParamDefault::LastMonth),
        ParameterSpec::new("day", ParamKind::Date).default(ParamDefault::Yesterday),
        ParameterSpec::new("limit", ParamKind::Integer { min: -5, max: 100 })
            .default(ParamDefault::Value("10")),
        ParameterSpec::new("mode", ParamKind::OneOf(&["full", "delta"]))
            .identifying()
            .default(ParamDefault::Value("delta")),
        ParameterSpec::new(
            "currency",
            ParamKind::Custom(crate::descriptor::Validator {
                expected: "a currency code like KRW",
                check: currency,
            }),
        ),
        ParameterSpec::new("region", ParamKind::Text).default(ParamDefault::Required),
    ],
};

fn resolve(pairs: &[&str]) -> Result<JobParameters, ParameterError> {
    let ctx = ParamContext {
        today: NaiveDate::from_ymd_opt(2026, 1, 15).unwrap(),
    };
    JobParameters::resolve(&KINDS, parse_pairs(pairs).unwrap(), &ctx)
}

#[test]
fn declared_defaults_are_filled_in_from_the_context() {
    KINDS.check().unwrap();
    let p = resolve(&["region=kr"]).unwrap();
    assert_eq!(
        p.month("month").unwrap().to_string(),
        "2025-12",
        "last month"
    );
    assert_eq!(p.date("day").unwrap().to_string(), "2026-01-14");
    assert_eq!(p.int("limit").unwrap(), 10);
    assert_eq!(p.text("mode").unwrap(), "delta");
    assert!(!p.is_set("currency"), "no default: unset");
    assert_eq!(
        p.identifying_json(),
        r#"{"mode":"delta","month":"2025-12"}"#
    );
    let e = resolve(&[]).unwrap_err();
    assert_eq!(e.name.as_deref(), Some("region"));
    assert!(e.message.contains("required"), "{e}");
}

#[test]
fn months_ranges_choices_and_validators_are_checked() {
    let p = resolve(&[
        "region=kr",
        "month=2026-02",
        "limit=-5",
        "mode=full",
        "currency=krw",
    ])
    .unwrap();
    let m = p.month("month").unwrap();
    assert_eq!(
        (m.first_day().to_string(), m.last_day().to_string()),
        ("2026-02-01".to_owned(), "2026-02-28".to_owned())
    );
    assert_eq!(p.int("limit").unwrap(), -5);
    assert_eq!(p.text("currency").unwrap(), "KRW", "canonical text");
    for (bad, name, says) in [
        ("month=2026-13", "month", "out of range"),
        ("month=2026-1", "month", "YYYY-MM"),
        ("month=26-01", "month", "YYYY-MM"),
        ("limit=101", "limit", "out of range -5..=100"),
        ("limit=ten", "limit", "integer -5..=100"),
        ("mode=partial", "mode", "one of full, delta"),
        ("currency=won!", "currency", "a currency code like KRW"),
    ] {
        let e = resolve(&["region=kr", bad]).unwrap_err();
        assert_eq!(e.name.as_deref(), Some(name), "{bad}: {e}");
        assert!(e.message.contains(says), "{bad}: {e}");
        let value = bad.split_once('=').unwrap().1;
        assert!(e.message.contains(value), "{bad}: {e}");
    }
}

#[test]
fn declarations_are_checked() {
    let bad_default = ParameterSpec::new("month", ParamKind::Month).default(ParamDefault::Today);
    assert!(bad_default.check().unwrap_err().contains("does not suit"));
    let bad_value = ParameterSpec::new("n", ParamKind::Integer { min: 1, max: 3 })
        .default(ParamDefault::Value("7"));
    assert!(bad_value.check().unwrap_err().contains("out of range"));
    const TWICE: JobDescriptor = JobDescriptor {
        name: "twiceJob",
        description: "",
        steps: &[],
        parameters: &[
            ParameterSpec::new("a", ParamKind::Text),
            ParameterSpec::new("a", ParamKind::Bool),
        ],
    };
    assert!(TWICE.check().unwrap_err().contains("declared twice"));
    assert_eq!(
        YearMonth::new(2026, 12).unwrap().succ().to_string(),
        "2027-01"
    );
    assert_eq!(
        YearMonth::new(2026, 1).unwrap().pred().to_string(),
        "2025-12"
    );
}
