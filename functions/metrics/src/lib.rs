//! `metrics`: the dashboard's numbers.
//!
//! - `GET /api/metrics/summary?from&to&user&model`: cost, tokens per class,
//!   turns, inference requests, messages, answers, active users, average latency.
//! - `GET /api/metrics/timeseries?from&to&bucket=minute|hour|day&by=model|user&user&model`:
//!   the same per bucket, one series per model or user (or one in all).
//! - `GET /api/metrics/top-users?from&to&limit` (admin): users by cost.
//! - `GET /api/metrics/threads?from&to&user&limit`: threads by last
//!   activity with their turns, messages, tokens, cost and latency.
//!
//! Read from the Redis aggregates the bridge keeps (key layout in
//! `billing_core::aggregates`), one script call per request; from the
//! SQLite event ledger (`processed_events`) when Redis is away or lacks the
//! aggregates (`"source": "sqlite"` in the answer). Both count the same
//! facts. Every query is bounded: ranges of at most 366 days, aligned to
//! whole hours (summary, top-users) or to the bucket (timeseries), at most
//! 1,500 points per series, 50 series, 100 rows.
//!
//! A user sees only their own numbers (`user` defaults to them; another
//! user's id is 403); admin sees everyone's, or one user's with `user=`.

use billing_core::aggregates::{self as agg, Res, METRICS};
use billing_core::Timestamp;
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{col, col_opt, int, text};
use billing_fn_common::input;
use billing_fn_common::{clock, json, respond, ApiError, ApiResult, Caller, Db};
use serde_json::{json, Value};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::redis::{RedisParameter, RedisResult};
use std::collections::BTreeMap;

const MAX_RANGE_MS: i64 = 366 * 86_400_000;
const MAX_POINTS: i64 = 1_500;
const MAX_SERIES: usize = 50;
/// Present when the Redis aggregates cover all of SQLite (set by the bridge's rebuild).
const COMPLETE: &str = "billing:aggregates-complete";

#[http_component]
fn handle(req: Request) -> Response {
    respond(route(&req))
}

fn route(req: &Request) -> ApiResult<Response> {
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let segs = input::segments(req);
    let q = input::query(req)?;
    match (req.method(), segs.as_slice()) {
        (Method::Get, ["api", "metrics", "summary"]) => summary(&db, &caller, &q),
        (Method::Get, ["api", "metrics", "timeseries"]) => timeseries(&db, &caller, &q),
        (Method::Get, ["api", "metrics", "top-users"]) => top_users(&db, &caller, &q),
        (Method::Get, ["api", "metrics", "threads"]) => threads(&db, &caller, &q),
        (_, ["api", "metrics", "summary" | "timeseries" | "top-users" | "threads"]) => {
            Err(ApiError::MethodNotAllowed(format!(
                "{} is not allowed on {}",
                req.method(),
                req.path()
            )))
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: {}",
            req.path()
        ))),
    }
}

/// The filters every query shares, checked against the caller.
struct Scope {
    user: Option<i64>,
    model: Option<String>,
}

fn scope(db: &Db, caller: &Caller, q: &BTreeMap<String, String>) -> ApiResult<Scope> {
    let asked = q.get("user").map(|v| input::id(v, "user")).transpose()?;
    let user = match (caller.is_admin(), asked) {
        (true, u) => u,
        (false, None) => Some(caller.user_id),
        (false, Some(u)) if u == caller.user_id => Some(u),
        (false, Some(_)) => {
            return Err(ApiError::Forbidden(
                "you can see only your own metrics".into(),
            ))
        }
    };
    let model = match q.get("model") {
        None => None,
        Some(m) => {
            let known = db
                .scalar_i64(
                    "SELECT count(*) FROM dim_models WHERE model_name = ?1",
                    &[text(m.clone())],
                )?
                .unwrap_or(0)
                > 0;
            if !known {
                return Err(ApiError::invalid(
                    "model",
                    format!("there is no model `{m}`"),
                ));
            }
            Some(m.clone())
        }
    };
    Ok(Scope { user, model })
}

/// `from`..`to` aligned outward to `step` ms: `to` defaults to now, `from` to `default_span` before it.
fn range(q: &BTreeMap<String, String>, step: i64, default_span: i64) -> ApiResult<(i64, i64)> {
    let to = input::time_param(q, "to")?
        .unwrap_or_else(clock::now)
        .millis();
    let from = input::time_param(q, "from")?
        .map(Timestamp::millis)
        .unwrap_or(to - default_span);
    if from >= to {
        return Err(ApiError::invalid("from", "must be before `to`"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::invalid(
            "from",
            "the range may span at most 366 days",
        ));
    }
    let from = from.div_euclid(step) * step;
    let to = (to + step - 1).div_euclid(step) * step;
    Ok((from, to))
}

fn ts(ms: i64) -> String {
    Timestamp::from_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Redis, when it holds the complete aggregates.
fn aggregates() -> Option<Cache> {
    let cache = Cache::open();
    let complete = cache.execute("EXISTS", &[bin(COMPLETE)])?;
    matches!(complete.first(), Some(RedisResult::Int64(1))).then_some(cache)
}

fn bin(s: &str) -> RedisParameter {
    RedisParameter::Binary(s.as_bytes().to_vec())
}

fn as_i64(r: &RedisResult) -> i64 {
    match r {
        RedisResult::Int64(i) => *i,
        RedisResult::Binary(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|f| f as i64)
            .unwrap_or(0),
        _ => 0,
    }
}

fn as_string(r: &RedisResult) -> String {
    match r {
        RedisResult::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        RedisResult::Status(s) => s.clone(),
        RedisResult::Int64(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Runs a Lua script; `None` when Redis failed (the caller falls back).
fn eval(cache: &Cache, script: &str, args: Vec<String>) -> Option<Vec<RedisResult>> {
    let mut params = vec![bin(script), RedisParameter::Int64(0)];
    params.extend(args.iter().map(|a| bin(a)));
    cache.execute("EVAL", &params)
}

/// The 13 [`METRICS`] summed.
#[derive(Default, Clone, Copy)]
struct Totals([i64; 13]);

impl Totals {
    fn add(&mut self, other: &[i64]) {
        for (a, b) in self.0.iter_mut().zip(other) {
            *a += b;
        }
    }

    fn get(&self, metric: &str) -> i64 {
        METRICS
            .iter()
            .position(|m| *m == metric)
            .map(|i| self.0[i])
            .unwrap_or(0)
    }

    fn json(&self) -> Value {
        let avg = |sum: i64, n: i64| {
            if n > 0 {
                json!(sum as f64 / n as f64)
            } else {
                Value::Null
            }
        };
        json!({
            "cost_nanos": self.get("cost"),
            "cost_usd": billing_core::Nanos(self.get("cost")).display_usd(),
            "tokens": {
                "input": self.get("tok:input"), "output": self.get("tok:output"), "cache_write_5m": self.get("tok:cache_write_5m"),
                "cache_write_1h": self.get("tok:cache_write_1h"), "cache_read": self.get("tok:cache_read"),
            },
            "turns": self.get("turns"),
            "requests": self.get("requests"),
            "messages": self.get("messages"),
            "responses": self.get("responses"),
            "avg_latency_ms": avg(self.get("lat_sum"), self.get("lat_n")),
            "avg_response_latency_ms": avg(self.get("resp_lat_sum"), self.get("responses")),
        })
    }
}

/// Sums the fields `{dim}|{metric}` of every bucket key, then counts the
/// members of the union of the given sets. Returns the 13 sums per bucket
/// (as strings, summed by the caller in integers), then the count.
const SUMMARY: &str = r#"
local dim, nkeys = ARGV[1], tonumber(ARGV[2])
local metrics = {'cost','tok:input','tok:output','tok:cache_write_5m','tok:cache_write_1h','tok:cache_read','turns','requests','messages','responses','lat_sum','lat_n','resp_lat_sum'}
local fields = {}
for i, m in ipairs(metrics) do fields[i] = dim .. '|' .. m end
local out = {}
for j = 3, 2 + nkeys do
  local vals = redis.call('HMGET', ARGV[j], unpack(fields))
  for i = 1, #metrics do out[#out + 1] = vals[i] or '0' end
end
local sets = {}
for j = 3 + nkeys, #ARGV do sets[#sets + 1] = ARGV[j] end
if #sets > 0 then out[#out + 1] = #redis.call('SUNION', unpack(sets)) else out[#out + 1] = 0 end
return out
"#;

fn summary(db: &Db, caller: &Caller, q: &BTreeMap<String, String>) -> ApiResult<Response> {
    let s = scope(db, caller, q)?;
    let (from, to) = range(q, Res::Hour.millis(), 86_400_000)?;
    let buckets = agg::cover(from, to);
    let from_redis = aggregates().and_then(|cache| {
        let dim = agg::dim(s.user, s.model.as_deref());
        let mut args = vec![dim, buckets.len().to_string()];
        args.extend(buckets.iter().map(|(res, b)| agg::bucket_key(*res, b)));
        if s.user.is_none() {
            args.extend(buckets.iter().map(|(res, b)| match &s.model {
                Some(m) => agg::model_users_key(*res, b, m),
                None => agg::users_key(*res, b),
            }));
        }
        let out = eval(&cache, SUMMARY, args)?;
        if out.len() != buckets.len() * 13 + 1 {
            return None;
        }
        let mut t = Totals::default();
        for chunk in out[..out.len() - 1].chunks(13) {
            t.add(&chunk.iter().map(as_i64).collect::<Vec<_>>());
        }
        let active = if s.user.is_some() {
            i64::from(t.get("lat_n") + t.get("messages") + t.get("responses") > 0)
        } else {
            as_i64(&out[out.len() - 1])
        };
        Some((t, active))
    });
    let (totals, active, source) = match from_redis {
        Some((t, a)) => (t, a, "redis"),
        None => {
            let (t, a) = ledger_summary(db, &s, from, to)?;
            (t, a, "sqlite")
        }
    };
    let mut body = totals.json();
    let o = body.as_object_mut().expect("an object");
    o.insert("active_users".into(), json!(active));
    o.insert("from".into(), json!(ts(from)));
    o.insert("to".into(), json!(ts(to)));
    o.insert("user_id".into(), json!(s.user));
    o.insert("model".into(), json!(s.model));
    o.insert("source".into(), json!(source));
    Ok(json(200, &body))
}

/// The ledger's columns as the 13 metrics, in [`METRICS`] order.
const LEDGER_SUMS: &str = "coalesce(sum(cost_nanos), 0) AS cost,
    coalesce(sum(input_tokens) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS tin,
    coalesce(sum(output_tokens) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS tout,
    coalesce(sum(cache_write_5m_tokens) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS tw5,
    coalesce(sum(cache_write_1h_tokens) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS tw1,
    coalesce(sum(cache_read_tokens) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS tcr,
    count(*) FILTER (WHERE consumer = 'token-metrics') AS turns,
    count(*) FILTER (WHERE consumer = 'inference-events') AS requests,
    count(*) FILTER (WHERE consumer = 'raw-messages') AS messages,
    count(*) FILTER (WHERE consumer = 'llm-responses') AS responses,
    coalesce(sum(latency_ms) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')), 0) AS lat_sum,
    count(*) FILTER (WHERE consumer IN ('token-metrics', 'inference-events')) AS lat_n,
    coalesce(sum(latency_ms) FILTER (WHERE consumer = 'llm-responses'), 0) AS resp_lat_sum";
const LEDGER_COLUMNS: [&str; 13] = [
    "cost",
    "tin",
    "tout",
    "tw5",
    "tw1",
    "tcr",
    "turns",
    "requests",
    "messages",
    "responses",
    "lat_sum",
    "lat_n",
    "resp_lat_sum",
];

fn ledger_filter(s: &Scope, from: i64, to: i64) -> (String, Vec<spin_sdk::sqlite::Value>) {
    let mut sql = String::from("occurred_at >= ?1 AND occurred_at < ?2 AND consumer IN ('token-metrics', 'inference-events', 'raw-messages', 'llm-responses')");
    let mut params = vec![text(ts(from)), text(ts(to))];
    if let Some(u) = s.user {
        params.push(int(u));
        sql.push_str(&format!(" AND user_id = ?{}", params.len()));
    }
    if let Some(m) = &s.model {
        params.push(text(m.clone()));
        sql.push_str(&format!(" AND model = ?{}", params.len()));
    }
    (sql, params)
}

fn row_totals(row: &spin_sdk::sqlite::Row<'_>) -> ApiResult<Totals> {
    let mut t = Totals::default();
    for (i, c) in LEDGER_COLUMNS.iter().enumerate() {
        t.0[i] = col(row, c)?;
    }
    Ok(t)
}

fn ledger_summary(db: &Db, s: &Scope, from: i64, to: i64) -> ApiResult<(Totals, i64)> {
    let (filter, params) = ledger_filter(s, from, to);
    let r = db.query(&format!("SELECT {LEDGER_SUMS}, count(DISTINCT user_id) AS users FROM processed_events WHERE {filter}"), &params)?;
    let row = r
        .rows()
        .next()
        .ok_or_else(|| ApiError::Internal("an aggregate returned no row".into()))?;
    Ok((row_totals(&row)?, col(&row, "users")?))
}

/// For every bucket key (ARGV[3..]), the fields that match: exactly `dim|*`
/// (mode `exact`) or whose dim starts with a prefix and, when given, ends
/// with a suffix (mode `prefix`). Returns (bucket index, field, value) triples.
const SERIES: &str = r#"
local mode, a, b = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for j = 4, #ARGV do
  local kv = redis.call('HGETALL', ARGV[j])
  for i = 1, #kv, 2 do
    local f = kv[i]
    local bar = string.find(f, '|', 1, true)
    local dim = string.sub(f, 1, bar - 1)
    local hit
    if mode == 'exact' then hit = (dim == a)
    else hit = (string.sub(dim, 1, #a) == a) and (b == '' or string.sub(dim, -#b) == b) end
    if hit then
      out[#out + 1] = j - 3
      out[#out + 1] = f
      out[#out + 1] = kv[i + 1]
    end
  end
end
return out
"#;

fn timeseries(db: &Db, caller: &Caller, q: &BTreeMap<String, String>) -> ApiResult<Response> {
    let s = scope(db, caller, q)?;
    let res = match q.get("bucket").map(String::as_str).unwrap_or("hour") {
        "minute" => Res::Minute,
        "hour" => Res::Hour,
        "day" => Res::Day,
        other => {
            return Err(ApiError::invalid(
                "bucket",
                format!("`{other}` is not one of minute, hour, day"),
            ))
        }
    };
    let by = match q.get("by").map(String::as_str) {
        None | Some("") => None,
        Some(b @ ("model" | "user")) => Some(b.to_owned()),
        Some(other) => {
            return Err(ApiError::invalid(
                "by",
                format!("`{other}` is not one of model, user"),
            ))
        }
    };
    if by.as_deref() == Some("user") && !caller.is_admin() {
        return Err(ApiError::Forbidden(
            "only admin may break metrics down by user".into(),
        ));
    }
    let (from, to) = range(q, res.millis(), res.millis() * 24)?;
    let points = (to - from) / res.millis();
    if points > MAX_POINTS {
        return Err(ApiError::invalid("bucket", format!("{points} points asked; at most {MAX_POINTS}: use a coarser bucket or a shorter range")));
    }
    let user_model = s.user.is_some() && s.model.is_some()
        || by.as_deref() == Some("user") && s.model.is_some()
        || by.as_deref() == Some("model") && s.user.is_some();
    if res == Res::Minute && user_model {
        return Err(ApiError::invalid("bucket", "minute buckets are kept per user and per model, not per user and model: use hour or day"));
    }
    let starts: Vec<i64> = (0..points).map(|i| from + i * res.millis()).collect();
    // Series key → per-point totals.
    let (series, source) = match aggregates()
        .and_then(|cache| series_from_redis(&cache, &s, by.as_deref(), res, &starts))
    {
        Some(found) => (found, "redis"),
        None => (
            series_from_ledger(db, &s, by.as_deref(), res, from, to, &starts)?,
            "sqlite",
        ),
    };
    // Keep the series with the highest cost; fold the rest into "others".
    let mut ranked: Vec<(String, Vec<Totals>)> = series.into_iter().collect();
    ranked
        .sort_by_key(|(_, pts)| std::cmp::Reverse(pts.iter().map(|t| t.get("cost")).sum::<i64>()));
    if ranked.len() > MAX_SERIES {
        let rest = ranked.split_off(MAX_SERIES - 1);
        let mut others = vec![Totals::default(); starts.len()];
        for (_, pts) in rest {
            for (o, p) in others.iter_mut().zip(pts) {
                o.add(&p.0);
            }
        }
        ranked.push(("others".into(), others));
    }
    let out: Vec<Value> = ranked
        .into_iter()
        .map(|(key, pts)| {
            let points: Vec<Value> = starts
                .iter()
                .zip(pts)
                .map(|(t, p)| {
                    let mut v = p.json();
                    v.as_object_mut()
                        .expect("an object")
                        .insert("t".into(), json!(ts(*t)));
                    v
                })
                .collect();
            json!({ "key": key, "points": points })
        })
        .collect();
    Ok(json(
        200,
        &json!({
            "from": ts(from), "to": ts(to), "bucket": q.get("bucket").cloned().unwrap_or_else(|| "hour".into()), "by": by,
            "user_id": s.user, "model": s.model, "series": out, "source": source,
        }),
    ))
}

fn series_from_redis(
    cache: &Cache,
    s: &Scope,
    by: Option<&str>,
    res: Res,
    starts: &[i64],
) -> Option<BTreeMap<String, Vec<Totals>>> {
    let (mode, a, b) = match (by, s.user, &s.model) {
        (None, u, m) => ("exact", agg::dim(u, m.as_deref()), String::new()),
        (Some("model"), None, None) => ("prefix", "m:".to_owned(), String::new()),
        (Some("model"), Some(u), None) => ("prefix", format!("um:{u}:"), String::new()),
        (Some("model"), u, Some(m)) => ("exact", agg::dim(u, Some(m)), String::new()),
        (Some(_), None, None) => ("prefix", "u:".to_owned(), String::new()),
        (Some(_), None, Some(m)) => ("prefix", "um:".to_owned(), format!(":{m}")),
        (Some(_), Some(u), m) => ("exact", agg::dim(Some(u), m.as_deref()), String::new()),
    };
    let mut args = vec![mode.to_owned(), a, b];
    args.extend(starts.iter().map(|t| {
        agg::bucket_key(
            res,
            &res.bucket(Timestamp::from_millis(*t).expect("in range")),
        )
    }));
    let out = eval(cache, SERIES, args)?;
    let mut series: BTreeMap<String, Vec<Totals>> = BTreeMap::new();
    for triple in out.chunks(3) {
        let [i, field, value] = triple else {
            return None;
        };
        let i = as_i64(i) as usize - 1;
        let field = as_string(field);
        let (dim, metric) = field.split_once('|')?;
        let key = series_key(dim, by);
        let m = METRICS.iter().position(|x| *x == metric)?;
        let pts = series
            .entry(key)
            .or_insert_with(|| vec![Totals::default(); starts.len()]);
        pts.get_mut(i)?.0[m] += as_i64(value);
    }
    if by.is_none() && series.is_empty() {
        series.insert("all".into(), vec![Totals::default(); starts.len()]);
    }
    Some(series)
}

/// The series a bucket-hash dimension belongs to: the model or the user id.
fn series_key(dim: &str, by: Option<&str>) -> String {
    let parts: Vec<&str> = dim.splitn(3, ':').collect();
    match (by, parts.as_slice()) {
        (Some("model"), ["m", m]) | (Some("model"), ["um", _, m]) => (*m).to_owned(),
        (Some("user"), ["u", u]) | (Some("user"), ["um", u, _]) => (*u).to_owned(),
        _ => "all".to_owned(),
    }
}

fn series_from_ledger(
    db: &Db,
    s: &Scope,
    by: Option<&str>,
    res: Res,
    from: i64,
    to: i64,
    starts: &[i64],
) -> ApiResult<BTreeMap<String, Vec<Totals>>> {
    let (filter, params) = ledger_filter(s, from, to);
    let prefix = match res {
        Res::Minute => 16,
        Res::Hour => 13,
        Res::Day => 10,
    };
    let group = match by {
        Some("model") => "model",
        Some(_) => "CAST(user_id AS TEXT)",
        None => "'all'",
    };
    let r = db.query(
        &format!("SELECT substr(occurred_at, 1, {prefix}) AS bucket, {group} AS series, {LEDGER_SUMS} FROM processed_events WHERE {filter} GROUP BY 1, 2"),
        &params,
    )?;
    let index: BTreeMap<String, usize> = starts
        .iter()
        .enumerate()
        .map(|(i, t)| (res.bucket(Timestamp::from_millis(*t).expect("in range")), i))
        .collect();
    let mut series: BTreeMap<String, Vec<Totals>> = BTreeMap::new();
    for row in r.rows() {
        let Some(&i) = index.get(col::<&str>(&row, "bucket")?) else {
            continue;
        };
        let key = col::<&str>(&row, "series")?.to_owned();
        series
            .entry(key)
            .or_insert_with(|| vec![Totals::default(); starts.len()])[i] = row_totals(&row)?;
    }
    if by.is_none() && series.is_empty() {
        series.insert("all".into(), vec![Totals::default(); starts.len()]);
    }
    Ok(series)
}

fn top_users(db: &Db, caller: &Caller, q: &BTreeMap<String, String>) -> ApiResult<Response> {
    caller.require_admin()?;
    let limit = input::int_param(q, "limit", 10, 1, 100)? as usize;
    let (from, to) = range(q, Res::Hour.millis(), 30 * 86_400_000)?;
    let buckets = agg::cover(from, to);
    let from_redis = aggregates().and_then(|cache| {
        let mut params = vec![RedisParameter::Int64(buckets.len() as i64)];
        params.extend(buckets.iter().map(|(res, b)| bin(&agg::top_key(*res, b))));
        params.push(bin("WITHSCORES"));
        let out = cache.execute("ZUNION", &params)?;
        let mut users: Vec<(i64, i64)> = out
            .chunks(2)
            .filter_map(|p| Some((as_string(p.first()?).parse().ok()?, as_i64(p.get(1)?))))
            .collect();
        users.sort_by_key(|(u, c)| (std::cmp::Reverse(*c), *u));
        users.truncate(limit);
        Some(users)
    });
    let (users, source) = match from_redis {
        Some(u) => (u, "redis"),
        None => {
            let (filter, params) = ledger_filter(
                &Scope {
                    user: None,
                    model: None,
                },
                from,
                to,
            );
            let r = db.query(
                &format!("SELECT user_id, sum(cost_nanos) AS cost FROM processed_events WHERE {filter} AND consumer IN ('token-metrics', 'inference-events') GROUP BY user_id ORDER BY cost DESC, user_id LIMIT {limit}"),
                &params,
            )?;
            let users = r
                .rows()
                .map(|row| Ok((col(&row, "user_id")?, col(&row, "cost")?)))
                .collect::<ApiResult<Vec<(i64, i64)>>>()?;
            (users, "sqlite")
        }
    };
    let names = user_names(db, &users.iter().map(|(u, _)| *u).collect::<Vec<_>>())?;
    let rows: Vec<Value> = users
        .iter()
        .map(|(u, c)| json!({"user_id": u, "name": names.get(u), "cost_nanos": c, "cost_usd": billing_core::Nanos(*c).display_usd()}))
        .collect();
    Ok(json(
        200,
        &json!({"from": ts(from), "to": ts(to), "users": rows, "source": source}),
    ))
}

fn user_names(db: &Db, ids: &[i64]) -> ApiResult<BTreeMap<i64, String>> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("?{i}")).collect();
    let r = db.query(
        &format!(
            "SELECT user_id, name FROM dim_users WHERE user_id IN ({})",
            marks.join(", ")
        ),
        &ids.iter().map(|u| int(*u)).collect::<Vec<_>>(),
    )?;
    r.rows()
        .map(|row| Ok((col(&row, "user_id")?, col::<&str>(&row, "name")?.to_owned())))
        .collect()
}

/// The threads of a sorted set with scores in [ARGV[2], ARGV[3]], newest
/// first, at most ARGV[4]: for each, its id, last activity and the fields
/// of its hash in the order of ARGV[5..].
const THREADS: &str = r#"
local ids = redis.call('ZREVRANGEBYSCORE', ARGV[1], ARGV[3], ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local fields = {}
for j = 5, #ARGV do fields[#fields + 1] = ARGV[j] end
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  local vals = redis.call('HMGET', 'billing:agg:thread:' .. ids[i], unpack(fields))
  for k = 1, #fields do out[#out + 1] = vals[k] or '' end
end
return out
"#;

/// A thread: its id, last activity (ms) and [`THREAD_FIELDS`] as text.
type ThreadRow = (i64, i64, Vec<String>);

const THREAD_FIELDS: [&str; 12] = [
    "user",
    "model",
    "turns",
    "messages",
    "cost",
    "tok:input",
    "tok:output",
    "tok:cache_write_5m",
    "tok:cache_write_1h",
    "tok:cache_read",
    "lat_sum",
    "lat_n",
];

fn threads(db: &Db, caller: &Caller, q: &BTreeMap<String, String>) -> ApiResult<Response> {
    let s = scope(db, caller, q)?;
    if s.model.is_some() {
        return Err(ApiError::invalid(
            "model",
            "threads are listed per user; filter by user, not model",
        ));
    }
    let limit = input::int_param(q, "limit", 20, 1, 100)?;
    let (from, to) = range(q, 1, 30 * 86_400_000)?;
    let from_redis = aggregates().and_then(|cache| {
        let mut args = vec![
            agg::threads_key(s.user),
            from.to_string(),
            format!("({to}"),
            limit.to_string(),
        ];
        args.extend(THREAD_FIELDS.iter().map(|f| (*f).to_owned()));
        let out = eval(&cache, THREADS, args)?;
        let rows: Vec<ThreadRow> = out
            .chunks(2 + THREAD_FIELDS.len())
            .filter_map(|c| {
                Some((
                    as_string(c.first()?).parse().ok()?,
                    as_i64(c.get(1)?),
                    c[2..].iter().map(as_string).collect(),
                ))
            })
            .collect();
        Some(rows)
    });
    let (rows, source): (Vec<ThreadRow>, &str) = match from_redis {
        Some(r) => (r, "redis"),
        None => (ledger_threads(db, &s, from, to, limit)?, "sqlite"),
    };
    let titles = thread_titles(db, &rows.iter().map(|r| r.0).collect::<Vec<_>>())?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(id, last, f)| {
            let n = |i: usize| f[i].parse::<i64>().unwrap_or(0);
            let lat_n = n(11);
            json!({
                "thread_id": id, "title": titles.get(id), "user_id": f[0].parse::<i64>().ok(), "model": f[1],
                "last_activity": ts(*last), "turns": n(2), "messages": n(3),
                "cost_nanos": n(4), "cost_usd": billing_core::Nanos(n(4)).display_usd(),
                "tokens": {"input": n(5), "output": n(6), "cache_write_5m": n(7), "cache_write_1h": n(8), "cache_read": n(9)},
                "avg_latency_ms": if lat_n > 0 { json!(n(10) as f64 / lat_n as f64) } else { Value::Null },
            })
        })
        .collect();
    Ok(json(
        200,
        &json!({"from": ts(from), "to": ts(to), "user_id": s.user, "threads": out, "source": source}),
    ))
}

fn ledger_threads(db: &Db, s: &Scope, from: i64, to: i64, limit: i64) -> ApiResult<Vec<ThreadRow>> {
    let mut sql = String::from(
        "SELECT thread_id, max(user_id) AS user, max(model) AS model, max(occurred_at) AS last,
                count(*) FILTER (WHERE consumer = 'token-metrics') AS turns, count(*) FILTER (WHERE consumer = 'raw-messages') AS messages,
                sum(cost_nanos) AS cost, sum(input_tokens) AS tin, sum(output_tokens) AS tout, sum(cache_write_5m_tokens) AS tw5,
                sum(cache_write_1h_tokens) AS tw1, sum(cache_read_tokens) AS tcr,
                coalesce(sum(latency_ms) FILTER (WHERE consumer = 'token-metrics'), 0) AS lat_sum, count(*) FILTER (WHERE consumer = 'token-metrics') AS lat_n
         FROM processed_events WHERE thread_id IS NOT NULL AND consumer IN ('token-metrics', 'raw-messages')",
    );
    let mut params = Vec::new();
    if let Some(u) = s.user {
        params.push(int(u));
        sql.push_str(" AND user_id = ?1");
    }
    params.push(text(ts(from)));
    params.push(text(ts(to)));
    sql.push_str(&format!(" GROUP BY thread_id HAVING max(occurred_at) >= ?{} AND max(occurred_at) < ?{} ORDER BY last DESC LIMIT {limit}", params.len() - 1, params.len()));
    let r = db.query(&sql, &params)?;
    r.rows()
        .map(|row| {
            let last = Timestamp::parse(col::<&str>(&row, "last")?)
                .map(Timestamp::millis)
                .unwrap_or(0);
            let mut f = vec![
                col::<i64>(&row, "user")?.to_string(),
                col::<&str>(&row, "model")?.to_owned(),
            ];
            for c in [
                "turns", "messages", "cost", "tin", "tout", "tw5", "tw1", "tcr", "lat_sum", "lat_n",
            ] {
                f.push(col::<i64>(&row, c)?.to_string());
            }
            Ok((col(&row, "thread_id")?, last, f))
        })
        .collect()
}

fn thread_titles(db: &Db, ids: &[i64]) -> ApiResult<BTreeMap<i64, String>> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("?{i}")).collect();
    let r = db.query(
        &format!(
            "SELECT thread_id, title FROM user_threads WHERE thread_id IN ({})",
            marks.join(", ")
        ),
        &ids.iter().map(|u| int(*u)).collect::<Vec<_>>(),
    )?;
    r.rows()
        .map(|row| {
            Ok((
                col(&row, "thread_id")?,
                col_opt::<&str>(&row, "title")
                    .unwrap_or_default()
                    .to_owned(),
            ))
        })
        .collect()
}
