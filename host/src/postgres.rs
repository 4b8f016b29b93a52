//! The Postgres wire-protocol listener (pgwire, through datafusion-postgres): `psql -h 127.0.0.1
//! -p 5433 -c "SELECT ..."` asks the same engine as `POST /v1/sql`, under the same snapshot rules,
//! read-only check, time limit and memory limit. The only module that knows pgwire exists.
//!
//! It speaks the simple-query protocol (what `psql -c` and interactive psql use for plain
//! statements); the extended protocol (prepared statements) is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{QueryResponse, Response};
use pgwire::api::{ClientInfo, ClientPortalStore, NoopHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use crate::query::{QueryError, SqlEngine};

/// A running listener; dropping it stops accepting and closes every session.
pub struct PgServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PgServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` and serve queries against `sql` until the returned server is dropped.
pub async fn start(addr: SocketAddr, sql: Arc<SqlEngine>) -> std::io::Result<PgServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let handlers = Arc::new(Handlers { queries: Arc::new(Queries { sql }) });
    let task = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let handlers = handlers.clone();
                    sessions.spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(error = %e, "postgres session ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "postgres listener: accept failed"),
            }
            while sessions.try_join_next().is_some() {}
        }
    });
    tracing::info!(%addr, "postgres wire protocol listening");
    Ok(PgServer { addr, task })
}

struct Handlers {
    queries: Arc<Queries>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(NoopHandler)
    }
}

struct Queries {
    sql: Arc<SqlEngine>,
}

/// The SQLSTATE for each way a query can fail.
fn pg_error(error: &QueryError) -> PgWireError {
    let code = match error {
        QueryError::ReadOnly(_) => "25006",
        QueryError::Timeout(_) => "57014",
        QueryError::Memory { .. } => "53200",
        QueryError::Sql(_) => "42000",
        QueryError::NameClash { .. } | QueryError::Encode(_) => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), error.to_string())))
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    {
        let answer = self.sql.query(query).await.map_err(|e| pg_error(&e))?;
        let fields = Arc::new(arrow_schema_to_pg_fields(&answer.schema, &Format::UnifiedText, None)?);
        let mut rows = Vec::new();
        for batch in answer.batches {
            rows.extend(encode_recordbatch(fields.clone(), batch));
        }
        Ok(vec![Response::Query(QueryResponse::new(fields, futures::stream::iter(rows)))])
    }
}

