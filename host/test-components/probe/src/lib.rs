//! A test component for billing-host. Each route exercises one host
//! interface from inside a real spin-sdk 5.2 guest and answers in plain text:
//! `ok:<result>` or `err:<variant>:<message>` so tests can assert on Spin's
//! error variants exactly.

use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;

fn ok(s: impl std::fmt::Display) -> Response {
    Response::new(200, format!("ok:{s}"))
}

fn err(variant: &str, msg: impl std::fmt::Display) -> Response {
    Response::new(200, format!("err:{variant}:{msg}"))
}

fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn tail<'a>(req: &'a Request, prefix: &str) -> &'a str {
    req.header("spin-path-info")
        .and_then(|h| h.as_str())
        .unwrap_or("")
        .strip_prefix(prefix)
        .unwrap_or("")
}

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    // Routes without a wildcard (exact ones, captures) have no path info: they report headers.
    let info = match req.header("spin-path-info").and_then(|h| h.as_str()) {
        Some(i) if !i.is_empty() => i.to_owned(),
        _ => "/headers".to_owned(),
    };
    let first = info
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    Ok(match first.as_str() {
        "hello" => Response::new(200, "hello from probe"),
        "headers" => {
            let mut lines: Vec<String> = req
                .headers()
                .filter(|(k, _)| k.starts_with("spin-") || *k == "host")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect();
            lines.sort();
            Response::new(200, lines.join("\n"))
        }
        "var" => match spin_sdk::variables::get(tail(&req, "/var/")) {
            Ok(v) => ok(v),
            Err(spin_sdk::variables::Error::InvalidName(m)) => err("invalid-name", m),
            Err(spin_sdk::variables::Error::Undefined(m)) => err("undefined", m),
            Err(e) => err("other", format!("{e:?}")),
        },
        "sqlite" => sqlite_v2(tail(&req, "/sqlite/"), req.body()),
        "sqlite3" => sqlite_v3(tail(&req, "/sqlite3/"), req.body()),
        "redis" => redis(query_param(&req, "addr").unwrap_or(""), req.body()),
        "redis-many" => {
            // Opens connections and keeps them until one is refused.
            let addr = query_param(&req, "addr").unwrap_or("");
            let mut open = Vec::new();
            loop {
                match spin_sdk::redis::Connection::open(addr) {
                    Ok(c) => open.push(c),
                    Err(spin_sdk::redis::Error::TooManyConnections) => {
                        break err("too-many-connections", open.len())
                    }
                    Err(e) => break err("other", format!("{e:?} after {}", open.len())),
                }
                if open.len() > 100 {
                    break ok("no limit");
                }
            }
        }
        "outbound" => {
            let url = String::from_utf8_lossy(req.body()).into_owned();
            let out = Request::builder().method(Method::Get).uri(url).build();
            match spin_sdk::http::send::<_, Response>(out).await {
                Ok(r) => ok(format!(
                    "{} {}",
                    r.status(),
                    String::from_utf8_lossy(r.body())
                )),
                Err(e) => err("send", format!("{e:?}")),
            }
        }
        "spin-loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mb: usize = query_param(&req, "mb")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let mut v: Vec<u8> = Vec::new();
            if v.try_reserve_exact(mb << 20).is_err() {
                return Ok(err("alloc", format!("could not allocate {mb} MiB")));
            }
            v.resize(mb << 20, 1);
            ok(v.iter().map(|b| *b as u64).sum::<u64>())
        }
        "sleep" => {
            let ms: u64 = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            ok(format!("slept {ms}"))
        }
        "file" => match std::fs::read_to_string(
            query_param(&req, "path")
                .map_or_else(|| format!("/{}", tail(&req, "/file/")), str::to_owned),
        ) {
            Ok(s) => ok(s),
            Err(e) => err("io", e),
        },
        "write-file" => match std::fs::write("/written.txt", b"x") {
            Ok(()) => ok("written"),
            Err(e) => err("io", e),
        },
        "body" => ok(req.body().len()),
        "env" => ok(std::env::var(tail(&req, "/env/")).unwrap_or_default()),
        _ => Response::new(404, "probe: no such route"),
    })
}

fn parse_params(body: &[u8]) -> (String, Vec<serde_json::Value>) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let sql = v["sql"].as_str().unwrap_or("").to_owned();
    let params = v["params"].as_array().cloned().unwrap_or_default();
    (sql, params)
}

macro_rules! to_value {
    ($m:path, $j:expr) => {{
        use $m as m;
        match $j {
            serde_json::Value::Null => m::Value::Null,
            serde_json::Value::Number(n) if n.is_i64() => m::Value::Integer(n.as_i64().unwrap()),
            serde_json::Value::Number(n) => m::Value::Real(n.as_f64().unwrap()),
            serde_json::Value::String(s) => m::Value::Text(s.clone()),
            serde_json::Value::Array(a) => {
                m::Value::Blob(a.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect())
            }
            other => m::Value::Text(other.to_string()),
        }
    }};
}

macro_rules! render {
    ($m:path, $rows:expr) => {{
        use $m as m;
        $rows
            .iter()
            .map(|r| {
                r.values
                    .iter()
                    .map(|v| match v {
                        m::Value::Integer(i) => format!("i{i}"),
                        m::Value::Real(f) => format!("r{f}"),
                        m::Value::Text(t) => format!("t{t}"),
                        m::Value::Blob(b) => format!("b{b:?}"),
                        m::Value::Null => "null".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(";")
    }};
}

fn sqlite_error(e: impl std::fmt::Debug) -> Response {
    let d = format!("{e:?}");
    let variant = [
        ("NoSuchDatabase", "no-such-database"),
        ("AccessDenied", "access-denied"),
        ("InvalidConnection", "invalid-connection"),
        ("DatabaseFull", "database-full"),
    ]
    .iter()
    .find(|(k, _)| d.contains(k))
    .map_or("io", |(_, v)| v);
    err(variant, d)
}

/// Body: {"sql": "...", "params": [...]}, several statements as {"batch": [{...}, ...]} on one connection.
fn sqlite_v2(label: &str, body: &[u8]) -> Response {
    use spin_sdk::sqlite::Connection;
    let conn = match Connection::open(label) {
        Ok(c) => c,
        Err(e) => return sqlite_error(e),
    };
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let statements: Vec<Vec<u8>> = match v["batch"].as_array() {
        Some(b) => b.iter().map(|s| s.to_string().into_bytes()).collect(),
        None => vec![body.to_vec()],
    };
    let mut last = String::new();
    for s in statements {
        let (sql, params) = parse_params(&s);
        let params: Vec<spin_sdk::sqlite::Value> = params
            .iter()
            .map(|p| to_value!(spin_sdk::sqlite, p))
            .collect();
        match conn.execute(&sql, &params) {
            Ok(r) => {
                last = format!(
                    "{}|{}",
                    r.columns.join(","),
                    render!(spin_sdk::sqlite, r.rows)
                )
            }
            Err(e) => return sqlite_error(e),
        }
    }
    ok(last)
}

fn sqlite_v3(label: &str, body: &[u8]) -> Response {
    use spin_sdk::sqlite3::Connection;
    let conn = match Connection::open(label) {
        Ok(c) => c,
        Err(e) => return sqlite_error(e),
    };
    let (sql, params) = parse_params(body);
    let params: Vec<spin_sdk::sqlite3::Value> = params
        .iter()
        .map(|p| to_value!(spin_sdk::sqlite3, p))
        .collect();
    match conn.execute(&sql, params.as_slice()) {
        Ok(r) => ok(format!(
            "{}|{}|rowid={}|changes={}",
            r.columns.join(","),
            render!(spin_sdk::sqlite3, r.rows),
            conn.last_insert_rowid(),
            conn.changes()
        )),
        Err(e) => sqlite_error(e),
    }
}

/// Body: one command per line, words separated by spaces: `set k v`, `get k`,
/// `incr k`, `del k`, `sadd k a b`, `smembers k`, `srem k a`, `publish ch msg`,
/// `exec CMD args…`.
fn redis(addr: &str, body: &[u8]) -> Response {
    use spin_sdk::redis::{Connection, Error, RedisParameter, RedisResult};
    let conn = match Connection::open(addr) {
        Ok(c) => c,
        Err(Error::InvalidAddress) => return err("invalid-address", ""),
        Err(Error::TooManyConnections) => return err("too-many-connections", ""),
        Err(e) => return err("other", format!("{e:?}")),
    };
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(body).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let strings = |from: usize| w[from..].iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = match w.first().copied() {
            Some("set") => conn
                .set(w[1], &w[2].as_bytes().to_vec())
                .map(|_| "OK".to_string()),
            Some("get") => conn.get(w[1]).map(|v| {
                v.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|| "nil".into())
            }),
            Some("incr") => conn.incr(w[1]).map(|n| n.to_string()),
            Some("del") => conn.del(&strings(1)).map(|n| n.to_string()),
            Some("sadd") => conn.sadd(w[1], &strings(2)).map(|n| n.to_string()),
            Some("srem") => conn.srem(w[1], &strings(2)).map(|n| n.to_string()),
            Some("smembers") => conn.smembers(w[1]).map(|mut m| {
                m.sort();
                m.join(",")
            }),
            Some("publish") => conn
                .publish(w[1], &w[2].as_bytes().to_vec())
                .map(|_| "published".to_string()),
            Some("exec") => {
                let args: Vec<RedisParameter> = w[2..]
                    .iter()
                    .map(|a| {
                        a.parse::<i64>()
                            .map(RedisParameter::Int64)
                            .unwrap_or_else(|_| RedisParameter::Binary(a.as_bytes().to_vec()))
                    })
                    .collect();
                conn.execute(w[1], &args).map(|rs| {
                    rs.iter()
                        .map(|r| match r {
                            RedisResult::Nil => "nil".to_string(),
                            RedisResult::Status(s) => format!("status:{s}"),
                            RedisResult::Int64(i) => format!("int:{i}"),
                            RedisResult::Binary(b) => format!("bin:{}", String::from_utf8_lossy(b)),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
            }
            _ => Ok("?".to_string()),
        };
        match r {
            Ok(s) => out.push(s),
            Err(Error::TypeError) => out.push("err:type-error".into()),
            Err(e) => out.push(format!("err:{e:?}")),
        }
    }
    ok(out.join("|"))
}
