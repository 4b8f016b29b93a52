//! The HTTP API (axum): the only module that knows axum exists.
//!
//! Routes: `GET /` (the dashboard; its script and styles under `/dashboard/`), `GET /healthz`,
//! `GET /metrics` (Prometheus), `GET /v1/status` (source, plugins, lag per partition, last
//! checkpoint), `GET /v1/live` (the status and tables as server-sent events), `GET /v1/plugins`, `GET /v1/tables`, `POST /v1/sql`
//! (`{"sql": "..."}`; JSON rows by default, CSV for `Accept: text/csv`, an Arrow IPC stream for
//! `Accept: application/vnd.apache.arrow.stream`), `POST /v1/topics/{topic}/events` (one event,
//! a JSON array or JSON lines; `?type=T&key=FIELD` for bare payloads; answers the positions). Every error is one JSON shape,
//! `{"error": {"status": 400, "message": "..."}}`, with the matching HTTP status.
//!
//! The plugin lifecycle: `POST /v1/plugins` (the `.wasm` as the body;
//! `?name=N&from=earliest|latest|TIME&param=K%3DV...&take_over=true`), `GET /v1/plugins/{name}`,
//! `POST /v1/plugins/{name}/pause|resume|rollback|rebuild`, `DELETE /v1/plugins/{name}`,
//! `GET /v1/plugins/{name}/versions`, `GET /v1/plugins/{name}/logs?after=SEQ`. A component is
//! compiled, its world checked and `describe` called here, off the async threads; the change itself
//! is made by the ingest loop between two batches (`admin.rs`).
//!
//! **Architecture Invariant:** every request that changes something (deploy, pause, resume,
//! rollback, rebuild, remove, produce) carries the admin token (`Authorization: Bearer`), and a
//! browser request from another origin never changes anything; when the HTTP listener is bound
//! beyond loopback, reads need the token too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::admin::{AdminError, AdminRequest, Install, Intent};
use crate::auth::AdminToken;
use crate::pipeline::LogRings;
use crate::registry::{Origin, Registry, Version, now_ms};
use crate::status::{AdminOutcome, LogLine, PluginDetail, PluginStatus, Status, StatusBoard, VersionRecord};
use weir_core::event::StartAt;
use weir_core::event::{ProduceOptions, parse_events};
use weir_core::source::{EventSink, SourceError};
use weir_runtime::{Plugin, PluginRuntime, content_hash};

use weir_sql::query::{Encoding, QueryError, SqlEngine, TableInfo, encode_stream};
use weir_sql::stats::FrontEnd;

/// The largest body `POST /v1/topics/{topic}/events` accepts.
const MAX_PRODUCE_BYTES: usize = 256 << 20;

/// The largest component `POST /v1/plugins` accepts.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// How much of a refused request's body is read (and thrown away) before the answer, and for
/// how long at most.
const REFUSED_BODY_READ: usize = 1 << 20;
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest an admin request waits for the ingest loop to take it.
const ADMIN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// State shared by the handlers.
pub struct ApiState {
    /// What the ingest loop last reported.
    pub status: StatusBoard,
    /// SQL over the published read models.
    pub sql: Arc<SqlEngine>,
    /// Where produced events go (absent: producing is refused).
    pub sink: Option<Arc<dyn EventSink>>,
    /// The token requests that change something must carry (absent: none is checked).
    pub token: Option<AdminToken>,
    /// Reads need the token too (the listener is reachable beyond this machine).
    pub reads_need_token: bool,
    /// The plugin lifecycle (absent: the admin routes answer 503).
    pub admin: Option<AdminApi>,
    /// The names requests may be addressed to (the `Host` header).
    pub hosts: AllowedHosts,
}

/// The names the API answers requests addressed to (the `Host` header, port aside). A page on
/// `evil.example` whose name an attacker re-points at 127.0.0.1 (DNS rebinding) reaches a
/// loopback listener from the victim's browser as same-origin, but its requests still say
/// `Host: evil.example`: a listener on loopback answers only loopback names (`localhost`,
/// `127.x.x.x`, `[::1]`) and those in `[server] allowed_hosts`; one bound beyond loopback, where
/// every request needs the token, answers any name unless `allowed_hosts` lists them.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    /// Names besides the loopback ones, lower case, without port.
    names: Vec<String>,
    /// Any name is answered.
    any: bool,
}

impl AllowedHosts {
    /// For a listener bound to `bound`, with `configured` names (`[server] allowed_hosts`).
    pub fn new(bound: SocketAddr, configured: &[String]) -> Self {
        AllowedHosts {
            names: configured.iter().map(|n| n.to_ascii_lowercase()).collect(),
            any: !bound.ip().is_loopback() && configured.is_empty(),
        }
    }

    /// Loopback names only (a listener on loopback without `allowed_hosts`).
    pub fn loopback() -> Self {
        AllowedHosts::default()
    }

    /// Whether a request with this `Host` header is answered (none: HTTP/1.0, answered).
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        if self.any {
            return true;
        }
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            },
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.names.contains(&name)
    }
}

/// What the admin routes need: a runtime to load components with, the registry, the way to the
/// ingest loop, and the plugins' log rings.
#[derive(Clone)]
pub struct AdminApi {
    /// Loads and checks components.
    pub runtime: Arc<PluginRuntime>,
    /// Deployed versions.
    pub registry: Arc<std::sync::Mutex<Registry>>,
    /// Requests to the ingest loop.
    pub requests: Arc<std::sync::Mutex<std::sync::mpsc::Sender<AdminRequest>>>,
    /// Log lines per plugin.
    pub logs: LogRings,
}

/// The error body every route uses.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let status = match e {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            AdminError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"status": self.status.as_u16(), "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// The router over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("../../../dashboard/index.html")) }))
        .route("/dashboard/{asset}", get(dashboard_asset))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/live", get(live))
        .route("/v1/plugins", get(plugins).post(deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)))
        .route("/v1/plugins/{name}", get(plugin_detail).delete(remove))
        .route("/v1/plugins/{name}/versions", get(versions))
        .route("/v1/plugins/{name}/logs", get(logs))
        .route("/v1/plugins/{name}/{action}", post(plugin_action))
        .route("/v1/plugins/{name}/dlq", get(dead_letters))
        .route("/v1/plugins/{name}/dlq/{action}", post(dead_letter_action))
        .route("/v1/plugins/{name}/dlq/{partition}/{offset}", get(dead_letter))
        .route(
            "/v1/topics/{topic}/events",
            axum::routing::post(produce).layer(DefaultBodyLimit::max(MAX_PRODUCE_BYTES)),
        )
        .route("/v1/tables", get(tables))
        .route("/v1/sql", axum::routing::post(sql))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError { status: StatusCode::NOT_FOUND, message: format!("no route for {method} {uri}") }
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Whether a request changes something.
fn changes_something(method: &Method, path: &str) -> bool {
    let reads = *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS;
    !reads && path != "/v1/sql"
}

/// The dashboard's own page and assets: the only routes a page of another origin may load.
fn is_dashboard(path: &str) -> bool {
    path == "/" || path.starts_with("/dashboard/")
}

/// The content types a route reads its body as. A browser sends three types across origins
/// without asking first (`text/plain`, form encoding, multipart); none of them is accepted, so
/// a page elsewhere cannot make a body that any route reads.
fn accepted_bodies(method: &Method, path: &str) -> &'static [&'static str] {
    if *method != Method::POST {
        return &[];
    }
    if path == "/v1/sql" {
        &["application/json"]
    } else if path == "/v1/plugins" {
        &["application/wasm", "application/octet-stream"]
    } else if path.starts_with("/v1/topics/") {
        &["application/json", "application/x-ndjson", "application/jsonl", "application/cloudevents+json"]
    } else {
        &[]
    }
}

/// Why a request's body is refused (its content type is not one the route reads), if it is.
fn body_refusal(method: &Method, path: &str, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    // A route that reads no body ignores one (its change needs the token, which a page
    // elsewhere cannot send without asking first).
    let accepted = accepted_bodies(method, path);
    if accepted.is_empty() {
        return None;
    }
    let declared = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let empty = headers.get(header::TRANSFER_ENCODING).is_none()
        && headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_none_or(|n| n.trim() == "0");
    if declared.is_none() && empty {
        // Nothing to read: the route says what it misses.
        return None;
    }
    let essence = declared.map(|d| d.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if essence.as_deref().is_some_and(|e| accepted.contains(&e)) {
        return None;
    }
    Some((
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "{method} {path} reads a body of type {} (the header `Content-Type`), not {}; nothing changed",
            accepted.join(" or "),
            declared.map_or("a body without one".to_string(), |d| format!("{d:?}")),
        ),
    ))
}

/// The host, origin, body type and token checks, before any route runs.
async fn guard(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let mutating = changes_something(&method, &path);
    let headers = request.headers();
    // A refused request's body is read only as far as [`REFUSED_BODY_READ`] (a client still
    // sending would otherwise see the connection reset instead of the answer), never buffered
    // whole, and the connection is closed after the answer.
    let refuse = |status: StatusCode, message: String| {
        let mut response = ApiError::new(status, message).into_response();
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        response
    };
    let drain = |request: Request| async move {
        let body = request.into_body().into_data_stream();
        let mut read = 0usize;
        let _ = tokio::time::timeout(REFUSED_BODY_WAIT, async {
            futures::pin_mut!(body);
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                read += chunk.len();
                if read >= REFUSED_BODY_READ {
                    break;
                }
            }
        })
        .await;
    };
    let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or("(not text)"));
    if !state.hosts.allows(host) {
        let response = refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "{method} {path} was addressed to {:?}, a name this host does not answer to; add it to [server] allowed_hosts if it is yours",
                host.unwrap_or_default()
            ),
        );
        drain(request).await;
        return response;
    }
    if !is_dashboard(&path)
        && let Some(origin) = headers.get(header::ORIGIN)
    {
        let host = host.unwrap_or("");
        let own = [format!("http://{host}"), format!("https://{host}")];
        let origin = origin.to_str().unwrap_or("");
        if !own.iter().any(|o| o == origin) {
            let response = refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{method} {path} from a page of {origin}: requests from another origin reach only the dashboard's own page; nothing changed"
                ),
            );
            drain(request).await;
            return response;
        }
    }
    if let Some((status, message)) = body_refusal(&method, &path, headers) {
        let response = refuse(status, message);
        drain(request).await;
        return response;
    }
    let open = path == "/healthz" || is_dashboard(&path);
    if let Some(token) = &state.token
        && !open
        && (mutating || state.reads_need_token)
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let refusal = match given {
            None => Some("needs the admin token: send `Authorization: Bearer <token>`"),
            Some(given) if !token.matches(given.trim()) => {
                Some("was sent with a token that is not this host's admin token")
            }
            Some(_) => None,
        };
        if let Some(why) = refusal {
            let mut response = refuse(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{method} {path} {why} (the host logs where its token file is; `weir` finds it on this machine); nothing changed"
                ),
            );
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            drain(request).await;
            return response;
        }
    }
    next.run(request).await
}

fn admin(state: &ApiState) -> Result<&AdminApi, ApiError> {
    state
        .admin
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server has no plugin lifecycle"))
}

/// Send `request` to the ingest loop and wait for its answer.
async fn ask(
    admin: &AdminApi,
    request: impl FnOnce(crate::admin::Reply) -> AdminRequest,
) -> Result<AdminOutcome, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let unavailable =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the ingest loop is not running (the host is stopping)");
    admin.requests.lock().unwrap_or_else(|e| e.into_inner()).send(request(reply)).map_err(|_| unavailable())?;
    match tokio::time::timeout(ADMIN_WAIT, answer).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(_)) => Err(unavailable()),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the ingest loop did not take the request within 60 s; it will still be applied when it does",
        )),
    }
}

/// `?name=N&from=F&param=K=V&take_over=true`, decoded.
#[derive(Debug, Default)]
struct DeployQuery {
    name: Option<String>,
    start: StartAt,
    params: std::collections::BTreeMap<String, String>,
    take_over: bool,
    on_error: crate::output::OnError,
}

fn parse_deploy_query(raw: Option<&str>) -> Result<DeployQuery, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let mut query = DeployQuery::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|e| bad(format!("query parameter {key}: {e}")))?;
        match key {
            "name" => {
                let valid = !value.is_empty()
                    && value.len() <= weir_core::event::MAX_PLUGIN_NAME
                    && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
                if !valid {
                    return Err(bad(format!("name {value:?} is not a plugin name (1 to 64 of a-z, 0-9, '-', '_')")));
                }
                query.name = Some(value);
            }
            "from" | "start" => query.start = value.parse().map_err(|e: String| bad(format!("from: {e}")))?,
            "param" => {
                let (k, v) = value.split_once('=').ok_or_else(|| bad(format!("param {value:?} is not NAME=VALUE")))?;
                query.params.insert(k.to_string(), v.to_string());
            }
            "take_over" => {
                query.take_over = match value.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(bad(format!("take_over={other} is not true or false"))),
                }
            }
            "on_error" => query.on_error = value.parse().map_err(bad)?,
            other => {
                return Err(bad(format!("unknown query parameter {other:?} (name, from, param, take_over, on_error)")));
            }
        }
    }
    Ok(query)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or("a '%' without two hex digits")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("%{hex} is not a byte"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
}

/// Load a component on a blocking thread: compiled, world checked, `describe` called.
async fn load_component(
    admin: &AdminApi,
    path: std::path::PathBuf,
    bytes: Option<Vec<u8>>,
    params: std::collections::BTreeMap<String, String>,
    name: Option<String>,
) -> Result<(Plugin, String), ApiError> {
    let runtime = admin.runtime.clone();
    tokio::task::spawn_blocking(move || {
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => std::fs::read(&path).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {}: {e}", path.display()))
            })?,
        };
        let hash = content_hash(&bytes);
        let mut plugin = runtime
            .load_bytes(&path, &bytes, params)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}; nothing changed")))?;
        if let Some(name) = name
            && name != plugin.info().name
        {
            plugin
                .rename(&name)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("name={name:?}: {e}; nothing changed")))?;
        }
        Ok((plugin, hash))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn deploy(
    State(state): State<Arc<ApiState>>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<AdminOutcome>), ApiError> {
    let admin = admin(&state)?;
    let query = parse_deploy_query(raw.as_deref())?;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be the plugin's .wasm component; it is empty",
        ));
    }
    // Errors name the upload; once kept, the component lives in `components/<hash>.wasm`.
    let path = std::path::PathBuf::from(format!("the uploaded component ({} bytes)", body.len()));
    let (plugin, hash) =
        load_component(admin, path, Some(body.to_vec()), query.params.clone(), query.name.clone()).await?;
    admin
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .store_component(&hash, &body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("keeping the component: {e}")))?;
    let version = Version {
        deploy: 0,
        component: hash,
        version: plugin.info().version.clone(),
        deployed_ms: now_ms(),
        params: query.params,
        start: query.start,
        origin: Origin::Api,
        config_path: None,
        takes_over: Vec::new(),
        on_error: query.on_error,
    };
    let intent = Intent::Deploy { take_over: query.take_over };
    let outcome =
        ask(admin, |reply| AdminRequest::Install(Box::new(Install { plugin, version, intent }), reply)).await?;
    let code = if outcome.action == "deployed" { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(outcome)))
}

async fn plugin_detail(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<PluginDetail>, ApiError> {
    let status = read_status(&state);
    let plugin = status
        .plugins
        .into_iter()
        .find(|p| p.info.name == name)
        .ok_or_else(|| ApiError::from(AdminError::NotFound(name.clone())))?;
    let label = plugin.info.label();
    let lag = status.lag.into_iter().filter(|l| l.plugin == label).collect();
    Ok(Json(PluginDetail { status: plugin, lag }))
}

async fn remove(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Json<AdminOutcome>, ApiError> {
    let admin = admin(&state)?;
    Ok(Json(ask(admin, |reply| AdminRequest::Remove(name, reply)).await?))
}

async fn plugin_action(
    State(state): State<Arc<ApiState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<AdminOutcome>, ApiError> {
    let admin = admin(&state)?;
    let outcome = match action.as_str() {
        "pause" => ask(admin, |reply| AdminRequest::Pause(name, reply)).await?,
        "resume" => ask(admin, |reply| AdminRequest::Resume(name, reply)).await?,
        "rollback" | "rebuild" => {
            let (version, intent) = {
                let registry = admin.registry.lock().unwrap_or_else(|e| e.into_inner());
                let entry = registry
                    .entry(&name)
                    .filter(|e| e.current.is_some())
                    .ok_or_else(|| ApiError::from(AdminError::NotFound(name.clone())))?;
                if action == "rebuild" {
                    let current = entry.current_version().cloned().ok_or_else(|| AdminError::NotFound(name.clone()))?;
                    (current, Intent::Rebuild)
                } else {
                    let previous =
                        registry.previous(&name).and_then(|d| entry.version(d)).cloned().ok_or_else(|| {
                            ApiError::from(AdminError::Conflict(format!(
                                "{name} has no version older than the one serving (GET /v1/plugins/{name}/versions)"
                            )))
                        })?;
                    (previous, Intent::Rollback)
                }
            };
            let path = admin.registry.lock().unwrap_or_else(|e| e.into_inner()).component_path(&version.component);
            let (plugin, _) = load_component(admin, path, None, version.params.clone(), Some(name.clone())).await?;
            ask(admin, |reply| AdminRequest::Install(Box::new(Install { plugin, version, intent }), reply)).await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?} for plugins (pause, resume, rollback, rebuild)"),
            ));
        }
    };
    Ok(Json(outcome))
}

async fn versions(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    let admin = admin(&state)?;
    let mut records = admin
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .records(&name)
        .ok_or(AdminError::NotFound(name.clone()))?;
    // What serves now, as the ingest loop reports it: the registry records a rebuilt version as
    // serving only once a checkpoint holds its tables.
    if let Some(serving) = read_status(&state).plugins.iter().find(|p| p.info.name == name).map(|p| p.deploy) {
        for record in &mut records {
            record.current = record.deploy == serving;
        }
    }
    Ok(Json(records))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    after: u64,
}

async fn logs(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    let admin = admin(&state)?;
    let ring = admin.logs.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
    let ring = ring.ok_or_else(|| ApiError::from(AdminError::NotFound(name)))?;
    let lines = ring.lock().unwrap_or_else(|e| e.into_inner()).after(query.after);
    Ok(Json(
        lines
            .into_iter()
            .map(|l| LogLine {
                seq: l.seq,
                time_ms: l.time_ms,
                level: l.level.to_string(),
                plugin: l.plugin,
                message: l.message,
            })
            .collect(),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLettersQuery {
    #[serde(default = "default_dlq_limit")]
    limit: usize,
}

fn default_dlq_limit() -> usize {
    100
}

/// Open dead letters of plugin `name`, oldest first per partition: (partition, offset, letter),
/// up to `limit`; or only the one at `at`.
async fn read_dead_letters(
    state: &ApiState,
    name: &str,
    limit: usize,
    at: Option<(u32, u64)>,
) -> Result<Vec<(u32, u64, weir_core::event::Event)>, ApiError> {
    let status = read_status(state);
    let book = status
        .dead_letter_books
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::from(AdminError::NotFound(name.to_string())))?;
    let sink = state
        .sink
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server has no event store"))?;
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        crate::output::open_dead_letters(sink.as_ref(), &name, &book, limit, at).map_err(|e| {
            let topic = crate::output::dead_letter_topic(&name);
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {topic}: {e}"))
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn dead_letters(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<DeadLettersQuery>,
) -> Result<Json<Vec<crate::status::DeadLetter>>, ApiError> {
    let found = read_dead_letters(&state, &name, query.limit, None).await?;
    Ok(Json(found.iter().map(|(p, o, e)| crate::output::describe_dead_letter(*p, *o, e, false)).collect()))
}

async fn dead_letter(
    State(state): State<Arc<ApiState>>,
    Path((name, partition, offset)): Path<(String, u32, u64)>,
) -> Result<Json<crate::status::DeadLetter>, ApiError> {
    let found = read_dead_letters(&state, &name, 1, Some((partition, offset))).await?;
    let (p, o, event) = found.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{name} has no open dead letter at partition {partition}, offset {offset} (GET /v1/plugins/{name}/dlq lists them)"),
        )
    })?;
    Ok(Json(crate::output::describe_dead_letter(p, o, &event, true)))
}

async fn dead_letter_action(
    State(state): State<Arc<ApiState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<AdminOutcome>, ApiError> {
    let admin = admin(&state)?;
    let outcome = match action.as_str() {
        "replay" => ask(admin, |reply| AdminRequest::Replay(name, reply)).await?,
        "purge" => ask(admin, |reply| AdminRequest::Purge(name, reply)).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?} for dead letters (replay, purge)"),
            ));
        }
    };
    Ok(Json(outcome))
}

fn read_status(state: &ApiState) -> Status {
    state.status.read().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn status(State(state): State<Arc<ApiState>>) -> Json<Status> {
    Json(read_status(&state))
}

/// The dashboard's script and style sheet, compiled into the binary (the page works offline).
async fn dashboard_asset(Path(asset): Path<String>) -> Result<Response, ApiError> {
    let (media_type, body) = match asset.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", include_str!("../../../dashboard/app.js")),
        "style.css" => ("text/css; charset=utf-8", include_str!("../../../dashboard/style.css")),
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("the dashboard has no file {asset}"))),
    };
    Ok(([(header::CONTENT_TYPE, media_type), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

/// `GET /metrics`: the Prometheus exposition.
async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let status = read_status(&state);
    if !status.metered {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics are off in this host (`[server] metrics = false` in its config)",
        ));
    }
    let scrape = crate::metrics::Scrape {
        status,
        tables: state.sql.catalog().tables(),
        sql: state.sql.stats().snapshot(),
        now_ms: now_ms(),
    };
    let text = crate::metrics::render(scrape);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// What `GET /v1/live` sends every interval: the status and the tables.
#[derive(serde::Serialize)]
struct LiveView {
    /// Milliseconds since the Unix epoch.
    time_ms: u64,
    status: Status,
    tables: Vec<TableInfo>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveQuery {
    /// Milliseconds between two updates (default 1000, at least 100).
    interval_ms: Option<u64>,
}

/// `GET /v1/live`: server-sent events, one `status` event (a [`LiveView`] as JSON) at once and
/// then every interval, until the client goes or the server stops.
async fn live(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<LiveQuery>,
    closing: Option<axum::Extension<tokio::sync::watch::Receiver<bool>>>,
) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let every = std::time::Duration::from_millis(query.interval_ms.unwrap_or(1000).max(100));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let closing = closing.map(|c| c.0);
    let updates = futures::stream::unfold((state, ticks, closing), |(state, mut ticks, mut closing)| async move {
        match &mut closing {
            Some(closing) => {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = closing.wait_for(|closed| *closed) => return None,
                }
            }
            None => {
                ticks.tick().await;
            }
        }
        let view = LiveView { time_ms: now_ms(), status: read_status(&state), tables: state.sql.catalog().tables() };
        let event = Event::default()
            .event("status")
            .json_data(&view)
            .unwrap_or_else(|e| Event::default().comment(e.to_string()));
        Some((Ok::<_, std::convert::Infallible>(event), (state, ticks, closing)))
    });
    Sse::new(updates).keep_alive(KeepAlive::default())
}

async fn plugins(State(state): State<Arc<ApiState>>) -> Json<Vec<PluginStatus>> {
    Json(read_status(&state).plugins)
}

async fn produce(
    State(state): State<Arc<ApiState>>,
    Path(topic): Path<String>,
    Query(options): Query<ProduceOptions>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bad = |message: String| ApiError { status: StatusCode::BAD_REQUEST, message };
    if topic.starts_with(weir_core::event::HOST_TOPIC_PREFIX) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{topic}: topics under `weir.` are the host's own (ticks, journals, dead letters); nothing was written"
            ),
        ));
    }
    let sink = state.sink.clone().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this host has no event sink to write to".into(),
    })?;
    // Parsing a body (up to 256 MiB) and appending it are both blocking work: off the async
    // threads, so one large request does not hold up every other.
    let written = tokio::task::spawn_blocking(move || {
        let events =
            parse_events(&topic, &body, &options).map_err(|e| bad(format!("{topic}: {e}; nothing was written")))?;
        if events.is_empty() {
            return Err(bad(format!("{topic}: the body holds no events")));
        }
        for (n, event) in events.iter().enumerate() {
            if let Some((name, _)) = event.headers.iter().find(|(h, _)| h.starts_with(weir_core::event::HOST_HEADER_PREFIX)) {
                return Err(bad(format!(
                    "{topic}: event {} of the body (id {:?}) has header {name:?}: headers starting with `weir-` are the host's own; nothing was written",
                    n + 1,
                    event.id
                )));
            }
        }
        let count = events.len();
        Ok((count, sink.append(&topic, events)))
    })
    .await
    .map_err(|e| ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: e.to_string() })?;
    let (count, written) = written?;
    let positions = written.map_err(|e| match e {
        SourceError::Invalid(_) => bad(e.to_string()),
        SourceError::TooLarge(_) => {
            ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, message: format!("{e}; nothing was written") }
        }
        _ => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string() },
    })?;
    Ok(Json(serde_json::json!({ "count": count, "positions": positions })))
}

async fn tables(State(state): State<Arc<ApiState>>) -> Json<Vec<TableInfo>> {
    Json(state.sql.catalog().tables())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

async fn sql(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The guard let only `application/json` through.
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the body must be JSON like {{\"sql\": \"SELECT ...\"}}: {e}"),
    })?;
    let query_error = |e: QueryError| {
        let status = match e {
            QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            QueryError::Encode(_) | QueryError::NameClash { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError { status, message: e.to_string() }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let encoding = if accept.contains(ARROW_STREAM) {
        Encoding::ArrowIpc
    } else if accept.contains("text/csv") {
        Encoding::Csv
    } else {
        Encoding::Json
    };
    // The body streams batch by batch as the query computes them; an error after the first
    // batch cuts it off (the client sees an incomplete body, never a wrong one).
    let started = std::time::Instant::now();
    let rows = state.sql.stream(&request.sql).await;
    let rows = state.sql.stats().timed(FrontEnd::Http, started, rows).map_err(query_error)?;
    let body = encode_stream(rows, encoding).await.map_err(query_error)?;
    Ok(([(header::CONTENT_TYPE, encoding.media_type())], Body::from_stream(body)).into_response())
}

/// Bind `addr` and serve until `shutdown` resolves. Returns the bound address through `bound`
/// before serving (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ApiState>,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    bound(listener.local_addr()?);
    // Live streams (`/v1/live`) end when the server stops, or graceful shutdown would wait on them.
    let (closing, closed) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    axum::serve(listener, router(state).layer(axum::Extension(closed))).with_graceful_shutdown(shutdown).await
}
