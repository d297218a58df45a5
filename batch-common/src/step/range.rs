//! [`KeyRange`]: the keys of one partition of a partitioned step, and [`Partitioning`]: how a
//! run splits its partitioned steps and how many partitions a process works at once.

use std::collections::BTreeMap;
use std::time::Duration;

/// A range of keys, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// The first key.
    pub from: i64,
    /// The last key.
    pub to: i64,
}

impl KeyRange {
    /// Every key: what an unpartitioned step reads.
    pub const ALL: KeyRange = KeyRange {
        from: i64::MIN,
        to: i64::MAX,
    };

    /// Whether this is [`KeyRange::ALL`].
    pub fn is_all(&self) -> bool {
        *self == KeyRange::ALL
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: i64) -> bool {
        (self.from..=self.to).contains(&key)
    }

    /// Splits the keys `min..=max` into at most `n` ranges of about the same width, the first
    /// starting at `i64::MIN` and the last ending at `i64::MAX`, so that together they cover
    /// every key (rows inserted outside `min..=max` while the step runs are not lost).
    pub fn split(min: i64, max: i64, n: u32) -> Vec<KeyRange> {
        let n = i128::from(n.max(1));
        let (lo, hi) = (i128::from(min.min(max)), i128::from(max.max(min)));
        let width = ((hi - lo + 1) + n - 1) / n;
        let mut ranges = Vec::new();
        let mut from = lo;
        while from <= hi {
            let to = (from + width - 1).min(hi);
            ranges.push(KeyRange {
                from: from as i64,
                to: to as i64,
            });
            from = to + 1;
        }
        if let Some(first) = ranges.first_mut() {
            first.from = i64::MIN;
        }
        if let Some(last) = ranges.last_mut() {
            last.to = i64::MAX;
        }
        if ranges.is_empty() {
            ranges.push(KeyRange::ALL);
        }
        ranges
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |k: i64| match k {
            i64::MIN => "min".to_owned(),
            i64::MAX => "max".to_owned(),
            k => k.to_string(),
        };
        write!(f, "{}..={}", end(self.from), end(self.to))
    }
}

/// How a run partitions its steps and how many partitions a process works at once.
#[derive(Debug, Clone)]
pub struct Partitioning {
    /// Partitions per step name (`[batch.partitions]`); 1 for a step not named.
    pub per_step: BTreeMap<String, u32>,
    /// Partitions of every partitioned step of this run (`run --partitions N`), over `per_step`.
    pub all_steps: Option<u32>,
    /// Partitions this process works at once (`[batch] partition_workers`, `run --workers N`).
    pub workers: u32,
    /// This process as a partition owner (`host:pid:tag`).
    pub owner: String,
    /// A claimed partition whose lease is older than this is re-claimed (`batch.stale_after`).
    pub lease: Duration,
    /// How often a worker renews its leases (`batch.heartbeat_interval`).
    pub renew_every: Duration,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning {
            per_step: BTreeMap::new(),
            all_steps: None,
            workers: 1,
            owner: crate::launcher::process_owner(),
            lease: Duration::from_secs(120),
            renew_every: Duration::from_secs(10),
        }
    }
}

impl Partitioning {
    /// The partitions `step` is split into. Step names match regardless of case: environment
    /// variables (`BATCH__BATCH__PARTITIONS__SYNCPOINTBALANCESTEP`) arrive lower-cased.
    pub fn partitions(&self, step: &str) -> u32 {
        self.all_steps
            .or_else(|| {
                self.per_step
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(step))
                    .map(|(_, n)| *n)
            })
            .unwrap_or(1)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(ranges: &[KeyRange]) -> Vec<(i64, i64)> {
        ranges.iter().map(|r| (r.from, r.to)).collect()
    }

    #[test]
    fn ranges_cover_every_key_with_about_the_same_width() {
        assert_eq!(
            bounds(&KeyRange::split(1, 50, 4)),
            [(i64::MIN, 13), (14, 26), (27, 39), (40, i64::MAX)]
        );
        // Fewer keys than partitions: one range per key at most.
        assert_eq!(
            bounds(&KeyRange::split(1, 3, 8)),
            [(i64::MIN, 1), (2, 2), (3, i64::MAX)]
        );
        assert_eq!(bounds(&KeyRange::split(5, 5, 4)), [(i64::MIN, i64::MAX)]);
        assert_eq!(bounds(&KeyRange::split(1, 100, 0)), [(i64::MIN, i64::MAX)]);
        // Negative keys and the whole i64 range, without overflow.
        assert_eq!(
            bounds(&KeyRange::split(-10, 9, 2)),
            [(i64::MIN, -1), (0, i64::MAX)]
        );
        let all = KeyRange::split(i64::MIN, i64::MAX, 3);
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].from, all[2].to), (i64::MIN, i64::MAX));
        for pair in all.windows(2) {
            assert_eq!(pair[0].to + 1, pair[1].from);
        }
    }

    #[test]
    fn ranges_read_like_their_bounds() {
        assert_eq!(KeyRange::ALL.to_string(), "min..=max");
        assert_eq!(KeyRange { from: 14, to: 26 }.to_string(), "14..=26");
        assert!(KeyRange { from: 14, to: 26 }.contains(26));
        assert!(!KeyRange { from: 14, to: 26 }.contains(27));
    }

    #[test]
    fn partitions_per_step_match_regardless_of_case() {
        let p = Partitioning {
            per_step: [("syncpointbalancestep".to_owned(), 8)].into(),
            ..Partitioning::default()
        };
        assert_eq!(p.partitions("syncPointBalanceStep"), 8);
        assert_eq!(p.partitions("otherStep"), 1);
        let all = Partitioning {
            all_steps: Some(3),
            ..p
        };
        assert_eq!(all.partitions("syncPointBalanceStep"), 3);
        assert_eq!(all.partitions("otherStep"), 3);
    }
}
