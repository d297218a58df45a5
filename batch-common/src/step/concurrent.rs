//! The concurrent item step: items read in key order by pages, each processed on its own with
//! bounded concurrency (calls to a slow external service), results committed in small
//! transactions as they complete.
//!
//! A [`ChunkStep`](super::ChunkStep) processes a chunk and waits for all of it before the
//! next one starts, so a step whose items are slow calls idles at every chunk boundary, and a
//! crash loses the whole uncommitted chunk. This step never drains:
//!
//! - the [`KeyedReader`] reads the next page while items are in flight;
//! - up to `concurrency` items are processed at once (a `FuturesUnordered`); a finished item
//!   frees its slot for the next one at once;
//! - finished items are committed every `commit_every` results or every `commit_interval`,
//!   whichever comes first (one commit at a time, beside the processing), together with their
//!   item failures and the checkpoint;
//! - at most `max(2 × concurrency, concurrency + 2 × commit_every)` items are started and not yet
//!   committed, so a crash re-processes no more than that, and commits may lag a little behind
//!   the calls before the calls wait for them.
//!
//! The checkpoint is exact, not a position: `{"done_through": k, "redo": [k1, k2, ...]}` says
//! every item with a key up to `k` is committed except the keys in `redo` (those started but not
//! yet committed). A restart reads again from the smallest `redo` key, skips the committed keys up
//! to `k`, and so re-processes only the items that were in flight.
//!
//! Counts follow the chunk step: an item is counted read (and written, filtered or skipped) when
//! its result commits; a commit is one transaction. A stop request (`ctx.cancel`) starts no new
//! item, lets the ones in flight finish, commits them and ends STOPPED. An item failure is
//! recorded and resolved as in a chunk step, and the skip limit applies after every commit.
//! Transient errors of a page read or a commit are retried with the step's `RetryPolicy`.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{ChunkWriter, CommitTarget, ReadScope, Step, StepContext, StepOutcome};
use crate::clock::Clock;
use crate::repository::{ItemFailureRecord, StepProgress};
use crate::retry::RetryPolicy;

/// A page of items in ascending key order.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, keys ascending, all above the position asked for.
    pub items: Vec<T>,
    /// Where the next page starts (after this key, at least the last item's key); `None` when
    /// there is nothing after this page.
    pub next: Option<i64>,
}

/// Reads items by ascending `i64` key, a page at a time (keyset paging).
#[async_trait]
pub trait KeyedReader: Send {
    /// The item type.
    type Item: Send + 'static;

    /// The item's key: unique, and the order the reader returns items in.
    fn key(item: &Self::Item) -> i64;

    /// Prepares the reader for `scope` (e.g. the failed items' keys).
    async fn open(&mut self, _scope: &ReadScope) -> anyhow::Result<()> {
        Ok(())
    }

    /// Up to `max` items with a key above `after`. A page may hold fewer items (or none) without
    /// being the last one; [`Page::next`] says.
    async fn read_page(&mut self, after: i64, max: usize) -> anyhow::Result<Page<Self::Item>>;

    /// How many items the whole step reads in `scope`, if cheap to know (progress display).
    async fn total(&mut self, _scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }
}

/// What processing one item gave.
#[derive(Debug)]
pub enum ItemOutcome<O> {
    /// Write this.
    Write(O),
    /// Nothing to write (counted as filtered).
    Filter,
    /// The item failed: recorded as an item failure under its key; the others go on.
    Fail {
        /// The error.
        error: String,
        /// Attempts made.
        attempts: i32,
    },
}

/// Processes one item (e.g. one call to an external service). Runs concurrently with others.
#[async_trait]
pub trait ConcurrentProcessor<I, O>: Send + Sync {
    /// Processes `item`. An `Err` fails the step (after the finished items are committed); one
    /// item's failure belongs in [`ItemOutcome::Fail`].
    async fn process(&self, item: I) -> anyhow::Result<ItemOutcome<O>>;
}

/// The exact checkpoint (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// Every item with a key up to this one is committed, except those in `redo`. (`last_id`:
    /// the checkpoint of a keyset chunk step, so a run stopped before a job switched to this
    /// step resumes where it was.)
    #[serde(alias = "last_id")]
    done_through: i64,
    /// Keys up to `done_through` that are not committed, ascending.
    #[serde(default)]
    redo: Vec<i64>,
}

impl Checkpoint {
    fn parse(value: &serde_json::Value) -> anyhow::Result<Checkpoint> {
        if value.is_null() {
            return Ok(Checkpoint {
                done_through: i64::MIN,
                redo: Vec::new(),
            });
        }
        serde_json::from_value(value.clone())
            .map_err(|e| anyhow::anyhow!("checkpoint `{value}` is not a concurrent step's: {e}"))
    }

    /// The position the reader resumes after.
    fn read_after(&self) -> i64 {
        self.redo
            .first()
            .map_or(self.done_through, |k| k.saturating_sub(1))
    }
}

/// One finished item waiting for its commit.
struct Finished<O> {
    key: i64,
    outcome: ItemOutcome<O>,
}

/// A batch's effect on the progress once committed.
struct Committed {
    next: StepProgress,
    keys: Vec<i64>,
}

/// A result with the retries and rollbacks it took.
struct Attempted<T> {
    result: anyhow::Result<T>,
    retries: i64,
    rollbacks: i64,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step reading with `R`, processing each item with `P` (at most `concurrency` at once) and
/// writing the results with `W` in small transactions, with an exact checkpoint.
pub struct ConcurrentStep<R, P, W, O> {
    name: String,
    reader: Mutex<R>,
    processor: P,
    writer: W,
    concurrency: usize,
    page_size: Option<usize>,
    commit_every: usize,
    commit_interval: Duration,
    _out: std::marker::PhantomData<fn(O)>,
}

impl<R, P, W, O> ConcurrentStep<R, P, W, O>
where
    R: KeyedReader,
    P: ConcurrentProcessor<R::Item, O>,
    W: ChunkWriter<O>,
    O: Send + Sync + 'static,
{
    /// A step named `name` with at most `concurrency` items in flight. Commits every
    /// `max(1, concurrency / 4)` results or 200 ms; pages of `[batch] chunk_size` items.
    pub fn new(
        name: impl Into<String>,
        reader: R,
        processor: P,
        writer: W,
        concurrency: usize,
    ) -> Self {
        let concurrency = concurrency.max(1);
        ConcurrentStep {
            name: name.into(),
            reader: Mutex::new(reader),
            processor,
            writer,
            concurrency,
            page_size: None,
            commit_every: (concurrency / 4).max(1),
            commit_interval: Duration::from_millis(200),
            _out: std::marker::PhantomData,
        }
    }

    /// Commits every `results` finished items (at least 1) or every `interval`, whichever first.
    pub fn with_commit_every(mut self, results: usize, interval: Duration) -> Self {
        self.commit_every = results.max(1);
        self.commit_interval = interval;
        self
    }

    /// Reads pages of this size instead of `[batch] chunk_size` (`None`: that one).
    pub fn with_page_size(mut self, page_size: Option<std::num::NonZeroUsize>) -> Self {
        self.page_size = page_size.map(std::num::NonZeroUsize::get);
        self
    }

    /// Items started and not committed, at most: what a crash may re-process.
    pub fn max_uncommitted(&self) -> usize {
        (2 * self.concurrency).max(self.concurrency + 2 * self.commit_every)
    }

    /// Writes `batch` with its failures and `checkpoint` on top of `base`, in one transaction,
    /// retrying transient errors with `retry`.
    async fn commit(
        &self,
        target: &Target,
        base: StepProgress,
        batch: Vec<Finished<O>>,
        checkpoint: Checkpoint,
    ) -> Attempted<Committed> {
        let keys: Vec<i64> = batch.iter().map(|f| f.key).collect();
        let mut items = Vec::with_capacity(batch.len());
        let (mut filtered, mut item_failures) = (0usize, Vec::new());
        for f in batch {
            match f.outcome {
                ItemOutcome::Write(o) => items.push(o),
                ItemOutcome::Filter => filtered += 1,
                ItemOutcome::Fail { error, attempts } => item_failures.push(ItemFailureRecord {
                    item_key: f.key.to_string(),
                    error,
                    attempts,
                }),
            }
        }
        let context = serde_json::to_value(&checkpoint).unwrap_or_default();
        let done = target
            .retry
            .run(
                target.clock.as_ref(),
                &target.step_name,
                "committing results",
                async |failures| {
                    let mut next = base.clone();
                    next.counts.retry_count += i64::from(failures);
                    next.counts.rollback_count += i64::from(failures);
                    next.counts.read_count += keys.len() as i64;
                    next.counts.filter_count += filtered as i64;
                    next.counts.commit_count += 1;
                    next.context = context.clone();
                    self.writer
                        .write_and_commit(&items, &target.commit, &item_failures, &mut next)
                        .await
                        .map(|()| next)
                },
            )
            .await;
        let rollbacks = i64::from(done.failures);
        Attempted {
            retries: rollbacks - i64::from(done.result.is_err()),
            rollbacks,
            result: done.result.map(|next| Committed { next, keys }),
        }
    }
}

/// Where results commit, owned, so a commit runs beside the processing.
struct Target {
    commit: CommitTarget,
    step_name: String,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
}

/// Reads a page, retrying transient errors; gives the reader back with the page and the retries.
async fn read_page<R: KeyedReader>(
    reader: &mut R,
    after: i64,
    max: usize,
    target: &Target,
) -> (anyhow::Result<Page<R::Item>>, i64) {
    let mut schedule = target.retry.schedule();
    let mut retries = 0;
    loop {
        match reader.read_page(after, max).await {
            Ok(page) => return (Ok(page), retries),
            Err(e) => {
                let delay = crate::retry::next_delay(
                    &mut schedule,
                    &e,
                    target.clock.as_ref(),
                    &target.step_name,
                    "reading a page",
                );
                let Some(delay) = delay else {
                    return (Err(e), retries);
                };
                target.clock.sleep(delay).await;
                retries += 1;
            }
        }
    }
}

/// Which keys are started and not committed, and what the checkpoint says about the rest.
struct Ledger {
    /// Every key up to this one is started (or was committed before the restart), except
    /// `redo_left`.
    through: i64,
    /// Keys of the restored checkpoint's `redo` not started yet.
    redo_left: BTreeSet<i64>,
    /// Started, not committed.
    open: BTreeSet<i64>,
}

impl Ledger {
    /// The checkpoint once `committing` are committed.
    fn checkpoint(&self, committing: &[i64]) -> Checkpoint {
        let mut redo: BTreeSet<i64> = self.redo_left.clone();
        redo.extend(self.open.iter().copied());
        for k in committing {
            redo.remove(k);
        }
        Checkpoint {
            done_through: self.through,
            redo: redo.into_iter().collect(),
        }
    }

    /// Takes a page read after `after`: drops items committed before a restart, and forgets
    /// `redo` keys the reader passed without returning (gone, or out of scope now).
    fn admit<T>(
        &mut self,
        key: impl Fn(&T) -> i64,
        after: i64,
        page: &mut Page<T>,
        restored_through: i64,
    ) {
        let end = page.next.unwrap_or(i64::MAX);
        let returned: BTreeSet<i64> = page.items.iter().map(&key).collect();
        self.redo_left
            .retain(|k| *k <= after || *k > end || returned.contains(k));
        let redo = &self.redo_left;
        page.items.retain(|item| {
            let k = key(item);
            k > restored_through || redo.contains(&k)
        });
    }
}

#[async_trait]
impl<R, P, W, O> Step for ConcurrentStep<R, P, W, O>
where
    R: KeyedReader,
    P: ConcurrentProcessor<R::Item, O>,
    W: ChunkWriter<O>,
    O: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        let page_size = self.page_size.unwrap_or(ctx.settings.chunk_size).max(1);
        let restored = Checkpoint::parse(&ctx.progress.context)?;
        let mut reader = self.reader.lock().await;
        reader.open(&ctx.scope).await?;
        let total = if ctx.listeners.is_empty() {
            None
        } else {
            reader.total(&ctx.scope).await.unwrap_or_else(|e| {
                tracing::debug!(step = %self.name, error = %format!("{e:#}"), "counting the step's items failed");
                None
            })
        };
        let target = Target {
            commit: CommitTarget::of(ctx),
            step_name: ctx.step_name.clone(),
            retry: ctx.settings.retry,
            clock: ctx.clock.clone(),
        };
        let cancel = ctx.cancel.clone();
        let target = &target;

        let mut ledger = Ledger {
            through: restored.done_through,
            redo_left: restored.redo.iter().copied().collect(),
            open: BTreeSet::new(),
        };
        let mut read_pos = restored.read_after();
        let mut end = false;
        let mut reader = Some(&mut *reader);
        let mut reading: Option<BoxFut<'_, (&mut R, anyhow::Result<Page<R::Item>>, i64)>> = None;
        let mut queue: VecDeque<R::Item> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut finished: Vec<Finished<O>> = Vec::new();
        let mut flush_at = Instant::now();
        let mut committing: Option<BoxFut<'_, Attempted<Committed>>> = None;
        // Read retries not yet in a saved progress (a running commit replaces the progress).
        let mut unsaved_retries = 0i64;
        let mut stopping = false;
        let mut failure: Option<anyhow::Error> = None;

        loop {
            if !stopping && !end && reading.is_none() && queue.len() < page_size {
                let r = reader.take().expect("the reader is back when no read runs");
                let after = read_pos;
                reading = Some(Box::pin(async move {
                    let (page, retries) = read_page(&mut *r, after, page_size, target).await;
                    (r, page, retries)
                }));
            }
            while !stopping
                && in_flight.len() < self.concurrency
                && ledger.open.len() < self.max_uncommitted()
                && let Some(item) = queue.pop_front()
            {
                let key = R::key(&item);
                ledger.redo_left.remove(&key);
                ledger.open.insert(key);
                ledger.through = ledger.through.max(key);
                let processor = &self.processor;
                in_flight.push(async move { (key, processor.process(item).await) });
            }
            if committing.is_none()
                && !finished.is_empty()
                && (finished.len() >= self.commit_every
                    || in_flight.is_empty()
                    || Instant::now() >= flush_at)
            {
                let batch = std::mem::take(&mut finished);
                let keys: Vec<i64> = batch.iter().map(|f| f.key).collect();
                let checkpoint = ledger.checkpoint(&keys);
                let mut base = ctx.progress.clone();
                base.counts.retry_count += std::mem::take(&mut unsaved_retries);
                committing = Some(Box::pin(self.commit(target, base, batch, checkpoint)));
            }
            if in_flight.is_empty()
                && committing.is_none()
                && finished.is_empty()
                && reading.is_none()
                && (stopping || (end && queue.is_empty()))
            {
                break;
            }
            let waiting = committing.is_none() && !finished.is_empty();
            tokio::select! {
                (r, page, retries) = async { reading.as_mut().expect("a read runs").await }, if reading.is_some() => {
                    reading = None;
                    reader = Some(r);
                    unsaved_retries += retries;
                    match page {
                        Ok(mut page) => {
                            ledger.admit(R::key, read_pos, &mut page, restored.done_through);
                            match page.next {
                                Some(next) if next > read_pos => read_pos = next,
                                // The end, or a reader that would not move on.
                                _ => end = true,
                            }
                            queue.extend(page.items);
                        }
                        Err(e) => {
                            stopping = true;
                            failure.get_or_insert(e);
                        }
                    }
                }
                Some((key, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    match outcome {
                        Ok(outcome) => {
                            if finished.is_empty() {
                                flush_at = Instant::now() + self.commit_interval;
                            }
                            finished.push(Finished { key, outcome });
                        }
                        Err(e) => {
                            // Not committed: its key stays open, so a restart processes it again.
                            stopping = true;
                            failure.get_or_insert(e.context(format!("processing item {key}")));
                        }
                    }
                }
                done = async { committing.as_mut().expect("a commit runs").await }, if committing.is_some() => {
                    committing = None;
                    match done.result {
                        Ok(c) => {
                            ctx.progress = c.next;
                            for k in &c.keys {
                                ledger.open.remove(k);
                            }
                        }
                        Err(e) => {
                            ctx.progress.counts.retry_count += done.retries + unsaved_retries;
                            ctx.progress.counts.rollback_count += done.rollbacks;
                            return Err(e.context("committing finished items"));
                        }
                    }
                    for listener in ctx.listeners.iter() {
                        listener.on_chunk(&ctx.run, &ctx.step_name, &ctx.progress, total).await;
                    }
                    if ctx.progress.counts.skip_count as u64 > ctx.settings.skip_limit {
                        ctx.progress.counts.retry_count += unsaved_retries;
                        anyhow::bail!(
                            "skip limit exceeded: {} item failures (batch.skip_limit = {})",
                            ctx.progress.counts.skip_count,
                            ctx.settings.skip_limit
                        );
                    }
                }
                _ = tokio::time::sleep_until(flush_at), if waiting => {}
                _ = cancel.cancelled(), if !stopping => {
                    tracing::info!(step = %self.name, in_flight = in_flight.len(), "stop requested; finishing the items in flight");
                    stopping = true;
                }
            }
            if stopping {
                // A read in flight is dropped (none of it was started), and the reader with it.
                reading = None;
            }
        }
        ctx.progress.counts.retry_count += unsaved_retries;
        match failure {
            Some(e) => Err(e),
            None if end && queue.is_empty() => Ok(StepOutcome::Completed),
            None => Ok(StepOutcome::Stopped),
        }
    }
}
