//! The application: manifest, runtime config, resolved variables, the
//! routing table and every component compiled and pre-instantiated once.
//! Each request gets a fresh [`InstanceState`] and instance.

use crate::allowed_hosts::AllowList;
use crate::manifest::{FileMount, LoadedManifest, RouteConfig};
use crate::routes::Router;
use crate::runtime_config::RuntimeConfig;
use crate::variables::ResolvedVariables;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Per-request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock time a request may take, guest CPU and awaited I/O alike
    /// (a streamed answer included: the instance is stopped at the limit).
    pub timeout: Duration,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    pub redis_connect_timeout: Duration,
    pub redis_response_timeout: Duration,
    /// Per component id, what differs from the limits above (a gateway
    /// passing on a ten-minute generation needs more time and a larger
    /// body than a dashboard query). Spin itself puts no time limit on a
    /// request; these limits are this host's guard against a runaway
    /// instance.
    pub components: HashMap<String, ComponentLimits>,
}

/// One component's own limits; `None` keeps the app-wide one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentLimits {
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<usize>,
}

impl Limits {
    /// The time limit of a request to `component`.
    pub fn timeout_for(&self, component: &str) -> Duration {
        self.components
            .get(component)
            .and_then(|c| c.timeout)
            .unwrap_or(self.timeout)
    }

    /// The body limit of a request to `component`, in bytes.
    pub fn max_body_for(&self, component: &str) -> usize {
        self.components
            .get(component)
            .and_then(|c| c.max_body_bytes)
            .unwrap_or(self.max_body_bytes)
    }
}

/// The longest `timeout_ms` a component may be given: 7 days, in ms.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

impl std::str::FromStr for ComponentLimits {
    type Err = String;

    /// `timeout_ms=N,max_body_bytes=N` (either or both).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut limits = ComponentLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{key}: `{value}` is not a whole number"))?;
            if n == 0 {
                return Err(format!("{key} must be above 0"));
            }
            match key.trim() {
                // Bounded so that a deadline (now + timeout) cannot overflow.
                "timeout_ms" if n > MAX_TIMEOUT_MS => {
                    return Err(format!(
                        "timeout_ms must be at most {MAX_TIMEOUT_MS} (7 days)"
                    ))
                }
                "timeout_ms" => limits.timeout = Some(Duration::from_millis(n)),
                "max_body_bytes" => limits.max_body_bytes = Some(n as usize),
                other => {
                    return Err(format!(
                        "unknown limit `{other}` (timeout_ms, max_body_bytes)"
                    ))
                }
            }
        }
        Ok(limits)
    }
}

/// Parses `ID:timeout_ms=N,max_body_bytes=N` entries (as given to
/// `--component-limits`, or `;`-separated in `BILLING_HOST_COMPONENT_LIMITS`).
pub fn parse_component_limits(
    entries: &[String],
) -> Result<HashMap<String, ComponentLimits>, String> {
    let mut out = HashMap::new();
    for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (id, spec) = e
            .split_once(':')
            .ok_or_else(|| format!("`{e}`: expected COMPONENT:timeout_ms=N,max_body_bytes=N"))?;
        let limits = spec.parse().map_err(|m| format!("{id}: {m}"))?;
        out.insert(id.trim().to_owned(), limits);
    }
    Ok(out)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            max_body_bytes: 2 << 20,
            redis_connect_timeout: Duration::from_secs(1),
            redis_response_timeout: Duration::from_secs(2),
            components: HashMap::new(),
        }
    }
}

/// How often the epoch ticks; the timeout is counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A component, ready to serve.
pub struct ComponentInfo {
    pub id: String,
    pub allow: AllowList,
    pub sqlite_databases: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// (host directory, guest path) read-only mounts.
    pub mounts: Vec<(PathBuf, String)>,
    pub pre: ProxyPre<InstanceState>,
}

/// Everything shared by all requests.
pub struct App {
    pub name: String,
    pub engine: Engine,
    pub router: Router,
    pub components: HashMap<String, Arc<ComponentInfo>>,
    pub runtime: RuntimeConfig,
    pub variables: ResolvedVariables,
    pub limits: Limits,
    /// Where this app listens; self-requests (relative URLs) go there.
    pub self_addr: OnceLock<SocketAddr>,
    /// Redis addresses found unreachable, so the log says so once, not per request.
    redis_down: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Idle SQLite connections per database label (see `spin_apis::SqlitePool`).
    pub(crate) sqlite_pool: Arc<crate::spin_apis::SqlitePool>,
    /// One multiplexed Redis connection per address, shared by the guests
    /// (see `spin_apis::RedisConnection`): no TCP connect per request.
    redis_shared: std::sync::Mutex<HashMap<String, redis::aio::MultiplexedConnection>>,
}

/// The store data of one request.
pub struct InstanceState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub hooks: OutboundHooks,
    pub app: Arc<App>,
    pub component: Arc<ComponentInfo>,
    pub redis_connections: usize,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP as Spin does it: the allow-list decides, a relative URL (or
/// the host `self.alt`) is a request to the app itself.
pub struct OutboundHooks {
    allow: AllowList,
    self_addr: Option<SocketAddr>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                                + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let decision = self.prepare(&mut request);
        Box::new(async move {
            use http_body_util::BodyExt;
            decision?;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

impl OutboundHooks {
    fn prepare(
        &self,
        request: &mut http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<(), wasmtime_wasi_http::Error> {
        use wasmtime_wasi_http::Error as E;
        let uri = request.uri().clone();
        let host = uri
            .authority()
            .map(|a| a.host().to_owned())
            .unwrap_or_default();
        let is_self = host.is_empty() || host == "self.alt";
        if is_self {
            if !self.allow.allows_relative(&["http", "https"]) {
                tracing::debug!(url = %uri, "Outbound request to the app itself denied by allowed_outbound_hosts.");
                return Err(E::HttpRequestDenied);
            }
            let addr = self.self_addr.ok_or(E::HttpRequestUriInvalid)?;
            let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            *request.uri_mut() = format!("http://{addr}{pq}")
                .parse()
                .map_err(|_| E::HttpRequestUriInvalid)?;
            request.headers_mut().insert(
                http::header::HOST,
                addr.to_string()
                    .parse()
                    .map_err(|_| E::HttpRequestUriInvalid)?,
            );
            return Ok(());
        }
        if !self.allow.allows_url(&uri.to_string()) {
            tracing::debug!(url = %uri, "Outbound request denied by allowed_outbound_hosts.");
            return Err(E::HttpRequestDenied);
        }
        Ok(())
    }
}

/// An engine with epoch interruption and, where the machine allows it, the
/// pooling allocator.
pub fn engine(limits: &Limits) -> Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    // `BILLING_HOST_PERFMAP=1`: write /tmp/perf-<pid>.map so `perf report`
    // names the components' functions (compiled code is then not cached).
    if std::env::var_os("BILLING_HOST_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // Compiled code is cached on disk (as Spin does), so a restart skips Cranelift.
    match wasmtime::Cache::from_file(None) {
        Ok(cache) => {
            config.cache(Some(cache));
        }
        Err(e) => {
            tracing::warn!(error = %e, "Compilation cache unavailable; components compile at every start.")
        }
    }
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(1000)
        .total_memories(1000)
        .total_tables(1000)
        .max_memory_size(limits.memory_bytes);
    let mut pooled = config.clone();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&pooled) {
        Ok(e) => Ok(e),
        Err(err) => {
            tracing::warn!(error = %err, "Pooling allocator unavailable here; instances are allocated on demand.");
            Ok(Engine::new(&config)?)
        }
    }
}

impl App {
    /// Loads, validates, compiles and pre-instantiates everything. Any
    /// problem (bad manifest, missing .wasm, an import we do not provide, an
    /// unconfigured database) stops here, naming the file and the part.
    pub fn load(
        manifest_path: &Path,
        runtime_config: Option<&Path>,
        limits: Limits,
    ) -> Result<Arc<Self>> {
        let lm = LoadedManifest::load(manifest_path)?;
        let m = &lm.manifest;
        let runtime = RuntimeConfig::load(runtime_config, &lm.dir)?;
        let variables = ResolvedVariables::resolve(m, &runtime.env)?;

        let mut undefined = Vec::new();
        for (id, c) in &m.component {
            for label in &c.sqlite_databases {
                if !runtime.sqlite.contains_key(label) {
                    undefined.push(format!("- Component {id} uses database '{label}'"));
                }
            }
        }
        let mut unknown: Vec<&String> = limits
            .components
            .keys()
            .filter(|id| !m.component.contains_key(id.as_str()))
            .collect();
        unknown.sort();
        // A warning, not a refusal: the defaults of `make up` and
        // docker-compose name llm-sim, which a production manifest drops.
        if !unknown.is_empty() {
            tracing::warn!(
                components = ?unknown,
                "Limits are set for components the manifest does not declare; they are ignored."
            );
        }
        if !undefined.is_empty() {
            bail!(
                "One or more components use SQLite databases which are not defined.\nCheck the spelling, or pass a runtime configuration file that defines these stores.\nDetails:\n{}",
                undefined.join("\n")
            );
        }

        let engine = engine(&limits)?;
        let mut linker: Linker<InstanceState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::spin_apis::SpinHost::add_to_linker::<_, HasSelf<InstanceState>>(&mut linker, |s| s)?;

        let triggered: std::collections::BTreeSet<&str> = m
            .trigger
            .http
            .iter()
            .map(|t| t.component.as_str())
            .collect();
        let mut components = HashMap::new();
        for (id, c) in &m.component {
            if !triggered.contains(id.as_str()) {
                continue;
            }
            let source = lm.resolve(&c.source);
            let component = Component::from_file(&engine, &source)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "component `{id}`: cannot load {} (run `billing-host build`?)",
                        source.display()
                    )
                })?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "component `{id}` ({}) imports something billing-host does not provide",
                        source.display()
                    )
                })?;
            let pre = ProxyPre::new(pre)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component `{id}` does not export wasi:http/incoming-handler")
                })?;
            let mut mounts = Vec::new();
            for f in &c.files {
                let (src, dst) = match f {
                    FileMount::Path(p) => (p.clone(), format!("/{}", p.trim_start_matches('/'))),
                    FileMount::Placement {
                        source,
                        destination,
                    } => (source.clone(), destination.clone()),
                };
                let host_dir = lm.resolve(&src);
                if !host_dir.is_dir() {
                    bail!("[component.{id}] files: {} is not a directory (billing-host mounts directories)", host_dir.display());
                }
                mounts.push((host_dir, dst));
            }
            let info = ComponentInfo {
                id: id.clone(),
                allow: AllowList::parse(&c.allowed_outbound_hosts)?,
                sqlite_databases: c.sqlite_databases.clone(),
                environment: c
                    .environment
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                mounts,
                pre,
            };
            components.insert(id.clone(), Arc::new(info));
        }

        let router = Router::build(m.trigger.http.iter().filter_map(|t| match &t.route {
            RouteConfig::Route(r) => Some((t.component.as_str(), r.as_str())),
            RouteConfig::Private(_) => None,
        }))?;

        Ok(Arc::new(Self {
            name: m.application.name.clone(),
            engine,
            router,
            components,
            runtime,
            variables,
            limits,
            self_addr: OnceLock::new(),
            redis_down: Default::default(),
            sqlite_pool: Default::default(),
            redis_shared: Default::default(),
        }))
    }

    /// The shared connection to a Redis address, if there is one.
    pub(crate) fn redis_shared(&self, address: &str) -> Option<redis::aio::MultiplexedConnection> {
        let shared = self.redis_shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.get(address).cloned()
    }

    /// Shares a new connection to `address` (a connection made meanwhile by
    /// another request is replaced; both work).
    pub(crate) fn share_redis(&self, address: &str, conn: redis::aio::MultiplexedConnection) {
        let mut shared = self.redis_shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.insert(address.to_owned(), conn);
    }

    /// Stops sharing the connection to `address` (it failed).
    pub(crate) fn unshare_redis(&self, address: &str) {
        let mut shared = self.redis_shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.remove(address);
    }

    /// Logs a change in a Redis address's reachability, once per change.
    pub fn redis_reachable(&self, address: &str, up: bool, error: &str) {
        let mut down = self.redis_down.lock().unwrap_or_else(|p| p.into_inner());
        if up && down.remove(address) {
            tracing::info!(address, "Redis is reachable again.");
        } else if !up && down.insert(address.to_owned()) {
            tracing::warn!(
                address,
                error,
                "Redis is unreachable; components carry on without it."
            );
        }
    }

    /// A fresh store for one request to `component`.
    pub fn new_store(
        self: &Arc<Self>,
        component: &Arc<ComponentInfo>,
    ) -> Result<Store<InstanceState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        for (k, v) in &component.environment {
            wasi.env(k, v);
        }
        for (dir, guest) in &component.mounts {
            wasi.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "mounting {} for component `{}`",
                        dir.display(),
                        component.id
                    )
                })?;
        }
        let state = InstanceState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            hooks: OutboundHooks {
                allow: component.allow.clone(),
                self_addr: self.self_addr.get().copied(),
            },
            app: self.clone(),
            component: component.clone(),
            redis_connections: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let timeout = self.limits.timeout_for(&component.id);
        let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_limits_parse_and_apply() {
        let parsed = parse_component_limits(&[
            "gateway:timeout_ms=900000,max_body_bytes=33554432".into(),
            " messages : timeout_ms=60000 ".into(),
            String::new(),
        ])
        .unwrap();
        let limits = Limits {
            components: parsed,
            ..Limits::default()
        };
        assert_eq!(limits.timeout_for("gateway"), Duration::from_secs(900));
        assert_eq!(limits.max_body_for("gateway"), 32 << 20);
        assert_eq!(limits.timeout_for("messages"), Duration::from_secs(60));
        assert_eq!(
            limits.max_body_for("messages"),
            2 << 20,
            "the app-wide body limit"
        );
        assert_eq!(limits.timeout_for("metrics"), Duration::from_secs(30));
        for (bad, why) in [
            ("gateway", "expected COMPONENT:"),
            ("gateway:timeout=5", "unknown limit `timeout`"),
            ("gateway:timeout_ms=soon", "not a whole number"),
            ("gateway:timeout_ms=0", "above 0"),
            ("gateway:timeout_ms", "not key=value"),
            (
                "gateway:timeout_ms=18446744073709551615",
                "timeout_ms must be at most 604800000",
            ),
        ] {
            let e = parse_component_limits(&[bad.into()]).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
