//! SQL over the read models (DataFusion).
//!
//! Ingest publishes one [`ReadModelSnapshot`] per projection into the [`Catalog`] (an `Arc` swap);
//! a query takes the catalog's current map of snapshots once and plans against it, so it sees
//! every table of a projection at the same event boundary, and ingest never waits for a query.
//! Tables are addressable as `table` and `plugin.table`; two plugins declaring the same table
//! name is refused when the second one is registered.
//!
//! Queries are read-only: DDL, DML, `COPY` and statements such as `SET` are refused before
//! planning. Each query runs under a time limit and a memory limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, MemorySchemaProvider, SchemaProvider};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use crate::readmodel::ReadModelSnapshot;
use weir_core::row::TableSchema;

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is wrong, or names something that does not exist.
    #[error("{0}")]
    Sql(String),
    /// The statement would change something; weir's SQL is read-only.
    #[error("weir's SQL is read-only: {0}")]
    ReadOnly(String),
    /// The query ran past its time limit and was cancelled.
    #[error("query cancelled after its time limit of {0} ms")]
    Timeout(u64),
    /// The query needed more memory than its limit.
    #[error("query cancelled: it needs more than its memory limit of {limit} bytes ({message})")]
    Memory {
        /// The limit.
        limit: usize,
        /// DataFusion's detail.
        message: String,
    },
    /// A table name is declared by two plugins.
    #[error("table {table} is declared by both {first} and {second}; table names must be unique across plugins")]
    NameClash {
        /// The table.
        table: String,
        /// The plugin registered first.
        first: String,
        /// The plugin refused.
        second: String,
    },
    /// Encoding the answer failed.
    #[error("cannot encode the answer: {0}")]
    Encode(String),
}

/// A `Result` with a [`QueryError`].
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// Limits every query runs under.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Wall-clock limit, milliseconds.
    pub timeout_ms: u64,
    /// Memory for sorts, joins and aggregations, bytes.
    pub memory_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { timeout_ms: 10_000, memory_bytes: 512 << 20 }
    }
}

/// The published read-model snapshots, by projection.
#[derive(Debug, Default)]
pub struct Catalog {
    snapshots: RwLock<Arc<BTreeMap<String, Arc<ReadModelSnapshot>>>>,
    owners: Mutex<HashMap<String, String>>,
}

/// What `GET /v1/tables` says about one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableInfo {
    /// Table name (unqualified).
    pub name: String,
    /// `plugin.table`.
    pub qualified_name: String,
    /// Owning projection.
    pub plugin: String,
    /// Columns: name, type, nullable.
    pub columns: Vec<ColumnInfo>,
    /// Rows in the published snapshot.
    pub rows: usize,
    /// Source positions the snapshot reflects: the last offset applied per topic and partition.
    pub positions: Vec<PositionInfo>,
}

/// One column in a [`TableInfo`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// SQL type as DataFusion shows it.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Nullable.
    pub nullable: bool,
}

/// A source position in a [`TableInfo`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PositionInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Last offset applied.
    pub offset: u64,
}

impl Catalog {
    /// Reserve a projection's table names; refused if another plugin has one of them.
    pub fn register(&self, plugin: &str, tables: &[TableSchema]) -> Result<()> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        for table in tables {
            if let Some(first) = owners.get(&table.name)
                && first != plugin
            {
                return Err(QueryError::NameClash {
                    table: table.name.clone(),
                    first: first.clone(),
                    second: plugin.to_string(),
                });
            }
        }
        for table in tables {
            owners.insert(table.name.clone(), plugin.to_string());
        }
        Ok(())
    }

    /// Make `snapshot` the one queries see for its projection.
    pub fn publish(&self, snapshot: ReadModelSnapshot) {
        let mut current = self.snapshots.write().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::clone(&current);
        next.insert(snapshot.plugin.clone(), Arc::new(snapshot));
        *current = Arc::new(next);
    }

    /// The snapshots queries see now.
    pub fn current(&self) -> Arc<BTreeMap<String, Arc<ReadModelSnapshot>>> {
        self.snapshots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every published table.
    pub fn tables(&self) -> Vec<TableInfo> {
        let current = self.current();
        current
            .values()
            .flat_map(|model| {
                model.tables.iter().map(move |table| TableInfo {
                    name: table.name.clone(),
                    qualified_name: format!("{}.{}", model.plugin, table.name),
                    plugin: model.plugin.clone(),
                    columns: table
                        .schema
                        .fields()
                        .iter()
                        .map(|f| ColumnInfo {
                            name: f.name().clone(),
                            data_type: f.data_type().to_string(),
                            nullable: f.is_nullable(),
                        })
                        .collect(),
                    rows: table.rows,
                    positions: model
                        .positions
                        .iter()
                        .map(|((topic, partition), offset)| PositionInfo {
                            topic: topic.clone(),
                            partition: *partition,
                            offset: *offset,
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

/// The answer to a query.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Result schema.
    pub(crate) schema: SchemaRef,
    /// Result rows.
    pub(crate) batches: Vec<RecordBatch>,
}

impl Answer {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a query takes and gives, found by planning it.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    /// Type of each placeholder, `$1` first; `None` where the query leaves it open.
    pub(crate) params: Vec<Option<DataType>>,
    /// Schema of the answer.
    pub(crate) schema: SchemaRef,
}

/// The most parameters a statement may take (the Postgres protocol's own limit).
const MAX_PARAMETERS: usize = 65_535;

/// Queries may read and nothing else: no DDL, no DML, no `SET` or other statements.
fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Runs SQL against the catalog.
pub struct SqlEngine {
    catalog: Arc<Catalog>,
    runtime: Arc<RuntimeEnv>,
    limits: QueryLimits,
}

impl SqlEngine {
    /// An engine over `catalog`.
    pub fn new(catalog: Arc<Catalog>, limits: QueryLimits) -> Result<Self> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        Ok(SqlEngine { catalog, runtime, limits })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A session over the snapshots published right now.
    fn session(&self) -> Result<SessionContext> {
        let config = SessionConfig::new().with_information_schema(true).with_target_partitions(2);
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        let default_schema = ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .ok_or_else(|| QueryError::Sql("the default schema is missing".into()))?;
        let catalog =
            ctx.catalog("datafusion").ok_or_else(|| QueryError::Sql("the default catalog is missing".into()))?;
        for model in self.catalog.current().values() {
            let schema = Arc::new(MemorySchemaProvider::new());
            for table in &model.tables {
                let provider =
                    Arc::new(MemTable::try_new(table.schema.clone(), vec![table.batches.clone()]).map_err(sql_error)?);
                schema.register_table(table.name.clone(), provider.clone()).map_err(sql_error)?;
                default_schema.register_table(table.name.clone(), provider).map_err(sql_error)?;
            }
            catalog.register_schema(&model.plugin, schema).map_err(sql_error)?;
        }
        Ok(ctx)
    }

    /// Run one read-only query.
    pub async fn query(&self, sql: &str) -> Result<Answer> {
        self.run(sql, None).await
    }

    /// Run one read-only query whose `$1`, `$2`, ... placeholders take `params`, in order.
    pub(crate) async fn query_with_params(&self, sql: &str, params: ParamValues) -> Result<Answer> {
        self.run(sql, Some(params)).await
    }

    /// Plan `sql` without running it (under the same read-only rules): the types its placeholders
    /// take (`$1` first; `None` where the query does not fix one) and the schema of its answer.
    pub(crate) async fn describe(&self, sql: &str) -> Result<Description> {
        let ctx = self.session()?;
        let plan = ctx.state().create_logical_plan(sql).await.map_err(|e| self.classify(e))?;
        read_only().verify_plan(&plan).map_err(|e| self.classify(e))?;
        let mut params: Vec<(usize, Option<DataType>)> = plan
            .get_parameter_types()
            .map_err(|e| self.classify(e))?
            .into_iter()
            .filter_map(|(name, kind)| name.trim_start_matches('$').parse::<usize>().ok().map(|n| (n, kind)))
            .filter(|(n, _)| *n > 0)
            .collect();
        params.sort_by_key(|(n, _)| *n);
        let count = params.last().map_or(0, |(n, _)| *n);
        if count > MAX_PARAMETERS {
            return Err(QueryError::Sql(format!(
                "placeholder ${count} is past the {MAX_PARAMETERS} parameters a statement may take"
            )));
        }
        let mut types = vec![None; count];
        for (n, kind) in params {
            types[n - 1] = kind;
        }
        Ok(Description { params: types, schema: Arc::new(plan.schema().as_arrow().clone()) })
    }

    async fn run(&self, sql: &str, params: Option<ParamValues>) -> Result<Answer> {
        let ctx = self.session()?;
        let run = async {
            let mut frame = ctx.sql_with_options(sql, read_only()).await.map_err(|e| self.classify(e))?;
            if let Some(params) = params {
                frame = frame.with_param_values(params).map_err(|e| self.classify(e))?;
            }
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await.map_err(|e| self.classify(e))?;
            Ok(Answer { schema, batches })
        };
        match tokio::time::timeout(Duration::from_millis(self.limits.timeout_ms), run).await {
            Ok(answer) => answer,
            Err(_) => Err(QueryError::Timeout(self.limits.timeout_ms)),
        }
    }

    fn classify(&self, error: DataFusionError) -> QueryError {
        let error = error.find_root().to_string();
        if error.contains("Resources exhausted") {
            return QueryError::Memory { limit: self.limits.memory_bytes, message: error };
        }
        for (what, text) in
            [("DDL", "DDL not supported"), ("DML", "DML not supported"), ("statement", "Statement not supported")]
        {
            if error.contains(text) {
                return QueryError::ReadOnly(format!("{what} is not allowed ({error})"));
            }
        }
        QueryError::Sql(error)
    }
}

fn sql_error(e: DataFusionError) -> QueryError {
    QueryError::Sql(e.to_string())
}

/// The answer as a JSON array of row objects.
pub fn to_json(answer: &Answer) -> Result<Vec<u8>> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let batches: Vec<&RecordBatch> = answer.batches.iter().collect();
    writer.write_batches(&batches).map_err(|e| QueryError::Encode(e.to_string()))?;
    writer.finish().map_err(|e| QueryError::Encode(e.to_string()))?;
    let mut out = writer.into_inner();
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

/// The answer as CSV with a header line.
pub fn to_csv(answer: &Answer) -> Result<Vec<u8>> {
    let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
    if answer.batches.is_empty() {
        writer.write(&RecordBatch::new_empty(answer.schema.clone())).map_err(|e| QueryError::Encode(e.to_string()))?;
    }
    for batch in &answer.batches {
        writer.write(batch).map_err(|e| QueryError::Encode(e.to_string()))?;
    }
    Ok(writer.into_inner())
}

/// The answer as an Arrow IPC stream.
pub fn to_arrow_ipc(answer: &Answer) -> Result<Vec<u8>> {
    let encode = |e: datafusion::arrow::error::ArrowError| QueryError::Encode(e.to_string());
    let mut writer =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &answer.schema).map_err(encode)?;
    for batch in &answer.batches {
        writer.write(batch).map_err(encode)?;
    }
    writer.finish().map_err(encode)?;
    writer.into_inner().map_err(encode)
}

/// Read an Arrow IPC stream back into an answer.
pub fn from_arrow_ipc(bytes: &[u8]) -> Result<Answer> {
    let decode = |e: datafusion::arrow::error::ArrowError| QueryError::Encode(e.to_string());
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(bytes, None).map_err(decode)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(decode)?;
    Ok(Answer { schema, batches })
}

/// The answer as an aligned text table.
pub fn to_table(answer: &Answer) -> Result<String> {
    let table =
        datafusion::arrow::util::pretty::pretty_format_batches_with_schema(answer.schema.clone(), &answer.batches)
            .map_err(|e| QueryError::Encode(e.to_string()))?;
    Ok(format!("{table}\n({} rows)", answer.rows()))
}
