//! The Postgres wire-protocol listener (pgwire, through datafusion-postgres): `psql -h 127.0.0.1
//! -p 5433 -c "SELECT ..."` asks the same engine as `POST /v1/sql`, under the same snapshot rules,
//! read-only check, time limit and memory limit. The only module that knows pgwire exists.
//!
//! It speaks the simple-query protocol (what `psql -c` and interactive psql use) and the extended
//! protocol (parse/bind/describe/execute: prepared statements with `$1` parameters, as drivers
//! such as tokio-postgres, JDBC and psycopg use it). A statement is planned when it is parsed, so a
//! refused or wrong query fails at parse, naming why; it runs on the snapshots current when it is
//! executed.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, NoopHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use crate::query::{Answer, Description, QueryError, SqlEngine};

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
    let handlers =
        Arc::new(Handlers { queries: Arc::new(Queries { parser: Arc::new(Planner { sql: sql.clone() }), sql }) });
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

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(NoopHandler)
    }
}

struct Queries {
    sql: Arc<SqlEngine>,
    parser: Arc<Planner>,
}

/// A parsed statement of the extended protocol: its text and what planning it found.
#[derive(Clone)]
struct Prepared {
    sql: String,
    description: Description,
}

/// Parses extended-protocol statements by planning them with the engine.
struct Planner {
    sql: Arc<SqlEngine>,
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let description = self.sql.describe(sql).await.map_err(|e| pg_error(&e))?;
        Ok(Some(Prepared { sql: sql.to_string(), description }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        statement.description.params.iter().map(|kind| kind.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type)).collect()
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        arrow_schema_to_pg_fields(&statement.description.schema, format.unwrap_or(&Format::UnifiedText), None)
    }
}

/// Rows of `answer` in `format`, as a query response.
fn respond(answer: Answer, format: &Format) -> PgWireResult<Response> {
    let fields = Arc::new(arrow_schema_to_pg_fields(&answer.schema, format, None)?);
    let mut rows = Vec::new();
    for batch in answer.batches {
        rows.extend(encode_recordbatch(fields.clone(), batch));
    }
    Ok(Response::Query(QueryResponse::new(fields, futures::stream::iter(rows))))
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Planner;

    fn query_parser(&self) -> Arc<Planner> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, _client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Prepared>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        let types: Vec<Option<&datafusion::arrow::datatypes::DataType>> =
            statement.description.params.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &types)?;
        let answer = self.sql.query_with_params(&statement.sql, params).await.map_err(|e| pg_error(&e))?;
        respond(answer, &portal.result_column_format)
    }
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
        Ok(vec![respond(answer, &Format::UnifiedText)?])
    }
}
