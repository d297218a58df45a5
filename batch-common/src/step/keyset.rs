//! [`KeysetReader`]: any [`KeysetQuery`] as a step's reader — a chunk step's [`ItemReader`]
//! with a typed checkpoint (the last key read), and a [`ConcurrentStep`](super::ConcurrentStep)'s
//! [`KeyedReader`] — including the failed-items scope (only the keys that failed, still returned
//! by the query) and the total for progress bars. A domain writes the query; the position,
//! the checkpoint and restarts come from here.

use async_trait::async_trait;
use core_domain::{Database, DbConnection, KeysetQuery};
use serde::{Deserialize, Serialize};

use super::{ItemReader, KeyRange, KeyedReader, Page, ReadScope};

/// A [`KeysetReader`]'s checkpoint: every row up to this key has been read and committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetCheckpoint {
    /// The last key of the last committed chunk (0: from the start).
    #[serde(default)]
    pub last_id: i64,
}

/// Pages through `Q`'s rows by key, one statement per chunk on a pooled connection.
pub struct KeysetReader<Q: KeysetQuery> {
    db: Database,
    query: Q,
    /// The keys read: every key for [`KeyRange::ALL`], else one partition's.
    range: KeyRange,
    last: i64,
    /// In a failed-items run: the keys to read again, ascending.
    only: Option<Vec<i64>>,
}

impl<Q: KeysetQuery> std::fmt::Debug for KeysetReader<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysetReader")
            .field("query", &std::any::type_name::<Q>())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl<Q: KeysetQuery> KeysetReader<Q> {
    /// A reader of `query`'s rows in `db`, from the start.
    pub fn new(db: Database, query: Q) -> Self {
        KeysetReader {
            db,
            query,
            range: KeyRange::ALL,
            last: 0,
            only: None,
        }
    }

    /// Reads only the keys of `range` (a partition of a [`PartitionedStep`](super::PartitionedStep)).
    pub fn in_range(mut self, range: KeyRange) -> Self {
        self.range = range;
        self.last = self.start();
        self
    }

    /// The key reading starts after: 0 for all keys (keys are positive), else just before the
    /// range.
    fn start(&self) -> i64 {
        if self.range.is_all() {
            0
        } else {
            self.range.from.saturating_sub(1)
        }
    }

    fn set_scope(&mut self, scope: &ReadScope) -> anyhow::Result<()> {
        self.only = match scope {
            ReadScope::All => None,
            ReadScope::FailedItems(keys) => {
                let mut ids = keys
                    .iter()
                    .map(|k| {
                        k.parse::<i64>().map_err(|e| {
                            anyhow::anyhow!("item key `{k}` is not a key of this reader: {e}")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
        };
        Ok(())
    }

    /// Up to `max` rows after `after`; and the key the next page starts after (`None`: done).
    async fn page(&mut self, after: i64, max: usize) -> anyhow::Result<(Vec<Q::Row>, Option<i64>)> {
        let mut conn = self.db.get().await?;
        let conn: &mut DbConnection = &mut conn;
        let after = after.max(self.start());
        match &self.only {
            None => {
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let rows = if self.range.is_all() {
                    self.query.page_after(conn, after, limit).await?
                } else {
                    let upto = self.range.to;
                    self.query.page_between(conn, after, upto, limit).await?
                };
                // A short page is the last one.
                let next = (rows.len() >= max)
                    .then(|| rows.last().map(Q::key))
                    .flatten();
                Ok((rows, next))
            }
            Some(ids) => {
                let start = ids.partition_point(|id| *id <= after);
                let keys = &ids[start..(start + max).min(ids.len())];
                let rows = self.query.with_keys(conn, keys).await?;
                let more = start + keys.len() < ids.len();
                Ok((rows, keys.last().copied().filter(|_| more)))
            }
        }
    }

    async fn total_in(&mut self, scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(match scope {
            ReadScope::All if !self.range.is_all() => None,
            ReadScope::All => {
                let mut conn = self.db.get().await?;
                self.query.count(&mut conn).await?.map(|n| n.max(0) as u64)
            }
            ReadScope::FailedItems(keys) => Some(keys.len() as u64),
        })
    }
}

#[async_trait]
impl<Q: KeysetQuery> ItemReader for KeysetReader<Q> {
    type Item = Q::Row;
    type Checkpoint = KeysetCheckpoint;

    async fn open(
        &mut self,
        checkpoint: Option<KeysetCheckpoint>,
        scope: &ReadScope,
    ) -> anyhow::Result<()> {
        self.last = checkpoint.map_or(self.start(), |c| c.last_id.max(self.start()));
        self.set_scope(scope)
    }

    async fn read_chunk(&mut self, max: usize) -> anyhow::Result<(Vec<Q::Row>, KeysetCheckpoint)> {
        // In a failed-items run a slice of keys may give no row (gone from the query): go on to
        // the next slice, as an empty chunk means the end.
        loop {
            let (rows, next) = self.page(self.last, max).await?;
            if let Some(last) = rows.last() {
                self.last = self.last.max(Q::key(last));
            }
            if let Some(ids) = &self.only {
                // The slice's keys are all read, whether or not each still gave a row.
                let slice_end = next.or_else(|| ids.last().copied()).unwrap_or(self.last);
                self.last = self.last.max(slice_end);
                if rows.is_empty() && next.is_some() {
                    continue;
                }
            }
            return Ok((rows, KeysetCheckpoint { last_id: self.last }));
        }
    }

    async fn total(&mut self, scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        self.total_in(scope).await
    }
}

#[async_trait]
impl<Q: KeysetQuery> KeyedReader for KeysetReader<Q> {
    type Item = Q::Row;

    fn key(row: &Q::Row) -> i64 {
        Q::key(row)
    }

    async fn open(&mut self, scope: &ReadScope) -> anyhow::Result<()> {
        self.set_scope(scope)
    }

    async fn read_page(&mut self, after: i64, max: usize) -> anyhow::Result<Page<Q::Row>> {
        let (items, next) = self.page(after, max).await?;
        Ok(Page { items, next })
    }

    async fn total(&mut self, scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        self.total_in(scope).await
    }
}
