//! The bridge's HTTP side: `/healthz`, `/readyz`, `/metrics` and the live
//! updates, `GET /events/stream` (Server-Sent Events).
//!
//! Live updates: the consumers' aggregate script appends a notice per
//! billed event to the Redis stream `billing:notices` and publishes it on
//! the channel of the same name (up to a hundred notices to a message). Every bridge process subscribes to the
//! channel and fans the notices out to its SSE clients: a user gets only
//! their own, an admin everything. The SSE `id` is the stream id, so a
//! client that reconnects with `Last-Event-ID` first gets what it missed
//! (read back from the stream, which keeps the last ten thousand), then
//! the live ones. An idle stream gets a comment every `sse_heartbeat_s`.
//!
//! Keys are checked like the components do: `Authorization: Bearer <key>`
//! or, for browsers' EventSource which cannot set headers, `?access_token=`.

use crate::aggregates::NOTICES;
use crate::metrics::global as metrics;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use rusqlite::OptionalExtension;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

/// One live notice: its stream id, the user it concerns, its JSON.
#[derive(Debug, Clone)]
pub struct Notice {
    pub id: String,
    pub user_id: i64,
    pub data: String,
}

/// What the HTTP side needs.
pub struct Live {
    pub database: PathBuf,
    pub redis_url: String,
    /// A client kept for readiness probes (a fresh one per probe would
    /// start librdkafka's threads and connections every few seconds).
    pub kafka: crate::kafka::MetadataClient,
    pub admin_api_key: String,
    pub heartbeat: Duration,
    pub notices: broadcast::Sender<Notice>,
    /// False once the relay or the consumer stopped on its own: `/readyz`
    /// then fails whatever else answers.
    pub workers_running: Arc<std::sync::atomic::AtomicBool>,
}

/// Who opened a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    Admin,
    User(i64),
}

impl Viewer {
    fn sees(self, user_id: i64) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(u) => u == user_id,
        }
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("access-control-allow-origin", "*")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

/// An RFC 9457 problem.
fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({ "type": "about:blank", "title": status.canonical_reason().unwrap_or(""), "status": status.as_u16(), "detail": detail });
    text(status, "application/problem+json", body.to_string())
}

/// An API key's owner: 401 for a missing, unknown or revoked key, 403 for a disabled account.
fn authenticate(live: &Live, req: &Request<Incoming>) -> Result<Viewer, Box<Response<Body>>> {
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|k| k.trim().to_owned());
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
        .map(|k| k.to_owned());
    let Some(key) = from_header.or(from_query).filter(|k| !k.is_empty()) else {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "send an API key: Authorization: Bearer <key>, or ?access_token=<key>",
        )));
    };
    let db = rusqlite::Connection::open_with_flags(
        &live.database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| {
        Box::new(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the database cannot be opened: {e}"),
        ))
    })?;
    let row: Option<(i64, String, Option<String>)> = if !live.admin_api_key.is_empty() && key == live.admin_api_key {
        db.query_row("SELECT user_id, role, disabled_at FROM dim_users WHERE role = 'admin' ORDER BY user_id LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
    } else {
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        db.query_row(
            "SELECT u.user_id, u.role, u.disabled_at FROM api_keys k JOIN dim_users u ON u.user_id = k.user_id WHERE k.key_hash = ?1 AND k.revoked_at IS NULL",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
    }
    .map_err(|e| Box::new(problem(StatusCode::SERVICE_UNAVAILABLE, &format!("the database cannot be read: {e}"))))?;
    match row {
        None => Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "the API key is not valid or has been revoked",
        ))),
        Some((_, _, Some(_))) => Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "this account is disabled",
        ))),
        Some((_, role, None)) if role == "admin" => Ok(Viewer::Admin),
        Some((user, _, None)) => Ok(Viewer::User(user)),
    }
}

/// Parses a stream id `ms-seq` for ordering.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn frame(n: &Notice) -> Bytes {
    Bytes::from(format!("id: {}\nevent: billed\ndata: {}\n\n", n.id, n.data))
}

/// The notices after `last` still in the stream, oldest first.
async fn missed(redis_url: &str, last: &str) -> anyhow::Result<Vec<Notice>> {
    let client = redis::Client::open(redis_url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(NOTICES)
        .arg(format!("({last}"))
        .arg("+")
        .arg("COUNT")
        .arg(10_000)
        .query_async(&mut c)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let user: String = e.get("user")?;
            let data: String = e.get("data")?;
            Some(Notice {
                id: e.id,
                user_id: user.parse().ok()?,
                data,
            })
        })
        .collect())
}

async fn stream(live: Arc<Live>, req: Request<Incoming>) -> Response<Body> {
    let viewer = match authenticate(&live, &req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let last = req
        .headers()
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .filter(|l| stream_id(l).is_some());
    // Subscribe before reading what was missed, so nothing falls in between.
    let mut rx = live.notices.subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let heartbeat = live.heartbeat;
    let redis_url = live.redis_url.clone();
    tokio::spawn(async move {
        crate::telemetry::emit(crate::telemetry::SseClients { change: 1 });
        let _ = tx
            .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
            .await;
        let mut newest = last.as_deref().and_then(stream_id);
        if let Some(last) = &last {
            match missed(&redis_url, last).await {
                Ok(list) => {
                    for n in list.iter().filter(|n| viewer.sees(n.user_id)) {
                        if tx.send(frame(n)).await.is_err() {
                            break;
                        }
                    }
                    if let Some(n) = list.last() {
                        newest = stream_id(&n.id);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "Could not read missed notices.")
                }
            }
        }
        loop {
            let sent = tokio::select! {
                n = rx.recv() => match n {
                    Ok(n) => {
                        if !viewer.sees(n.user_id) || newest.is_some_and(|w| stream_id(&n.id).is_some_and(|i| i <= w)) {
                            continue;
                        }
                        tx.send(frame(&n)).await
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "A live-update client fell behind; it missed notices.");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::time::sleep(heartbeat) => tx.send(Bytes::from_static(b": heartbeat\n\n")).await,
            };
            if sent.is_err() {
                break;
            }
        }
        crate::telemetry::emit(crate::telemetry::SseClients { change: -1 });
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(body_rx)
            .map(|b| Ok::<_, Infallible>(Frame::data(b))),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("access-control-allow-origin", "*")
        .body(BodyExt::boxed(body))
        .unwrap()
}

/// Ready: the relay and the consumer run, SQLite answers, Redis answers,
/// the broker's metadata comes back.
async fn ready(live: &Live) -> Response<Body> {
    let db = rusqlite::Connection::open_with_flags(
        &live.database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|c| {
        c.query_row("SELECT count(*) FROM schema_migrations", [], |r| {
            r.get::<_, i64>(0)
        })
    })
    .map(|_| "ok".to_owned())
    .unwrap_or_else(|e| format!("error: {e}"));
    let redis = async {
        let client = redis::Client::open(live.redis_url.as_str())?;
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        anyhow::Ok(())
    }
    .await
    .map(|_| "ok".to_owned())
    .unwrap_or_else(|e| format!("error: {e:#}"));
    let kafka = live
        .kafka
        .reachable(Duration::from_secs(2))
        .await
        .map(|_| "ok".to_owned())
        .unwrap_or_else(|e| format!("error: {e:#}"));
    let workers = if live
        .workers_running
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        "ok"
    } else {
        "error: a worker stopped; the bridge is stopping"
    }
    .to_owned();
    let ok = [&workers, &db, &redis, &kafka].iter().all(|s| *s == "ok");
    let body = serde_json::json!({ "ready": ok, "workers": workers, "sqlite": db, "redis": redis, "kafka": kafka });
    text(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        "application/json",
        body.to_string(),
    )
}

async fn route(live: Arc<Live>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        ("GET", "/readyz") => ready(&live).await,
        ("GET", "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics().render(),
        ),
        ("GET", "/events/stream") => stream(live, req).await,
        ("OPTIONS", _) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("access-control-allow-origin", "*")
            .header(
                "access-control-allow-headers",
                "authorization, last-event-id",
            )
            .header("access-control-allow-methods", "GET")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        (_, "/healthz" | "/readyz" | "/metrics" | "/events/stream") => {
            problem(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here")
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "no such endpoint: the bridge serves /healthz, /readyz, /metrics and /events/stream",
        ),
    };
    Ok(resp)
}

/// The notices of one message on the `billing:notices` channel: lines of
/// stream id, user id and the notice's JSON (which has no raw line
/// breaks), three per notice, as the aggregates script publishes them.
/// A triple whose user id is not a number is skipped.
pub fn published_notices(payload: &str) -> Vec<Notice> {
    let mut lines = payload.split('\n');
    let mut out = Vec::new();
    while let (Some(id), Some(user), Some(data)) = (lines.next(), lines.next(), lines.next()) {
        if let Ok(user_id) = user.parse() {
            out.push(Notice {
                id: id.to_owned(),
                user_id,
                data: data.to_owned(),
            });
        }
    }
    out
}

/// Forwards the Redis notices channel into `notices`, reconnecting while Redis is away.
pub async fn relay_notices(
    redis_url: String,
    notices: broadcast::Sender<Notice>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let subscribed = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(NOTICES).await?;
            let mut messages = pubsub.on_message();
            while let Some(m) = messages.next().await {
                let payload: String = m.get_payload()?;
                for notice in published_notices(&payload) {
                    let _ = notices.send(notice);
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = subscribed => if let Err(e) = r {
                crate::telemetry::emit(crate::telemetry::NoticeSubscriptionLost { error: &e });
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Serves until `stop` is raised; open streams are closed then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (io, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let live = live.clone();
        let service = hyper::service::service_fn(move |req| route(live.clone(), req));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Live streams never end by themselves: give the others a moment, then go.
    let _ = tokio::time::timeout(Duration::from_millis(500), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // One channel message carries several notices, three lines each; a
    // notice with a user id that is not a number is skipped, the rest kept.
    #[test]
    fn a_channel_message_carries_several_notices() {
        let payload = "1-0\n2\n{\"a\":1}\n1-1\nx\n{}\n1-2\n3\n{\"b\":\"line\\nbreak\"}";
        let got: Vec<(String, i64, String)> = published_notices(payload)
            .into_iter()
            .map(|n| (n.id, n.user_id, n.data))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1-0".into(), 2, "{\"a\":1}".into()),
                ("1-2".into(), 3, "{\"b\":\"line\\nbreak\"}".into()),
            ]
        );
    }
}
