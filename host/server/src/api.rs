//! The HTTP API (axum): the only module that knows axum exists.
//!
//! Routes: `GET /` (dashboard), `GET /healthz`, `GET /v1/status` (source, plugins, lag per
//! partition, last checkpoint), `GET /v1/plugins`, `GET /v1/tables`, `POST /v1/sql`
//! (`{"sql": "..."}`; JSON rows by default, CSV for `Accept: text/csv`, an Arrow IPC stream for
//! `Accept: application/vnd.apache.arrow.stream`), `POST /v1/topics/{topic}/events` (one event,
//! a JSON array or JSON lines; `?type=T&key=FIELD` for bare payloads; answers the positions). Every error is one JSON shape,
//! `{"error": {"status": 400, "message": "..."}}`, with the matching HTTP status.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::status::{PluginStatus, Status, StatusBoard};
use weir_core::event::{ProduceOptions, parse_events};
use weir_core::source::{EventSink, SourceError};

use weir_sql::query::{Encoding, QueryError, SqlEngine, TableInfo, encode_stream};

/// The largest body `POST /v1/topics/{topic}/events` accepts.
const MAX_PRODUCE_BYTES: usize = 256 << 20;

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
}

/// The error body every route uses.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/status", get(status))
        .route("/v1/plugins", get(plugins))
        .route(
            "/v1/topics/{topic}/events",
            axum::routing::post(produce).layer(DefaultBodyLimit::max(MAX_PRODUCE_BYTES)),
        )
        .route("/v1/tables", get(tables))
        .route("/v1/sql", axum::routing::post(sql))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError { status: StatusCode::NOT_FOUND, message: format!("no route for {method} {uri}") }
        })
        .with_state(state)
}

fn read_status(state: &ApiState) -> Status {
    state.status.read().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn status(State(state): State<Arc<ApiState>>) -> Json<Status> {
    Json(read_status(&state))
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
    let sink = state.sink.clone().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this host has no event sink to write to".into(),
    })?;
    let events =
        parse_events(&topic, &body, &options).map_err(|e| bad(format!("{topic}: {e}; nothing was written")))?;
    if events.is_empty() {
        return Err(bad(format!("{topic}: the body holds no events")));
    }
    let count = events.len();
    let written = tokio::task::spawn_blocking(move || sink.append(&topic, events))
        .await
        .map_err(|e| ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: e.to_string() })?;
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
    // Any content type is accepted (`curl -d` sends form encoding): the body is read as JSON.
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
    let rows = state.sql.stream(&request.sql).await.map_err(query_error)?;
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
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
