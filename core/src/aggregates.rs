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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// key → field → by; nested so that adding to an existing field
    /// allocates nothing (a fact touches about a hundred fields).
    incr: BTreeMap<String, BTreeMap<String, i64>>,
    set: BTreeMap<(String, String), String>,
    members: BTreeMap<String, std::collections::BTreeSet<String>>,
    zincr: BTreeMap<(String, String), i64>,
    zmax: BTreeMap<(String, String), i64>,
}

impl Changes {
    fn incr(&mut self, key: &str, field: &str, by: i64) {
        if by == 0 {
            return;
        }
        if !self.incr.contains_key(key) {
            self.incr.insert(key.to_owned(), BTreeMap::new());
        }
        let fields = self.incr.get_mut(key).expect("inserted above");
        match fields.get_mut(field) {
            // Saturates rather than wraps or panics: ingest bounds every
            // event far below this, so a saturated figure means bad data
            // slipped in, and billing for others goes on.
            Some(v) => *v = v.saturating_add(by),
            None => {
                fields.insert(field.to_owned(), by);
            }
        }
    }

    /// Adds what `fact` changes.
    pub fn add(&mut self, fact: &Fact) {
        let f = fact;
        let mut metrics: Vec<(&str, i64)> = Vec::with_capacity(10);
        let billed = f.kind.is_billed();
        if billed {
            metrics.push(("cost", f.cost_nanos));
            for (class, n) in TokenClass::ALL.iter().zip(f.tokens) {
                metrics.push((tok_metric(*class), n as i64));
            }
            metrics.push((
                if f.kind == Kind::Turn {
                    "turns"
                } else {
                    "requests"
                },
                1,
            ));
            metrics.push(("lat_sum", f.latency_ms as i64));
            metrics.push(("lat_n", 1));
        } else if f.kind == Kind::Message {
            metrics.push(("messages", 1));
        } else {
            metrics.push(("responses", 1));
            metrics.push(("resp_lat_sum", f.latency_ms as i64));
        }
        let user = f.user_id.to_string();
        // Field names are `{dim}|{metric}`, built in one buffer.
        let prefixes: Vec<String> = [
            dim(None, None),
            dim(Some(f.user_id), None),
            dim(None, Some(&f.model)),
            dim(Some(f.user_id), Some(&f.model)),
        ]
        .into_iter()
        .map(|d| field(&d, ""))
        .collect();
        let mut name = String::new();
        for res in [Res::Minute, Res::Hour, Res::Day] {
            let bucket = res.bucket(f.occurred_at);
            let key = bucket_key(res, &bucket);
            // Minutes keep no per-user-and-model figures.
            let dims = if res == Res::Minute { 3 } else { 4 };
            if res != Res::Minute {
                self.members
                    .entry(users_key(res, &bucket))
                    .or_default()
                    .insert(user.clone());
                self.members
                    .entry(model_users_key(res, &bucket, &f.model))
                    .or_default()
                    .insert(user.clone());
                if billed {
                    let score = self
                        .zincr
                        .entry((top_key(res, &bucket), user.clone()))
                        .or_default();
                    *score = score.saturating_add(f.cost_nanos);
                }
            }
            for prefix in &prefixes[..dims] {
                for (m, by) in &metrics {
                    name.clear();
                    name.push_str(prefix);
                    name.push_str(m);
                    self.incr(&key, &name, *by);
                }
            }
        }
        if let (Some(t), Kind::Turn | Kind::Message) = (f.thread_id, f.kind) {
            let key = thread_key(t);
            for (m, by) in &metrics {
                self.incr(&key, m, *by);
            }
            self.set.insert((key.clone(), "user".into()), user.clone());
            self.set.insert((key, "model".into()), f.model.clone());
            let ms = f.occurred_at.millis();
            for k in [threads_key(None), threads_key(Some(f.user_id))] {
                let e = self.zmax.entry((k, t.to_string())).or_insert(ms);
                *e = (*e).max(ms);
            }
        }
    }

    /// The merged changes, in a fixed order.
    pub fn ops(&self) -> Vec<Op> {
        let mut out = Vec::new();
        out.extend(self.incr.iter().flat_map(|(key, fields)| {
            fields.iter().map(move |(field, by)| Op::HashIncr {
                key: key.clone(),
                field: field.clone(),
                by: *by,
            })
        }));
        out.extend(self.set.iter().map(|((key, field), value)| Op::HashSet {
            key: key.clone(),
            field: field.clone(),
            value: value.clone(),
        }));
        out.extend(self.members.iter().flat_map(|(key, ms)| {
            ms.iter().map(move |m| Op::SetAdd {
                key: key.clone(),
                member: m.clone(),
            })
        }));
        out.extend(
            self.zincr
                .iter()
                .filter(|(_, by)| **by != 0)
                .map(|((key, member), by)| Op::ZIncr {
                    key: key.clone(),
                    member: member.clone(),
                    by: *by,
                }),
        );
        out.extend(self.zmax.iter().map(|((key, member), score)| Op::ZMax {
            key: key.clone(),
            member: member.clone(),
            score: *score,
        }));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.incr.is_empty()
            && self.set.is_empty()
            && self.members.is_empty()
            && self.zincr.is_empty()
            && self.zmax.is_empty()
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
