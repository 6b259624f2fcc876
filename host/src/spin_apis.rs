//! The Spin host interfaces a spin-sdk 5.2 component imports:
//! `fermyon:spin/{sqlite,redis,variables}@2.0.0` and `spin:sqlite/sqlite@3.0.0`,
//! with Spin's error variants.

use crate::runtime::InstanceState;
use crate::runtime_config::SqliteLocation;
use crate::variables::GetError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wasmtime::component::Resource;

wasmtime::component::bindgen!({
    path: "wit",
    world: "billing:host/spin-host",
    imports: { default: async },
    with: {
        "fermyon:spin/sqlite.connection": SqliteConnection,
        "spin:sqlite/sqlite.connection": SqliteConnection,
        "fermyon:spin/redis.connection": RedisConnection,
    },
});

use fermyon::spin::{redis as r2, sqlite as s2, variables as v2};
use spin::sqlite::sqlite as s3;

/// Most Redis connections one instance may hold open, as in Spin.
const MAX_REDIS_CONNECTIONS: usize = 10;
/// Largest query result handed to a guest.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// An open SQLite connection. Each `open` gets its own, so a component can
/// run BEGIN … COMMIT across several `execute` calls.
pub struct SqliteConnection {
    /// `None` only while being dropped.
    conn: Option<Arc<Mutex<Pooled>>>,
}

/// A guest's Redis connection: the app's shared connection to the address
/// (one multiplexed TCP connection, reused by every instance), or its own
/// once it ran a command that changes a connection's state
/// ([`redis_command_changes_state`]: MULTI, SELECT, SUBSCRIBE, ...), so no
/// guest can change another's.
pub struct RedisConnection {
    address: String,
    conn: redis::aio::MultiplexedConnection,
    shared: bool,
}

/// Redis commands whose effect outlives the command on its connection, or
/// that block it (they would hold the shared connection for every guest).
fn redis_command_changes_state(command: &str) -> bool {
    const STATEFUL: &[&str] = &[
        "SELECT",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "UNWATCH",
        "CLIENT",
        "SUBSCRIBE",
        "SSUBSCRIBE",
        "PSUBSCRIBE",
        "UNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "MONITOR",
        "RESET",
        "AUTH",
        "HELLO",
        "QUIT",
        "READONLY",
        "READWRITE",
        "ASKING",
        // Blocking: they would hold the shared connection for every guest.
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "WAIT",
        "WAITAOF",
        "SYNC",
        "PSYNC",
    ];
    STATEFUL.iter().any(|c| c.eq_ignore_ascii_case(command))
}

/// A rusqlite connection and whether it may serve another request.
struct Pooled {
    db: rusqlite::Connection,
    reusable: bool,
    /// `foreign_keys` as SQLite has it, and as the guest set it (off for a
    /// new connection). See [`Pooled::run`].
    foreign_keys: bool,
    foreign_keys_asked: bool,
    /// Its database's write gate, while this connection is inside a
    /// transaction it began with BEGIN IMMEDIATE or EXCLUSIVE.
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Where it goes back when the guest drops it.
    pool: Arc<SqlitePool>,
    label: String,
}

/// Idle SQLite connections, per database label.
///
/// Spin opens a connection per `open`; opening one means reading the
/// schema again and preparing every statement again, which costs more than
/// a small request's own work. So a connection the guest dropped goes back
/// here — only in the state a new one would be in: its transaction rolled
/// back, `foreign_keys` off again, and never after a statement that changes
/// other per-connection state (any other PRAGMA, ATTACH, a TEMP object).
///
/// With it, a write gate per database: a FIFO async lock that a
/// connection takes before `BEGIN IMMEDIATE`/`EXCLUSIVE` and gives back
/// once the transaction ends. SQLite's own lock still decides (other
/// processes, such as the bridge, write too); the gate only makes this
/// process's writers queue without a thread each sleeping and polling in
/// SQLite's busy handler, so the next one starts the moment the last one
/// commits. A writer waits at most [`GATE_WAIT`] for it, then goes on to
/// SQLite's lock as it would without the gate (a component that nests two
/// connections' transactions gets SQLite's answer, not a hang).
#[derive(Default)]
pub struct SqlitePool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An idle connection and its `foreign_keys` setting.
struct Idle {
    db: rusqlite::Connection,
    foreign_keys: bool,
}

/// Longest wait for a database's write gate.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Idle connections kept per database.
const POOLED_PER_DATABASE: usize = 16;

impl SqlitePool {
    fn gate(&self, label: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_owned())
            .or_default()
            .clone()
    }

    fn take(&self, label: &str) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(label)?
            .pop()
    }

    fn put(&self, label: &str, conn: Idle) {
        if !conn.db.is_autocommit() && conn.db.execute_batch("ROLLBACK").is_err() {
            return;
        }
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.entry(label.to_owned()).or_default();
        if idle.len() < POOLED_PER_DATABASE {
            idle.push(conn);
        }
    }
}

impl Drop for SqliteConnection {
    fn drop(&mut self) {
        // Only the last holder gives it back (no `execute` is running on it).
        let Some(pooled) = self.conn.take().and_then(Arc::into_inner) else {
            return;
        };
        let p = pooled.into_inner().unwrap_or_else(|p| p.into_inner());
        if p.reusable {
            p.pool.put(
                &p.label,
                Idle {
                    db: p.db,
                    foreign_keys: p.foreign_keys,
                },
            );
        }
    }
}

impl Pooled {
    /// A connection handed out of `pool` (or new) for database `label`.
    fn new(idle: Idle, pool: Arc<SqlitePool>, label: &str) -> Self {
        Self {
            db: idle.db,
            reusable: true,
            foreign_keys: idle.foreign_keys,
            foreign_keys_asked: false,
            held: None,
            pool,
            label: label.to_owned(),
        }
    }

    /// Runs a guest's statement.
    ///
    /// Setting `foreign_keys` makes SQLite expire every prepared statement
    /// of the connection, even when the value does not change — and every
    /// component sets it on each connection it opens, which would make a
    /// pooled connection prepare everything again. So the setting the
    /// guest asks for is kept here and given to SQLite only when it
    /// differs, before the next statement outside a transaction (inside
    /// one SQLite ignores the pragma, and so does this).
    fn run(
        &mut self,
        statement: &str,
        params: Vec<s3::Value>,
    ) -> Result<s3::QueryResult, s3::Error> {
        if changes_connection_state(statement) {
            self.reusable = false;
        }
        if self.db.is_autocommit() {
            if let Some(on) = sets_foreign_keys(statement) {
                self.foreign_keys_asked = on;
                return Ok(s3::QueryResult {
                    columns: Vec::new(),
                    rows: Vec::new(),
                });
            }
            if self.foreign_keys != self.foreign_keys_asked {
                let on = self.foreign_keys_asked;
                self.db
                    .execute_batch(if on {
                        "PRAGMA foreign_keys = ON"
                    } else {
                        "PRAGMA foreign_keys = OFF"
                    })
                    .map_err(|e| s3::Error::Io(e.to_string()))?;
                self.foreign_keys = on;
            }
        }
        execute(&self.db, statement, params)
    }
}

/// `Some(on)` when the statement is `PRAGMA [main.]foreign_keys = <on|off>`.
fn sets_foreign_keys(statement: &str) -> Option<bool> {
    let s = statement.trim().trim_end_matches(';').to_ascii_lowercase();
    let rest = s.strip_prefix("pragma")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("main.").unwrap_or(rest);
    let (name, value) = rest.split_once('=')?;
    if name.trim() != "foreign_keys" {
        return None;
    }
    match value.trim().trim_matches(|c| c == '\'' || c == '"') {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Whether a statement is `BEGIN IMMEDIATE` or `BEGIN EXCLUSIVE`.
fn begins_write_transaction(statement: &str) -> bool {
    let mut words = statement.split_whitespace();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("begin"))
        && words.next().is_some_and(|w| {
            let w = w.trim_end_matches(';');
            w.eq_ignore_ascii_case("immediate") || w.eq_ignore_ascii_case("exclusive")
        })
}

/// Whether a statement changes per-connection state that a reused
/// connection would carry into another request (`foreign_keys` is reset).
fn changes_connection_state(statement: &str) -> bool {
    let s = statement.trim_start().to_ascii_lowercase();
    let words: Vec<&str> = s.split_whitespace().take(3).collect();
    match words.as_slice() {
        ["pragma", rest @ ..] => !rest
            .first()
            .is_some_and(|w| w.trim_start_matches("main.").starts_with("foreign_keys")),
        ["attach" | "detach", ..] => true,
        ["create", "temp" | "temporary", ..] => true,
        _ => false,
    }
}

fn open_sqlite(state: &InstanceState, label: &str) -> Result<SqliteConnection, s3::Error> {
    if !state.component.sqlite_databases.iter().any(|d| d == label) {
        return Err(s3::Error::AccessDenied);
    }
    let location = state
        .app
        .runtime
        .sqlite
        .get(label)
        .ok_or(s3::Error::NoSuchDatabase)?;
    let pool = &state.app.sqlite_pool;
    let idle = match pool.take(label) {
        Some(idle) => idle,
        None => Idle {
            db: connect(label, location)?,
            foreign_keys: false,
        },
    };
    Ok(SqliteConnection {
        conn: Some(Arc::new(Mutex::new(Pooled::new(idle, pool.clone(), label)))),
    })
}

fn connect(label: &str, location: &SqliteLocation) -> Result<rusqlite::Connection, s3::Error> {
    let conn = match location {
        SqliteLocation::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| s3::Error::Io(e.to_string()))?;
            }
            rusqlite::Connection::open(path)
        }
        SqliteLocation::InMemory => rusqlite::Connection::open_with_flags(
            format!("file:{label}?mode=memory&cache=shared"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        ),
    }
    .map_err(|e| s3::Error::Io(e.to_string()))?;
    // Wait for a busy database as Spin does (5 s), but in short steps:
    // SQLite's default handler sleeps up to 100 ms at a time, which makes
    // concurrent writers queue far longer than the lock is held.
    conn.busy_handler(Some(|attempt| {
        std::thread::sleep(std::time::Duration::from_micros(500));
        attempt < 10_000
    }))
    .map_err(|e| s3::Error::Io(e.to_string()))?;
    Ok(conn)
}

fn to_sql(v: s3::Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        s3::Value::Integer(i) => V::Integer(i),
        s3::Value::Real(f) => V::Real(f),
        s3::Value::Text(t) => V::Text(t),
        s3::Value::Blob(b) => V::Blob(b),
        s3::Value::Null => V::Null,
    }
}

fn from_sql(v: rusqlite::types::ValueRef<'_>) -> s3::Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => s3::Value::Null,
        V::Integer(i) => s3::Value::Integer(i),
        V::Real(f) => s3::Value::Real(f),
        V::Text(t) => s3::Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => s3::Value::Blob(b.to_vec()),
    }
}

fn value_size(v: &s3::Value) -> usize {
    match v {
        s3::Value::Text(t) => t.len(),
        s3::Value::Blob(b) => b.len(),
        _ => 8,
    }
}

/// Runs ONE statement (rusqlite refuses a string holding several, as Spin does).
fn execute(
    conn: &rusqlite::Connection,
    statement: &str,
    params: Vec<s3::Value>,
) -> Result<s3::QueryResult, s3::Error> {
    let io = |e: rusqlite::Error| s3::Error::Io(e.to_string());
    let mut stmt = conn.prepare_cached(statement).map_err(io)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let n = columns.len();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params.into_iter().map(to_sql)))
        .map_err(io)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(io)? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            let v = from_sql(row.get_ref(i).map_err(io)?);
            bytes += value_size(&v);
            values.push(v);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(s3::Error::Io(format!(
                "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
            )));
        }
        out.push(s3::RowResult { values });
    }
    Ok(s3::QueryResult { columns, rows: out })
}

async fn execute_blocking(
    conn: Arc<Mutex<Pooled>>,
    statement: String,
    params: Vec<s3::Value>,
) -> Result<s3::QueryResult, s3::Error> {
    if begins_write_transaction(&statement) {
        let gate = {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            c.held.is_none().then(|| c.pool.gate(&c.label))
        };
        if let Some(gate) = gate {
            if let Ok(held) = tokio::time::timeout(GATE_WAIT, gate.lock_owned()).await {
                conn.lock().unwrap_or_else(|p| p.into_inner()).held = Some(held);
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let r = conn.run(&statement, params);
        if conn.db.is_autocommit() {
            conn.held = None;
        }
        r
    })
    .await
    .map_err(|e| s3::Error::Io(e.to_string()))?
}

fn v3_to_v2_error(e: s3::Error) -> s2::Error {
    match e {
        s3::Error::NoSuchDatabase => s2::Error::NoSuchDatabase,
        s3::Error::AccessDenied => s2::Error::AccessDenied,
        s3::Error::InvalidConnection => s2::Error::InvalidConnection,
        s3::Error::DatabaseFull => s2::Error::DatabaseFull,
        s3::Error::Io(m) => s2::Error::Io(m),
    }
}

fn v2_to_v3_value(v: s2::Value) -> s3::Value {
    match v {
        s2::Value::Integer(i) => s3::Value::Integer(i),
        s2::Value::Real(f) => s3::Value::Real(f),
        s2::Value::Text(t) => s3::Value::Text(t),
        s2::Value::Blob(b) => s3::Value::Blob(b),
        s2::Value::Null => s3::Value::Null,
    }
}

fn v3_to_v2_value(v: s3::Value) -> s2::Value {
    match v {
        s3::Value::Integer(i) => s2::Value::Integer(i),
        s3::Value::Real(f) => s2::Value::Real(f),
        s3::Value::Text(t) => s2::Value::Text(t),
        s3::Value::Blob(b) => s2::Value::Blob(b),
        s3::Value::Null => s2::Value::Null,
    }
}

impl InstanceState {
    fn sqlite(&self, r: u32) -> Result<Arc<Mutex<Pooled>>, s3::Error> {
        self.table
            .get::<SqliteConnection>(&Resource::new_borrow(r))
            .ok()
            .and_then(|c| c.conn.clone())
            .ok_or(s3::Error::InvalidConnection)
    }
}

impl s2::Host for InstanceState {}

impl s2::HostConnection for InstanceState {
    async fn open(&mut self, database: String) -> Result<Resource<SqliteConnection>, s2::Error> {
        let c = open_sqlite(self, &database).map_err(v3_to_v2_error)?;
        self.table.push(c).map_err(|e| s2::Error::Io(e.to_string()))
    }

    async fn execute(
        &mut self,
        this: Resource<SqliteConnection>,
        statement: String,
        parameters: Vec<s2::Value>,
    ) -> Result<s2::QueryResult, s2::Error> {
        let conn = self.sqlite(this.rep()).map_err(v3_to_v2_error)?;
        let r = execute_blocking(
            conn,
            statement,
            parameters.into_iter().map(v2_to_v3_value).collect(),
        )
        .await
        .map_err(v3_to_v2_error)?;
        Ok(s2::QueryResult {
            columns: r.columns,
            rows: r
                .rows
                .into_iter()
                .map(|row| s2::RowResult {
                    values: row.values.into_iter().map(v3_to_v2_value).collect(),
                })
                .collect(),
        })
    }

    async fn drop(&mut self, this: Resource<SqliteConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl s3::Host for InstanceState {}

impl s3::HostConnection for InstanceState {
    async fn open(&mut self, database: String) -> Result<Resource<SqliteConnection>, s3::Error> {
        let c = open_sqlite(self, &database)?;
        self.table.push(c).map_err(|e| s3::Error::Io(e.to_string()))
    }

    async fn execute(
        &mut self,
        this: Resource<SqliteConnection>,
        statement: String,
        parameters: Vec<s3::Value>,
    ) -> Result<s3::QueryResult, s3::Error> {
        let conn = self.sqlite(this.rep())?;
        execute_blocking(conn, statement, parameters).await
    }

    async fn last_insert_rowid(&mut self, this: Resource<SqliteConnection>) -> i64 {
        self.sqlite(this.rep())
            .map(|c| {
                c.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .db
                    .last_insert_rowid()
            })
            .unwrap_or(0)
    }

    async fn changes(&mut self, this: Resource<SqliteConnection>) -> u64 {
        self.sqlite(this.rep())
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).db.changes())
            .unwrap_or(0)
    }

    async fn drop(&mut self, this: Resource<SqliteConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl v2::Host for InstanceState {
    async fn get(&mut self, name: String) -> Result<String, v2::Error> {
        self.app
            .variables
            .get(&self.component.id, &name)
            .map_err(|e| match e {
                GetError::InvalidName(m) => v2::Error::InvalidName(m),
                GetError::Undefined(m) => v2::Error::Undefined(m),
            })
    }
}

fn redis_error(e: redis::RedisError) -> r2::Error {
    if e.kind() == redis::ErrorKind::TypeError {
        r2::Error::TypeError
    } else {
        r2::Error::Other(e.to_string())
    }
}

impl InstanceState {
    fn redis(
        &self,
        r: &Resource<RedisConnection>,
    ) -> Result<redis::aio::MultiplexedConnection, r2::Error> {
        self.table
            .get(r)
            .map(|c| c.conn.clone())
            .map_err(|e| r2::Error::Other(e.to_string()))
    }

    /// Runs one command on the guest's connection. A connection that failed
    /// (dropped, timed out, refused) is no longer shared: the next `open`
    /// connects afresh, as a guest's own connection would.
    async fn redis_run<T: redis::FromRedisValue>(
        &mut self,
        r: &Resource<RedisConnection>,
        cmd: redis::Cmd,
    ) -> Result<T, r2::Error> {
        let mut c = self.redis(r)?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                {
                    if let Ok(rc) = self.table.get(r) {
                        if rc.shared {
                            self.app.unshare_redis(&rc.address);
                        }
                    }
                }
                Err(redis_error(e))
            }
        }
    }
}

/// A new connection to `address`, with the app's timeouts.
async fn redis_connect(
    app: Arc<crate::runtime::App>,
    address: &str,
) -> Result<redis::aio::MultiplexedConnection, r2::Error> {
    let client = redis::Client::open(address).map_err(|_| r2::Error::InvalidAddress)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(app.limits.redis_connect_timeout)
        .set_response_timeout(app.limits.redis_response_timeout);
    match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(c) => {
            app.redis_reachable(address, true, "");
            Ok(c)
        }
        Err(e) => {
            app.redis_reachable(address, false, &e.to_string());
            Err(redis_error(e))
        }
    }
}

impl r2::Host for InstanceState {}

impl r2::HostConnection for InstanceState {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, r2::Error> {
        if !self.component.allow.allows_url(&address) || !address.starts_with("redis") {
            return Err(r2::Error::InvalidAddress);
        }
        if self.redis_connections >= MAX_REDIS_CONNECTIONS {
            return Err(r2::Error::TooManyConnections);
        }
        let shared = self.app.redis_shared(&address);
        let conn = match shared {
            Some(c) => c,
            None => {
                let c = redis_connect(self.app.clone(), &address).await?;
                self.app.share_redis(&address, c.clone());
                c
            }
        };
        self.redis_connections += 1;
        self.table
            .push(RedisConnection {
                address,
                conn,
                shared: true,
            })
            .map_err(|e| r2::Error::Other(e.to_string()))
    }

    async fn publish(
        &mut self,
        this: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), r2::Error> {
        self.redis_run::<i64>(
            &this,
            redis::cmd("PUBLISH").arg(channel).arg(payload).clone(),
        )
        .await
        .map(|_| ())
    }

    async fn get(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, r2::Error> {
        self.redis_run(&this, redis::cmd("GET").arg(key).clone())
            .await
    }

    async fn set(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), r2::Error> {
        self.redis_run::<()>(&this, redis::cmd("SET").arg(key).arg(value).clone())
            .await
    }

    async fn incr(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, r2::Error> {
        self.redis_run(&this, redis::cmd("INCR").arg(key).clone())
            .await
    }

    async fn del(
        &mut self,
        this: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, r2::Error> {
        self.redis_run(&this, redis::cmd("DEL").arg(keys).clone())
            .await
    }

    async fn sadd(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, r2::Error> {
        self.redis_run(&this, redis::cmd("SADD").arg(key).arg(values).clone())
            .await
    }

    async fn smembers(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, r2::Error> {
        self.redis_run(&this, redis::cmd("SMEMBERS").arg(key).clone())
            .await
    }

    async fn srem(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, r2::Error> {
        self.redis_run(&this, redis::cmd("SREM").arg(key).arg(values).clone())
            .await
    }

    async fn execute(
        &mut self,
        this: Resource<RedisConnection>,
        command: String,
        arguments: Vec<r2::RedisParameter>,
    ) -> Result<Vec<r2::RedisResult>, r2::Error> {
        if redis_command_changes_state(&command) {
            // From here on this guest's own connection, as Spin gives every guest.
            let shared = self.table.get(&this).map(|c| c.shared).unwrap_or(false);
            if shared {
                let address = self
                    .table
                    .get(&this)
                    .map(|c| c.address.clone())
                    .map_err(|e| r2::Error::Other(e.to_string()))?;
                let own = redis_connect(self.app.clone(), &address).await?;
                let rc = self
                    .table
                    .get_mut(&this)
                    .map_err(|e| r2::Error::Other(e.to_string()))?;
                rc.conn = own;
                rc.shared = false;
            }
        }
        let mut cmd = redis::cmd(&command);
        for a in arguments {
            match a {
                r2::RedisParameter::Int64(i) => cmd.arg(i),
                r2::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let v: redis::Value = self.redis_run(&this, cmd).await?;
        let mut out = Vec::new();
        flatten(v, &mut out);
        Ok(out)
    }

    async fn drop(&mut self, this: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.redis_connections = self.redis_connections.saturating_sub(1);
        Ok(())
    }
}

/// Redis replies as Spin hands them to guests: arrays flattened.
fn flatten(v: redis::Value, out: &mut Vec<r2::RedisResult>) {
    use redis::Value as V;
    match v {
        V::Nil => out.push(r2::RedisResult::Nil),
        V::Int(i) => out.push(r2::RedisResult::Int64(i)),
        V::BulkString(b) => out.push(r2::RedisResult::Binary(b)),
        V::SimpleString(s) => out.push(r2::RedisResult::Status(s)),
        V::Okay => out.push(r2::RedisResult::Status("OK".into())),
        V::Array(items) | V::Set(items) => items.into_iter().for_each(|i| flatten(i, out)),
        V::Double(d) => out.push(r2::RedisResult::Binary(d.to_string().into_bytes())),
        V::Boolean(b) => out.push(r2::RedisResult::Int64(b as i64)),
        V::VerbatimString { text, .. } => out.push(r2::RedisResult::Binary(text.into_bytes())),
        V::BigNumber(n) => out.push(r2::RedisResult::Binary(n.to_string().into_bytes())),
        V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out)
        }),
        V::Attribute { data, .. } => flatten(*data, out),
        V::Push { data, .. } => data.into_iter().for_each(|i| flatten(i, out)),
        V::ServerError(e) => out.push(r2::RedisResult::Status(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_leave_state_on_the_connection_are_recognised() {
        for s in [
            "PRAGMA cache_size = 10",
            "  pragma busy_timeout=1",
            "ATTACH 'x.db' AS x",
            "detach x",
            "CREATE TEMP TABLE t (a)",
            "create temporary view v as select 1",
        ] {
            assert!(changes_connection_state(s), "{s}");
        }
        for s in [
            "PRAGMA foreign_keys = ON",
            "pragma main.foreign_keys=off",
            "SELECT 'pragma'",
            "CREATE TABLE temp_rows (a)",
            "INSERT INTO t VALUES (1)",
            "BEGIN IMMEDIATE",
        ] {
            assert!(!changes_connection_state(s), "{s}");
        }
    }

    #[test]
    fn write_transactions_are_recognised() {
        for s in [
            "BEGIN IMMEDIATE",
            "begin exclusive;",
            "  Begin  Immediate Transaction",
        ] {
            assert!(begins_write_transaction(s), "{s}");
        }
        for s in [
            "BEGIN",
            "BEGIN DEFERRED",
            "COMMIT",
            "SELECT 'begin immediate'",
        ] {
            assert!(!begins_write_transaction(s), "{s}");
        }
    }

    fn int(r: &s3::QueryResult) -> i64 {
        match r.rows[0].values[0] {
            s3::Value::Integer(i) => i,
            ref v => panic!("{v:?}"),
        }
    }

    #[test]
    fn foreign_keys_are_the_guests_own_and_a_pooled_connection_comes_back_as_a_new_one_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let at = SqliteLocation::File(dir.path().join("p.db"));
        let pool = Arc::new(SqlitePool::default());
        let new = || Idle {
            db: connect("default", &at).unwrap(),
            foreign_keys: false,
        };
        let mut c = Pooled::new(new(), pool.clone(), "default");
        c.run("CREATE TABLE p (id INTEGER PRIMARY KEY)", vec![])
            .unwrap();
        c.run("CREATE TABLE c (p INTEGER REFERENCES p (id))", vec![])
            .unwrap();
        c.run("PRAGMA foreign_keys = ON", vec![]).unwrap();
        assert_eq!(int(&c.run("PRAGMA foreign_keys", vec![]).unwrap()), 1);
        c.run("BEGIN", vec![]).unwrap();
        let e = c.run("INSERT INTO c VALUES (9)", vec![]).unwrap_err();
        assert!(format!("{e:?}").contains("FOREIGN KEY"), "{e:?}");
        c.run("INSERT INTO p VALUES (1)", vec![]).unwrap();
        assert!(!c.db.is_autocommit());
        // The guest drops its connection: it goes back to the pool.
        drop(SqliteConnection {
            conn: Some(Arc::new(Mutex::new(c))),
        });

        let mut c = Pooled::new(pool.take("default").expect("kept"), pool.clone(), "default");
        assert!(pool.take("default").is_none(), "handed out once");
        assert!(c.db.is_autocommit(), "the open transaction was rolled back");
        assert_eq!(int(&c.run("SELECT count(*) FROM p", vec![]).unwrap()), 0);
        assert_eq!(
            int(&c.run("PRAGMA foreign_keys", vec![]).unwrap()),
            0,
            "off, as on a new connection"
        );
        c.run("INSERT INTO c VALUES (9)", vec![]).unwrap();
        c.run("pragma main.foreign_keys=1;", vec![]).unwrap();
        assert!(
            c.run("INSERT INTO c VALUES (8)", vec![]).is_err(),
            "on again when asked"
        );
        // Inside a transaction the pragma changes nothing, as in SQLite.
        c.run("BEGIN", vec![]).unwrap();
        c.run("PRAGMA foreign_keys = OFF", vec![]).unwrap();
        assert!(c.run("INSERT INTO c VALUES (7)", vec![]).is_err());
        c.run("ROLLBACK", vec![]).unwrap();
        // One that ran another PRAGMA is closed, not kept.
        c.run("PRAGMA cache_size = 10", vec![]).unwrap();
        drop(SqliteConnection {
            conn: Some(Arc::new(Mutex::new(c))),
        });
        assert!(
            pool.take("default").is_none(),
            "not kept after PRAGMA cache_size"
        );

        for _ in 0..POOLED_PER_DATABASE + 3 {
            pool.put("default", new());
        }
        let mut kept = 0;
        while pool.take("default").is_some() {
            kept += 1;
        }
        assert_eq!(kept, POOLED_PER_DATABASE);
    }
}
