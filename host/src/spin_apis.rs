//! The Spin host interfaces a spin-sdk 5.2 component imports:
//! `fermyon:spin/{sqlite,redis,variables}@2.0.0` and `spin:sqlite/sqlite@3.0.0`,
//! with Spin's error variants.

use crate::runtime::InstanceState;
use crate::runtime_config::SqliteLocation;
use crate::variables::GetError;
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
    conn: Arc<Mutex<rusqlite::Connection>>,
}

pub struct RedisConnection {
    conn: redis::aio::MultiplexedConnection,
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
    Ok(SqliteConnection {
        conn: Arc::new(Mutex::new(conn)),
    })
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
    conn: Arc<Mutex<rusqlite::Connection>>,
    statement: String,
    params: Vec<s3::Value>,
) -> Result<s3::QueryResult, s3::Error> {
    tokio::task::spawn_blocking(move || {
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        execute(&conn, &statement, params)
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
    fn sqlite(&self, r: u32) -> Result<Arc<Mutex<rusqlite::Connection>>, s3::Error> {
        self.table
            .get::<SqliteConnection>(&Resource::new_borrow(r))
            .map(|c| c.conn.clone())
            .map_err(|_| s3::Error::InvalidConnection)
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
                    .last_insert_rowid()
            })
            .unwrap_or(0)
    }

    async fn changes(&mut self, this: Resource<SqliteConnection>) -> u64 {
        self.sqlite(this.rep())
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).changes())
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
        let client =
            redis::Client::open(address.as_str()).map_err(|_| r2::Error::InvalidAddress)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.app.limits.redis_connect_timeout)
            .set_response_timeout(self.app.limits.redis_response_timeout);
        let conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                self.app.redis_reachable(&address, true, "");
                c
            }
            Err(e) => {
                self.app.redis_reachable(&address, false, &e.to_string());
                return Err(redis_error(e));
            }
        };
        self.redis_connections += 1;
        self.table
            .push(RedisConnection { conn })
            .map_err(|e| r2::Error::Other(e.to_string()))
    }

    async fn publish(
        &mut self,
        this: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(redis_error)
    }

    async fn get(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn set(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn incr(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("INCR")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn del(
        &mut self,
        this: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn sadd(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("SADD")
            .arg(key)
            .arg(values)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn smembers(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn srem(
        &mut self,
        this: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, r2::Error> {
        let mut c = self.redis(&this)?;
        redis::cmd("SREM")
            .arg(key)
            .arg(values)
            .query_async(&mut c)
            .await
            .map_err(redis_error)
    }

    async fn execute(
        &mut self,
        this: Resource<RedisConnection>,
        command: String,
        arguments: Vec<r2::RedisParameter>,
    ) -> Result<Vec<r2::RedisResult>, r2::Error> {
        let mut c = self.redis(&this)?;
        let mut cmd = redis::cmd(&command);
        for a in arguments {
            match a {
                r2::RedisParameter::Int64(i) => cmd.arg(i),
                r2::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let v: redis::Value = cmd.query_async(&mut c).await.map_err(redis_error)?;
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
