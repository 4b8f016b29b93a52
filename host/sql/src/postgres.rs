//! The Postgres wire-protocol listener (pgwire, through datafusion-postgres): `psql -h 127.0.0.1
//! -p 5433 -c "SELECT ..."` asks the same engine as `POST /v1/sql`, under the same snapshot rules,
//! read-only check, time limit and memory limit. The only module that knows pgwire exists.
//!
//! It speaks the simple-query protocol (what `psql -c` and interactive psql use) and the extended
//! protocol (parse/bind/describe/execute: prepared statements with `$1` parameters, as drivers
//! such as tokio-postgres, JDBC and psycopg use it). A statement is planned when it is parsed, so a
//! refused or wrong query fails at parse, naming why; it runs on the snapshots its session reads
//! when it is executed ([`crate::session`]: each statement's own under `READ COMMITTED`, the
//! transaction's first under `REPEATABLE READ`).
//!
//! Each connection has its own [`Session`]: transactions, settings, `SHOW`. Rows go to the client
//! as the query computes them, batch by batch, never collected whole.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion_postgres::pgwire;
use futures::{Sink, StreamExt};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::portal::Portal;
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_query_response};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, NoopHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Execute;

use crate::query::{Description, QueryError, Rows, SqlEngine};
use crate::session::{Command, Reply, Session};
use crate::stats::FrontEnd;
use crate::{Listener, wire};
use std::time::Instant;

/// Bind `addr` and serve queries against `sql` until the returned server is dropped.
pub async fn start(addr: SocketAddr, sql: Arc<SqlEngine>) -> std::io::Result<Listener> {
    start_guarded(addr, sql, None).await
}

/// As [`start`], and when `password` is given every client must send it (cleartext password
/// authentication, any user name): for a listener reachable beyond this machine.
pub async fn start_guarded(
    addr: SocketAddr,
    sql: Arc<SqlEngine>,
    password: Option<String>,
) -> std::io::Result<Listener> {
    let password: Option<Arc<str>> = password.map(Into::into);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let connection = Arc::new(Connection::new(sql.clone(), password.clone()));
                    sessions.spawn(async move {
                        if let Err(e) = serve_client(socket, connection).await {
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
    Ok(Listener { addr, task })
}

/// How long a client has to start its session (pgwire's own limit).
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve one client: encryption requests refused, every message checked (`wire`) before pgwire
/// decodes it, then pgwire's message handling (its `process_socket` loop, over the checked
/// stream). A message the checks refuse ends the connection with a FATAL protocol violation
/// (SQLSTATE 08P01) naming it.
async fn serve_client(mut socket: tokio::net::TcpStream, connection: Arc<Connection>) -> std::io::Result<()> {
    use pgwire::api::ErrorHandler;
    use pgwire::messages::PgWireFrontendMessage;
    use pgwire::tokio::server::{PgWireMessageServerCodec, process_error, process_message};

    let addr = socket.peer_addr()?;
    socket.set_nodelay(true)?;
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    let received = tokio::select! {
        _ = &mut deadline => return Ok(()),
        received = wire::refuse_encryption(&mut socket) => received?,
    };
    let client = pgwire::api::DefaultClient::new(addr, false);
    let mut framed = tokio_util::codec::Framed::new(
        wire::CheckedStream::new(socket, received),
        PgWireMessageServerCodec::new(client),
    );
    framed.set_state(PgWireConnectionState::AwaitingStartup);
    let (startup, simple, extended, copy, cancel, errors) = (
        connection.startup_handler(),
        connection.simple_query_handler(),
        connection.extended_query_handler(),
        connection.copy_handler(),
        connection.cancel_handler(),
        connection.error_handler(),
    );
    loop {
        let starting = matches!(
            framed.state(),
            PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if starting {
            tokio::select! {
                _ = &mut deadline => None,
                next = framed.next() => next,
            }
        } else {
            framed.next().await
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let said = match e {
                    PgWireError::IoError(e) => e.to_string(),
                    other => other.to_string(),
                };
                let error =
                    ErrorInfo::new("FATAL".into(), "08P01".into(), format!("weir closes the connection: {said}"));
                futures::SinkExt::send(&mut framed, PgWireBackendMessage::ErrorResponse(error.into())).await?;
                return Ok(());
            }
            None => return Ok(()),
        };
        // Terminate: the client is leaving and waits for the socket to close.
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let in_extended = match framed.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let handled = process_message(
            message,
            &mut framed,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(mut e) = handled {
            errors.on_error(&framed, &mut e);
            process_error(&mut framed, e, in_extended).await?;
        }
    }
}

/// One client connection: its handlers share its session.
struct Connection {
    queries: Arc<Queries>,
    startup: Arc<Startup>,
}

impl Connection {
    fn new(sql: Arc<SqlEngine>, password: Option<Arc<str>>) -> Connection {
        let session = Arc::new(Mutex::new(Session::default()));
        let parser = Arc::new(Planner { sql: sql.clone(), session: session.clone() });
        Connection { queries: Arc::new(Queries { sql, parser, session }), startup: Arc::new(Startup { password }) }
    }
}

/// The start of a connection: no authentication, or the password when one is set.
struct Startup {
    password: Option<Arc<str>>,
}

/// The one password a guarded listener accepts.
#[derive(Debug)]
struct Password(Arc<str>);

// async_trait's lifetimes must match the trait's elided one.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl pgwire::api::auth::AuthSource for Password {
    async fn get_password(&self, _login: &pgwire::api::auth::LoginInfo) -> PgWireResult<pgwire::api::auth::Password> {
        Ok(pgwire::api::auth::Password::new(None, self.0.as_bytes().to_vec()))
    }
}

#[async_trait]
impl pgwire::api::auth::StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: pgwire::messages::PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.password {
            None => pgwire::api::auth::StartupHandler::on_startup(&NoopHandler, client, message).await,
            Some(password) => {
                let handler = pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler::new(
                    Password(password.clone()),
                    pgwire::api::auth::DefaultServerParameterProvider::default(),
                );
                handler.on_startup(client, message).await
            }
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
}

/// The session's lock is never held across an await.
fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

struct Queries {
    sql: Arc<SqlEngine>,
    parser: Arc<Planner>,
    session: Arc<Mutex<Session>>,
}

/// A parsed statement of the extended protocol: what it asks for and what planning it found.
#[derive(Clone)]
struct Prepared {
    command: Command,
    description: Description,
}

/// Parses extended-protocol statements by planning them with the engine.
struct Planner {
    sql: Arc<SqlEngine>,
    session: Arc<Mutex<Session>>,
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let parsed = self.prepare(sql).await;
        if parsed.is_err() {
            lock(&self.session).fail();
        }
        parsed
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        statement.description.params.iter().map(|kind| kind.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type)).collect()
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        arrow_schema_to_pg_fields(&statement.description.schema, format.unwrap_or(&Format::UnifiedText), None)
    }
}

impl Planner {
    async fn prepare(&self, sql: &str) -> PgWireResult<Option<Prepared>> {
        let mut commands = self.sql.parse(sql).map_err(|e| pg_error(&e))?;
        if commands.len() > 1 {
            return Err(user_error("42601", "cannot insert multiple commands into a prepared statement"));
        }
        let Some(command) = commands.pop() else { return Ok(None) };
        let description = match &command {
            Command::Query(statement) => {
                let tables = self.sql.catalog().current();
                self.sql.describe(statement, &tables).await.map_err(|e| pg_error(&e))?
            }
            Command::Show(name) => {
                let answer = lock(&self.session).show(name).map_err(|e| pg_error(&e))?;
                Description { params: Vec::new(), schema: answer.schema }
            }
            _ => Description { params: Vec::new(), schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()) },
        };
        Ok(Some(Prepared { command, description }))
    }
}

/// Rows in `format`, as a query response that encodes each batch as it arrives.
fn respond(rows: Rows, format: &Format) -> PgWireResult<Response> {
    let fields = Arc::new(arrow_schema_to_pg_fields(&rows.schema, format, None)?);
    let encode_fields = fields.clone();
    let data = rows.batches.flat_map(move |batch| match batch {
        Ok(batch) => futures::stream::iter(encode_recordbatch(encode_fields.clone(), batch)).left_stream(),
        Err(e) => futures::stream::once(futures::future::ready(Err(pg_error(&e)))).right_stream(),
    });
    Ok(Response::Query(QueryResponse::new(fields, data)))
}

fn user_error(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}

impl Queries {
    /// Run one command of this connection's session; a failure fails its transaction.
    async fn execute(
        &self,
        command: &Command,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let result = self.run_command(command, params, format).await;
        if result.is_err() {
            lock(&self.session).fail();
        }
        result
    }

    async fn run_command(
        &self,
        command: &Command,
        params: Option<datafusion::common::ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        if lock(&self.session).failed()
            && !matches!(command, Command::Commit | Command::Rollback | Command::RollbackToSavepoint)
        {
            return Err(user_error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        match command {
            Command::Query(statement) => {
                let (tables, timeout) = {
                    let mut session = lock(&self.session);
                    (session.tables(|| self.sql.catalog().current()), session.timeout(self.sql.time_limit()))
                };
                let started = Instant::now();
                let rows = self.sql.run(statement, &tables, params, timeout).await;
                let rows = self.sql.stats().timed(FrontEnd::Postgres, started, rows).map_err(|e| pg_error(&e))?;
                respond(rows, format)
            }
            command => {
                let reply = lock(&self.session).apply(command).map_err(|e| pg_error(&e))?;
                Ok(match reply {
                    Reply::Done(tag) => Response::Execution(Tag::new(tag)),
                    Reply::Began => Response::TransactionStart(Tag::new("BEGIN")),
                    Reply::Ended(tag) => Response::TransactionEnd(Tag::new(tag)),
                    Reply::Rows(answer) => respond(Rows::from_answer(answer), format)?,
                })
            }
        }
    }
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
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        let params = match &statement.command {
            Command::Query(_) => {
                let types: Vec<Option<&datafusion::arrow::datatypes::DataType>> =
                    statement.description.params.iter().map(Option::as_ref).collect();
                Some(deserialize_parameters(portal, &types)?)
            }
            _ => None,
        };
        self.execute(&statement.command, params, &portal.result_column_format).await
    }

    /// An `Execute` asking for every row (what drivers send) of a query streams its rows as the
    /// query produces them. (pgwire's default gathers every row of the portal before sending the
    /// first; it still serves `Execute` with a row limit, and statements that return no rows.)
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => portal,
            _ => return self._on_execute(client, message).await,
        };
        let streams = message.max_rows == 0
            && matches!(portal.statement.statement.command, Command::Query(_) | Command::Show(_))
            && matches!(*portal.state().lock().await, PortalExecutionState::Initial)
            && matches!(client.state(), PgWireConnectionState::ReadyForQuery);
        if !streams {
            return self._on_execute(client, message).await;
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let Response::Query(results) = ExtendedQueryHandler::do_query(self, client, portal.as_ref(), 0).await? else {
            return Err(user_error("XX000", "a query answered without rows"));
        };
        *portal.state().lock().await = PortalExecutionState::Finished;
        send_query_response(client, results, false).await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

/// The SQLSTATE for each way a query can fail.
fn pg_error(error: &QueryError) -> PgWireError {
    let code = match error {
        QueryError::ReadOnly(_) => "25006",
        QueryError::Timeout(_) => "57014",
        QueryError::Memory { .. } => "53200",
        QueryError::Sql(_) | QueryError::Session(_) => "42000",
        QueryError::UnknownSetting(_) => "42704",
        QueryError::NameClash { .. } | QueryError::Encode(_) => "XX000",
    };
    user_error(code, &error.to_string())
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    {
        let commands = self.sql.parse(query).map_err(|e| {
            lock(&self.session).fail();
            pg_error(&e)
        })?;
        if commands.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Statements run in order until one fails; the ones before it have answered.
        let mut responses = Vec::with_capacity(commands.len());
        for command in &commands {
            match self.execute(command, None, &Format::UnifiedText).await {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) if !responses.is_empty() => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(responses)
    }
}
