//! The HTTP trigger: accept connections, route, hand each request to a fresh
//! instance of its component, enforce the limits, log one line per request,
//! and on shutdown stop accepting and let in-flight requests finish.

use crate::routes::RouteMatch;
use crate::runtime::{App, ComponentInfo, EPOCH_TICK};
use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// How long a connection may take to send a request's headers (an idle
/// keep-alive connection is closed after it too).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long in-flight requests may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

type Body = HyperOutgoingBody;

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(msg.to_owned()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let _ = app.self_addr.set(addr);

    // The clock of the per-request deadlines; stops when serving ends.
    let engine = app.engine.clone();
    let stop_ticker = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = std::thread::spawn({
        let stop = stop_ticker.clone();
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        }
    });

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accept failed.");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, client).await) }
                });
                // A client that never finishes its headers is dropped (slowloris).
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %client, "Connection ended with an error.");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("Shutting down: no new connections; waiting for in-flight requests.");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("All requests finished."),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "Requests still running after the grace period; stopping anyway."),
    }
    stop_ticker.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.join();
    Ok(())
}

async fn handle(app: Arc<App>, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (component, resp) = dispatch(&app, req, client).await;
    tracing::info!(
        %method,
        path,
        component = component.as_deref().unwrap_or("-"),
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "Request served."
    );
    resp
}

async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> (Option<String>, Response<Body>) {
    let path = req.uri().path();
    if let Some(well_known) = path.strip_prefix("/.well-known/spin/") {
        return match well_known {
            "health" => (None, text(StatusCode::OK, "OK")),
            "info" => (
                None,
                text(
                    StatusCode::OK,
                    &format!("{{\"name\":{:?},\"host\":\"billing-host\"}}", app.name),
                ),
            ),
            _ => (None, text(StatusCode::NOT_FOUND, "Not Found")),
        };
    }
    let Some(route) = app.router.route(path) else {
        return (None, text(StatusCode::NOT_FOUND, "Not Found"));
    };
    let component = route.component.clone();
    let Some(info) = app.components.get(&component).cloned() else {
        return (
            Some(component),
            text(StatusCode::INTERNAL_SERVER_ERROR, "component not loaded"),
        );
    };
    let resp = match run(app, &info, req, &route, client).await {
        Ok(r) => r,
        Err(Failure::TooLarge) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body exceeds {} bytes",
                app.limits.max_body_for(&component)
            ),
        ),
        Err(Failure::Timeout) => {
            tracing::warn!(
                component,
                timeout_ms = app.limits.timeout_for(&component).as_millis() as u64,
                "Request exceeded its time limit."
            );
            text(
                StatusCode::GATEWAY_TIMEOUT,
                "the component did not answer in time",
            )
        }
        Err(Failure::BadRequest(m)) => text(StatusCode::BAD_REQUEST, &m),
        Err(Failure::Guest(e)) => {
            tracing::error!(component, error = format!("{e:#}"), "Component failed.");
            text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    (Some(component), resp)
}

enum Failure {
    TooLarge,
    Timeout,
    BadRequest(String),
    Guest(anyhow::Error),
}

/// Adds Spin's `spin-*` headers describing the route.
fn spin_headers(
    req: &mut Request<Full<Bytes>>,
    route: &RouteMatch,
    client: SocketAddr,
) -> Result<(), String> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut add = |name: String, value: &str| -> Result<(), String> {
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("{name} value is not a valid header"))?;
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
            v,
        );
        Ok(())
    };
    add("spin-path-info".into(), &route.path_info)?;
    add("spin-full-url".into(), &format!("http://{host}{pq}"))?;
    add("spin-matched-route".into(), &route.based_route)?;
    add("spin-base-path".into(), "/")?;
    add("spin-raw-component-route".into(), &route.raw_route)?;
    add("spin-component-route".into(), route.component_route())?;
    add("spin-client-addr".into(), &client.to_string())?;
    for (name, value) in &route.captures {
        add(
            format!(
                "spin-path-match-{}",
                name.to_ascii_lowercase().replace('_', "-")
            ),
            value,
        )?;
    }
    Ok(())
}

async fn run(
    app: &Arc<App>,
    info: &Arc<ComponentInfo>,
    req: Request<Incoming>,
    route: &RouteMatch,
    client: SocketAddr,
) -> Result<Response<Body>, Failure> {
    let limit = app.limits.max_body_for(&info.id);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::TooLarge);
    }
    let (mut parts, body) = req.into_parts();
    let deadline = Instant::now() + app.limits.timeout_for(&info.id);
    let body =
        match tokio::time::timeout_at(deadline.into(), Limited::new(body, limit).collect()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(Failure::TooLarge)
            }
            Ok(Err(e)) => {
                return Err(Failure::BadRequest(format!(
                    "could not read the request body: {e}"
                )))
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
    if !parts.headers.contains_key(http::header::HOST) {
        parts
            .headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    parts.headers.remove(http::header::CONNECTION);
    let mut req = Request::from_parts(parts, Full::new(body));
    spin_headers(&mut req, route, client).map_err(Failure::BadRequest)?;

    let mut store = app.new_store(info).map_err(Failure::Guest)?;
    let req =
        req.map(|b| b.map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }));
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .map_err(|e| Failure::Guest(e.into()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(tx)
        .map_err(|e| Failure::Guest(e.into()))?;
    let pre = info.pre.clone();
    let timeout = app.limits.timeout_for(&info.id);
    let task = tokio::spawn(async move {
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r.map_err(Failure::from_guest),
            Err(_) => Err(Failure::Timeout),
        }
    });
    match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(Ok(resp))) => Ok(resp),
        Ok(Ok(Err(code))) => Err(Failure::Guest(anyhow::anyhow!(
            "the component answered with error {code:?}"
        ))),
        Ok(Err(_)) => match task.await {
            Ok(Ok(())) => Err(Failure::Guest(anyhow::anyhow!(
                "the component returned without setting a response"
            ))),
            Ok(Err(f)) => Err(f),
            Err(e) => Err(Failure::Guest(e.into())),
        },
        Err(_) => {
            task.abort();
            Err(Failure::Timeout)
        }
    }
}

impl Failure {
    fn from_guest(e: wasmtime::Error) -> Self {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Failure::Timeout,
            _ => Failure::Guest(e.into()),
        }
    }
}
