//! **syncPointBalanceStep**: make the Redis balance cache agree with `point_balance`.
//!
//! Reader: keyset pages over `point_balance` by id (`WHERE id > :last ORDER BY id LIMIT :chunk`).
//! Writer: one Lua script call per chunk (per hash slot on a cluster; at most 1000 keys per call,
//! the calls of a chunk all in flight at once) that decides per key,
//! atomically, against what is cached:
//!
//! | cached entry                                | action                      | counter         |
//! |---------------------------------------------|-----------------------------|-----------------|
//! | missing (or without a version)              | write it                    | `created`       |
//! | older version, or same version but another balance | overwrite (the DB wins) | `corrected`     |
//! | newer version (the online service wrote it after our read) | keep it      | `skipped_newer` |
//! | same version and balance                    | keep it                     | `unchanged`     |
//!
//! Every key's TTL is set to `[point] cache_ttl` on every sync. In verify mode the script only
//! counts (and names a few drifted users); it writes nothing. The script is idempotent, so a
//! chunk replayed after a crash does no harm.
//!
//! **Cache loss.** A checkpoint only means something while the keys written before it are still
//! there. A Redis that restarts without persistence, or a replica promoted before it received
//! the last writes, loses them while the checkpoints stay. So the step ([`CacheSyncStep`])
//! records the cache's identity (every master's `run_id`, see
//! [`server_identity`](batch_common::redis::server_identity)) when it starts and in every
//! checkpoint; every script call returns the `run_id` of the server that ran it, and one more
//! check runs before the step completes. When the cache is not the one written to before, the
//! step logs why, counts `cache_resets` and syncs again from the first balance (the script keeps
//! newer cached versions, so this is safe); a checkpoint whose cache is gone is not resumed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batch_common::redis::{RedisConn, SINGLE_NODE, classify, server_identity};
use batch_common::step::{
    ChunkStep, External, ExternalWriter, ItemReader, KeyRange, KeysetCheckpoint, KeysetReader,
    PassThrough, ReadScope, Step, StepContext, StepOutcome, WriteOutcome,
};
use core_domain::models::PointBalance;
use core_domain::{Database, DbConnection, KeysetQuery};
use diesel::QueryResult;
use futures_util::{StreamExt as _, TryStreamExt as _};
use redis::cluster_routing::Slot;

/// The step's name.
pub const STEP_NAME: &str = "syncPointBalanceStep";

/// Counter names of the script's outcomes, in report order.
pub const COUNTERS: [&str; 4] = ["created", "corrected", "unchanged", "skipped_newer"];

/// The counter of the times the step started over because the cache it had written to was gone.
pub const CACHE_RESETS: &str = "cache_resets";

/// At most this many starts-over per step execution; one more cache loss fails the step (a
/// Redis restarting in a loop must not keep the sync busy forever).
pub const MAX_CACHE_RESETS: u32 = 3;

/// KEYS = balance keys; ARGV = ttl_ms, verify (0/1), then balance, version, updatedAt per key.
/// Returns {created, corrected, unchanged, skipped_newer, run_id, drifted key...} (drifted keys
/// only in verify mode, at most 10; `run_id` of the server that ran the call, `''` if it reports
/// none, so every reply says which cache the keys went to).
///
/// Each `redis.call` costs Redis far more than the command's own work, so the script makes as few
/// as it can: a cold chunk (its first key missing, and one `EXISTS` per 1000 keys says all are)
/// takes `HSET` + `PEXPIREAT` per key; otherwise a key takes `HMGET` + `PEXPIREAT`, plus `HSET`
/// only when it must be written. The TTL is refreshed on every key (`PEXPIREAT` with the deadline
/// computed once from the server's `TIME`, which spares Redis rewriting each `PEXPIRE` into
/// `PEXPIREAT`). An unchanged key is recognised by comparing strings, without number parsing.
const SYNC_SCRIPT: &str = r#"
local call = redis.call
local n = #KEYS
local verify = ARGV[2] == '1'
local created, corrected, unchanged, newer = 0, 0, 0, 0
local drift = {}
local at
if not verify then
  local t = call('TIME')
  at = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]))
end
local function all_missing()
  if n == 0 or call('EXISTS', KEYS[1]) == 1 then return false end
  for s = 2, n, 1000 do
    if call('EXISTS', unpack(KEYS, s, math.min(n, s + 999))) > 0 then return false end
  end
  return true
end
if all_missing() then
  created = n
  if verify then
    for i = 1, math.min(n, 10) do drift[i] = KEYS[i] end
  else
    for i = 1, n do
      local key, base = KEYS[i], 3 * i
      call('HSET', key, 'balance', ARGV[base], 'version', ARGV[base + 1], 'updatedAt', ARGV[base + 2])
      call('PEXPIREAT', key, at)
    end
  end
else
  for i = 1, n do
    local key, base = KEYS[i], 3 * i
    local balance, version = ARGV[base], ARGV[base + 1]
    local cur = call('HMGET', key, 'version', 'balance')
    local write = false
    if cur[1] == version and cur[2] == balance then
      unchanged = unchanged + 1
    else
      local cached = tonumber(cur[1])
      if cached == nil then
        created = created + 1
        write = true
      elseif cached > tonumber(version) then
        newer = newer + 1
      elseif cached < tonumber(version) or cur[2] ~= balance then
        corrected = corrected + 1
        write = true
      else
        unchanged = unchanged + 1
      end
    end
    if verify then
      if write and #drift < 10 then drift[#drift + 1] = key end
    else
      if write then
        call('HSET', key, 'balance', balance, 'version', version, 'updatedAt', ARGV[base + 2])
      end
      call('PEXPIREAT', key, at)
    end
  end
end
local out = {created, corrected, unchanged, newer, string.match(call('INFO', 'server'), 'run_id:(%x+)') or ''}
for _, k in ipairs(drift) do out[#out + 1] = k end
return out
"#;

/// At most this many keys per script call: a larger chunk is split into several calls, all in
/// flight at once on the multiplexed connection, so Redis runs one while the next is encoded and
/// sent.
const KEYS_PER_CALL: usize = 1000;

/// `point_balance` by id: the sync's keyset query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Balances;

#[async_trait]
impl KeysetQuery for Balances {
    type Row = PointBalance;

    fn key(row: &PointBalance) -> i64 {
        row.id
    }

    async fn page_after(
        &self,
        conn: &mut DbConnection,
        after: i64,
        limit: i64,
    ) -> QueryResult<Vec<PointBalance>> {
        PointBalance::page_after(conn, after, limit).await
    }

    async fn page_between(
        &self,
        conn: &mut DbConnection,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> QueryResult<Vec<PointBalance>> {
        PointBalance::page_between(conn, after, upto, limit).await
    }

    async fn count(&self, conn: &mut DbConnection) -> QueryResult<Option<i64>> {
        PointBalance::count(conn).await.map(Some)
    }
}

/// Reads `point_balance` in id order, one keyset page per chunk (batch-common's
/// [`KeysetReader`] over [`Balances`]); checkpoint `{"last_id": n}`, plus
/// `"cache": {node: run_id}` (the cache the chunks went to) with a [`CacheGuard`].
pub struct BalanceReader {
    keyset: KeysetReader<Balances>,
    guard: Option<Arc<CacheGuard>>,
}

impl BalanceReader {
    /// A reader over `db`.
    pub fn new(db: Database) -> Self {
        BalanceReader {
            keyset: KeysetReader::new(db, Balances),
            guard: None,
        }
    }

    /// Reads only the balances with ids in `range` (one partition of the sync).
    pub fn in_range(mut self, range: KeyRange) -> Self {
        self.keyset = self.keyset.in_range(range);
        self
    }

    /// Stores `guard`'s cache identity in every checkpoint.
    pub fn with_guard(mut self, guard: Arc<CacheGuard>) -> Self {
        self.guard = Some(guard);
        self
    }
}

/// The sync's checkpoint: the last balance id synced, and the cache it went to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalanceCheckpoint {
    /// Every balance up to this id is in the cache (0: none; a reset checkpoint has none).
    #[serde(default)]
    pub last_id: i64,
    /// The cache identity (`{node: run_id}`) the chunks were written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheIdentity>,
}

#[async_trait]
impl ItemReader for BalanceReader {
    type Item = PointBalance;
    type Checkpoint = BalanceCheckpoint;

    async fn open(
        &mut self,
        checkpoint: Option<BalanceCheckpoint>,
        scope: &ReadScope,
    ) -> anyhow::Result<()> {
        let at = checkpoint.map(|c| KeysetCheckpoint { last_id: c.last_id });
        ItemReader::open(&mut self.keyset, at, scope).await
    }

    async fn read_chunk(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(Vec<PointBalance>, BalanceCheckpoint)> {
        let (page, at) = self.keyset.read_chunk(max).await?;
        let checkpoint = BalanceCheckpoint {
            last_id: at.last_id,
            cache: self.guard.as_ref().map(|g| g.identity()),
        };
        Ok((page, checkpoint))
    }

    async fn total(&mut self, scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        ItemReader::total(&mut self.keyset, scope).await
    }
}

/// Writes balances to Redis through [`SYNC_SCRIPT`].
pub struct CacheWriter {
    redis: RedisConn,
    script: Arc<redis::Script>,
    key_prefix: String,
    ttl: Duration,
    verify: bool,
    guard: Option<Arc<CacheGuard>>,
}

impl CacheWriter {
    /// A writer with keys `{key_prefix}{userId}` and the given TTL; `verify` only counts.
    pub fn new(redis: RedisConn, key_prefix: &str, ttl: Duration, verify: bool) -> Self {
        CacheWriter {
            redis,
            script: Arc::new(redis::Script::new(SYNC_SCRIPT)),
            key_prefix: key_prefix.to_owned(),
            ttl,
            verify,
            guard: None,
        }
    }

    /// Checks every script reply's `run_id` against `guard`: a chunk that went to another cache
    /// than the earlier ones fails with [`CacheLost`].
    pub fn with_guard(mut self, guard: Arc<CacheGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// After a chunk: fails with [`CacheLost`] if a reply came from a server that is not part of
    /// the recorded cache and the recorded cache is not intact (a cluster that only gained
    /// masters, e.g. by resharding, is adopted as it is).
    async fn check_cache(&self, run_ids: BTreeSet<String>) -> anyhow::Result<()> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let unknown = guard.unknown(&run_ids)?;
        if unknown.is_empty() {
            return Ok(());
        }
        let was = guard.identity();
        let now = if self.redis.is_cluster() {
            server_identity(&mut self.redis.clone())
                .await
                .map_err(classify)?
        } else {
            let run_id = unknown.into_iter().next().unwrap_or_default();
            CacheIdentity::from([(SINGLE_NODE.to_owned(), run_id)])
        };
        let known: BTreeSet<&String> = now.values().collect();
        if same_cache(&was, &now) && run_ids.iter().all(|r| known.contains(r)) {
            guard.adopt(&was, now)?;
            return Ok(());
        }
        let lost = CacheLost { was, now };
        guard.mark_lost(lost.clone());
        Err(lost.into())
    }

    /// The cache key of a user.
    pub fn key(&self, user_id: i64) -> String {
        format!("{}{user_id}", self.key_prefix)
    }

    /// The `EVALSHA` command for some balances, built directly (one buffer, no per-argument
    /// allocations) and owned, so calls can run concurrently.
    fn invocation(&self, items: &[&PointBalance]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(items.len());
        let mut buf = String::with_capacity(self.key_prefix.len() + 32);
        for b in items {
            buf.clear();
            buf.push_str(&self.key_prefix);
            let _ = write!(buf, "{}", b.user_id);
            cmd.arg(buf.as_str());
        }
        cmd.arg(self.ttl.as_millis() as u64)
            .arg(if self.verify { "1" } else { "0" });
        for b in items {
            buf.clear();
            write_rfc3339_micros(&mut buf, b.updated_at);
            cmd.arg(b.balance).arg(b.version).arg(buf.as_str());
        }
        cmd
    }
}

/// `t` as RFC 3339 UTC with microseconds (`2026-11-20T10:00:00.000000Z`), exactly as
/// `to_rfc3339_opts(SecondsFormat::Micros, true)` writes it, without its allocations.
fn write_rfc3339_micros(out: &mut String, t: chrono::NaiveDateTime) {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        out.push_str(
            &t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        return;
    }
    // A leap second (nanosecond ≥ 1e9) is written as second 60 by chrono too.
    let nanos = t.nanosecond();
    let (sec, nanos) = if nanos >= 1_000_000_000 {
        (t.second() + 1, nanos - 1_000_000_000)
    } else {
        (t.second(), nanos)
    };
    let _ = write!(
        out,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{sec:02}.{:06}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        nanos / 1000
    );
}

/// Runs one script call; loads the script on `NOSCRIPT` (a restarted or new node) and retries.
async fn run_script(
    script: Arc<redis::Script>,
    mut conn: RedisConn,
    cmd: redis::Cmd,
) -> anyhow::Result<Vec<redis::Value>> {
    match cmd.query_async(&mut conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(&mut conn).await.map_err(classify)?;
            cmd.query_async(&mut conn).await.map_err(classify)
        }
        r => r.map_err(classify),
    }
}

fn to_i64(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(n) => *n,
        _ => 0,
    }
}

#[async_trait]
impl ExternalWriter<PointBalance> for CacheWriter {
    async fn write(&self, items: &[PointBalance]) -> anyhow::Result<WriteOutcome> {
        if let Some(guard) = &self.guard {
            // Another chunk found the cache gone: the step starts over, this one is not needed.
            guard.unknown(&BTreeSet::new())?;
        }
        // A script may only touch keys of one hash slot on a cluster: one call per slot there,
        // run concurrently on the multiplexed connection. A single node takes the chunk at once.
        let groups: Vec<Vec<&PointBalance>> = if self.redis.is_cluster() {
            let mut by_slot: HashMap<Slot, Vec<&PointBalance>> = HashMap::new();
            for b in items {
                by_slot
                    .entry(Slot::for_key(self.key(b.user_id)))
                    .or_default()
                    .push(b);
            }
            by_slot.into_values().collect()
        } else {
            vec![items.iter().collect()]
        };
        let calls: Vec<_> = groups
            .iter()
            .flat_map(|g| g.chunks(KEYS_PER_CALL))
            // Encoded when first polled, so the first call is on the wire before the last is built.
            .map(|g| async move {
                run_script(self.script.clone(), self.redis.clone(), self.invocation(g)).await
            })
            .collect();
        let replies: Vec<Vec<redis::Value>> = futures_util::stream::iter(calls)
            .buffer_unordered(64)
            .try_collect()
            .await?;
        let mut totals = [0i64; 4];
        let mut drifted = Vec::new();
        let mut run_ids = BTreeSet::new();
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        for reply in &replies {
            for (i, total) in totals.iter_mut().enumerate() {
                *total += reply.get(i).map_or(0, to_i64);
            }
            run_ids.insert(reply.get(4).and_then(text).unwrap_or_default());
            drifted.extend(reply.iter().skip(5).filter_map(text));
        }
        self.check_cache(run_ids).await?;
        if self.verify && !drifted.is_empty() {
            drifted.truncate(10);
            tracing::warn!(keys = ?drifted, "cache drift (verify mode, nothing written)");
        }
        let counters: BTreeMap<String, i64> = COUNTERS
            .iter()
            .zip(totals)
            .map(|(name, n)| ((*name).to_owned(), n))
            .collect();
        Ok(WriteOutcome {
            written: if self.verify { 0 } else { items.len() },
            counters,
            failures: Vec::new(),
            resolved_keys: Vec::new(),
        })
    }
}

/// The identity of a cache: every master's address ([`SINGLE_NODE`] on a single node) and its
/// `run_id`.
pub type CacheIdentity = BTreeMap<String, String>;

/// True if `now` still has every master of `was` with the same `run_id`, so nothing written to
/// `was` can have been lost by a restart or a failover. Masters that only joined (resharding
/// moves keys without losing them) do not matter.
pub fn same_cache(was: &CacheIdentity, now: &CacheIdentity) -> bool {
    was.iter().all(|(node, id)| now.get(node) == Some(id))
}

fn identity_json(identity: &CacheIdentity) -> serde_json::Value {
    serde_json::to_value(identity).unwrap_or(serde_json::Value::Null)
}

/// The cache identity stored in a checkpoint (`None` if it has none).
fn checkpoint_identity(checkpoint: &serde_json::Value) -> Option<CacheIdentity> {
    serde_json::from_value(checkpoint.get("cache")?.clone()).ok()
}

/// The cache the sync wrote to is not the cache it writes to now: the keys written before may be
/// gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLost {
    /// The cache written to so far.
    pub was: CacheIdentity,
    /// The cache now.
    pub now: CacheIdentity,
}

impl CacheLost {
    /// What changed, per node (`node: run_id a → b`, `... no longer a master`, `new master ...`).
    pub fn changes(&self) -> String {
        let short = |id: &str| -> String {
            if id.is_empty() {
                "(none)".to_owned()
            } else {
                id.chars().take(12).collect()
            }
        };
        let mut out = Vec::new();
        for (node, id) in &self.was {
            match self.now.get(node) {
                Some(now) if now == id => {}
                Some(now) => out.push(format!(
                    "{node}: run_id {} -> {} (restarted or replaced)",
                    short(id),
                    short(now)
                )),
                None => out.push(format!(
                    "{node}: run_id {} is no longer a master (failed over or gone)",
                    short(id)
                )),
            }
        }
        for (node, id) in &self.now {
            if !self.was.contains_key(node) {
                out.push(format!("{node}: new master, run_id {}", short(id)));
            }
        }
        out.join("; ")
    }
}

impl std::fmt::Display for CacheLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the Redis cache is not the one the sync wrote to: {}",
            self.changes()
        )
    }
}

impl std::error::Error for CacheLost {}

/// The cache a sync is writing to, shared by its step, reader and writer.
#[derive(Debug, Default)]
pub struct CacheGuard {
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    identity: CacheIdentity,
    lost: Option<CacheLost>,
}

impl CacheGuard {
    fn state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts writing to the cache `identity`.
    fn begin(&self, identity: CacheIdentity) {
        let mut s = self.state();
        s.identity = identity;
        s.lost = None;
    }

    /// The cache written to.
    pub fn identity(&self) -> CacheIdentity {
        self.state().identity.clone()
    }

    /// The `run_ids` that are not the recorded cache's; [`CacheLost`] once a loss was found.
    fn unknown(&self, run_ids: &BTreeSet<String>) -> Result<Vec<String>, CacheLost> {
        let s = self.state();
        if let Some(lost) = &s.lost {
            return Err(lost.clone());
        }
        let known: BTreeSet<&String> = s.identity.values().collect();
        Ok(run_ids
            .iter()
            .filter(|r| !known.contains(r))
            .cloned()
            .collect())
    }

    /// Takes `now` (a superset of `was`) as the cache, unless a loss was found meanwhile.
    fn adopt(&self, was: &CacheIdentity, now: CacheIdentity) -> Result<(), CacheLost> {
        let mut s = self.state();
        if let Some(lost) = &s.lost {
            return Err(lost.clone());
        }
        if same_cache(&s.identity, &now) {
            tracing::info!(step = STEP_NAME, was = ?was, now = ?now, "the Redis cluster gained masters; the keys written so far are intact");
            s.identity = now;
        }
        Ok(())
    }

    fn mark_lost(&self, lost: CacheLost) {
        let mut s = self.state();
        if s.lost.is_none() {
            s.lost = Some(lost);
        }
    }
}

/// **syncPointBalanceStep**: the chunk step (reader → script writer) that notices a lost cache
/// and starts over (see the module docs and the crate README's "Cache loss").
pub struct CacheSyncStep {
    inner: ChunkStep<BalanceReader, PassThrough, External<CacheWriter>, PointBalance>,
    redis: RedisConn,
    guard: Arc<CacheGuard>,
    verify: bool,
    max_resets: u32,
}

impl CacheSyncStep {
    /// The step over `reader` and `writer` (which it ties to one [`CacheGuard`]); `chunk_size`
    /// overrides `[batch] chunk_size`.
    pub fn new(
        reader: BalanceReader,
        writer: CacheWriter,
        chunk_size: Option<std::num::NonZeroUsize>,
    ) -> Self {
        let guard = Arc::new(CacheGuard::default());
        let redis = writer.redis.clone();
        let verify = writer.verify;
        let inner = ChunkStep::external(
            STEP_NAME,
            reader.with_guard(guard.clone()),
            PassThrough,
            writer.with_guard(guard.clone()),
        )
        .with_chunk_size(chunk_size);
        CacheSyncStep {
            inner,
            redis,
            guard,
            verify,
            max_resets: MAX_CACHE_RESETS,
        }
    }

    /// At most `n` starts-over per step execution (default [`MAX_CACHE_RESETS`]).
    pub fn with_max_resets(mut self, n: u32) -> Self {
        self.max_resets = n;
        self
    }

    /// The cache's identity now, retrying transient errors as a chunk would.
    async fn identity(&self, ctx: &StepContext) -> anyhow::Result<CacheIdentity> {
        let what = "reading the Redis identity (INFO server)";
        let done = ctx
            .settings
            .retry
            .run(ctx.clock.as_ref(), STEP_NAME, what, async |_| {
                server_identity(&mut self.redis.clone())
                    .await
                    .map_err(classify)
            })
            .await;
        done.result.map_err(|e| e.context(what))
    }

    /// Starts the sync over on the cache `now`: logs `why`, counts it, forgets the checkpoint
    /// (in verify mode the drift counts too: they described a cache that is gone) and saves that.
    async fn start_over(&self, ctx: &mut StepContext, why: &str, now: &CacheIdentity) {
        ctx.progress.add_counter(CACHE_RESETS, 1);
        let resets = ctx
            .progress
            .counts
            .counters
            .get(CACHE_RESETS)
            .copied()
            .unwrap_or(0);
        tracing::warn!(
            step = STEP_NAME,
            cache_resets = resets,
            verify = self.verify,
            "{why}: syncing again from the first balance"
        );
        if self.verify {
            for name in COUNTERS {
                ctx.progress.counts.counters.insert(name.to_owned(), 0);
            }
        }
        ctx.progress.context = serde_json::json!({ "cache": identity_json(now) });
        if let Err(e) = ctx.save_progress().await {
            // The old checkpoint names the lost cache, so a restart starts over all the same.
            tracing::warn!(step = STEP_NAME, error = %format!("{e:#}"), "could not save the reset checkpoint");
        }
    }
}

#[async_trait]
impl Step for CacheSyncStep {
    fn name(&self) -> &str {
        STEP_NAME
    }

    async fn execute(&self, ctx: &mut StepContext) -> anyhow::Result<StepOutcome> {
        if !ctx.progress.counts.counters.contains_key(CACHE_RESETS) {
            ctx.progress.add_counter(CACHE_RESETS, 0);
        }
        let mut now = self.identity(ctx).await?;
        if now.values().any(String::is_empty) {
            tracing::warn!(
                step = STEP_NAME,
                "Redis reports no run_id (INFO server): a cache lost by a restart or failover cannot be noticed"
            );
        }
        // A checkpoint is only worth resuming from if the cache it was written to is still there.
        let resumes = ctx
            .progress
            .context
            .get("last_id")
            .and_then(serde_json::Value::as_i64)
            .is_some_and(|id| id > 0);
        if resumes {
            let why = match checkpoint_identity(&ctx.progress.context) {
                Some(was) if same_cache(&was, &now) => None,
                Some(was) => Some(format!(
                    "{}; the checkpoint of the previous execution is not resumed",
                    CacheLost {
                        was,
                        now: now.clone()
                    }
                )),
                None => Some(
                    "the checkpoint does not name the Redis cache it was written to (an older version wrote it), so it is not resumed"
                        .to_owned(),
                ),
            };
            if let Some(why) = why {
                self.start_over(ctx, &why, &now).await;
            }
        }
        let mut resets = 0u32;
        loop {
            self.guard.begin(now.clone());
            let since = (
                ctx.progress.counts.commit_count,
                ctx.progress.counts.read_count,
            );
            let lost = match self.inner.execute(ctx).await {
                Ok(StepOutcome::Completed) => {
                    // The last chunks may have gone to a cache that restarted right after.
                    let current = self.identity(ctx).await?;
                    let was = self.guard.identity();
                    if same_cache(&was, &current) {
                        return Ok(StepOutcome::Completed);
                    }
                    CacheLost { was, now: current }
                }
                Ok(StepOutcome::Stopped) => return Ok(StepOutcome::Stopped),
                Err(e) => match e.downcast_ref::<CacheLost>() {
                    Some(lost) => lost.clone(),
                    None => return Err(e),
                },
            };
            resets += 1;
            if resets > self.max_resets {
                anyhow::bail!(
                    "{lost}; the cache was lost {resets} times in this execution, more than the {} re-syncs allowed (is Redis restarting in a loop?)",
                    self.max_resets
                );
            }
            now = self.identity(ctx).await?;
            let why = format!(
                "{lost}; the {} chunks ({} balances) synced to it in this pass may be lost",
                ctx.progress.counts.commit_count - since.0,
                ctx.progress.counts.read_count - since.1
            );
            self.start_over(ctx, &why, &now).await;
            if ctx.cancel.is_cancelled() {
                return Ok(StepOutcome::Stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_cache_says_what_changed_per_node() {
        let id = |pairs: &[(&str, &str)]| -> CacheIdentity {
            pairs
                .iter()
                .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
                .collect()
        };
        let was = id(&[("a:1", "1111111111111111"), ("b:2", "22"), ("c:3", "33")]);
        // Gaining a master (resharding) loses nothing; losing or restarting one does.
        assert!(same_cache(
            &was,
            &id(&[
                ("a:1", "1111111111111111"),
                ("b:2", "22"),
                ("c:3", "33"),
                ("d:4", "44")
            ])
        ));
        let now = id(&[("a:1", "9999999999999999"), ("c:3", "33"), ("d:4", "44")]);
        assert!(!same_cache(&was, &now));
        let lost = CacheLost { was, now };
        assert_eq!(
            lost.changes(),
            "a:1: run_id 111111111111 -> 999999999999 (restarted or replaced); \
             b:2: run_id 22 is no longer a master (failed over or gone); d:4: new master, run_id 44"
        );
        assert!(
            lost.to_string()
                .starts_with("the Redis cache is not the one the sync wrote to: a:1")
        );
    }

    #[test]
    fn the_guard_knows_its_run_ids_until_a_loss() {
        let guard = CacheGuard::default();
        guard.begin(CacheIdentity::from([(
            SINGLE_NODE.to_owned(),
            "r1".to_owned(),
        )]));
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert!(guard.unknown(&ids(&["r1"])).unwrap().is_empty());
        assert_eq!(guard.unknown(&ids(&["r1", "r2"])).unwrap(), vec!["r2"]);
        let lost = CacheLost {
            was: guard.identity(),
            now: CacheIdentity::from([(SINGLE_NODE.to_owned(), "r2".to_owned())]),
        };
        guard.mark_lost(lost.clone());
        assert_eq!(guard.unknown(&ids(&["r1"])), Err(lost));
        guard.begin(CacheIdentity::from([(
            SINGLE_NODE.to_owned(),
            "r2".to_owned(),
        )]));
        assert!(guard.unknown(&ids(&["r2"])).unwrap().is_empty());
    }

    #[test]
    fn rfc3339_micros_matches_chrono() {
        let cases = [
            "2026-11-20T10:00:00.000000",
            "2026-11-20T23:59:59.999999",
            "0001-01-01T00:00:00.000001",
            "9999-12-31T23:59:59.123456",
            "2024-02-29T12:34:56.789000",
        ];
        for c in cases {
            let t: chrono::NaiveDateTime = c.parse().unwrap();
            let mut s = String::new();
            write_rfc3339_micros(&mut s, t);
            assert_eq!(
                s,
                t.and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
        let far = chrono::NaiveDate::from_ymd_opt(10000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let mut s = String::new();
        write_rfc3339_micros(&mut s, far);
        assert_eq!(
            s,
            far.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}
