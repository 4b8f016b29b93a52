//! Arrow Flight SQL: the Arrow-native way in (ADBC's Flight SQL driver, `pyarrow.flight`, JDBC's
//! Flight SQL driver, services). The same read-only SQL, limits and snapshots as `POST /v1/sql`
//! and the Postgres listener, answered as Arrow record batches streamed as the query computes
//! them, with no row-by-row conversion. The only module that knows arrow-flight and tonic exist.
//!
//! Served: statements (`CommandStatementQuery`), prepared statements with `$1` parameters bound
//! by `DoPut` (one row of parameters), and the catalog calls (`GetCatalogs`, `GetDbSchemas`,
//! `GetTables` with or without schemas, `GetTableTypes`, `GetSqlInfo`). Updates, ingestion,
//! Substrait plans and transactions are refused: weir's SQL is read-only.
//!
//! A statement handle or ticket is the SQL text itself (with the bound parameters as an Arrow
//! IPC stream), so the server keeps no per-client state and any replica can answer it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::{ParamValues, ScalarValue};
use futures::{FutureExt, Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::Listener;
use crate::query::{DATABASE, QueryError, Rows, SqlEngine};

/// Bind `addr` and answer Flight SQL against `sql` until the returned server is dropped.
pub async fn start(addr: SocketAddr, sql: Arc<SqlEngine>) -> std::io::Result<Listener> {
    start_guarded(addr, sql, None).await
}

/// As [`start`], and when `token` is given every call must carry `authorization: Bearer <token>`
/// (for a listener reachable beyond this machine); a call without it is `Unauthenticated`.
pub async fn start_guarded(addr: SocketAddr, sql: Arc<SqlEngine>, token: Option<String>) -> std::io::Result<Listener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let expected: Option<Arc<str>> = token.map(|t| format!("Bearer {t}").into());
    let check = move |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &expected else { return Ok(request) };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let same = given.len() == expected.len()
            && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "this Flight SQL listener needs weir's admin token: send the header `authorization: Bearer <token>`",
            ))
        }
    };
    let service = FlightServiceServer::with_interceptor(WeirFlightSql { sql, info: Arc::new(sql_info()?) }, check);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
            tracing::warn!(error = %e, "flight sql listener stopped");
        }
    });
    tracing::info!(%addr, "arrow flight sql listening");
    Ok(Listener { addr, task })
}

/// What `GetSqlInfo` answers.
fn sql_info() -> std::io::Result<SqlInfoData> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "weir");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    info.build().map_err(std::io::Error::other)
}

#[derive(Clone)]
struct WeirFlightSql {
    sql: Arc<SqlEngine>,
    info: Arc<SqlInfoData>,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// A statement handle: the SQL, and the parameters bound to it (an Arrow IPC stream of one row).
struct Handle {
    sql: String,
    params: Option<Vec<u8>>,
}

impl Handle {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.sql.len());
        out.extend_from_slice(&(self.sql.len() as u32).to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        if let Some(params) = &self.params {
            out.extend_from_slice(params);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Handle, Status> {
        let bad = || Status::invalid_argument("not a statement handle this server gave out");
        let len = bytes.get(..4).ok_or_else(bad)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let sql = bytes.get(4..4usize.saturating_add(len)).ok_or_else(bad)?;
        let sql = String::from_utf8(sql.to_vec()).map_err(|_| bad())?;
        let rest = &bytes[4 + len..];
        if rest.len() > MAX_PARAMS_BYTES {
            return Err(Status::invalid_argument(format!(
                "bound parameters: {} bytes, over the {MAX_PARAMS_BYTES} a statement handle may carry",
                rest.len()
            )));
        }
        // Checked here, before anything is decoded: arrow-ipc allocates what a message claims.
        if !rest.is_empty() {
            crate::ipc::check_stream(rest, 1)
                .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))?;
        }
        Ok(Handle { sql, params: (!rest.is_empty()).then(|| rest.to_vec()) })
    }

    /// The bound parameters, `$1` first.
    fn param_values(&self) -> Result<Option<ParamValues>, Status> {
        let Some(bytes) = &self.params else { return Ok(None) };
        let invalid = |e: String| Status::invalid_argument(format!("bound parameters: {e}"));
        // Checked by `decode`; arrow-ipc still panics on some malformed schemas.
        let decoded = std::panic::catch_unwind(|| -> Result<Vec<ScalarValue>, String> {
            let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(bytes.as_slice(), None)
                .map_err(|e| e.to_string())?;
            let mut values = Vec::new();
            for batch in reader {
                let batch = batch.map_err(|e| e.to_string())?;
                if batch.num_rows() == 0 {
                    continue;
                }
                for column in batch.columns() {
                    values.push(ScalarValue::try_from_array(column, 0).map_err(|e| e.to_string())?);
                }
                break;
            }
            Ok(values)
        })
        .map_err(|_| invalid("the Arrow reader failed on them (malformed Arrow IPC)".into()))?;
        Ok(Some(ParamValues::from(decoded.map_err(invalid)?)))
    }
}

/// The most bytes of bound parameters a statement handle carries (one row of values).
const MAX_PARAMS_BYTES: usize = 1 << 20;

/// The most messages a `DoPut` of parameters may send (a schema, a row, dictionaries).
const MAX_PUT_MESSAGES: usize = 64;

/// The gRPC status for each way a query can fail; the message is weir's.
fn status(error: QueryError) -> Status {
    let message = error.to_string();
    match error {
        QueryError::Timeout(_) => Status::deadline_exceeded(message),
        QueryError::Memory { .. } => Status::resource_exhausted(message),
        QueryError::ReadOnly(_) => Status::permission_denied(message),
        QueryError::Encode(_) | QueryError::NameClash { .. } => Status::internal(message),
        QueryError::Sql(_) | QueryError::Session(_) | QueryError::UnknownSetting(_) => {
            Status::invalid_argument(message)
        }
    }
}

fn arrow_status(error: datafusion::arrow::error::ArrowError) -> Status {
    Status::internal(error.to_string())
}

/// A `FlightInfo` whose one endpoint (this server) answers `ticket` with batches of `schema`.
fn flight_info(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(arrow_status)?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// Stream `rows` as Flight data.
fn send(rows: Rows) -> Response<DoGetStream> {
    let batches = rows.batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
    let data = FlightDataEncoderBuilder::new().with_schema(rows.schema).build(batches).map_err(Status::from);
    Response::new(Box::pin(data))
}

/// Stream one batch (catalog answers).
fn send_batch(batch: RecordBatch) -> Response<DoGetStream> {
    let schema = batch.schema();
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(futures::future::ready(Ok(batch))))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

fn schema_bytes(schema: &Schema) -> Result<Vec<u8>, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(arrow_status)?;
    Ok(bytes.to_vec())
}

impl WeirFlightSql {
    async fn run(&self, handle: &Handle) -> Result<Response<DoGetStream>, Status> {
        let started = std::time::Instant::now();
        let rows = match handle.param_values()? {
            None => self.sql.stream(&handle.sql).await,
            Some(params) => self.sql.stream_with_params(&handle.sql, params).await,
        };
        let rows = self.sql.stats().timed(crate::stats::FrontEnd::Flight, started, rows);
        Ok(send(rows.map_err(status)?))
    }

    /// Every table: (schema, table, Arrow schema), in schema `public` and in its plugin's.
    fn tables(&self) -> Vec<(String, String, datafusion::arrow::datatypes::SchemaRef)> {
        let mut out = Vec::new();
        for model in self.sql.catalog().current().values() {
            for table in &model.tables {
                out.push(("public".to_string(), table.name.clone(), table.schema.clone()));
                out.push((model.plugin.clone(), table.name.clone(), table.schema.clone()));
            }
        }
        out
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names = vec!["public".to_string()];
        names.extend(self.sql.catalog().current().keys().cloned());
        names
    }
}

#[tonic::async_trait]
impl FlightSqlService for WeirFlightSql {
    type FlightService = WeirFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let description = self.sql.describe_sql(&query.query).await.map_err(status)?;
        let handle = Handle { sql: query.query, params: None };
        let ticket = TicketStatementQuery { statement_handle: handle.encode().into() };
        flight_info(&description.schema, ticket.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(&Handle::decode(&ticket.statement_handle)?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let description = self.sql.describe_sql(&query.query).await.map_err(status)?;
        let params = Schema::new(
            description
                .params
                .iter()
                .enumerate()
                .map(|(i, kind)| Field::new(format!("${}", i + 1), kind.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle { sql: query.query, params: None }.encode().into(),
            dataset_schema: schema_bytes(&description.schema)?.into(),
            parameter_schema: schema_bytes(&params)?.into(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles carry everything; there is nothing to free.
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        // Each message is checked before the decoder sees it, and the stream is read only as far
        // as one row of parameters needs: a client cannot make the host hold more.
        let (mut messages, mut bytes) = (0usize, 0usize);
        let data =
            request.into_inner().map_err(|e| FlightError::Tonic(Box::new(e))).and_then(move |data| {
                messages += 1;
                bytes = bytes.saturating_add(data.data_header.len() + data.data_body.len());
                let checked = if messages > MAX_PUT_MESSAGES || bytes > MAX_PARAMS_BYTES {
                    Err(format!(
                        "more than {MAX_PUT_MESSAGES} messages or {MAX_PARAMS_BYTES} bytes of parameters; bind one row"
                    ))
                } else if data.data_header.is_empty() {
                    Ok(data)
                } else {
                    crate::ipc::check_message(&data.data_header, data.data_body.len(), 1).map(|_| data)
                };
                futures::future::ready(checked.map_err(|e| {
                    FlightError::Tonic(Box::new(Status::invalid_argument(format!("bound parameters: {e}"))))
                }))
            });
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        let mut first: Option<RecordBatch> = None;
        loop {
            let next = std::panic::AssertUnwindSafe(batches.try_next()).catch_unwind().await.map_err(|_| {
                Status::invalid_argument("bound parameters: the Arrow reader failed on them (malformed Arrow IPC)")
            })?;
            let Some(batch) = next.map_err(Status::from)? else { break };
            if batch.num_rows() == 0 {
                continue;
            }
            if first.is_some() || batch.num_rows() > 1 {
                return Err(Status::invalid_argument(
                    "bind one row of parameters: a query runs with one value for each placeholder",
                ));
            }
            first = Some(batch);
        }
        let Some(first) = first else {
            return Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.encode().into()) });
        };
        let mut writer =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema()).map_err(arrow_status)?;
        writer.write(&first).map_err(arrow_status)?;
        writer.finish().map_err(arrow_status)?;
        let params = writer.into_inner().map_err(arrow_status)?;
        let bound = Handle { sql: handle.sql, params: Some(params) };
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(bound.encode().into()) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let description = self.sql.describe_sql(&handle.sql).await.map_err(status)?;
        flight_info(&description.schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(&Handle::decode(&query.prepared_statement_handle)?).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(DATABASE);
        Ok(send_batch(builder.build().map_err(Status::from)?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for name in self.schema_names() {
            builder.append(DATABASE, name);
        }
        Ok(send_batch(builder.build().map_err(Status::from)?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for (schema, table, arrow_schema) in self.tables() {
            builder.append(DATABASE, schema, table, "TABLE", &arrow_schema).map_err(Status::from)?;
        }
        Ok(send_batch(builder.build().map_err(Status::from)?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        Ok(send_batch(builder.build().map_err(Status::from)?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(send_batch(query.into_builder(&self.info).build().map_err(Status::from)?))
    }

    async fn do_get_fallback(&self, _request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!("weir's Flight SQL does not answer {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Raw requests to a Flight SQL listener, sent with a real gRPC client: the bytes a fuzzer or a
/// security test puts in the places a client fills (tickets, statement handles, `DoPut` data,
/// actions, descriptors). For the host's tests; not part of weir's API.
#[doc(hidden)]
pub mod probe {
    use std::net::SocketAddr;

    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, CommandPreparedStatementQuery, ProstMessageExt, TicketStatementQuery,
    };
    use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;
    use prost::Message;

    /// Where [`send`] puts the bytes.
    pub const PLACES: &[&str] =
        &["ticket", "statement-handle", "prepared-handle", "put", "action-create", "action-close", "descriptor"];

    /// Send `bytes` to the listener at `addr` in `place` (one of [`PLACES`]) and read the whole
    /// answer. `Ok`: what came back, in short; `Err`: the status (or transport error) message.
    pub async fn send(addr: SocketAddr, place: &str, bytes: &[u8]) -> Result<String, String> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("transport: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let mut client = FlightServiceClient::new(channel);
        let status = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
        let get = |ticket: Vec<u8>| Ticket { ticket: ticket.into() };
        match place {
            "ticket" | "statement-handle" | "prepared-handle" => {
                let ticket = match place {
                    "ticket" => bytes.to_vec(),
                    "statement-handle" => {
                        TicketStatementQuery { statement_handle: bytes.to_vec().into() }.as_any().encode_to_vec()
                    }
                    _ => CommandPreparedStatementQuery { prepared_statement_handle: bytes.to_vec().into() }
                        .as_any()
                        .encode_to_vec(),
                };
                let stream = client.do_get(get(ticket)).await.map_err(status)?.into_inner();
                let data: Vec<FlightData> = stream.try_collect().await.map_err(status)?;
                Ok(format!("{} messages", data.len()))
            }
            "put" => {
                let handle = super::Handle { sql: "SELECT $1 AS p".into(), params: None }.encode();
                let command = CommandPreparedStatementQuery { prepared_statement_handle: handle.into() };
                let mut messages = put_messages(bytes);
                match messages.first_mut() {
                    Some(first) => {
                        first.flight_descriptor = Some(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()))
                    }
                    None => messages.push(FlightData {
                        flight_descriptor: Some(FlightDescriptor::new_cmd(command.as_any().encode_to_vec())),
                        ..FlightData::default()
                    }),
                }
                let stream = client.do_put(futures::stream::iter(messages)).await.map_err(status)?.into_inner();
                let results: Vec<_> = stream.try_collect().await.map_err(status)?;
                Ok(format!("{} results", results.len()))
            }
            "action-create" | "action-close" => {
                let action = match place {
                    "action-create" => Action {
                        r#type: "CreatePreparedStatement".into(),
                        body: ActionCreatePreparedStatementRequest {
                            query: String::from_utf8_lossy(bytes).into_owned(),
                            transaction_id: None,
                        }
                        .as_any()
                        .encode_to_vec()
                        .into(),
                    },
                    _ => Action { r#type: "ClosePreparedStatement".into(), body: bytes.to_vec().into() },
                };
                let stream = client.do_action(action).await.map_err(status)?.into_inner();
                let results: Vec<_> = stream.try_collect().await.map_err(status)?;
                Ok(format!("{} results", results.len()))
            }
            "descriptor" => {
                let info = client.get_flight_info(FlightDescriptor::new_cmd(bytes.to_vec())).await.map_err(status)?;
                Ok(format!("{} endpoints", info.into_inner().endpoint.len()))
            }
            other => Err(format!("no place {other:?}; one of {PLACES:?}")),
        }
    }

    /// A statement handle as this server gives them out: the SQL and bound parameters.
    pub fn handle(sql: &str, params: &[u8]) -> Vec<u8> {
        super::Handle { sql: sql.into(), params: (!params.is_empty()).then(|| params.to_vec()) }.encode()
    }

    /// One row of parameters (`$1` = `value`) as an Arrow IPC stream, as a client binds them.
    pub fn parameters(value: i64) -> Vec<u8> {
        let schema = std::sync::Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)]));
        let column = std::sync::Arc::new(Int64Array::from(vec![value]));
        let Ok(batch) = RecordBatch::try_new(schema.clone(), vec![column]) else { return Vec::new() };
        let Ok(mut writer) = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema) else {
            return Vec::new();
        };
        if writer.write(&batch).and_then(|_| writer.finish()).is_err() {
            return Vec::new();
        }
        writer.into_inner().unwrap_or_default()
    }

    /// [`parameters`] whose record batch claims a body of `claimed` bytes, none of which follow:
    /// what a hostile client sends to make the reader allocate `claimed` bytes.
    pub fn hostile_parameters(claimed: i64) -> Vec<u8> {
        use datafusion::arrow::ipc::{
            Buffer, FieldNode, MessageBuilder, MessageHeader, MetadataVersion, RecordBatchBuilder,
        };
        let mut stream = parameters(1);
        // Keep the schema message; drop the batch and the end marker.
        let schema_len = i32::from_le_bytes([stream[4], stream[5], stream[6], stream[7]]) as usize;
        stream.truncate(8 + schema_len);
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let nodes = fbb.create_vector(&[FieldNode::new(1, 0)]);
        let buffers = fbb.create_vector(&[Buffer::new(0, 0), Buffer::new(0, 8)]);
        let mut batch = RecordBatchBuilder::new(&mut fbb);
        batch.add_length(1);
        batch.add_nodes(nodes);
        batch.add_buffers(buffers);
        let batch = batch.finish();
        let mut message = MessageBuilder::new(&mut fbb);
        message.add_version(MetadataVersion::V5);
        message.add_header_type(MessageHeader::RecordBatch);
        message.add_header(batch.as_union_value());
        message.add_bodyLength(claimed);
        let message = message.finish();
        fbb.finish(message, None);
        let mut header = fbb.finished_data().to_vec();
        header.resize(header.len().next_multiple_of(8), 0);
        stream.extend_from_slice(&[0xff; 4]);
        stream.extend_from_slice(&(header.len() as i32).to_le_bytes());
        stream.extend_from_slice(&header);
        stream
    }

    /// The messages of an IPC stream framed for [`send`]'s `put`: per message, its header's
    /// length (4 bytes, little endian), the header, its body's length, the body.
    pub fn put_frames(ipc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= ipc.len() {
            let length = i32::from_le_bytes([ipc[at + 4], ipc[at + 5], ipc[at + 6], ipc[at + 7]]).max(0) as usize;
            let Some(header) = ipc.get(at + 8..at + 8 + length) else { break };
            if length == 0 {
                break;
            }
            let body = datafusion::arrow::ipc::root_as_message(header).map_or(0, |m| m.bodyLength().max(0) as usize);
            let body_bytes = ipc.get(at + 8 + length..).map_or(&[][..], |rest| &rest[..body.min(rest.len())]);
            for part in [header, body_bytes] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
            at += 8 + length + body;
        }
        out
    }

    /// `bytes` framed as [`put_frames`] says, read leniently (a length past the end takes what
    /// is there), as Flight data messages.
    fn put_messages(bytes: &[u8]) -> Vec<FlightData> {
        let mut parts = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let length = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            let end = (at + 4).saturating_add(length).min(bytes.len());
            parts.push(bytes[at + 4..end].to_vec());
            at = end;
        }
        parts
            .chunks(2)
            .map(|pair| FlightData {
                data_header: pair[0].clone().into(),
                data_body: pair.get(1).cloned().unwrap_or_default().into(),
                ..FlightData::default()
            })
            .collect()
    }
}
