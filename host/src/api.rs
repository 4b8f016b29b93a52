//! The HTTP API (axum): the only module that knows axum exists.
//!
//! Routes: `GET /` (dashboard), `GET /healthz`, `GET /v1/plugins`. Every error is one JSON shape,
//! `{"error": {"status": 404, "message": "..."}}`, with the matching HTTP status.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::plugin::PluginInfo;

/// What the API reports about one loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// What it declared.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// Where it was loaded from.
    pub path: String,
    /// Events it processed successfully.
    pub events_ok: u64,
    /// Events it failed on.
    pub events_failed: u64,
    /// Instances started (more than one means it trapped and was recreated).
    pub instances_started: u64,
}

/// State shared by the handlers.
#[derive(Debug, Default)]
pub struct ApiState {
    /// The plugins, as last reported by the pipeline.
    pub plugins: RwLock<Vec<PluginStatus>>,
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
        .route("/", get(|| async { Html(include_str!("../../dashboard/index.html")) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/plugins", get(plugins))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError { status: StatusCode::NOT_FOUND, message: format!("no route for {method} {uri}") }
        })
        .with_state(state)
}

async fn plugins(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<PluginStatus>>, ApiError> {
    let plugins = state.plugins.read().map_err(|_| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "plugin table is unavailable".into(),
    })?;
    Ok(Json(plugins.clone()))
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
