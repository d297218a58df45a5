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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
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
local out = {created, corrected, unchanged, newer}
for _, k in ipairs(drift) do out[#out + 1] = k end
return out
"#;

/// At most this many keys per script call: a larger chunk is split into several calls, all in
/// flight at once on the multiplexed connection, so Redis runs one while the next is encoded and
/// sent.
const KEYS_PER_CALL: usize = 1000;

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

    async fn total(&mut self, _scope: &ReadScope) -> anyhow::Result<Option<u64>> {
        let mut conn = self.db.get().await?;
        Ok(Some(PointBalance::count(&mut conn).await?.max(0) as u64))
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

#[cfg(test)]
mod tests {
    use super::*;

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
