//! Jenkins' five-field cron from a `[schedule]` cron (seconds, names, 1 = Sunday as the `cron`
//! crate reads it): the seconds dropped, names as numbers, days of the week renumbered.

use std::collections::BTreeSet;

/// One cron field: its range and the names it accepts (as the `cron` crate reads them).
struct CronField {
    what: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [(&'static str, u32)],
    any: bool,
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("january", 1),
    ("feb", 2),
    ("february", 2),
    ("mar", 3),
    ("march", 3),
    ("apr", 4),
    ("april", 4),
    ("may", 5),
    ("jun", 6),
    ("june", 6),
    ("jul", 7),
    ("july", 7),
    ("aug", 8),
    ("august", 8),
    ("sep", 9),
    ("september", 9),
    ("oct", 10),
    ("october", 10),
    ("nov", 11),
    ("november", 11),
    ("dec", 12),
    ("december", 12),
];

/// Days of the week as `[schedule]` numbers them: 1 = Sunday ... 7 = Saturday.
const DAY_NAMES: &[(&str, u32)] = &[
    ("sun", 1),
    ("sunday", 1),
    ("mon", 2),
    ("monday", 2),
    ("tue", 3),
    ("tues", 3),
    ("tuesday", 3),
    ("wed", 4),
    ("wednesday", 4),
    ("thu", 5),
    ("thurs", 5),
    ("thursday", 5),
    ("fri", 6),
    ("friday", 6),
    ("sat", 7),
    ("saturday", 7),
];

const SECONDS: CronField = CronField {
    what: "second",
    lo: 0,
    hi: 59,
    names: &[],
    any: false,
};
const MINUTES: CronField = CronField {
    what: "minute",
    lo: 0,
    hi: 59,
    names: &[],
    any: false,
};
const HOURS: CronField = CronField {
    what: "hour",
    lo: 0,
    hi: 23,
    names: &[],
    any: false,
};
const DAYS_OF_MONTH: CronField = CronField {
    what: "day of month",
    lo: 1,
    hi: 31,
    names: &[],
    any: true,
};
const MONTHS: CronField = CronField {
    what: "month",
    lo: 1,
    hi: 12,
    names: MONTH_NAMES,
    any: false,
};
const DAYS_OF_WEEK: CronField = CronField {
    what: "day of week",
    lo: 1,
    hi: 7,
    names: DAY_NAMES,
    any: true,
};

impl CronField {
    fn value(&self, text: &str) -> Result<u32, String> {
        let v = if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
            text.parse::<u32>().map_err(|e| format!("`{text}`: {e}"))?
        } else {
            let lower = text.to_ascii_lowercase();
            self.names
                .iter()
                .find(|(n, _)| *n == lower)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("`{text}` is not a {}", self.what))?
        };
        if !(self.lo..=self.hi).contains(&v) {
            return Err(format!(
                "{} {v} is not in {}..={}",
                self.what, self.lo, self.hi
            ));
        }
        Ok(v)
    }

    /// The values a field of `[schedule]` matches.
    fn values(&self, text: &str) -> Result<BTreeSet<u32>, String> {
        let mut set = BTreeSet::new();
        for item in text.split(',') {
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => {
                    let step = s
                        .parse::<u32>()
                        .ok()
                        .filter(|s| (1..=self.hi).contains(s))
                        .ok_or_else(|| format!("step `{s}` of the {} field", self.what))?;
                    (b, Some(step))
                }
                None => (item, None),
            };
            let (start, end) = match base {
                "*" => (self.lo, self.hi),
                "?" if self.any => (self.lo, self.hi),
                b => match b.split_once('-') {
                    Some((a, z)) => (self.value(a)?, self.value(z)?),
                    // `5/15`: from 5 to the end, every 15.
                    None if step.is_some() => (self.value(b)?, self.hi),
                    None => {
                        let v = self.value(b)?;
                        (v, v)
                    }
                },
            };
            if start > end {
                return Err(format!("{} range `{base}` is empty", self.what));
            }
            set.extend((start..=end).step_by(step.unwrap_or(1) as usize));
        }
        Ok(set)
    }
}

/// A set of values in Jenkins' syntax over `lo..=hi`: `*`, `*/n`, or runs (`1-5,7`).
fn jenkins_field(set: &BTreeSet<u32>, lo: u32, hi: u32, step_syntax: bool) -> String {
    let all: BTreeSet<u32> = (lo..=hi).collect();
    if *set == all {
        return "*".to_owned();
    }
    let values: Vec<u32> = set.iter().copied().collect();
    if step_syntax && values.len() >= 2 && values[0] == lo {
        let step = values[1] - values[0];
        let progression: BTreeSet<u32> = (lo..=hi).step_by(step as usize).collect();
        if step >= 2 && *set == progression {
            return format!("*/{step}");
        }
    }
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => runs.push(values[i].to_string()),
            1 => runs.push(format!("{},{}", values[i], values[j])),
            _ => runs.push(format!("{}-{}", values[i], values[j])),
        }
        i = j + 1;
    }
    runs.join(",")
}

/// A `[schedule]` cron expression (`sec min hour day-of-month month day-of-week [year]`, or the
/// five Unix fields) as Jenkins' five fields, firing at the same minutes: the seconds dropped (a
/// schedule firing more than once a minute is refused), days of the week renumbered (Jenkins:
/// 0 = Sunday; `[schedule]`: 1 = Sunday), names as numbers, a year other than `*` refused. Both
/// match a time when every field matches.
pub fn jenkins_cron(expression: &str) -> Result<String, String> {
    batch_common::schedule::CronSchedule::parse(expression)
        .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))?;
    let mut fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() == 5 {
        fields.insert(0, "0");
    }
    if let Some(year) = fields.get(6)
        && *year != "*"
    {
        return Err(format!(
            "`{expression}`: Jenkins' cron has no year field (only `*` can be translated)"
        ));
    }
    let seconds = SECONDS.values(fields[0])?;
    if seconds.len() != 1 {
        return Err(format!(
            "`{expression}` fires more than once a minute, which Jenkins' cron cannot"
        ));
    }
    let days_of_week: BTreeSet<u32> = DAYS_OF_WEEK
        .values(fields[5])?
        .into_iter()
        .map(|d| d - 1)
        .collect();
    Ok([
        jenkins_field(&MINUTES.values(fields[1])?, 0, 59, true),
        jenkins_field(&HOURS.values(fields[2])?, 0, 23, true),
        jenkins_field(&DAYS_OF_MONTH.values(fields[3])?, 1, 31, true),
        jenkins_field(&MONTHS.values(fields[4])?, 1, 12, true),
        // Jenkins reads `*/n` here over 0..=7 (7 is Sunday again): runs only.
        jenkins_field(&days_of_week, 0, 6, false),
    ]
    .join(" "))
}
