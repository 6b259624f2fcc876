//! The dashboard aggregates in Redis, changed exactly once per event.
//!
//! A batch of facts is applied by one Lua script that marks and increments
//! together: it first looks for each event's mark (`billing:seen:{day}`,
//! field `{topic}|{source}|{id}`); if none is marked it sets every mark,
//! applies the batch's merged changes ([`billing_core::aggregates`]) and
//! appends a notice per billed event to the `billing:notices` stream (and
//! publishes them on the channel of that name, up to a hundred to a
//! message: see [`crate::live::published_notices`]) — all or nothing,
//! atomically. If some are marked already (a
//! redelivery after a crash between the SQLite commit and Redis), it
//! changes nothing and names them; [`Aggregates::apply`] drops them and
//! tries again with the rest.
//!
//! While `billing-bridge rebuild-redis` runs, the script refuses (the
//! consumers retry), so a rebuild never races a live increment. A counter
//! that would pass a 64-bit integer saturates at its bound instead of
//! failing the script.

use anyhow::{Context, Result};
use billing_core::aggregates::{Changes, Fact, Op, PREFIX};
use billing_core::Timestamp;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeSet;
use std::path::Path;

/// Present while aggregates are being rebuilt.
pub const REBUILD_FLAG: &str = "billing:rebuilding";
/// Present when the aggregates cover everything in SQLite: set by a
/// rebuild. Redis losing its data loses it too; readers then fall back to
/// SQLite and the bridge rebuilds.
pub const COMPLETE: &str = "billing:aggregates-complete";
/// Stream and channel of the live notices (one per billed event).
pub const NOTICES: &str = "billing:notices";
/// Notices kept in the stream for clients that reconnect.
pub const NOTICES_KEPT: u32 = 10_000;

const SCRIPT: &str = r#"
if redis.call('EXISTS', ARGV[1]) == 1 then
  return redis.error_reply('REBUILDING the aggregates are being rebuilt')
end
local ttl, stream, kept = ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
-- The marks grouped by hash (one per day), then read and set a few
-- hundred fields per call: a call per mark cost more than the rest.
local keys, fields, at = {}, {}, {}
for j = 0, n - 1 do
  local k = ARGV[6 + 2 * j]
  if fields[k] == nil then keys[#keys + 1] = k; fields[k] = {}; at[k] = {} end
  fields[k][#fields[k] + 1] = ARGV[7 + 2 * j]
  at[k][#at[k] + 1] = j
end
local chunk = 500
local seen = {}
for _, k in ipairs(keys) do
  local f = fields[k]
  for i = 1, #f, chunk do
    local got = redis.call('HMGET', k, unpack(f, i, math.min(i + chunk - 1, #f)))
    for g = 1, #got do
      if got[g] then seen[#seen + 1] = at[k][i + g - 1] end
    end
  end
end
if #seen > 0 then return seen end
for _, k in ipairs(keys) do
  local f = fields[k]
  for i = 1, #f, chunk do
    local args = {}
    for g = i, math.min(i + chunk - 1, #f) do
      args[#args + 1] = f[g]; args[#args + 1] = 1
    end
    redis.call('HSET', k, unpack(args))
  end
  redis.call('EXPIRE', k, ttl)
end
local p = 6 + 2 * n
local m = tonumber(ARGV[p]); p = p + 1
-- One message per 100 notices on the channel (a message per notice cost
-- Redis and every subscribed bridge more than the stream appends).
local published = {}
for j = 1, m do
  local id = redis.call('XADD', stream, 'MAXLEN', '~', kept, '*', 'user', ARGV[p], 'data', ARGV[p + 1])
  published[#published + 1] = id .. '\n' .. ARGV[p] .. '\n' .. ARGV[p + 1]
  if #published == 100 or j == m then
    redis.call('PUBLISH', stream, table.concat(published, '\n'))
    published = {}
  end
  p = p + 2
end
while p <= #ARGV do
  local op, key, a, b = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]
  if op == 'h' then
    -- A sum past a 64-bit integer saturates (the ledger in SQLite stays exact):
    -- an error here would stop the stage, and billing, for everyone.
    if type(redis.pcall('HINCRBY', key, a, b)) == 'table' then
      redis.call('HSET', key, a, string.sub(b, 1, 1) == '-' and '-9223372036854775808' or '9223372036854775807')
    end
  elseif op == 'f' then redis.call('HSET', key, a, b)
  elseif op == 's' then redis.call('SADD', key, a)
  elseif op == 'z' then redis.call('ZINCRBY', key, b, a)
  elseif op == 'g' then redis.call('ZADD', key, 'GT', b, a) end
  p = p + 4
end
return {}
"#;

/// A mark: its hash key and field.
pub type Mark = (String, String);

/// The mark of a fact.
pub fn mark(f: &Fact) -> Mark {
    (
        format!("billing:seen:{}", &f.occurred_at.to_rfc3339()[..10]),
        format!("{}|{}|{}", f.kind.topic(), f.source, f.id),
    )
}

/// The live notice of a billed fact (JSON): `type` "billed", the event's
/// `event_type` (its topic), `source`, `event_id`, `user_id`, `model`,
/// `thread_id`, `occurred_at`, `cost_nanos` (nano-USD), `tokens` per class
/// and `latency_ms`. Keys in alphabetical order, as they always were.
pub fn notice(f: &Fact) -> String {
    #[derive(serde::Serialize)]
    struct Tokens {
        cache_read: u64,
        cache_write_1h: u64,
        cache_write_5m: u64,
        input: u64,
        output: u64,
    }
    #[derive(serde::Serialize)]
    struct Notice<'a> {
        cost_nanos: i64,
        event_id: &'a str,
        event_type: &'a str,
        latency_ms: u64,
        model: &'a str,
        occurred_at: String,
        source: &'a str,
        thread_id: Option<i64>,
        tokens: Tokens,
        #[serde(rename = "type")]
        kind: &'a str,
        user_id: i64,
    }
    // Written straight from the struct: the `json!` tree it replaces was a
    // third of the bridge's second stage (perf, 2026-12-01).
    serde_json::to_string(&Notice {
        cost_nanos: f.cost_nanos,
        event_id: &f.id,
        event_type: f.kind.topic(),
        latency_ms: f.latency_ms,
        model: &f.model,
        occurred_at: f.occurred_at.to_rfc3339(),
        source: &f.source,
        thread_id: f.thread_id,
        tokens: Tokens {
            input: f.tokens[0],
            output: f.tokens[1],
            cache_write_5m: f.tokens[2],
            cache_write_1h: f.tokens[3],
            cache_read: f.tokens[4],
        },
        kind: "billed",
        user_id: f.user_id,
    })
    .expect("a notice serialises")
}

fn push_op(cmd: &mut Vec<String>, op: Op) {
    let (code, key, a, b) = match op {
        Op::HashIncr { key, field, by } => ("h", key, field, by.to_string()),
        Op::HashSet { key, field, value } => ("f", key, field, value),
        Op::SetAdd { key, member } => ("s", key, member, String::new()),
        Op::ZIncr { key, member, by } => ("z", key, member, by.to_string()),
        Op::ZMax { key, member, score } => ("g", key, member, score.to_string()),
    };
    cmd.extend([code.to_owned(), key, a, b]);
}

/// The connection to Redis and the marking script.
pub struct Aggregates {
    url: String,
    conn: Option<MultiplexedConnection>,
    script: redis::Script,
    mark_ttl_s: u64,
}

impl Aggregates {
    pub fn new(url: &str, mark_ttl_s: u64) -> Self {
        Self {
            url: url.to_owned(),
            conn: None,
            script: redis::Script::new(SCRIPT),
            mark_ttl_s,
        }
    }

    /// Another handle on the same Redis and settings, not yet connected:
    /// what stays behind while this one is moved into a task.
    pub fn detached(&self) -> Self {
        Self::new(&self.url, self.mark_ttl_s)
    }

    async fn conn(&mut self) -> Result<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let client = redis::Client::open(self.url.as_str())
            .with_context(|| format!("Redis URL {}", self.url))?;
        let c = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to Redis at {}", self.url))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Applies `facts` that were not applied before; returns the ones
    /// applied now (whose notices went out). `Err` (Redis away, a rebuild
    /// running) means nothing changed: try again later.
    pub async fn apply(&mut self, facts: &[Fact]) -> Result<Vec<usize>> {
        // A batch may hold the same event twice (a redelivery right behind
        // the original): it counts once.
        let mut marks = BTreeSet::new();
        let mut todo: Vec<usize> = (0..facts.len())
            .filter(|&i| marks.insert(mark(&facts[i])))
            .collect();
        while !todo.is_empty() {
            let mut changes = Changes::default();
            let mut args: Vec<String> = vec![
                REBUILD_FLAG.into(),
                self.mark_ttl_s.to_string(),
                NOTICES.into(),
                NOTICES_KEPT.to_string(),
                todo.len().to_string(),
            ];
            for &i in &todo {
                let (k, f) = mark(&facts[i]);
                args.extend([k, f]);
                changes.add(&facts[i]);
            }
            let notices: Vec<usize> = todo
                .iter()
                .copied()
                .filter(|&i| facts[i].kind.is_billed())
                .collect();
            args.push(notices.len().to_string());
            for &i in &notices {
                args.extend([facts[i].user_id.to_string(), notice(&facts[i])]);
            }
            for op in changes.ops() {
                push_op(&mut args, op);
            }
            let mut conn = self.conn().await?;
            let mut invocation = self.script.prepare_invoke();
            for a in &args {
                invocation.arg(a);
            }
            let seen: Vec<usize> = match invocation.invoke_async(&mut conn).await {
                Ok(s) => s,
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                        self.conn = None;
                    }
                    return Err(anyhow::Error::from(e).context("applying aggregates in Redis"));
                }
            };
            if seen.is_empty() {
                return Ok(todo);
            }
            let seen: BTreeSet<usize> = seen.into_iter().map(|j| todo[j]).collect();
            tracing::info!(
                already = seen.len(),
                "Some events had reached the aggregates before; applying the rest."
            );
            todo.retain(|i| !seen.contains(i));
        }
        Ok(todo)
    }

    /// Pings Redis.
    pub async fn ping(&mut self) -> Result<()> {
        let mut c = self.conn().await?;
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
        if r.is_err() {
            self.conn = None;
        }
        r.map(|_| ()).context("Redis did not answer PING")
    }
}

/// What [`rebuild`] did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub events: u64,
    pub keys_removed: u64,
    pub commands: u64,
    pub marks: u64,
}

/// Rebuilds every aggregate from the SQLite ledger: raises the rebuild flag
/// (consumers wait), removes every `billing:agg:*` and `billing:seen:*`
/// key, replays the facts of every processed event, marks those processed
/// within `mark_ttl_s` (a redelivery can only come from them), lowers the flag.
pub async fn rebuild(
    database: &Path,
    redis_url: &str,
    mark_ttl_s: u64,
    now: Timestamp,
) -> Result<Rebuilt> {
    let client =
        redis::Client::open(redis_url).with_context(|| format!("Redis URL {redis_url}"))?;
    let mut r = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {redis_url}"))?;
    let raised: bool = redis::cmd("SET")
        .arg(REBUILD_FLAG)
        .arg(std::process::id())
        .arg("NX")
        .arg("EX")
        .arg(120)
        .query_async::<Option<String>>(&mut r)
        .await?
        .is_some();
    anyhow::ensure!(raised, "another rebuild is running ({REBUILD_FLAG} is set); wait for it, or delete the key if that rebuild died");
    let result = rebuild_flagged(database, &mut r, mark_ttl_s, now).await;
    if result.is_ok() {
        let _: () = redis::cmd("SET")
            .arg(COMPLETE)
            .arg(now.to_rfc3339())
            .query_async(&mut r)
            .await?;
    }
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(REBUILD_FLAG)
        .query_async(&mut r)
        .await;
    result
}

/// Rebuilds when Redis lacks [`COMPLETE`] (first start, or Redis lost its
/// data). `Ok(None)`: nothing to do, or another process is rebuilding.
pub async fn ensure_complete(
    database: &Path,
    redis_url: &str,
    mark_ttl_s: u64,
    now: Timestamp,
) -> Result<Option<Rebuilt>> {
    let client =
        redis::Client::open(redis_url).with_context(|| format!("Redis URL {redis_url}"))?;
    let mut r = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {redis_url}"))?;
    let (complete, rebuilding): (bool, bool) = redis::pipe()
        .cmd("EXISTS")
        .arg(COMPLETE)
        .cmd("EXISTS")
        .arg(REBUILD_FLAG)
        .query_async(&mut r)
        .await?;
    if complete || rebuilding {
        return Ok(None);
    }
    match rebuild(database, redis_url, mark_ttl_s, now).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.to_string().contains("another rebuild is running") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Facts read per chunk of a rebuild: bounds its memory.
const REBUILD_CHUNK: usize = 50_000;

/// One chunk of a rebuild: merged changes, marks, and how many events.
type Chunk = (Vec<Op>, Vec<Mark>, u64);

/// Reads the whole ledger in one read transaction (one snapshot), sending
/// the merged changes of every [`REBUILD_CHUNK`] events, and the marks of
/// those processed since `mark_since`.
fn read_ledger(
    database: &Path,
    mark_since: &str,
    out: tokio::sync::mpsc::Sender<Chunk>,
) -> Result<()> {
    let mut conn = billing_migrations::open(database)?;
    let tx = conn.transaction()?;
    let mut stmt = tx.prepare(
        "SELECT consumer, source, event_id, processed_at, user_id, model, thread_id, occurred_at, latency_ms, cost_nanos,
                input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens
         FROM processed_events ORDER BY occurred_at",
    )?;
    let mut rows = stmt.query([])?;
    let (mut changes, mut marks, mut events) = (Changes::default(), Vec::new(), 0u64);
    while let Some(row) = rows.next()? {
        let consumer: String = row.get(0)?;
        let Some(kind) = billing_core::aggregates::Kind::from_topic(&consumer) else {
            continue;
        };
        let fact = crate::billing::fact_from_row(row, kind, row.get(1)?, row.get(2)?, 4)??;
        changes.add(&fact);
        events += 1;
        if row.get::<_, String>(3)?.as_str() >= mark_since {
            marks.push(mark(&fact));
        }
        if events as usize % REBUILD_CHUNK == 0 {
            out.blocking_send((
                std::mem::take(&mut changes).ops(),
                std::mem::take(&mut marks),
                REBUILD_CHUNK as u64,
            ))
            .map_err(|_| anyhow::anyhow!("the rebuild stopped"))?;
        }
    }
    let rest = events % REBUILD_CHUNK as u64;
    if rest > 0 || events == 0 {
        out.blocking_send((changes.ops(), marks, rest))
            .map_err(|_| anyhow::anyhow!("the rebuild stopped"))?;
    }
    Ok(())
}

async fn rebuild_flagged(
    database: &Path,
    r: &mut MultiplexedConnection,
    mark_ttl_s: u64,
    now: Timestamp,
) -> Result<Rebuilt> {
    let mut out = Rebuilt::default();
    for pattern in [format!("{PREFIX}*"), "billing:seen:*".to_owned()] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(r)
                .await?;
            if !keys.is_empty() {
                out.keys_removed += keys.len() as u64;
                let _: () = redis::cmd("UNLINK").arg(&keys).query_async(r).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let mark_since = Timestamp::from_millis(now.millis() - mark_ttl_s as i64 * 1000)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_rfc3339();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(2);
    let reader = tokio::task::spawn_blocking({
        let database = database.to_owned();
        move || read_ledger(&database, &mark_since, tx)
    });
    let mut keys = BTreeSet::new();
    while let Some((ops, marks, events)) = rx.recv().await {
        out.events += events;
        for chunk in ops.chunks(1000) {
            let mut pipe = redis::pipe();
            for op in chunk {
                match op {
                    Op::HashIncr { key, field, by } => {
                        pipe.cmd("HINCRBY").arg(key).arg(field).arg(*by)
                    }
                    Op::HashSet { key, field, value } => {
                        pipe.cmd("HSET").arg(key).arg(field).arg(value)
                    }
                    Op::SetAdd { key, member } => pipe.cmd("SADD").arg(key).arg(member),
                    Op::ZIncr { key, member, by } => {
                        pipe.cmd("ZINCRBY").arg(key).arg(*by).arg(member)
                    }
                    Op::ZMax { key, member, score } => {
                        pipe.cmd("ZADD").arg(key).arg("GT").arg(*score).arg(member)
                    }
                }
                .ignore();
            }
            pipe.cmd("EXPIRE").arg(REBUILD_FLAG).arg(120).ignore();
            let _: () = pipe.query_async(r).await?;
            out.commands += chunk.len() as u64;
        }
        for chunk in marks.chunks(1000) {
            let mut pipe = redis::pipe();
            for (k, f) in chunk {
                pipe.cmd("HSET").arg(k).arg(f).arg(1).ignore();
                keys.insert(k.clone());
            }
            let _: () = pipe.query_async(r).await?;
            out.marks += chunk.len() as u64;
        }
    }
    reader.await??;
    for k in keys {
        let _: () = redis::cmd("EXPIRE")
            .arg(k)
            .arg(mark_ttl_s)
            .query_async(r)
            .await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_core::aggregates::Kind;

    // The notice's wire form is what it was when built as a JSON tree
    // (keys sorted, the same values), byte for byte, with and without a thread.
    #[test]
    fn notice_is_unchanged_on_the_wire() {
        for thread_id in [Some(77), None] {
            let f = Fact {
                kind: Kind::Turn,
                source: "/functions/messages \"q\"".into(),
                id: "evt-1".into(),
                user_id: 2,
                model: "claude-haiku-4-5-20251001".into(),
                thread_id,
                occurred_at: Timestamp::parse("2026-03-10T12:34:56.789Z").unwrap(),
                latency_ms: 300,
                cost_nanos: 1_234_567,
                tokens: [1, 2, 3, 4, 5],
            };
            let tree = serde_json::json!({
                "type": "billed",
                "event_type": "token-metrics",
                "source": "/functions/messages \"q\"",
                "event_id": "evt-1",
                "user_id": 2,
                "model": "claude-haiku-4-5-20251001",
                "thread_id": thread_id,
                "occurred_at": "2026-03-10T12:34:56.789Z",
                "cost_nanos": 1_234_567,
                "tokens": {
                    "input": 1, "output": 2, "cache_write_5m": 3, "cache_write_1h": 4, "cache_read": 5,
                },
                "latency_ms": 300,
            });
            assert_eq!(notice(&f), tree.to_string());
        }
    }
}
