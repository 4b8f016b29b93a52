//! SQL over the read models (DataFusion).
//!
//! Ingest publishes one [`ReadModelSnapshot`] per projection into the [`Catalog`] (an `Arc` swap);
//! a query takes the catalog's current map of snapshots once and plans against it, so it sees
//! every table of a projection at the same event boundary, and ingest never waits for a query.
//! Tables are addressable as `table` and `plugin.table`; two plugins declaring the same table
//! name is refused when the second one is registered.
//!
//! Tables are also in the database `weir` (`weir.public.orders`), listed by `pg_catalog` and
//! `information_schema` as Postgres tools expect. SQL is parsed as Postgres's, with the rewrites
//! that let DataFusion plan the catalog queries clients send.
//!
//! Queries are read-only: DDL, DML and `COPY` are refused before planning; session statements
//! (`BEGIN`, `SET`, `SHOW`, ...) are [`crate::session`]'s. Each query runs under a time limit and
//! a memory limit, and its answer streams ([`Rows`]) until the time limit.

use crate::stats::QueryStats;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemTable, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, Volatility, create_udf};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables, setup_pg_catalog,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::readmodel::ReadModelSnapshot;
use crate::session::{self, Command, Reply, Session};
use weir_core::row::TableSchema;

/// The published snapshots, by projection: what one statement reads.
pub type Tables = Arc<BTreeMap<String, Arc<ReadModelSnapshot>>>;

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
    /// `SET` or `SHOW` of a setting that does not exist.
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownSetting(String),
    /// A session statement (`BEGIN`, `SET`, ...) where each statement runs on its own.
    #[error(
        "{0} needs a session: here each statement runs on its own snapshot; use the Postgres wire protocol for transactions and settings"
    )]
    Session(&'static str),
}

impl QueryError {
    /// Its kind, in metrics: `sql`, `read_only`, `timeout`, `memory`, `name_clash`, `encode`,
    /// `unknown_setting`, `session`.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "sql",
            QueryError::ReadOnly(_) => "read_only",
            QueryError::Timeout(_) => "timeout",
            QueryError::Memory { .. } => "memory",
            QueryError::NameClash { .. } => "name_clash",
            QueryError::Encode(_) => "encode",
            QueryError::UnknownSetting(_) => "unknown_setting",
            QueryError::Session(_) => "session",
        }
    }
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
    snapshots: RwLock<Tables>,
    owners: Mutex<HashMap<String, String>>,
}

/// What `GET /v1/tables` says about one table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Bytes its Arrow buffers take in the published snapshot.
    pub bytes: usize,
    /// When the published snapshot was taken, milliseconds since the Unix epoch (a snapshot is
    /// taken when rows changed, at most every `publish_interval_ms`).
    pub snapshot_ms: u64,
    /// Source positions the snapshot reflects: the last offset applied per topic and partition.
    pub positions: Vec<PositionInfo>,
}

/// One column in a [`TableInfo`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PositionInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Last offset applied.
    pub offset: u64,
}

/// A table of `tables` that another plugin than `plugin` owns, as an error.
fn clash(owners: &HashMap<String, String>, plugin: &str, tables: &[TableSchema]) -> Result<()> {
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
    Ok(())
}

impl Catalog {
    /// Reserve a projection's table names; refused if another plugin has one of them.
    pub fn register(&self, plugin: &str, tables: &[TableSchema]) -> Result<()> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        clash(&owners, plugin, tables)?;
        for table in tables {
            owners.insert(table.name.clone(), plugin.to_string());
        }
        Ok(())
    }

    /// Whether `plugin` could own these table names (no other plugin has one of them).
    pub fn check_names(&self, plugin: &str, tables: &[TableSchema]) -> Result<()> {
        clash(&self.owners.lock().unwrap_or_else(|e| e.into_inner()), plugin, tables)
    }

    /// Switch `snapshot`'s projection to its tables in one step: queries see either the tables
    /// it had or these, never neither and never half. Its table names must have passed
    /// [`Catalog::check_names`].
    pub fn replace(&self, snapshot: ReadModelSnapshot) {
        {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            owners.retain(|_, owner| *owner != snapshot.plugin);
            for table in &snapshot.tables {
                owners.insert(table.name.clone(), snapshot.plugin.clone());
            }
        }
        self.publish(snapshot);
    }

    /// Drop a projection's tables.
    pub fn remove(&self, plugin: &str) {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, owner| owner != plugin);
        let mut current = self.snapshots.write().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::clone(&current);
        next.remove(plugin);
        *current = Arc::new(next);
    }

    /// Make `snapshot` the one queries see for its projection.
    pub fn publish(&self, snapshot: ReadModelSnapshot) {
        let mut current = self.snapshots.write().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::clone(&current);
        next.insert(snapshot.plugin.clone(), Arc::new(snapshot));
        *current = Arc::new(next);
    }

    /// The snapshots queries see now.
    pub fn current(&self) -> Tables {
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
                    bytes: table.batches.iter().map(|b| b.get_array_memory_size()).sum(),
                    snapshot_ms: model.taken_ms,
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

/// The answer to a query, collected.
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

/// The answer to a query as it is computed: batches arrive while the query runs, under its time
/// and memory limits, so no front end holds a whole large result.
pub struct Rows {
    /// Result schema.
    pub(crate) schema: SchemaRef,
    /// The batches; an error ends the stream.
    pub(crate) batches: BoxStream<'static, Result<RecordBatch>>,
}

impl Rows {
    /// Rows already computed.
    pub(crate) fn from_answer(answer: Answer) -> Rows {
        let batches = futures::stream::iter(answer.batches.into_iter().map(Ok)).fuse().boxed();
        Rows { schema: answer.schema, batches }
    }

    /// Wait for every batch.
    pub async fn collect(mut self) -> Result<Answer> {
        let mut batches = Vec::new();
        while let Some(batch) = self.batches.next().await {
            batches.push(batch?);
        }
        Ok(Answer { schema: self.schema, batches })
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

/// The database (DataFusion catalog) weir's tables live in: `weir.public.orders`.
pub const DATABASE: &str = "weir";

/// What `version()` answers: clients parse the Postgres version from it.
fn version_text() -> String {
    format!(
        "PostgreSQL {} on {}-{} (weir {}, Apache DataFusion {})",
        session::SERVER_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    )
}

/// The oid of a built-in Postgres type named `name` (as `to_regtype` answers): the types weir's
/// columns have and the ones drivers ask about; `None` for any other (psycopg asks for `hstore`
/// and takes no answer as "not installed").
fn builtin_type_oid(name: &str) -> Option<i32> {
    let name = name.trim().trim_start_matches("pg_catalog.").trim_matches('"').to_ascii_lowercase();
    Some(match name.as_str() {
        "bool" | "boolean" => 16,
        "bytea" => 17,
        "char" => 18,
        "name" => 19,
        "int8" | "bigint" => 20,
        "int2" | "smallint" => 21,
        "int4" | "integer" | "int" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "float4" | "real" => 700,
        "float8" | "double precision" => 701,
        "varchar" | "character varying" => 1043,
        "date" => 1082,
        "time" | "time without time zone" => 1083,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "interval" => 1186,
        "numeric" | "decimal" => 1700,
        "uuid" => 2950,
        "jsonb" => 3802,
        _ => return None,
    })
}

/// `to_regtype(name)`: the type's oid, or NULL when there is no such type.
fn to_regtype_udf() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Array, AsArray, Int32Array};
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(value) => {
                let name = match value {
                    ScalarValue::Utf8(name) | ScalarValue::LargeUtf8(name) | ScalarValue::Utf8View(name) => {
                        name.clone()
                    }
                    _ => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Int32(name.as_deref().and_then(builtin_type_oid))))
            }
            ColumnarValue::Array(array) => {
                let names = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
                let names = names.as_string::<i32>();
                let oids: Int32Array = (0..names.len())
                    .map(|i| if names.is_null(i) { None } else { builtin_type_oid(names.value(i)) })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(oids)))
            }
        }),
    )
}

/// Queries may read and nothing else: no DDL, no DML, no `SET` or other statements.
fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// The published tables as the `pg_catalog` tables see them: schema `public` holds every table,
/// and each projection has a schema of its own.
#[derive(Debug, Clone)]
struct PublishedTables(Arc<Catalog>);

impl PublishedTables {
    fn find(&self, catalog: &str, schema: &str) -> Option<Vec<(String, SchemaRef)>> {
        if catalog != DATABASE {
            return None;
        }
        let current = self.0.current();
        let tables = |model: &ReadModelSnapshot| -> Vec<(String, SchemaRef)> {
            model.tables.iter().map(|t| (t.name.clone(), t.schema.clone())).collect()
        };
        match schema {
            "public" => Some(current.values().flat_map(|m| tables(m)).collect()),
            "pg_catalog" | "information_schema" => Some(Vec::new()),
            plugin => current.get(plugin).map(|m| tables(m)),
        }
    }
}

#[async_trait::async_trait]
impl CatalogInfo for PublishedTables {
    async fn catalog_names(&self) -> DfResult<Vec<String>> {
        Ok(vec![DATABASE.to_string()])
    }

    async fn schema_names(&self, catalog: &str) -> DfResult<Option<Vec<String>>> {
        if catalog != DATABASE {
            return Ok(None);
        }
        let mut names = vec!["public".to_string()];
        names.extend(self.0.current().keys().cloned());
        names.extend(["pg_catalog".to_string(), "information_schema".to_string()]);
        Ok(Some(names))
    }

    async fn table_names(&self, catalog: &str, schema: &str) -> DfResult<Option<Vec<String>>> {
        Ok(self.find(catalog, schema).map(|tables| tables.into_iter().map(|(name, _)| name).collect()))
    }

    async fn table_schema(&self, catalog: &str, schema: &str, table: &str) -> DfResult<Option<SchemaRef>> {
        Ok(self.find(catalog, schema).and_then(|tables| tables.into_iter().find(|(n, _)| n == table).map(|(_, s)| s)))
    }

    async fn table_type(&self, catalog: &str, schema: &str, table: &str) -> DfResult<Option<TableType>> {
        Ok(self.table_schema(catalog, schema, table).await?.map(|_| TableType::Base))
    }
}

/// The Postgres name of a column type, and its `udt_name`.
fn pg_type_name(kind: &DataType) -> (String, String) {
    let (name, udt) = match kind {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ("text", "text"),
        DataType::Int64 => ("bigint", "int8"),
        DataType::Int32 => ("integer", "int4"),
        DataType::Float64 => ("double precision", "float8"),
        DataType::Boolean => ("boolean", "bool"),
        DataType::Timestamp(_, Some(_)) => ("timestamp with time zone", "timestamptz"),
        DataType::Timestamp(_, None) => ("timestamp without time zone", "timestamp"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ("bytea", "bytea"),
        other => return (other.to_string(), other.to_string()),
    };
    (name.to_string(), udt.to_string())
}

/// `information_schema` over one statement's tables, built only when the statement reads it.
#[derive(Debug)]
struct InformationSchema(Tables);

const INFORMATION_SCHEMA_TABLES: [&str; 3] = ["schemata", "tables", "columns"];

#[async_trait::async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        INFORMATION_SCHEMA_TABLES.map(String::from).to_vec()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        if !self.table_exist(name) {
            return Ok(None);
        }
        information_schema(&self.0).map_err(|e| DataFusionError::External(Box::new(e)))?.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        INFORMATION_SCHEMA_TABLES.contains(&name)
    }
}

/// `information_schema` over `tables` as Postgres answers it: `schemata`, `tables` and `columns`
/// (with Postgres type names, as tools such as Grafana read them), every table in `public` and in
/// its plugin's schema.
fn information_schema(tables: &Tables) -> Result<Arc<dyn SchemaProvider>> {
    use datafusion::arrow::array::{ArrayRef, Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn table(columns: Vec<(&str, ArrayRef)>) -> Result<Arc<MemTable>> {
        let schema = Arc::new(Schema::new(
            columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect())
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]]).map_err(sql_error)?))
    }
    let text = |values: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(values)) };
    let placed: Vec<(String, &crate::readmodel::TableSnapshot)> = tables
        .values()
        .flat_map(|model| model.tables.iter().flat_map(move |t| [("public".to_string(), t), (model.plugin.clone(), t)]))
        .collect();

    let mut schemas = vec!["public".to_string()];
    schemas.extend(tables.keys().cloned());
    schemas.extend(["pg_catalog".to_string(), "information_schema".to_string()]);
    let schemata = table(vec![
        ("catalog_name", text(vec![DATABASE.to_string(); schemas.len()])),
        ("schema_name", text(schemas.clone())),
        ("schema_owner", text(vec!["weir".to_string(); schemas.len()])),
    ])?;

    let listed = table(vec![
        ("table_catalog", text(vec![DATABASE.to_string(); placed.len()])),
        ("table_schema", text(placed.iter().map(|(s, _)| s.clone()).collect())),
        ("table_name", text(placed.iter().map(|(_, t)| t.name.clone()).collect())),
        ("table_type", text(vec!["BASE TABLE".to_string(); placed.len()])),
    ])?;

    let (mut schema_names, mut table_names, mut names, mut positions) = (vec![], vec![], vec![], vec![]);
    let (mut nullable, mut data_types, mut udt_names) = (vec![], vec![], vec![]);
    for (schema, t) in &placed {
        for (i, field) in t.schema.fields().iter().enumerate() {
            let (data_type, udt) = pg_type_name(field.data_type());
            schema_names.push(schema.clone());
            table_names.push(t.name.clone());
            names.push(field.name().clone());
            positions.push(i as i32 + 1);
            nullable.push(if field.is_nullable() { "YES" } else { "NO" }.to_string());
            data_types.push(data_type);
            udt_names.push(udt);
        }
    }
    let rows = names.len();
    let columns = table(vec![
        ("table_catalog", text(vec![DATABASE.to_string(); rows])),
        ("table_schema", text(schema_names)),
        ("table_name", text(table_names)),
        ("column_name", text(names)),
        ("ordinal_position", Arc::new(Int32Array::from(positions))),
        ("column_default", Arc::new(StringArray::from(vec![None::<String>; rows]))),
        ("is_nullable", text(nullable)),
        ("data_type", text(data_types)),
        ("udt_name", text(udt_names)),
    ])?;

    let provider = Arc::new(MemorySchemaProvider::new());
    provider.register_table("schemata".into(), schemata).map_err(sql_error)?;
    provider.register_table("tables".into(), listed).map_err(sql_error)?;
    provider.register_table("columns".into(), columns).map_err(sql_error)?;
    Ok(provider)
}

/// Runs SQL against the catalog.
pub struct SqlEngine {
    catalog: Arc<Catalog>,
    limits: QueryLimits,
    /// Functions and settings every query's session starts from (each gets a memory pool of its own).
    template: SessionState,
    /// `pg_catalog` over the published tables; one for the engine's life, so object ids stay the
    /// same from one query to the next (psql's `\d` looks a table up by the id it found first).
    pg_catalog: Arc<dyn SchemaProvider>,
    /// Postgres SQL, rewritten where DataFusion needs it (catalog queries clients send).
    parser: PostgresCompatibilityParser,
    /// Queries run, by front end.
    stats: Arc<QueryStats>,
}

impl SqlEngine {
    /// An engine over `catalog`.
    pub fn new(catalog: Arc<Catalog>, limits: QueryLimits) -> Result<Self> {
        let runtime =
            RuntimeEnvBuilder::new().with_memory_limit(limits.memory_bytes, 1.0).build_arc().map_err(sql_error)?;
        let config = SessionConfig::new()
            // weir serves its own `information_schema` (Postgres type names; see `information_schema`).
            .with_information_schema(false)
            .with_target_partitions(2)
            .with_default_catalog_and_schema(DATABASE, "public")
            .set_str("datafusion.sql_parser.dialect", "postgresql");
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        setup_pg_catalog(&ctx, DATABASE, EmptyContextProvider).map_err(|e| sql_error(*e))?;
        let version = version_text();
        ctx.register_udf(create_udf(
            "version",
            vec![],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(move |_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
        ));
        ctx.register_udf(to_regtype_udf());
        let static_tables = Arc::new(PgCatalogStaticTables::try_new().map_err(sql_error)?);
        let pg_catalog =
            PgCatalogSchemaProvider::try_new(PublishedTables(catalog.clone()), static_tables, EmptyContextProvider)
                .map_err(sql_error)?;
        Ok(SqlEngine {
            catalog,
            limits,
            template: ctx.state(),
            pg_catalog: Arc::new(pg_catalog),
            parser: PostgresCompatibilityParser::new(),
            stats: Arc::default(),
        })
    }

    /// What the front ends counted of the queries they ran.
    pub fn stats(&self) -> &Arc<QueryStats> {
        &self.stats
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The server's time limit per statement.
    pub(crate) fn time_limit(&self) -> Duration {
        Duration::from_millis(self.limits.timeout_ms)
    }

    /// A session over `tables`.
    fn context(&self, tables: &Tables) -> Result<SessionContext> {
        let database = Arc::new(MemoryCatalogProvider::new());
        let public = Arc::new(MemorySchemaProvider::new());
        for model in tables.values() {
            let schema = Arc::new(MemorySchemaProvider::new());
            for table in &model.tables {
                let provider =
                    Arc::new(MemTable::try_new(table.schema.clone(), vec![table.batches.clone()]).map_err(sql_error)?);
                schema.register_table(table.name.clone(), provider.clone()).map_err(sql_error)?;
                public.register_table(table.name.clone(), provider).map_err(sql_error)?;
            }
            database.register_schema(&model.plugin, schema).map_err(sql_error)?;
        }
        database.register_schema("public", public).map_err(sql_error)?;
        database.register_schema("pg_catalog", self.pg_catalog.clone()).map_err(sql_error)?;
        database
            .register_schema("information_schema", Arc::new(InformationSchema(tables.clone())))
            .map_err(sql_error)?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(DATABASE.to_string(), database);
        // A memory pool per statement: the limit is each query's, not shared by all of them.
        let runtime =
            RuntimeEnvBuilder::new().with_memory_limit(self.limits.memory_bytes, 1.0).build_arc().map_err(sql_error)?;
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_catalog_list(catalogs)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Parse `sql` (Postgres syntax) into the commands it holds.
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Command>> {
        let statements = match self.parser.parse(sql) {
            Ok(statements) => statements,
            Err(error) => {
                // DataFusion's own write statements (`CREATE EXTERNAL TABLE`, its `COPY ... TO`
                // forms) are not Postgres syntax: refuse them as the writes they are.
                let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
                if let Ok(statements) = DFParser::parse_sql_with_dialect(sql, &dialect) {
                    for statement in statements {
                        match statement {
                            DfStatement::CreateExternalTable(_) => {
                                return Err(QueryError::ReadOnly("CREATE EXTERNAL TABLE is not allowed".into()));
                            }
                            DfStatement::CopyTo(_) => {
                                return Err(QueryError::ReadOnly("COPY is not allowed".into()));
                            }
                            _ => {}
                        }
                    }
                }
                return Err(QueryError::Sql(error.to_string()));
            }
        };
        statements.into_iter().map(Command::classify).collect()
    }

    /// The one command in `sql`.
    fn single(&self, sql: &str) -> Result<Command> {
        let mut commands = self.parse(sql)?;
        match commands.len() {
            0 => Err(QueryError::Sql("the query is empty".into())),
            1 => Ok(commands.remove(0)),
            n => Err(QueryError::Sql(format!("one statement at a time: this text holds {n}"))),
        }
    }

    /// Plan `statement` over `ctx`, refusing anything but reads.
    async fn plan(&self, ctx: &SessionContext, statement: &ast::Statement) -> Result<LogicalPlan> {
        let plan = ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
            .await
            .map_err(|e| self.classify(e))?;
        read_only().verify_plan(&plan).map_err(|e| self.classify(e))?;
        Ok(plan)
    }

    /// Plan `statement` without running it (under the same read-only rules): the types its
    /// placeholders take (`$1` first; `None` where the query does not fix one) and the schema
    /// of its answer.
    /// Planning counts against the statement time limit, as running does (a prepared statement is
    /// planned when the Postgres client parses it).
    pub(crate) async fn describe(&self, statement: &ast::Statement, tables: &Tables) -> Result<Description> {
        let limit = self.time_limit();
        tokio::time::timeout(limit, self.plan_description(statement, tables))
            .await
            .map_err(|_| QueryError::Timeout(limit.as_millis() as u64))?
    }

    async fn plan_description(&self, statement: &ast::Statement, tables: &Tables) -> Result<Description> {
        let ctx = self.context(tables)?;
        let plan = self.plan(&ctx, statement).await?;
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

    /// Describe the one statement in `sql` (a query or `SHOW`).
    pub(crate) async fn describe_sql(&self, sql: &str) -> Result<Description> {
        match self.single(sql)? {
            Command::Query(statement) => self.describe(&statement, &self.catalog.current()).await,
            command => Ok(Description { params: Vec::new(), schema: sessionless(command)?.schema }),
        }
    }

    /// Run `statement` over `tables`, its placeholders taking `params`, within `timeout` (planning,
    /// running and handing over every batch).
    pub(crate) async fn run(
        &self,
        statement: &ast::Statement,
        tables: &Tables,
        params: Option<ParamValues>,
        timeout: Duration,
    ) -> Result<Rows> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timeout_ms = timeout.as_millis() as u64;
        let start = async {
            let ctx = self.context(tables)?;
            let plan = self.plan(&ctx, statement).await?;
            let mut frame = ctx.execute_logical_plan(plan).await.map_err(|e| self.classify(e))?;
            if let Some(params) = params {
                frame = frame.with_param_values(params).map_err(|e| self.classify(e))?;
            }
            frame.execute_stream().await.map_err(|e| self.classify(e))
        };
        let stream = match tokio::time::timeout_at(deadline, start).await {
            Ok(stream) => stream?,
            Err(_) => return Err(QueryError::Timeout(timeout_ms)),
        };
        let schema = stream.schema();
        let memory = self.limits.memory_bytes;
        let sleep = Box::pin(tokio::time::sleep_until(deadline));
        let batches =
            futures::stream::unfold((stream, sleep, false), move |(mut stream, mut sleep, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    biased;
                    _ = &mut sleep => Some((Err(QueryError::Timeout(timeout_ms)), (stream, sleep, true))),
                    next = stream.next() => match next {
                        None => None,
                        // What functions compute (`repeat`, `lpad`, ...) is reserved by no
                        // operator: the answer itself is held to the limit, one batch at a time.
                        Some(Ok(batch)) if batch.get_array_memory_size() > memory => {
                            let message = format!(
                                "one batch of its answer takes {} bytes",
                                batch.get_array_memory_size()
                            );
                            Some((Err(QueryError::Memory { limit: memory, message }), (stream, sleep, true)))
                        }
                        Some(Ok(batch)) => Some((Ok(batch), (stream, sleep, false))),
                        Some(Err(e)) => Some((Err(classify(e, memory)), (stream, sleep, true))),
                    },
                }
            })
            .fuse()
            .boxed();
        Ok(Rows { schema, batches })
    }

    /// Run the one read-only statement in `sql` (a query, or `SHOW`) on the tables published
    /// now; batches arrive as they are computed.
    pub async fn stream(&self, sql: &str) -> Result<Rows> {
        match self.single(sql)? {
            Command::Query(statement) => self.run(&statement, &self.catalog.current(), None, self.time_limit()).await,
            command => sessionless(command).map(Rows::from_answer),
        }
    }

    /// Run the one read-only statement in `sql` and collect its answer.
    pub async fn query(&self, sql: &str) -> Result<Answer> {
        self.stream(sql).await?.collect().await
    }

    /// Run the one statement in `sql` with `$1`, `$2`, ... taking `params`, in order.
    pub(crate) async fn stream_with_params(&self, sql: &str, params: ParamValues) -> Result<Rows> {
        match self.single(sql)? {
            Command::Query(statement) => {
                self.run(&statement, &self.catalog.current(), Some(params), self.time_limit()).await
            }
            command => sessionless(command).map(Rows::from_answer),
        }
    }

    fn classify(&self, error: DataFusionError) -> QueryError {
        classify(error, self.limits.memory_bytes)
    }
}

/// A session statement sent where there is no session (HTTP, Flight SQL): `SHOW` is answered
/// with the defaults; a `SET` or `BEGIN` that would be refused anyway gets that refusal; the rest
/// are refused as needing a session.
fn sessionless(command: Command) -> Result<Answer> {
    match Session::default().apply(&command)? {
        Reply::Rows(answer) => Ok(answer),
        _ => Err(QueryError::Session(command.tag())),
    }
}

fn classify(error: DataFusionError, memory_limit: usize) -> QueryError {
    let error = error.find_root().to_string();
    if error.contains("Resources exhausted") {
        return QueryError::Memory { limit: memory_limit, message: error };
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

fn sql_error(e: DataFusionError) -> QueryError {
    QueryError::Sql(e.to_string())
}

/// How an answer is encoded for HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON array of row objects (null fields left out).
    Json,
    /// CSV with a header line.
    Csv,
    /// An Arrow IPC stream.
    ArrowIpc,
}

impl Encoding {
    /// The media type of the encoding.
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Csv => "text/csv",
            Encoding::ArrowIpc => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Encodes an answer one batch at a time: `begin`, then `batch` for each, then `finish`.
struct Encoder {
    encoding: Encoding,
    schema: SchemaRef,
    rows_written: bool,
    ipc: Option<datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>>,
}

fn encode_error(e: datafusion::arrow::error::ArrowError) -> QueryError {
    QueryError::Encode(e.to_string())
}

impl Encoder {
    fn new(encoding: Encoding, schema: SchemaRef) -> Encoder {
        Encoder { encoding, schema, rows_written: false, ipc: None }
    }

    fn begin(&mut self) -> Result<Vec<u8>> {
        match self.encoding {
            Encoding::Json => Ok(b"[".to_vec()),
            Encoding::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
                writer.write(&RecordBatch::new_empty(self.schema.clone())).map_err(encode_error)?;
                Ok(writer.into_inner())
            }
            Encoding::ArrowIpc => {
                let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)
                    .map_err(encode_error)?;
                let header = std::mem::take(writer.get_mut());
                self.ipc = Some(writer);
                Ok(header)
            }
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        match self.encoding {
            Encoding::Json => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(batch).map_err(encode_error)?;
                writer.finish().map_err(encode_error)?;
                // One object per line (JSON escapes newlines inside strings): join them with commas.
                let lines = writer.into_inner();
                let mut out = Vec::with_capacity(lines.len() + 1);
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if self.rows_written {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    self.rows_written = true;
                }
                Ok(out)
            }
            Encoding::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(false).build(Vec::new());
                writer.write(batch).map_err(encode_error)?;
                Ok(writer.into_inner())
            }
            Encoding::ArrowIpc => {
                let writer = self.ipc.as_mut().ok_or_else(|| QueryError::Encode("IPC stream not begun".into()))?;
                writer.write(batch).map_err(encode_error)?;
                Ok(std::mem::take(writer.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>> {
        match self.encoding {
            Encoding::Json => Ok(b"]".to_vec()),
            Encoding::Csv => Ok(Vec::new()),
            Encoding::ArrowIpc => {
                let writer = self.ipc.as_mut().ok_or_else(|| QueryError::Encode("IPC stream not begun".into()))?;
                writer.finish().map_err(encode_error)?;
                Ok(std::mem::take(writer.get_mut()))
            }
        }
    }
}

/// The answer encoded as it streams: one chunk to begin, one per batch, one to end. An error
/// ends the stream (after a first chunk has gone, the client sees a cut-off body).
pub fn encode(rows: Rows, encoding: Encoding) -> BoxStream<'static, Result<Vec<u8>>> {
    let mut encoder = Encoder::new(encoding, rows.schema);
    let begin = futures::stream::once(futures::future::ready(encoder.begin()));
    let encoder = Arc::new(Mutex::new(encoder));
    let body = {
        let encoder = encoder.clone();
        rows.batches.map(move |batch| batch.and_then(|b| lock(&encoder).batch(&b)))
    };
    let end = futures::stream::once(async move { lock(&encoder).finish() });
    begin.chain(body).chain(end).boxed()
}

/// [`encode`], after waiting for the first batch: an error found before any row (planning, the
/// time limit, the first batch) is returned here, where a front end can still answer with an
/// error status, rather than cutting the body off.
pub async fn encode_stream(mut rows: Rows, encoding: Encoding) -> Result<BoxStream<'static, Result<Vec<u8>>>> {
    // `Rows` streams are fused: polling one again after its end is safe.
    let first = rows.batches.next().await.transpose()?;
    let rest = std::mem::replace(&mut rows.batches, futures::stream::empty().boxed());
    rows.batches = futures::stream::iter(first.map(Ok)).chain(rest).boxed();
    Ok(encode(rows, encoding))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole answer, encoded.
pub fn encode_answer(answer: &Answer, encoding: Encoding) -> Result<Vec<u8>> {
    let mut encoder = Encoder::new(encoding, answer.schema.clone());
    let mut out = encoder.begin()?;
    for batch in &answer.batches {
        out.extend(encoder.batch(batch)?);
    }
    out.extend(encoder.finish()?);
    Ok(out)
}

/// The answer as a JSON array of row objects.
pub fn to_json(answer: &Answer) -> Result<Vec<u8>> {
    encode_answer(answer, Encoding::Json)
}

/// The answer as CSV with a header line.
pub fn to_csv(answer: &Answer) -> Result<Vec<u8>> {
    encode_answer(answer, Encoding::Csv)
}

/// The answer as an Arrow IPC stream.
pub fn to_arrow_ipc(answer: &Answer) -> Result<Vec<u8>> {
    encode_answer(answer, Encoding::ArrowIpc)
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
