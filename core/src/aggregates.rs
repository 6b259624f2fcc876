//! The dashboard aggregates: what each processed event adds to Redis, and
//! where. The bridge writes them; the metrics component reads them. Both
//! take the key layout from here.
//!
//! Layout (every key under `billing:agg:`):
//! - `billing:agg:{res}:{bucket}` — a hash per time bucket; `res` is `m`
//!   (minute, bucket `2026-03-10T12:34`), `h` (hour, `2026-03-10T12`) or
//!   `d` (day, `2026-03-10`), UTC, by the event's time. Fields are
//!   `{dim}|{metric}`: `dim` is `*` (everyone), `u:{user_id}`, `m:{model}`
//!   and, in hour and day buckets only, `um:{user_id}:{model}`; metrics are
//!   [`METRICS`].
//! - `billing:agg:users:{res}:{bucket}` (hour, day) — a set of the active
//!   user ids; `…:m:{model}` the same for one model.
//! - `billing:agg:top:{res}:{bucket}` (hour, day) — a sorted set, user id by cost in nano-USD.
//! - `billing:agg:thread:{thread_id}` — a hash of the thread's counters
//!   (`turns`, `messages`, `cost`, `tok:*`, `lat_sum`, `lat_n`) and its
//!   `user` and `model`.
//! - `billing:agg:threads:all` and `billing:agg:threads:u:{user_id}` —
//!   sorted sets, thread id by the time of its last event (ms).

use crate::events::topics;
use crate::time::Timestamp;
use crate::usage::TokenClass;
use std::collections::BTreeMap;

pub const PREFIX: &str = "billing:agg:";

/// Every metric of a bucket, per dimension.
pub const METRICS: [&str; 13] = [
    "cost",
    "tok:input",
    "tok:output",
    "tok:cache_write_5m",
    "tok:cache_write_1h",
    "tok:cache_read",
    "turns",
    "requests",
    "messages",
    "responses",
    "lat_sum",
    "lat_n",
    "resp_lat_sum",
];

/// What a consumed event is, by the topic it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A chat turn's tokens (`token-metrics`).
    Turn,
    /// An inference call from the collector (`inference-events`).
    Inference,
    /// A user's chat message (`raw-messages`).
    Message,
    /// A model's answer (`llm-responses`).
    Response,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Turn, Kind::Inference, Kind::Message, Kind::Response];

    pub fn topic(self) -> &'static str {
        match self {
            Kind::Turn => topics::TOKEN_METRICS,
            Kind::Inference => topics::INFERENCE_EVENTS,
            Kind::Message => topics::RAW_MESSAGES,
            Kind::Response => topics::LLM_RESPONSES,
        }
    }

    pub fn from_topic(topic: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.topic() == topic)
    }

    /// Whether the event is billed (has line items and a cost).
    pub fn is_billed(self) -> bool {
        matches!(self, Kind::Turn | Kind::Inference)
    }
}

/// What the dashboard counts of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub kind: Kind,
    pub source: String,
    pub id: String,
    pub user_id: i64,
    pub model: String,
    pub thread_id: Option<i64>,
    pub occurred_at: Timestamp,
    pub latency_ms: u64,
    pub cost_nanos: i64,
    /// Tokens per class, in [`TokenClass::ALL`] order.
    pub tokens: [u64; 5],
}

/// Time resolution of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Minute,
    Hour,
    Day,
}

impl Res {
    pub fn code(self) -> &'static str {
        match self {
            Res::Minute => "m",
            Res::Hour => "h",
            Res::Day => "d",
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Res::Minute => 60_000,
            Res::Hour => 3_600_000,
            Res::Day => 86_400_000,
        }
    }

    /// The bucket label of `at`: a prefix of its RFC 3339 form.
    pub fn bucket(self, at: Timestamp) -> String {
        let s = at.to_rfc3339();
        s[..match self {
            Res::Minute => 16,
            Res::Hour => 13,
            Res::Day => 10,
        }]
            .to_owned()
    }

    /// The start of `at`'s bucket, in ms.
    pub fn floor(self, ms: i64) -> i64 {
        ms.div_euclid(self.millis()) * self.millis()
    }
}

pub fn bucket_key(res: Res, bucket: &str) -> String {
    format!("{PREFIX}{}:{bucket}", res.code())
}

pub fn users_key(res: Res, bucket: &str) -> String {
    format!("{PREFIX}users:{}:{bucket}", res.code())
}

/// The active users of one model in a bucket.
pub fn model_users_key(res: Res, bucket: &str, model: &str) -> String {
    format!("{PREFIX}users:{}:{bucket}:m:{model}", res.code())
}

/// The buckets that exactly cover [`from_ms`, `to_ms`), both whole hours:
/// whole days where they fit, hours at the edges. At most 46 hours and
/// one bucket per day of the range.
pub fn cover(from_ms: i64, to_ms: i64) -> Vec<(Res, String)> {
    let (h, d) = (Res::Hour.millis(), Res::Day.millis());
    debug_assert!(from_ms % h == 0 && to_ms % h == 0);
    let mut out = Vec::new();
    let mut t = from_ms;
    let label =
        |res: Res, ms: i64| res.bucket(Timestamp::from_millis(ms).expect("a time in range"));
    while t < to_ms {
        if t % d == 0 && t + d <= to_ms {
            out.push((Res::Day, label(Res::Day, t)));
            t += d;
        } else {
            out.push((Res::Hour, label(Res::Hour, t)));
            t += h;
        }
    }
    out
}

pub fn top_key(res: Res, bucket: &str) -> String {
    format!("{PREFIX}top:{}:{bucket}", res.code())
}

pub fn thread_key(thread_id: i64) -> String {
    format!("{PREFIX}thread:{thread_id}")
}

/// The threads by last activity: everyone's, or one user's.
pub fn threads_key(user_id: Option<i64>) -> String {
    match user_id {
        Some(u) => format!("{PREFIX}threads:u:{u}"),
        None => format!("{PREFIX}threads:all"),
    }
}

/// A dimension of a bucket hash, as its field prefix.
pub fn dim(user_id: Option<i64>, model: Option<&str>) -> String {
    match (user_id, model) {
        (None, None) => "*".into(),
        (Some(u), None) => format!("u:{u}"),
        (None, Some(m)) => format!("m:{m}"),
        (Some(u), Some(m)) => format!("um:{u}:{m}"),
    }
}

pub fn field(dim: &str, metric: &str) -> String {
    format!("{dim}|{metric}")
}

/// One change to Redis.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// HINCRBY key field by
    HashIncr { key: String, field: String, by: i64 },
    /// HSET key field value
    HashSet {
        key: String,
        field: String,
        value: String,
    },
    /// SADD key member
    SetAdd { key: String, member: String },
    /// ZINCRBY key by member
    ZIncr {
        key: String,
        member: String,
        by: i64,
    },
    /// ZADD key GT score member: the score only ever grows.
    ZMax {
        key: String,
        member: String,
        score: i64,
    },
}

/// The changes of many facts, merged: one increment per (key, field), one
/// add per set member, the greatest score per sorted-set member. Applying
/// them is the same as applying every fact's changes one by one.
///
/// Facts are first summed per (user, model, minute) and per thread, which
/// is all their changes depend on; [`Changes::ops`] spreads the sums over
/// the buckets' fields (about a hundred per group). A batch of thousands
/// of events from a few hundred users and models thus sums a few hundred
/// groups instead of a hundred fields per event, which was a third of the
/// bridge's second stage (perf of `billing-bench bridge`, 2026-12-01).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The models seen, each once; groups refer to them by index.
    models: Vec<String>,
    /// (user, model index, start of the minute in ms) → [`METRICS`] summed.
    groups: std::collections::HashMap<(i64, usize, i64), [i64; METRICS.len()]>,
    /// thread → its counters summed and the user and model of its latest fact.
    threads: std::collections::HashMap<i64, ThreadSum>,
    /// (thread, user) → the time of the latest event, in ms.
    thread_times: std::collections::HashMap<(i64, i64), i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadSum {
    metrics: [i64; METRICS.len()],
    user_id: i64,
    model: usize,
}

/// Index of a metric in [`METRICS`], found at compile time (a name not in
/// the list does not compile).
const fn metric(name: &str) -> usize {
    let mut i = 0;
    while i < METRICS.len() {
        let (a, b) = (METRICS[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a metric of METRICS")
}

const COST: usize = metric("cost");
const TURNS: usize = metric("turns");
const REQUESTS: usize = metric("requests");
const MESSAGES: usize = metric("messages");
const RESPONSES: usize = metric("responses");
const LAT_SUM: usize = metric("lat_sum");
const LAT_N: usize = metric("lat_n");
const RESP_LAT_SUM: usize = metric("resp_lat_sum");
/// The token classes' metrics, in [`TokenClass::ALL`] order.
const TOKENS: [usize; 5] = [
    metric("tok:input"),
    metric("tok:output"),
    metric("tok:cache_write_5m"),
    metric("tok:cache_write_1h"),
    metric("tok:cache_read"),
];

/// Adds `from` into `into`, saturating: ingest bounds every event far below
/// `i64::MAX`, so a saturated figure means bad data slipped in, and billing
/// for others goes on. All figures are non-negative, so the order of the
/// additions does not change a saturated sum.
fn add_into(into: &mut [i64; METRICS.len()], from: &[i64; METRICS.len()]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

/// What one fact adds to every metric, in [`METRICS`] order.
fn fact_metrics(f: &Fact) -> [i64; METRICS.len()] {
    let mut m = [0i64; METRICS.len()];
    if f.kind.is_billed() {
        m[COST] = f.cost_nanos;
        for (i, n) in TOKENS.into_iter().zip(f.tokens) {
            m[i] = n as i64;
        }
        m[if f.kind == Kind::Turn {
            TURNS
        } else {
            REQUESTS
        }] = 1;
        m[LAT_SUM] = f.latency_ms as i64;
        m[LAT_N] = 1;
    } else if f.kind == Kind::Message {
        m[MESSAGES] = 1;
    } else {
        m[RESPONSES] = 1;
        m[RESP_LAT_SUM] = f.latency_ms as i64;
    }
    m
}

/// The merged changes spread over keys and fields, ordered.
#[derive(Default)]
struct Expanded {
    /// key → field → by; nested so that adding to an existing field
    /// allocates nothing.
    incr: BTreeMap<String, BTreeMap<String, i64>>,
    set: BTreeMap<(String, String), String>,
    members: BTreeMap<String, std::collections::BTreeSet<String>>,
    zincr: BTreeMap<(String, String), i64>,
    zmax: BTreeMap<(String, String), i64>,
}

impl Expanded {
    fn incr(&mut self, key: &str, field: &str, by: i64) {
        if by == 0 {
            return;
        }
        if !self.incr.contains_key(key) {
            self.incr.insert(key.to_owned(), BTreeMap::new());
        }
        let fields = self.incr.get_mut(key).expect("inserted above");
        match fields.get_mut(field) {
            Some(v) => *v = v.saturating_add(by),
            None => {
                fields.insert(field.to_owned(), by);
            }
        }
    }

    /// Adds a group: `metrics` of `user_id` on `model` in the minute starting at `minute_ms`.
    fn add_group(&mut self, user_id: i64, model: &str, minute_ms: i64, metrics: &[i64]) {
        let user = user_id.to_string();
        let at = Timestamp::from_millis(minute_ms).expect("the minute of a valid timestamp");
        // Field names are `{dim}|{metric}`, built in one buffer.
        let prefixes: Vec<String> = [
            dim(None, None),
            dim(Some(user_id), None),
            dim(None, Some(model)),
            dim(Some(user_id), Some(model)),
        ]
        .into_iter()
        .map(|d| field(&d, ""))
        .collect();
        let cost = metrics[COST];
        let mut name = String::new();
        for res in [Res::Minute, Res::Hour, Res::Day] {
            let bucket = res.bucket(at);
            let key = bucket_key(res, &bucket);
            // Minutes keep no per-user-and-model figures.
            let dims = if res == Res::Minute { 3 } else { 4 };
            if res != Res::Minute {
                self.members
                    .entry(users_key(res, &bucket))
                    .or_default()
                    .insert(user.clone());
                self.members
                    .entry(model_users_key(res, &bucket, model))
                    .or_default()
                    .insert(user.clone());
                // Only billed facts have a cost.
                let score = self
                    .zincr
                    .entry((top_key(res, &bucket), user.clone()))
                    .or_default();
                *score = score.saturating_add(cost);
            }
            for prefix in &prefixes[..dims] {
                for (m, by) in METRICS.iter().zip(metrics) {
                    name.clear();
                    name.push_str(prefix);
                    name.push_str(m);
                    self.incr(&key, &name, *by);
                }
            }
        }
    }
}

impl Changes {
    fn model_index(&mut self, model: &str) -> usize {
        match self.models.iter().position(|m| m == model) {
            Some(i) => i,
            None => {
                self.models.push(model.to_owned());
                self.models.len() - 1
            }
        }
    }

    /// Adds what `fact` changes.
    pub fn add(&mut self, fact: &Fact) {
        let f = fact;
        let metrics = fact_metrics(f);
        let model = self.model_index(&f.model);
        let minute = Res::Minute.floor(f.occurred_at.millis());
        add_into(
            self.groups
                .entry((f.user_id, model, minute))
                .or_insert([0; METRICS.len()]),
            &metrics,
        );
        if let (Some(t), Kind::Turn | Kind::Message) = (f.thread_id, f.kind) {
            let thread = self.threads.entry(t).or_insert(ThreadSum {
                metrics: [0; METRICS.len()],
                user_id: f.user_id,
                model,
            });
            add_into(&mut thread.metrics, &metrics);
            // The latest fact's user and model, as setting them one by one would leave them.
            thread.user_id = f.user_id;
            thread.model = model;
            let ms = f.occurred_at.millis();
            let e = self.thread_times.entry((t, f.user_id)).or_insert(ms);
            *e = (*e).max(ms);
        }
    }

    /// The merged changes, in a fixed order.
    pub fn ops(&self) -> Vec<Op> {
        let mut x = Expanded::default();
        for (&(user_id, model, minute), metrics) in &self.groups {
            x.add_group(user_id, &self.models[model], minute, metrics);
        }
        for (&t, sum) in &self.threads {
            let key = thread_key(t);
            for (m, by) in METRICS.iter().zip(&sum.metrics) {
                x.incr(&key, m, *by);
            }
            x.set
                .insert((key.clone(), "user".into()), sum.user_id.to_string());
            x.set
                .insert((key, "model".into()), self.models[sum.model].clone());
        }
        for (&(t, user_id), &ms) in &self.thread_times {
            for k in [threads_key(None), threads_key(Some(user_id))] {
                let e = x.zmax.entry((k, t.to_string())).or_insert(ms);
                *e = (*e).max(ms);
            }
        }
        let mut out = Vec::new();
        out.extend(x.incr.into_iter().flat_map(|(key, fields)| {
            fields.into_iter().map(move |(field, by)| Op::HashIncr {
                key: key.clone(),
                field,
                by,
            })
        }));
        out.extend(x.set.into_iter().map(|((key, field), value)| Op::HashSet {
            key,
            field,
            value,
        }));
        out.extend(x.members.into_iter().flat_map(|(key, ms)| {
            ms.into_iter().map(move |member| Op::SetAdd {
                key: key.clone(),
                member,
            })
        }));
        out.extend(
            x.zincr
                .into_iter()
                .filter(|(_, by)| *by != 0)
                .map(|((key, member), by)| Op::ZIncr { key, member, by }),
        );
        out.extend(x.zmax.into_iter().map(|((key, member), score)| Op::ZMax {
            key,
            member,
            score,
        }));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.threads.is_empty()
    }
}

/// The bucket-hash metric of a token class: `tok:{class}`.
pub fn tok_metric(class: TokenClass) -> &'static str {
    match class {
        TokenClass::Input => "tok:input",
        TokenClass::Output => "tok:output",
        TokenClass::CacheWrite5m => "tok:cache_write_5m",
        TokenClass::CacheWrite1h => "tok:cache_write_1h",
        TokenClass::CacheRead => "tok:cache_read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(kind: Kind, id: &str, user: i64, at: &str, cost: i64) -> Fact {
        Fact {
            kind,
            source: "/t".into(),
            id: id.into(),
            user_id: user,
            model: "claude-haiku-4-5-20251001".into(),
            thread_id: Some(9),
            occurred_at: Timestamp::parse(at).unwrap(),
            latency_ms: 100,
            cost_nanos: cost,
            tokens: [10, 20, 0, 0, 5],
        }
    }

    // Merging two facts gives the sums of each; zero counts write nothing.
    #[test]
    fn merged_changes_are_the_sums() {
        let mut c = Changes::default();
        c.add(&fact(Kind::Turn, "a", 2, "2026-03-10T12:34:56.000Z", 700));
        c.add(&fact(Kind::Turn, "b", 3, "2026-03-10T12:59:00.000Z", 300));
        let ops = c.ops();
        let incr = |key: &str, field: &str| {
            ops.iter().find_map(|o| match o {
                Op::HashIncr {
                    key: k,
                    field: f,
                    by,
                } if k == key && f == field => Some(*by),
                _ => None,
            })
        };
        assert_eq!(incr("billing:agg:h:2026-03-10T12", "*|cost"), Some(1000));
        assert_eq!(incr("billing:agg:m:2026-03-10T12:34", "*|cost"), Some(700));
        assert_eq!(incr("billing:agg:d:2026-03-10", "u:2|tok:input"), Some(10));
        assert_eq!(
            incr(
                "billing:agg:d:2026-03-10",
                "um:3:claude-haiku-4-5-20251001|turns"
            ),
            Some(1)
        );
        assert_eq!(
            incr(
                "billing:agg:m:2026-03-10T12:34",
                "um:2:claude-haiku-4-5-20251001|turns"
            ),
            None,
            "no user×model in minutes"
        );
        assert_eq!(
            incr("billing:agg:d:2026-03-10", "*|tok:cache_write_5m"),
            None,
            "zero tokens write nothing"
        );
        assert_eq!(incr("billing:agg:thread:9", "turns"), Some(2));
        assert!(ops.contains(&Op::ZMax {
            key: "billing:agg:threads:all".into(),
            member: "9".into(),
            score: Timestamp::parse("2026-03-10T12:59:00Z").unwrap().millis()
        }));
        assert!(ops.contains(&Op::ZIncr {
            key: "billing:agg:top:d:2026-03-10".into(),
            member: "2".into(),
            by: 700
        }));
        assert!(ops.contains(&Op::SetAdd {
            key: "billing:agg:users:h:2026-03-10T12".into(),
            member: "3".into()
        }));
    }

    /// The ops of `facts` applied one by one: each fact's own changes,
    /// merged as Redis would apply them in order (increments add, a hash
    /// field keeps the last value, sets unite, scores add or keep the
    /// greatest).
    fn one_by_one(facts: &[Fact]) -> Vec<Op> {
        let mut incr: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut set: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut members: std::collections::BTreeSet<(String, String)> = Default::default();
        let mut zincr: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut zmax: BTreeMap<(String, String), i64> = BTreeMap::new();
        for f in facts {
            let mut c = Changes::default();
            c.add(f);
            for op in c.ops() {
                match op {
                    Op::HashIncr { key, field, by } => *incr.entry((key, field)).or_default() += by,
                    Op::HashSet { key, field, value } => {
                        set.insert((key, field), value);
                    }
                    Op::SetAdd { key, member } => {
                        members.insert((key, member));
                    }
                    Op::ZIncr { key, member, by } => *zincr.entry((key, member)).or_default() += by,
                    Op::ZMax { key, member, score } => {
                        let e = zmax.entry((key, member)).or_insert(score);
                        *e = (*e).max(score);
                    }
                }
            }
        }
        let mut out: Vec<Op> = incr
            .into_iter()
            .map(|((key, field), by)| Op::HashIncr { key, field, by })
            .collect();
        out.extend(
            set.into_iter()
                .map(|((key, field), value)| Op::HashSet { key, field, value }),
        );
        out.extend(
            members
                .into_iter()
                .map(|(key, member)| Op::SetAdd { key, member }),
        );
        out.extend(
            zincr
                .into_iter()
                .map(|((key, member), by)| Op::ZIncr { key, member, by }),
        );
        out.extend(
            zmax.into_iter()
                .map(|((key, member), score)| Op::ZMax { key, member, score }),
        );
        out
    }

    // The token metrics' indexes follow TokenClass::ALL as tok_metric names them.
    #[test]
    fn token_metrics_follow_the_classes() {
        for (class, i) in TokenClass::ALL.iter().zip(TOKENS) {
            assert_eq!(METRICS[i], tok_metric(*class));
        }
    }

    /// One fact's changes, written out by hand from the key layout above:
    /// what the grouping must reproduce for a single fact.
    #[test]
    fn one_fact_changes_every_bucket_and_dimension() {
        let f = fact(Kind::Turn, "a", 2, "2026-03-10T12:34:56.789Z", 700);
        let mut c = Changes::default();
        c.add(&f);
        let ops = c.ops();
        let m = "claude-haiku-4-5-20251001";
        // What the fact adds to each of its fields (zero counts add nothing).
        let added = [
            ("cost", 700),
            ("tok:input", 10),
            ("tok:output", 20),
            ("tok:cache_read", 5),
            ("turns", 1),
            ("lat_sum", 100),
            ("lat_n", 1),
        ];
        let mut fields = Vec::new();
        for (key, dims) in [
            (
                "billing:agg:m:2026-03-10T12:34",
                vec!["*".to_owned(), "u:2".into(), format!("m:{m}")],
            ),
            (
                "billing:agg:h:2026-03-10T12",
                vec![
                    "*".to_owned(),
                    "u:2".into(),
                    format!("m:{m}"),
                    format!("um:2:{m}"),
                ],
            ),
            (
                "billing:agg:d:2026-03-10",
                vec![
                    "*".to_owned(),
                    "u:2".into(),
                    format!("m:{m}"),
                    format!("um:2:{m}"),
                ],
            ),
        ] {
            for d in dims {
                for (metric, by) in added {
                    fields.push((key.to_owned(), format!("{d}|{metric}"), by));
                }
            }
        }
        for (metric, by) in added {
            fields.push(("billing:agg:thread:9".to_owned(), metric.to_owned(), by));
        }
        fields.sort();
        let incr: Vec<(String, String, i64)> = ops
            .iter()
            .filter_map(|o| match o {
                Op::HashIncr { key, field, by } => Some((key.clone(), field.clone(), *by)),
                _ => None,
            })
            .collect();
        assert_eq!(incr, fields);
        let rest: Vec<&Op> = ops
            .iter()
            .filter(|o| !matches!(o, Op::HashIncr { .. }))
            .collect();
        let ms = Timestamp::parse("2026-03-10T12:34:56.789Z")
            .unwrap()
            .millis();
        let s = |k: &str, mbr: &str| Op::SetAdd {
            key: k.into(),
            member: mbr.into(),
        };
        assert_eq!(
            rest,
            [
                &Op::HashSet {
                    key: "billing:agg:thread:9".into(),
                    field: "model".into(),
                    value: m.into()
                },
                &Op::HashSet {
                    key: "billing:agg:thread:9".into(),
                    field: "user".into(),
                    value: "2".into()
                },
                &s("billing:agg:users:d:2026-03-10", "2"),
                &s(&format!("billing:agg:users:d:2026-03-10:m:{m}"), "2"),
                &s("billing:agg:users:h:2026-03-10T12", "2"),
                &s(&format!("billing:agg:users:h:2026-03-10T12:m:{m}"), "2"),
                &Op::ZIncr {
                    key: "billing:agg:top:d:2026-03-10".into(),
                    member: "2".into(),
                    by: 700
                },
                &Op::ZIncr {
                    key: "billing:agg:top:h:2026-03-10T12".into(),
                    member: "2".into(),
                    by: 700
                },
                &Op::ZMax {
                    key: "billing:agg:threads:all".into(),
                    member: "9".into(),
                    score: ms
                },
                &Op::ZMax {
                    key: "billing:agg:threads:u:2".into(),
                    member: "9".into(),
                    score: ms
                },
            ]
        );
    }

    proptest::proptest! {
        /// Many facts merged give what applying them one by one gives:
        /// users, models, kinds, threads (one of them moved between users)
        /// and times around minute, hour and day edges.
        #[test]
        fn merged_changes_equal_one_by_one(
            raw in proptest::collection::vec(
                (0usize..4, 1i64..6, 0usize..3, proptest::option::of(1i64..5), 0i64..(3 * 86_400_000), 0i64..10_000, 0u64..3_000, [0u64..50, 0u64..50, 0u64..3, 0u64..3, 0u64..50]),
                0..60,
            )
        ) {
            let models = ["claude-haiku-4-5-20251001", "claude-sonnet-4-5", "gpt-4o"];
            let kinds = [Kind::Turn, Kind::Inference, Kind::Message, Kind::Response];
            let base = Timestamp::parse("2026-03-09T23:58:00Z").unwrap().millis();
            let facts: Vec<Fact> = raw
                .iter()
                .enumerate()
                .map(|(i, &(k, user, model, thread, at, cost, latency, tokens))| Fact {
                    kind: kinds[k],
                    source: "/t".into(),
                    id: i.to_string(),
                    user_id: user,
                    model: models[model].into(),
                    thread_id: thread,
                    occurred_at: Timestamp::from_millis(base + at).unwrap(),
                    latency_ms: latency,
                    cost_nanos: cost,
                    tokens,
                })
                .collect();
            let mut merged = Changes::default();
            for f in &facts {
                merged.add(f);
            }
            proptest::prop_assert_eq!(merged.ops(), one_by_one(&facts));
            proptest::prop_assert_eq!(merged.is_empty(), facts.is_empty());
        }
    }

    // A range is covered by whole days inside and hours at the edges, each hour once.
    #[test]
    fn cover_uses_days_inside_and_hours_at_the_edges() {
        let t = |s: &str| Timestamp::parse(s).unwrap().millis();
        let c = cover(t("2026-03-01T22:00:00Z"), t("2026-03-04T02:00:00Z"));
        let labels: Vec<String> = c.iter().map(|(r, b)| format!("{}:{b}", r.code())).collect();
        assert_eq!(
            labels,
            [
                "h:2026-03-01T22",
                "h:2026-03-01T23",
                "d:2026-03-02",
                "d:2026-03-03",
                "h:2026-03-04T00",
                "h:2026-03-04T01"
            ]
        );
        assert!(cover(t("2026-03-01T05:00:00Z"), t("2026-03-01T05:00:00Z")).is_empty());
        let year = cover(t("2026-01-01T01:00:00Z"), t("2027-01-01T00:00:00Z"));
        assert_eq!(year.len(), 23 + 364);
    }

    // Bucket labels are prefixes of the timestamp and floors are aligned.
    #[test]
    fn buckets() {
        let t = Timestamp::parse("2026-12-31T23:59:59.999Z").unwrap();
        assert_eq!(
            (
                Res::Minute.bucket(t),
                Res::Hour.bucket(t),
                Res::Day.bucket(t)
            ),
            (
                "2026-12-31T23:59".into(),
                "2026-12-31T23".into(),
                "2026-12-31".into()
            )
        );
        assert_eq!(
            Res::Day.bucket(Timestamp::from_millis(Res::Day.floor(t.millis())).unwrap()),
            "2026-12-31"
        );
    }
}
