//! **syncPointBalanceStep**: make the Redis balance cache agree with `point_balance`.
//!
//! Reader: keyset pages over `point_balance` by id (`WHERE id > :last ORDER BY id LIMIT :chunk`).
//! Writer: one Lua script call per chunk (per hash slot on a cluster) that decides per key,
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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batch_common::redis::{RedisConn, classify};
use batch_common::step::{ItemReader, ItemWriter, ReadScope, WriteOutcome};
use core_domain::models::PointBalance;
use core_domain::{Database, DbConnection};
use futures_util::{StreamExt as _, TryStreamExt as _};
use redis::cluster_routing::Slot;

/// The step's name.
pub const STEP_NAME: &str = "syncPointBalanceStep";

/// Counter names, in report order.
pub const COUNTERS: [&str; 4] = ["created", "corrected", "unchanged", "skipped_newer"];

/// KEYS = balance keys; ARGV = ttl_ms, verify (0/1), then balance, version, updatedAt per key.
/// Returns {created, corrected, unchanged, skipped_newer, drifted key...} (drifted keys only in
/// verify mode, at most 10).
const SYNC_SCRIPT: &str = r#"
local ttl = ARGV[1]
local verify = ARGV[2] == '1'
local created, corrected, unchanged, newer = 0, 0, 0, 0
local drift = {}
for i, key in ipairs(KEYS) do
  local base = 3 * i
  local balance, version, updated = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local cur = redis.call('HMGET', key, 'balance', 'version')
  local cached_version = tonumber(cur[2])
  local write = false
  if cached_version == nil then
    created = created + 1
    write = true
  elseif cached_version > tonumber(version) then
    newer = newer + 1
  elseif cached_version < tonumber(version) or cur[1] ~= balance then
    corrected = corrected + 1
    write = true
  else
    unchanged = unchanged + 1
  end
  if verify then
    if write and #drift < 10 then drift[#drift + 1] = key end
  else
    if write then
      redis.call('HSET', key, 'balance', balance, 'version', version, 'updatedAt', updated)
    end
    redis.call('PEXPIRE', key, ttl)
  end
end
local out = {created, corrected, unchanged, newer}
for _, k in ipairs(drift) do out[#out + 1] = k end
return out
"#;

/// Reads `point_balance` in id order, one keyset page per chunk; checkpoint `{"last_id": n}`.
pub struct BalanceReader {
    db: Database,
    last_id: i64,
}

impl BalanceReader {
    /// A reader over `db`.
    pub fn new(db: Database) -> Self {
        BalanceReader { db, last_id: 0 }
    }
}

#[async_trait]
impl ItemReader for BalanceReader {
    type Item = PointBalance;

    async fn open(
        &mut self,
        checkpoint: &serde_json::Value,
        _scope: &ReadScope,
    ) -> anyhow::Result<()> {
        // The sync records no item failures, so there is no failed-items scope to honour.
        self.last_id = checkpoint
            .get("last_id")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        Ok(())
    }

    async fn read_chunk(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(Vec<PointBalance>, serde_json::Value)> {
        let mut conn = self.db.get().await?;
        let conn: &mut DbConnection = &mut conn;
        let page = PointBalance::page_after(conn, self.last_id, max as i64).await?;
        if let Some(last) = page.last() {
            self.last_id = last.id;
        }
        Ok((page, serde_json::json!({ "last_id": self.last_id })))
    }
}

/// Writes balances to Redis through [`SYNC_SCRIPT`].
pub struct CacheWriter {
    redis: RedisConn,
    script: Arc<redis::Script>,
    key_prefix: String,
    ttl: Duration,
    verify: bool,
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
        }
    }

    /// The cache key of a user.
    pub fn key(&self, user_id: i64) -> String {
        format!("{}{user_id}", self.key_prefix)
    }

    /// The script's keys and arguments for some balances (owned, so calls can run concurrently).
    fn invocation(&self, items: &[&PointBalance]) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::with_capacity(items.len());
        let mut args = Vec::with_capacity(2 + 3 * items.len());
        args.push((self.ttl.as_millis() as u64).to_string());
        args.push(if self.verify { "1" } else { "0" }.to_owned());
        for b in items {
            keys.push(self.key(b.user_id));
            args.push(b.balance.to_string());
            args.push(b.version.to_string());
            args.push(
                b.updated_at
                    .and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            );
        }
        (keys, args)
    }
}

async fn run_script(
    script: Arc<redis::Script>,
    mut conn: RedisConn,
    keys: Vec<String>,
    args: Vec<String>,
) -> anyhow::Result<Vec<redis::Value>> {
    let mut invocation = script.prepare_invoke();
    for k in &keys {
        invocation.key(k);
    }
    for a in &args {
        invocation.arg(a);
    }
    invocation.invoke_async(&mut conn).await.map_err(classify)
}

fn to_i64(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(n) => *n,
        _ => 0,
    }
}

#[async_trait]
impl ItemWriter<PointBalance> for CacheWriter {
    fn writes_to_database(&self) -> bool {
        false
    }

    async fn write(
        &self,
        items: &[PointBalance],
        _tx: Option<&mut DbConnection>,
    ) -> anyhow::Result<WriteOutcome> {
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
            .map(|g| {
                let (keys, args) = self.invocation(g);
                run_script(self.script.clone(), self.redis.clone(), keys, args)
            })
            .collect();
        let replies: Vec<Vec<redis::Value>> = futures_util::stream::iter(calls)
            .buffer_unordered(64)
            .try_collect()
            .await?;
        let mut totals = [0i64; 4];
        let mut drifted = Vec::new();
        for reply in &replies {
            for (i, total) in totals.iter_mut().enumerate() {
                *total += reply.get(i).map_or(0, to_i64);
            }
            drifted.extend(reply.iter().skip(4).filter_map(|v| match v {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }));
        }
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
