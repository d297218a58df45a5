//! An external (non-database) writer whose writes a test scripts, for testing the pipelined
//! chunk loop of `ChunkStep` (`writes_to_database() == false`): each write attempt of a chunk
//! may succeed, fail (transient or for good), or wait at a gate until the test releases it —
//! before storing anything, or after storing (in the store but not yet acknowledged). The
//! reader may be told to fail at a chunk. Everything that happens is logged in order, and a test
//! waits for a state of that log instead of sleeping.
//!
//! `externalWriterJob` reads the numbers `1..=items` (checkpoint `{"next": n}`) and "stores" each
//! chunk in an [`ExternalStore`]. A chunk is named by its first item: with chunks of 5, chunk 3
//! is `11`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batch_common::Transient;
use batch_common::job::{Job, JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_common::params::JobParameters;
use batch_common::step::{
    ChunkStep, ExternalWriter as StepExternalWriter, ItemReader, PassThrough, ReadScope, Step,
    WriteOutcome,
};
use tokio::sync::{Notify, Semaphore};

/// The job's name.
pub const EXTERNAL_JOB: &str = "externalWriterJob";

/// The step's name.
pub const EXTERNAL_STEP: &str = "externalStep";

/// Its descriptor.
pub const EXTERNAL: JobDescriptor = JobDescriptor {
    name: EXTERNAL_JOB,
    description: "stores the numbers 1..=items in a scripted external store (pipeline tests)",
    steps: &[EXTERNAL_STEP],
    parameters: &[
        ParameterSpec {
            name: "run",
            kind: ParamKind::Text,
            identifying: true,
            description: "instance id",
            default: ParamDefault::Value("default"),
        },
        ParameterSpec {
            name: "items",
            kind: ParamKind::Count,
            identifying: false,
            description: "how many numbers (default 50)",
            default: ParamDefault::None,
        },
    ],
};

/// What one write attempt of a chunk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Stores the chunk and succeeds.
    Ok,
    /// Fails with a transient error, storing nothing.
    Transient,
    /// Fails for good, storing nothing.
    Permanent,
    /// Waits until released, then stores the chunk and succeeds.
    Held,
    /// Waits until released, then fails for good, storing nothing.
    HeldThenPermanent,
    /// Stores the chunk, then waits until released before it reports success: the chunk is in
    /// the store but its write has not returned.
    StoredThenHeld,
}

/// Everything that happened, in order.
#[derive(Debug, Clone, Default)]
pub struct StoreLog {
    /// Every item stored, once per time it was stored (a replayed chunk's items appear twice).
    pub stored: Vec<i64>,
    /// Write attempts started: (chunk, attempt number from 1).
    pub started: Vec<(i64, u32)>,
    /// Write attempts that returned: (chunk, attempt number, succeeded).
    pub finished: Vec<(i64, u32, bool)>,
    /// Chunks read (their first items), including a read that failed.
    pub reads: Vec<i64>,
}

impl StoreLog {
    /// How often `item` was stored.
    pub fn times_stored(&self, item: i64) -> usize {
        self.stored.iter().filter(|&&i| i == item).count()
    }

    /// Whether an attempt of `chunk` has started.
    pub fn started(&self, chunk: i64) -> bool {
        self.started.iter().any(|(c, _)| *c == chunk)
    }

    /// Whether attempt `attempt` of `chunk` has started.
    pub fn attempt_started(&self, chunk: i64, attempt: u32) -> bool {
        self.started.contains(&(chunk, attempt))
    }

    /// Whether a write of `chunk` has succeeded.
    pub fn written(&self, chunk: i64) -> bool {
        self.finished.iter().any(|(c, _, ok)| *c == chunk && *ok)
    }

    /// The attempts made for `chunk`.
    pub fn attempts(&self, chunk: i64) -> usize {
        self.started.iter().filter(|(c, _)| *c == chunk).count()
    }

    /// Whether the chunk starting at `chunk` was read.
    pub fn read(&self, chunk: i64) -> bool {
        self.reads.contains(&chunk)
    }
}

#[derive(Default)]
struct State {
    log: StoreLog,
    scripts: HashMap<i64, VecDeque<Attempt>>,
    attempts: HashMap<i64, u32>,
    gates: HashMap<i64, Arc<Semaphore>>,
    read_fault: Option<i64>,
}

/// The external store, the faults to inject and the log; shared by the test, the reader and the
/// writer.
#[derive(Default)]
pub struct ExternalStore {
    state: Mutex<State>,
    changed: Notify,
}

impl std::fmt::Debug for ExternalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalStore")
            .field("log", &self.log())
            .finish_non_exhaustive()
    }
}

/// How long [`ExternalStore::wait_until`] waits before it fails the test: generous, for a
/// loaded machine; a state that is reached at all is reached in milliseconds.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

impl ExternalStore {
    /// An empty store without faults.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next write attempts of `chunk` do these, in order; later ones succeed.
    pub fn script(&self, chunk: i64, attempts: impl IntoIterator<Item = Attempt>) {
        self.lock()
            .scripts
            .entry(chunk)
            .or_default()
            .extend(attempts);
    }

    /// Lets one held attempt of `chunk` go on (now, or when it comes to the gate).
    pub fn release(&self, chunk: i64) {
        self.gate(chunk).add_permits(1);
    }

    /// Reading the chunk that starts at `chunk` fails for good, every time, until
    /// [`clear_faults`](Self::clear_faults).
    pub fn fail_read_at(&self, chunk: i64) {
        self.lock().read_fault = Some(chunk);
    }

    /// Forgets the scripts and the read fault: from now on everything succeeds.
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.scripts.clear();
        state.read_fault = None;
    }

    /// A copy of the log.
    pub fn log(&self) -> StoreLog {
        self.lock().log.clone()
    }

    /// Waits until `done(log)` holds; panics naming `what` (and showing the log) after
    /// [`WAIT_LIMIT`].
    pub async fn wait_until(&self, what: &str, done: impl Fn(&StoreLog) -> bool) -> StoreLog {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                {
                    let state = self.lock();
                    if done(&state.log) {
                        return state.log.clone();
                    }
                }
                changed.await;
            }
        };
        match tokio::time::timeout(WAIT_LIMIT, wait).await {
            Ok(log) => log,
            Err(_) => panic!(
                "waited {WAIT_LIMIT:?} for {what}; the log: {:?}",
                self.log()
            ),
        }
    }

    fn gate(&self, chunk: i64) -> Arc<Semaphore> {
        self.lock()
            .gates
            .entry(chunk)
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_waiters();
    }

    async fn pass_gate(&self, chunk: i64) {
        self.gate(chunk)
            .acquire()
            .await
            .expect("the gate is never closed")
            .forget();
    }
}

/// Reads `1..=items`; checkpoint `{"next": n}`.
pub struct Numbers {
    items: i64,
    next: i64,
    store: Arc<ExternalStore>,
}

impl Numbers {
    /// A reader of `1..=items` that logs its reads in `store` and obeys its read fault.
    pub fn new(items: i64, store: Arc<ExternalStore>) -> Self {
        Numbers {
            items,
            next: 1,
            store,
        }
    }
}

#[async_trait]
impl ItemReader for Numbers {
    type Item = i64;
    type Checkpoint = crate::jobs::NextNumber;

    async fn open(
        &mut self,
        checkpoint: Option<crate::jobs::NextNumber>,
        _scope: &ReadScope,
    ) -> anyhow::Result<()> {
        self.next = checkpoint.map_or(1, |c| c.next);
        Ok(())
    }

    async fn read_chunk(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(Vec<i64>, crate::jobs::NextNumber)> {
        let chunk: Vec<i64> = (self.next..=self.items).take(max).collect();
        if let Some(&first) = chunk.first() {
            let mut fault = false;
            self.store.update(|s| {
                s.log.reads.push(first);
                fault = s.read_fault == Some(first);
            });
            if fault {
                anyhow::bail!("injected read failure at item {first}");
            }
            self.next = first + chunk.len() as i64;
        }
        Ok((chunk, crate::jobs::NextNumber { next: self.next }))
    }

    async fn total(&mut self, _scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.items.max(0) as u64))
    }
}

/// Stores chunks in the [`ExternalStore`], as its script says. Idempotent by construction: the
/// store is a log, and the test decides what a replay means.
pub struct ExternalWriter {
    store: Arc<ExternalStore>,
}

impl ExternalWriter {
    /// A writer into `store`.
    pub fn new(store: Arc<ExternalStore>) -> Self {
        ExternalWriter { store }
    }
}

#[async_trait]
impl StepExternalWriter<i64> for ExternalWriter {
    async fn write(&self, items: &[i64]) -> anyhow::Result<WriteOutcome> {
        let chunk = *items.first().expect("chunks are never empty");
        let mut action = Attempt::Ok;
        let mut attempt = 0;
        self.store.update(|s| {
            let n = s.attempts.entry(chunk).or_default();
            *n += 1;
            attempt = *n;
            action = s
                .scripts
                .get_mut(&chunk)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Attempt::Ok);
            s.log.started.push((chunk, attempt));
        });
        if matches!(action, Attempt::Held | Attempt::HeldThenPermanent) {
            self.store.pass_gate(chunk).await;
        }
        let result = match action {
            Attempt::Ok | Attempt::Held | Attempt::StoredThenHeld => {
                self.store.update(|s| s.log.stored.extend_from_slice(items));
                if action == Attempt::StoredThenHeld {
                    self.store.pass_gate(chunk).await;
                }
                Ok(())
            }
            Attempt::Transient => Err(Transient::new(anyhow::anyhow!(
                "injected transient failure writing chunk {chunk} (attempt {attempt})"
            ))
            .into()),
            Attempt::Permanent | Attempt::HeldThenPermanent => Err(anyhow::anyhow!(
                "injected permanent failure writing chunk {chunk} (attempt {attempt})"
            )),
        };
        self.store
            .update(|s| s.log.finished.push((chunk, attempt, result.is_ok())));
        result.map(|()| WriteOutcome {
            written: items.len(),
            counters: BTreeMap::from([("stored".to_owned(), items.len() as i64)]),
            ..WriteOutcome::default()
        })
    }
}

/// The job: one chunk step from [`Numbers`] to [`ExternalWriter`] over the shared `store`.
pub struct ExternalJob {
    /// The store, its faults and its log.
    pub store: Arc<ExternalStore>,
}

impl Job for ExternalJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &EXTERNAL
    }

    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        let items = i64::try_from(params.count_or("items", 50)?)?;
        Ok(vec![Arc::new(ChunkStep::external(
            EXTERNAL_STEP,
            Numbers::new(items, self.store.clone()),
            PassThrough,
            ExternalWriter::new(self.store.clone()),
        ))])
    }
}
