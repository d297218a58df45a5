//! `StepCounts`: the counts of a step execution, one type from the metadata row to the API.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::schema::batch_step_execution as s;

/// The counts of one step execution (Spring Batch's `StepExecution` counters) and the step's
/// domain counters: the one type the metadata row, a running step's progress, the run's
/// [`StepResult`](crate::StepResult) and the API's view all carry. Serialises with today's field
/// names (`read_count`, ..., `counters`), and is read and written as the row's count columns.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Queryable,
    Selectable,
    Insertable,
    AsChangeset,
)]
#[diesel(table_name = s)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct StepCounts {
    /// Items read.
    pub read_count: i64,
    /// Items written.
    pub write_count: i64,
    /// Items filtered out by the processor.
    pub filter_count: i64,
    /// Items skipped (recorded as item failures).
    pub skip_count: i64,
    /// Chunks committed.
    pub commit_count: i64,
    /// Chunks rolled back.
    pub rollback_count: i64,
    /// Retries (chunk and step level).
    pub retry_count: i64,
    /// Domain counters, e.g. `created`, `corrected`, `unchanged`; stored as a JSON object.
    #[diesel(deserialize_as = String, serialize_as = String)]
    pub counters: DomainCounters,
}

/// A step's domain counters by name (a JSON object in the metadata row).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DomainCounters(pub BTreeMap<String, i64>);

/// Shown as the map itself (`{"created": 3, ...}`), as in logs before the type existed.
impl std::fmt::Debug for DomainCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StepCounts {
    /// Adds every count and counter of `other` (the partitions of a step, summed).
    pub fn add_all(&mut self, other: &StepCounts) {
        self.read_count += other.read_count;
        self.write_count += other.write_count;
        self.filter_count += other.filter_count;
        self.skip_count += other.skip_count;
        self.commit_count += other.commit_count;
        self.rollback_count += other.rollback_count;
        self.retry_count += other.retry_count;
        for (name, value) in &other.counters {
            self.counters.add(name, *value);
        }
    }
}

impl DomainCounters {
    /// Adds `delta` to counter `name`.
    pub fn add(&mut self, name: &str, delta: i64) {
        *self.0.entry(name.to_owned()).or_default() += delta;
    }
}

impl std::ops::Deref for DomainCounters {
    type Target = BTreeMap<String, i64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for DomainCounters {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a DomainCounters {
    type Item = (&'a String, &'a i64);
    type IntoIter = std::collections::btree_map::Iter<'a, String, i64>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<const N: usize> From<[(String, i64); N]> for DomainCounters {
    fn from(pairs: [(String, i64); N]) -> Self {
        DomainCounters(pairs.into())
    }
}

impl FromIterator<(String, i64)> for DomainCounters {
    fn from_iter<I: IntoIterator<Item = (String, i64)>>(iter: I) -> Self {
        DomainCounters(iter.into_iter().collect())
    }
}

/// How the column is written: a JSON object.
impl From<DomainCounters> for String {
    fn from(c: DomainCounters) -> String {
        serde_json::to_string(&c.0).expect("a map of numbers serializes")
    }
}

/// How the stored column is read: text that is not a JSON object of numbers (changed by hand)
/// reads as no counters rather than failing the query, as before.
impl From<String> for DomainCounters {
    fn from(stored: String) -> Self {
        DomainCounters(serde_json::from_str(&stored).unwrap_or_default())
    }
}
