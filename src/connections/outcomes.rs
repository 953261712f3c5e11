//! Per-call outcomes: every decision about a call — imported, skipped with its reason, pending,
//! failed — kept per connection, queryable newest first by outcome and reason. This is what an
//! operator reads to answer "my calls are not being imported", and what makes the worker
//! idempotent: a call recorded `imported` is never imported again.
//!
//! Keys, all of one connection in one Redis Cluster slot (the `{connection}` hash tag):
//! - `{p}:calls:{c}` hash: call id → the JSON [`OutcomeRecord`];
//! - `{p}:calls:{c}:all`, `…:outcome:{outcome}`, `…:reason:{reason}` sorted sets of call ids
//!   scored by decision time (ms), for listing and counting;
//! - `{p}:calls:{c}:pending` sorted set of pending call ids scored by when to look again;
//! - `{p}:calls:{c}:reasons` set of the reason codes recorded (to count and erase them).
//!
//! One Lua script moves a call between the indexes, so they never disagree with the hash. An
//! `imported` record is terminal: nothing overwrites it but another `imported` record.
//!
//! Records are not kept forever: once a decision is older than the import window plus
//! `retention.days_beyond_window`, [`OutcomeStore::compact`] (run by the reconciler after each
//! pass) removes it from the hash and every index, and a reason code whose index is left empty
//! leaves the reasons set. So a connection's keys grow with its recent calls, not its history.
//! A disconnected connection keeps its imports' records; it is noted in `{p}:outcomes:retired`
//! (a sorted set of connection ids scored by when their newest record was decided), and the
//! reconciler removes them once that is past the retention, then forgets the connection.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::ConnectionId;
use crate::aircall::{CallId, Direction};
use crate::queue::Trigger;

/// What became of a call.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Imported,
    Skipped,
    Pending,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Self::Imported, Self::Skipped, Self::Pending, Self::Failed];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imported => "imported",
            Self::Skipped => "skipped",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// Calls decided on one UTC day, by the outcome each has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCounts {
    /// Midnight UTC starting the day, Unix ms.
    pub start_ms: i64,
    pub imported: u64,
    pub skipped: u64,
    pub pending: u64,
    pub failed: u64,
}

/// Where an imported call's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCall {
    /// Storage key of the recording.
    pub recording_key: String,
    /// Storage key of the metadata document.
    pub metadata_key: String,
    /// Storage location of the recording (`file://…`, `s3://…`).
    pub location: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One decision about one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub call_id: CallId,
    pub outcome: Outcome,
    /// The reason code: a skip reason (`user_not_matched`…), a pending reason
    /// (`recording_not_ready`…) or a failure code (`invalid_credentials`…). None when imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the decision was made (Unix ms).
    pub decided_at_ms: i64,
    /// What brought the call in.
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Start of the call (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    /// For failures: the error, as the worker saw it (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For imported calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredCall>,
    /// For imported calls: the `call.imported` event was confirmed by RabbitMQ.
    #[serde(default)]
    pub announced: bool,
    /// For pending calls: when to look again (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_at_ms: Option<i64>,
    /// For pending calls: how many times the call was found pending.
    #[serde(default)]
    pub pending_checks: u32,
}

impl OutcomeRecord {
    /// A sentence a person understands, for the admin API and the console.
    pub fn explanation(&self) -> String {
        let agent = self.agent_email.as_deref().unwrap_or("(none)");
        match (self.outcome, self.reason.as_deref()) {
            (Outcome::Imported, _) => "The call and its recording were imported.".into(),
            (_, Some("outside_window")) => {
                "The call started before the import window (the last 14 days by default).".into()
            }
            (_, Some("no_user")) => "No Aircall user (agent) took part in the call.".into(),
            (_, Some("user_not_matched")) if self.agent_email.is_none() => {
                "The agent has no email address in Aircall, so it cannot match a paying user."
                    .into()
            }
            (_, Some("user_not_matched")) => {
                format!("The agent's email {agent} does not belong to a paying user.")
            }
            (_, Some("no_recording")) => {
                "The call has no recording in Aircall (recording off, too short, or not answered)."
                    .into()
            }
            (_, Some("recording_too_large")) => {
                "The recording is larger than the size limit (200 MB by default).".into()
            }
            (_, Some("first_import_cap")) => {
                "The first import takes only the 200 most recent eligible calls.".into()
            }
            (_, Some("recording_not_ready")) => {
                "The call was answered but Aircall has no recording yet; it is checked again until 24 hours after the call.".into()
            }
            (_, Some("not_finished")) => "The call is still in progress in Aircall.".into(),
            (_, Some("invalid_credentials")) => {
                "Aircall refused the connection's API credentials: check that the API ID and token are the ones shown at creation, not revoked, and created by an Aircall admin.".into()
            }
            (Outcome::Failed, Some(code)) => format!(
                "The import failed ({code}){}.",
                self.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            (outcome, reason) => format!(
                "{} ({}).",
                outcome.as_str(),
                reason.unwrap_or("no reason recorded")
            ),
        }
    }
}

/// Filter and page of a listing.
#[derive(Debug, Clone, Default)]
pub struct OutcomeQuery {
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    /// Only decisions made at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    pub limit: usize,
    /// Where the previous page ended ([`OutcomePage::next_cursor`]).
    pub cursor: Option<String>,
}

/// One page of outcomes, newest first.
#[derive(Debug, Clone)]
pub struct OutcomePage {
    pub items: Vec<OutcomeRecord>,
    pub next_cursor: Option<String>,
}

/// Writes a record and moves the call between indexes. KEYS: the hash, the `all` index, the
/// pending index, the call's lease. ARGV: index key prefix, call id, JSON, outcome, reason ('' for
/// none), score (ms), recheck time ('' for none), lease token ('' when not fenced).
/// Returns 1 when written; 0 when an `imported` record stands (nothing overwrites it but
/// another import); 2 when a `failed` record would hide a skip (a failure of one attempt does
/// not undo a decision; it does end a pending call's re-checks, which would only fail again
/// until someone replays the dead letter); -1 when the lease is no longer the writer's.
const RECORD_LUA: &str = r"
if ARGV[8] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[8] then
  return -1
end
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old then
  local o = cjson.decode(old)
  if o.outcome == 'imported' and ARGV[4] ~= 'imported' then
    return 0
  end
  if ARGV[4] == 'failed' and o.outcome == 'skipped' then
    return 2
  end
  redis.call('ZREM', ARGV[1] .. 'outcome:' .. o.outcome, ARGV[2])
  if type(o.reason) == 'string' then
    redis.call('ZREM', ARGV[1] .. 'reason:' .. o.reason, ARGV[2])
  end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
redis.call('ZADD', ARGV[1] .. 'outcome:' .. ARGV[4], ARGV[6], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('ZADD', ARGV[1] .. 'reason:' .. ARGV[5], ARGV[6], ARGV[2])
  redis.call('SADD', ARGV[1] .. 'reasons', ARGV[5])
end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
else
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
";

/// Erases up to ARGV[2] records that are not `imported`, with their indexes; once none is
/// left, the reason indexes and the pending index too. KEYS: the hash, the `all` index, the
/// pending index. ARGV: index key prefix, batch size. Returns how many records went, or -1-n
/// when n went and more are left (batches keep Redis free for everyone else meanwhile).
const FORGET_UNDECIDED_LUA: &str = r"
local batch = tonumber(ARGV[2])
local erased = 0
for _, outcome in ipairs({'skipped', 'pending', 'failed'}) do
  local index = ARGV[1] .. 'outcome:' .. outcome
  if erased < batch then
    for _, id in ipairs(redis.call('ZRANGE', index, 0, batch - erased - 1)) do
      redis.call('HDEL', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', index, id)
      erased = erased + 1
    end
  end
  if erased >= batch and redis.call('EXISTS', index) == 1 then
    return -1 - erased
  end
end
for _, reason in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'reasons')) do
  redis.call('DEL', ARGV[1] .. 'reason:' .. reason)
end
redis.call('DEL', ARGV[1] .. 'reasons', KEYS[3])
return erased
";

/// Records one [`FORGET_UNDECIDED_LUA`] call erases at most.
const FORGET_BATCH: usize = 1_000;

/// Erases up to ARGV[3] records decided before ARGV[2] (ms, exclusive), oldest first after the
/// ARGV[5] first (kept by earlier batches), from the hash and every index, except the records of
/// imported calls whose `call.imported` event is still owed (`announced` false: a replayed job
/// announces it only while the record says so), which stay; then, when any went, drops from the reasons set every code whose index
/// is empty now (left empty by this batch, or earlier by a record that moved to another reason),
/// and repacks each key it shrank to at most ARGV[4] entries that is still in Redis's large
/// encoding: Redis never turns a hash or sorted set back into its compact encoding and shrinks
/// its table only lazily, so without this a connection whose history went would keep the memory
/// of its peak. Repacking reads the few entries, deletes the key and writes them again.
/// KEYS: the hash, the `all` index, the pending index, the reasons set. ARGV: index key prefix,
/// cutoff (ms), batch size, repack limit, records to pass over. Returns how many records went
/// and how many were kept.
const COMPACT_LUA: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2], 'LIMIT', tonumber(ARGV[5]), tonumber(ARGV[3]))
if #ids == 0 then
  return {0, 0}
end
local removed, kept = 0, 0
local touched = {[KEYS[2]] = true}
local function unindex(key, id)
  if redis.call('ZREM', key, id) == 1 then
    touched[key] = true
  end
end
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[1], id)
  local ok, o = false, nil
  if json then
    ok, o = pcall(cjson.decode, json)
  end
  local readable = ok and type(o) == 'table' and type(o.outcome) == 'string'
  if readable and o.outcome == 'imported' and o.announced ~= true then
    kept = kept + 1
  else
    if readable then
      unindex(ARGV[1] .. 'outcome:' .. o.outcome, id)
      if type(o.reason) == 'string' then
        unindex(ARGV[1] .. 'reason:' .. o.reason, id)
      end
    else
      -- A record that cannot be read (or is missing) still leaves no index entry behind.
      for _, outcome in ipairs({'imported', 'skipped', 'pending', 'failed'}) do
        unindex(ARGV[1] .. 'outcome:' .. outcome, id)
      end
      for _, reason in ipairs(redis.call('SMEMBERS', KEYS[4])) do
        unindex(ARGV[1] .. 'reason:' .. reason, id)
      end
    end
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    unindex(KEYS[3], id)
    removed = removed + 1
  end
end
for _, reason in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('EXISTS', ARGV[1] .. 'reason:' .. reason) == 0 then
    redis.call('SREM', KEYS[4], reason)
  end
end
local limit = tonumber(ARGV[4])
local function large(key)
  local encoding = redis.call('OBJECT', 'ENCODING', key)
  return encoding == 'hashtable' or encoding == 'skiplist'
end
local size = redis.call('HLEN', KEYS[1])
if size > 0 and size <= limit and large(KEYS[1]) then
  local fields = redis.call('HGETALL', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
end
for key in pairs(touched) do
  size = redis.call('ZCARD', key)
  if size > 0 and size <= limit and large(key) then
    local items = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local args = {}
    for i = 1, #items, 2 do
      args[#args + 1] = items[i + 1]
      args[#args + 1] = items[i]
    end
    redis.call('DEL', key)
    redis.call('ZADD', key, unpack(args))
  end
end
return {removed, kept}
";

/// What one batch of [`OutcomeStore::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Records erased.
    pub removed: u64,
    /// Records past the cutoff kept (imported, event still owed).
    pub kept: u64,
}

/// Keys [`COMPACT_LUA`] leaves with at most this many entries are repacked into Redis's compact
/// encoding (the default `zset-max-listpack-entries`; hashes allow more by default).
const REPACK_LIMIT: usize = 128;

/// What [`OutcomeStore::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Written,
    /// The call is imported already; the import stands.
    KeptImport,
    /// A failure was not written over a skip.
    KeptDecision,
    /// The write was fenced by a lease its writer no longer holds: nothing was written.
    LeaseLost,
}

/// The outcome records in Redis. Cheap to clone.
#[derive(Clone)]
pub struct OutcomeStore {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for OutcomeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl OutcomeStore {
    pub fn new(redis: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            redis,
            prefix: key_prefix.to_string(),
        }
    }

    fn base(&self, connection: &ConnectionId) -> String {
        format!("{}:calls:{{{connection}}}", self.prefix)
    }

    fn index(&self, connection: &ConnectionId, name: &str) -> String {
        format!("{}:{name}", self.base(connection))
    }

    /// Records `record` (see [`Recorded`] for what may stand in the way).
    pub async fn record(
        &self,
        connection: &ConnectionId,
        record: &OutcomeRecord,
    ) -> Result<Recorded, redis::RedisError> {
        self.record_fenced(connection, record, None).await
    }

    /// Records `record` only while the lease `(key, token)` is still the writer's.
    pub async fn record_fenced(
        &self,
        connection: &ConnectionId,
        record: &OutcomeRecord,
        lease: Option<(&str, &str)>,
    ) -> Result<Recorded, redis::RedisError> {
        let json = serde_json::to_string(record).unwrap_or_default();
        let (lease_key, token) = lease.unwrap_or(("", ""));
        let lease_key = if lease_key.is_empty() {
            self.index(connection, "lease:none")
        } else {
            lease_key.to_string()
        };
        let written: i64 = redis::Script::new(RECORD_LUA)
            .key(self.base(connection))
            .key(self.index(connection, "all"))
            .key(self.index(connection, "pending"))
            .key(lease_key)
            .arg(format!("{}:", self.base(connection)))
            .arg(record.call_id.0)
            .arg(json)
            .arg(record.outcome.as_str())
            .arg(record.reason.as_deref().unwrap_or(""))
            .arg(record.decided_at_ms)
            .arg(
                record
                    .recheck_at_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            )
            .arg(token)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match written {
            1 => Recorded::Written,
            0 => Recorded::KeptImport,
            2 => Recorded::KeptDecision,
            _ => Recorded::LeaseLost,
        })
    }

    pub async fn get(
        &self,
        connection: &ConnectionId,
        call: CallId,
    ) -> Result<Option<OutcomeRecord>, redis::RedisError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.base(connection))
            .arg(call.0)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The records of `calls`, in order (one round trip).
    pub async fn get_many(
        &self,
        connection: &ConnectionId,
        calls: &[CallId],
    ) -> Result<Vec<Option<OutcomeRecord>>, redis::RedisError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.base(connection));
        for call in calls {
            cmd.arg(call.0);
        }
        let found: Vec<Option<String>> = cmd.query_async(&mut self.redis.clone()).await?;
        Ok(found
            .into_iter()
            .map(|json| json.and_then(|j| serde_json::from_str(&j).ok()))
            .collect())
    }

    /// Number of calls per outcome (`outcome:{name}`) and per reason (`reason:{code}`); zero
    /// counts are left out.
    pub async fn counts(
        &self,
        connection: &ConnectionId,
    ) -> Result<BTreeMap<String, u64>, redis::RedisError> {
        let reasons: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.index(connection, "reasons"))
            .query_async(&mut self.redis.clone())
            .await?;
        let mut names: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| format!("outcome:{}", o.as_str()))
            .collect();
        names.extend(reasons.iter().map(|r| format!("reason:{r}")));
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("ZCARD").arg(self.index(connection, name));
        }
        let values: Vec<u64> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(names
            .into_iter()
            .zip(values)
            .filter(|(_, count)| *count > 0)
            .collect())
    }

    /// Calls decided per UTC day over the last `days` days (today included, oldest first), per
    /// outcome the call has now. One round trip of `days × 4` counts, whatever the history.
    pub async fn per_day(
        &self,
        connection: &ConnectionId,
        days: u32,
        now_ms: i64,
    ) -> Result<Vec<DayCounts>, redis::RedisError> {
        const DAY_MS: i64 = 86_400_000;
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
        let starts: Vec<i64> = (0..i64::from(days))
            .rev()
            .map(|back| today - back * DAY_MS)
            .collect();
        let mut pipe = redis::pipe();
        for start in &starts {
            for outcome in Outcome::ALL {
                pipe.cmd("ZCOUNT")
                    .arg(self.index(connection, &format!("outcome:{}", outcome.as_str())))
                    .arg(*start)
                    .arg(format!("({}", start + DAY_MS));
            }
        }
        let values: Vec<u64> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(starts
            .into_iter()
            .zip(values.chunks(Outcome::ALL.len()))
            .map(|(start_ms, counts)| DayCounts {
                start_ms,
                imported: counts[0],
                skipped: counts[1],
                pending: counts[2],
                failed: counts[3],
            })
            .collect())
    }

    /// Pending calls and the earliest re-check among them (Unix ms).
    pub async fn pending_summary(
        &self,
        connection: &ConnectionId,
    ) -> Result<(u64, Option<i64>), redis::RedisError> {
        let (count, first): (u64, Vec<(u64, i64)>) = redis::pipe()
            .zcard(self.index(connection, "pending"))
            .cmd("ZRANGE")
            .arg(self.index(connection, "pending"))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((count, first.first().map(|(_, at)| *at)))
    }

    /// Erases the decisions about calls that were not imported (a disconnect); imported calls
    /// keep their record, so their files are never imported or announced twice. Returns how
    /// many records went.
    pub async fn forget_undecided(
        &self,
        connection: &ConnectionId,
    ) -> Result<u64, redis::RedisError> {
        let script = redis::Script::new(FORGET_UNDECIDED_LUA);
        let mut total = 0;
        loop {
            let erased: i64 = script
                .key(self.base(connection))
                .key(self.index(connection, "all"))
                .key(self.index(connection, "pending"))
                .arg(format!("{}:", self.base(connection)))
                .arg(FORGET_BATCH)
                .invoke_async(&mut self.redis.clone())
                .await?;
            if erased >= 0 {
                return Ok(total + erased as u64);
            }
            total += (-1 - erased) as u64;
        }
    }

    /// Removes up to `batch` records decided before `before_ms` (Unix ms), oldest first, from
    /// the hash and every index, in one atomic step; a reason code whose index is left empty
    /// leaves the reasons set, and a key left small gets its compact encoding back. Returns how
    /// many records went (fewer than `batch`: none older is left).
    ///
    /// Imported records go too. A call is decided after it started, so a call decided before
    /// the cutoff (the import window plus the retention ago, see `retention.days_beyond_window`)
    /// started outside the window: every later look at it (a webhook, a listing, a pending
    /// re-check, a replayed dead letter, a manual import) skips it `outside_window` by the
    /// rules, so the record no longer guards anything against a second import.
    ///
    /// One batch: the `batch` oldest records before the cutoff after the `skip` first (the ones
    /// earlier batches kept). The record of an imported call whose event is still owed is kept
    /// whatever its age: a replayed dead letter announces the call only while it is there.
    pub async fn compact(
        &self,
        connection: &ConnectionId,
        before_ms: i64,
        batch: usize,
        skip: u64,
    ) -> Result<Compacted, redis::RedisError> {
        if batch == 0 {
            return Ok(Compacted::default());
        }
        let (removed, kept): (u64, u64) = redis::Script::new(COMPACT_LUA)
            .key(self.base(connection))
            .key(self.index(connection, "all"))
            .key(self.index(connection, "pending"))
            .key(self.index(connection, "reasons"))
            .arg(format!("{}:", self.base(connection)))
            .arg(before_ms)
            .arg(batch)
            .arg(REPACK_LIMIT)
            .arg(skip)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Compacted { removed, kept })
    }

    fn retired_key(&self) -> String {
        format!("{}:outcomes:retired", self.prefix)
    }

    /// Notes a disconnected connection whose records stay (its imports), the newest of them
    /// decided at `newest_ms` at the latest, so they are removed once past the retention.
    pub async fn retire(
        &self,
        connection: &ConnectionId,
        newest_ms: i64,
    ) -> Result<(), redis::RedisError> {
        redis::cmd("ZADD")
            .arg(self.retired_key())
            .arg(newest_ms)
            .arg(connection.as_str())
            .query_async(&mut self.redis.clone())
            .await
    }

    /// The connection is connected again: its passes take care of its records.
    pub async fn unretire(&self, connection: &ConnectionId) -> Result<(), redis::RedisError> {
        redis::cmd("ZREM")
            .arg(self.retired_key())
            .arg(connection.as_str())
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Up to `limit` disconnected connections whose newest remaining record was decided before
    /// `before_ms`.
    pub async fn retired_due(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, redis::RedisError> {
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.retired_key())
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| ConnectionId::parse(id).ok())
            .collect())
    }

    /// After records of a disconnected connection were removed: forgets the connection when
    /// none is left (`true`), else notes when its newest remaining record was decided. Two
    /// steps, since the registry and the connection's keys are on different cluster slots; a
    /// record written in between (a worker finishing long after the disconnect) would be
    /// missed, which nothing does weeks after a disconnect.
    pub async fn settle_retired(
        &self,
        connection: &ConnectionId,
    ) -> Result<bool, redis::RedisError> {
        let newest: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(self.index(connection, "all"))
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.redis.clone())
            .await?;
        let forgotten = newest.is_empty();
        let mut cmd = redis::cmd(if forgotten { "ZREM" } else { "ZADD" });
        cmd.arg(self.retired_key());
        if let Some((_, decided_ms)) = newest.first() {
            cmd.arg("XX").arg(*decided_ms);
        }
        cmd.arg(connection.as_str())
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(forgotten)
    }

    /// Calls pending whose re-check is due at `now_ms`, oldest due first.
    pub async fn due_pending(
        &self,
        connection: &ConnectionId,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<CallId>, redis::RedisError> {
        let ids: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.index(connection, "pending"))
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(ids.into_iter().map(CallId).collect())
    }

    /// Moves a pending call's next re-check to `until_ms` (if it is still pending).
    pub async fn postpone_pending(
        &self,
        connection: &ConnectionId,
        call: CallId,
        until_ms: i64,
    ) -> Result<(), redis::RedisError> {
        redis::cmd("ZADD")
            .arg(self.index(connection, "pending"))
            .arg("XX")
            .arg(until_ms)
            .arg(call.0)
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// A page of outcomes, newest decision first.
    pub async fn list(
        &self,
        connection: &ConnectionId,
        query: &OutcomeQuery,
    ) -> Result<OutcomePage, redis::RedisError> {
        let index = match (&query.outcome, &query.reason) {
            (_, Some(reason)) => self.index(connection, &format!("reason:{reason}")),
            (Some(outcome), None) => {
                self.index(connection, &format!("outcome:{}", outcome.as_str()))
            }
            (None, None) => self.index(connection, "all"),
        };
        let limit = query.limit.clamp(1, 500);
        // The cursor is the last item's (score, call id); ties at one millisecond are ordered
        // by id, as Redis orders them, so no item is skipped or repeated.
        let cursor = query.cursor.as_deref().and_then(parse_cursor);
        let max = cursor.map_or("+inf".to_string(), |(score, _)| score.to_string());
        let min = query
            .since_ms
            .map_or("-inf".to_string(), |since| since.to_string());
        let mut items = Vec::new();
        let mut offset = 0usize;
        let mut last: Option<(i64, u64)> = None;
        'pages: loop {
            let batch: Vec<(u64, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(limit + 1)
                .query_async(&mut self.redis.clone())
                .await?;
            let fetched = batch.len();
            offset += fetched;
            let batch: Vec<(u64, i64)> = batch
                .into_iter()
                .filter(|(id, score)| match cursor {
                    Some((cs, cid)) => *score < cs || id.to_string() < cid.to_string(),
                    None => true,
                })
                .collect();
            if !batch.is_empty() {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.base(connection));
                for (id, _) in &batch {
                    cmd.arg(*id);
                }
                let records: Vec<Option<String>> = cmd.query_async(&mut self.redis.clone()).await?;
                for ((id, score), json) in batch.into_iter().zip(records) {
                    if items.len() == limit {
                        break 'pages;
                    }
                    if let Some(record) =
                        json.and_then(|j| serde_json::from_str::<OutcomeRecord>(&j).ok())
                    {
                        // The reason index serves both outcome filters at once.
                        let wanted = query.outcome.is_none_or(|o| o == record.outcome);
                        if wanted {
                            items.push(record);
                            last = Some((score, id));
                        }
                    }
                }
            }
            if fetched <= limit {
                break;
            }
        }
        let more = items.len() == limit;
        Ok(OutcomePage {
            next_cursor: last
                .filter(|_| more)
                .map(|(score, id)| format!("{score}.{id}")),
            items,
        })
    }
}

/// Whether `text` is a cursor [`OutcomeStore::list`] returned.
pub fn is_cursor(text: &str) -> bool {
    parse_cursor(text).is_some()
}

fn parse_cursor(text: &str) -> Option<(i64, u64)> {
    let (score, id) = text.split_once('.')?;
    Some((score.parse().ok()?, id.parse().ok()?))
}
