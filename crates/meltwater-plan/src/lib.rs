//! One logical plan per job (DESIGN.md §4): a parsed job file becomes a DataFusion
//! session holding the job's tables and views, and one `LogicalPlan` per `INSERT` (a
//! DML plan into its sink) or query. Nothing here is specific to a runtime: the batch
//! runtime turns these plans into a staged `ExecutionPlan`, the stream planner into a
//! dataflow graph.
//!
//! Window table functions plan to the [`window::WindowTvf`] node; connector tables are
//! registered as [`source::SourceTable`]s so planners can see their boundedness.

pub mod catalogs;
pub mod merge;
pub mod source;
pub mod types;
pub mod watermark_fn;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::execution::context::SessionContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{cast, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use meltwater_connectors::{create_connector_table, Boundedness, TableDef};
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::{
    open_catalog, open_catalog_readonly, IcebergCatalogConfig, IcebergCatalogProvider, JobCommits,
    JobIdentity,
};
use meltwater_sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Query, Statement,
};
use meltwater_sql::{CreateTable, Insert, JobFile, JobStatement, SourceLoc};

use crate::source::{sources_of, SourceRef, SourceTable};
use crate::types::{implicitly_castable, normalize_ident, schema_of};
use crate::window::{window_inputs, WindowRelationPlanner};

/// How a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Batch,
    Stream,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Batch => "batch",
            Mode::Stream => "stream",
        })
    }
}

/// The default catalog and database of connector tables and views, as Flink names them.
pub const DEFAULT_CATALOG: &str = "default_catalog";
pub const DEFAULT_DATABASE: &str = "default_database";

/// A planning error, located in the job file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{loc}: {message}")]
pub struct PlanError {
    pub file: String,
    pub loc: SourceLoc,
    pub message: String,
}

/// What a plan needs besides the job file.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub mode: Mode,
    /// Recorded in every snapshot the job commits; default: `SET 'pipeline.name'`, else
    /// the job file's stem.
    pub job_id: Option<String>,
    /// This run's id (a fresh one per batch run).
    pub run_id: String,
    /// Parallelism; default: `SET 'parallelism.default'`, else the number of cores.
    pub parallelism: Option<usize>,
    pub catalogs: Vec<IcebergCatalogConfig>,
    /// Kafka clusters of the catalog file: their registered topics are the tables
    /// `cluster.table` of the job.
    pub kafka: Vec<catalogs::KafkaCluster>,
    /// Whether `CREATE TABLE` in an Iceberg catalog may create tables (false for
    /// `validate` and `explain`, which must not change anything).
    pub create_tables: bool,
    /// The memory budget of sorts, aggregates, joins and shuffles, in bytes; over it
    /// they spill to disk (default: unbounded).
    pub memory_limit: Option<usize>,
    /// Where spill files go (default: the system's temporary directory).
    pub spill_dir: Option<std::path::PathBuf>,
}

/// A statement's plan.
#[derive(Debug, Clone)]
pub struct PlannedStatement {
    pub loc: SourceLoc,
    /// The sink table of an `INSERT`, as written (`lake.db.t`).
    pub target: Option<String>,
    pub plan: LogicalPlan,
}

/// A planned job: the session its plans refer to and the plans, in file order.
pub struct PlannedJob {
    pub file: String,
    pub mode: Mode,
    pub identity: JobIdentity,
    pub session: SessionContext,
    pub commits: Arc<JobCommits>,
    pub settings: BTreeMap<String, String>,
    pub inserts: Vec<PlannedStatement>,
    pub queries: Vec<PlannedStatement>,
    /// What planning did to catalogs (tables and namespaces created).
    pub actions: Vec<String>,
}

impl PlannedJob {
    /// The connector tables the job's plans read.
    pub fn sources(&self) -> Vec<SourceRef> {
        let mut all: Vec<SourceRef> = Vec::new();
        for s in self.inserts.iter().chain(&self.queries) {
            for src in sources_of(&s.plan) {
                if !all.iter().any(|a| a.name == src.name) {
                    all.push(src);
                }
            }
        }
        all
    }
}

/// Plans every statement of a job in order.
pub async fn plan_job(job: &JobFile, options: &JobOptions) -> Result<PlannedJob, PlanError> {
    let at = |loc: SourceLoc, message: String| PlanError {
        file: job.file.clone(),
        loc,
        message,
    };
    let start = SourceLoc { line: 1, column: 1 };
    let settings: BTreeMap<String, String> = job
        .statements
        .iter()
        .filter_map(|s| match &s.statement {
            JobStatement::Set { key, value } => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect();
    let job_id = options
        .job_id
        .clone()
        .or_else(|| settings.get("pipeline.name").cloned())
        .unwrap_or_else(|| {
            std::path::Path::new(&job.file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let parallelism = match options.parallelism {
        Some(p) => p,
        None => match settings.get("parallelism.default") {
            Some(v) => v.parse::<usize>().ok().filter(|p| *p > 0).ok_or_else(|| {
                at(
                    start,
                    format!("'parallelism.default' must be a positive whole number, got '{v}'"),
                )
            })?,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        },
    };
    let identity = JobIdentity {
        job_id,
        run_id: options.run_id.clone(),
    };
    let commits = Arc::new(JobCommits::new(identity.clone()));

    let mut config = SessionConfig::new()
        .with_target_partitions(parallelism)
        .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_DATABASE)
        .with_create_default_catalog_and_schema(true)
        .with_information_schema(true);
    for (k, v) in &settings {
        if k.starts_with("datafusion.") {
            config
                .options_mut()
                .set(k, v)
                .map_err(|e| at(start, format!("SET '{k}': {e}")))?;
        }
    }
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = options.memory_limit {
        // Spilling operators share the budget fairly; the five largest consumers are
        // named when it is exceeded. Sort-merge joins spill where hash joins cannot.
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(limit),
            std::num::NonZeroUsize::new(5).expect("non-zero"),
        )));
        if !settings.contains_key("datafusion.optimizer.prefer_hash_join") {
            config.options_mut().optimizer.prefer_hash_join = false;
        }
        // Each sorting task reserves memory up front for its final merge; keep the
        // reservations of all tasks within a quarter of a small budget.
        if !settings.contains_key("datafusion.execution.sort_spill_reservation_bytes") {
            let e = &mut config.options_mut().execution;
            e.sort_spill_reservation_bytes = e
                .sort_spill_reservation_bytes
                .min(limit / (4 * parallelism.max(1)));
        }
    }
    if let Some(dir) = &options.spill_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| at(start, format!("spill directory {}: {e}", dir.display())))?;
        runtime = runtime.with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
        );
    }
    let runtime = runtime
        .build_arc()
        .map_err(|e| at(start, format!("cannot set up the runtime: {e}")))?;
    let session = SessionContext::new_with_config_rt(config, runtime);
    session.register_udf(watermark_fn::current_watermark());
    let windows = Arc::new(WindowRelationPlanner::default());
    session
        .register_relation_planner(windows.clone())
        .map_err(|e| at(start, e.to_string()))?;

    let mut iceberg: HashMap<String, IcebergCatalogProvider> = HashMap::new();
    for c in &options.catalogs {
        let catalog = if options.create_tables {
            open_catalog(c).await
        } else {
            open_catalog_readonly(c).await
        };
        let catalog = catalog.map_err(|e| at(start, e.to_string()))?;
        let provider = IcebergCatalogProvider::try_new(&c.name, catalog, commits.clone())
            .await
            .map_err(|e| at(start, e.to_string()))?;
        session.register_catalog(&c.name, Arc::new(provider.clone()));
        iceberg.insert(c.name.clone(), provider);
    }

    // Registered Kafka topics: `cluster.table` is table `table` of schema `cluster` in the
    // default catalog.
    let default_catalog = session
        .catalog(DEFAULT_CATALOG)
        .ok_or_else(|| at(start, "the session has no default catalog".into()))?;
    for cluster in &options.kafka {
        let tables = Arc::new(MemorySchemaProvider::new());
        for topic in &cluster.topics {
            let table = connector_table(&topic.create)
                .map_err(|e| at(start, format!("{}.{}: {e}", cluster.name, topic.table)))?;
            tables
                .register_table(topic.table.clone(), Arc::new(table))
                .map_err(|e| at(start, e.to_string()))?;
        }
        default_catalog
            .register_schema(&cluster.name, tables)
            .map_err(|e| at(start, e.to_string()))?;
    }

    let mut planned = PlannedJob {
        file: job.file.clone(),
        mode: options.mode,
        identity,
        session,
        commits,
        settings,
        inserts: Vec::new(),
        queries: Vec::new(),
        actions: Vec::new(),
    };
    let planner = StatementPlanner {
        options,
        iceberg: &iceberg,
        windows: &windows,
    };
    for s in &job.statements {
        planner
            .plan(&s.statement, s.loc, &mut planned)
            .await
            .map_err(|m| at(s.loc, m))?;
    }
    Ok(planned)
}

struct StatementPlanner<'a> {
    options: &'a JobOptions,
    windows: &'a WindowRelationPlanner,
    iceberg: &'a HashMap<String, IcebergCatalogProvider>,
}

/// `catalog.namespace.table` parts of a name, if it names an Iceberg catalog.
fn iceberg_parts(
    name: &ObjectName,
    iceberg: &HashMap<String, IcebergCatalogProvider>,
) -> Option<(String, String, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(normalize_ident)
        .collect();
    match parts.as_slice() {
        [c, ns, t] if iceberg.contains_key(c) => Some((c.clone(), ns.clone(), t.clone())),
        _ => None,
    }
}

impl StatementPlanner<'_> {
    async fn plan(
        &self,
        statement: &JobStatement,
        loc: SourceLoc,
        job: &mut PlannedJob,
    ) -> Result<(), String> {
        match statement {
            JobStatement::Set { .. } => Ok(()),
            JobStatement::CreateDatabase { name, .. } => {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(normalize_ident)
                    .collect();
                match parts.as_slice() {
                    [c, ns] if self.iceberg.contains_key(c) => {
                        if self.options.create_tables {
                            self.iceberg[c].ensure_namespace(ns).await.map_err(|e| e.to_string())?;
                            job.actions.push(format!("namespace {c}.{ns} ready"));
                        }
                        Ok(())
                    }
                    _ => Err(format!(
                        "CREATE DATABASE {name}: name an Iceberg catalog and a namespace, e.g. {}.my_db",
                        self.iceberg.keys().next().map(String::as_str).unwrap_or("lake")
                    )),
                }
            }
            JobStatement::CreateTable(t) => self.create_table(t, job).await,
            JobStatement::CreateView {
                name,
                columns,
                query,
                ..
            } => {
                let mut plan = self.plan_query(query, job).await?;
                if !columns.is_empty() {
                    let fields = plan.schema().fields().len();
                    if fields != columns.len() {
                        return Err(format!(
                            "view {name} names {} columns but its query yields {fields}",
                            columns.len()
                        ));
                    }
                    let exprs: Vec<Expr> = plan
                        .schema()
                        .columns()
                        .into_iter()
                        .zip(columns)
                        .map(|(c, n)| Expr::Column(c).alias(normalize_ident(n)))
                        .collect();
                    plan = LogicalPlanBuilder::from(plan)
                        .project(exprs)
                        .and_then(|b| b.build())
                        .map_err(|e| e.to_string())?;
                }
                let view = ViewTable::new(plan, Some(query.to_string()));
                let table_ref = table_reference(name);
                job.session
                    .register_table(table_ref, Arc::new(view))
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
            JobStatement::Insert(insert) => {
                let plan = self.plan_insert(insert, job).await?;
                job.inserts.push(PlannedStatement {
                    loc,
                    target: Some(insert.table.to_string()),
                    plan,
                });
                Ok(())
            }
            JobStatement::Query(q) => {
                let plan = self.plan_query(q, job).await?;
                job.queries.push(PlannedStatement {
                    loc,
                    target: None,
                    plan,
                });
                Ok(())
            }
            JobStatement::Other(s)
                if matches!(**s, Statement::Delete(_) | Statement::Update(_)) =>
            {
                // DELETE / UPDATE: DataFusion plans them as DML on the table, whose
                // provider rewrites the files holding the matching rows.
                let state = job.session.state();
                let plan = state
                    .statement_to_plan(DfStatement::Statement(s.clone()))
                    .await
                    .map_err(|e| clean_error(&e))?;
                let LogicalPlan::Dml(dml) = &plan else {
                    return Err(unsupported(s));
                };
                let target = dml.table_name.to_string();
                let provider = datafusion::datasource::source_as_provider(&dml.target)
                    .map_err(|e| e.to_string())?;
                if !provider.as_any().is::<meltwater_iceberg::IcebergTable>() {
                    return Err(format!(
                        "{} {target}: only Iceberg tables take row-level deletes and updates",
                        dml.op
                    ));
                }
                job.inserts.push(PlannedStatement {
                    loc,
                    target: Some(target),
                    plan,
                });
                Ok(())
            }
            JobStatement::Other(s) if matches!(**s, Statement::Merge(_)) => {
                let Statement::Merge(merge) = &**s else {
                    return Err(unsupported(s));
                };
                let plan = self.plan_merge(merge, job).await?;
                let target = match &merge.table {
                    datafusion::sql::sqlparser::ast::TableFactor::Table { name, .. } => {
                        name.to_string()
                    }
                    other => other.to_string(),
                };
                job.inserts.push(PlannedStatement {
                    loc,
                    target: Some(target),
                    plan,
                });
                Ok(())
            }
            JobStatement::Other(s) => Err(unsupported(s)),
        }
    }

    /// `MERGE INTO`: the rows it changes ([`merge::merge_query`]), written by the target's
    /// [`meltwater_iceberg::merge::MergeTarget`] in the table's `write.merge.mode`.
    async fn plan_merge(
        &self,
        merge: &datafusion::sql::sqlparser::ast::Merge,
        job: &PlannedJob,
    ) -> Result<LogicalPlan, String> {
        use datafusion::sql::sqlparser::ast::TableFactor;
        let TableFactor::Table { name, .. } = &merge.table else {
            return Err(format!(
                "MERGE INTO {}: the target must be a table",
                merge.table
            ));
        };
        if job.mode == Mode::Stream {
            return Err(format!(
                "MERGE INTO {name} is a batch statement (it rewrites the table as of one snapshot); run the job with --mode batch"
            ));
        }
        let provider = job
            .session
            .table_provider(table_reference(name))
            .await
            .map_err(|_| format!("MERGE INTO {name}: no such table"))?;
        let Some(table) = provider
            .as_any()
            .downcast_ref::<meltwater_iceberg::IcebergTable>()
        else {
            return Err(format!(
                "MERGE INTO {name}: only Iceberg tables can be merged into"
            ));
        };
        let parse = |sql: &str| {
            datafusion::sql::sqlparser::parser::Parser::new(
                &datafusion::sql::sqlparser::dialect::GenericDialect {},
            )
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_query())
            .map_err(|e| format!("MERGE INTO {name}: {e}"))
        };
        // Both modes plan the rows the statement changes over the target read with row
        // addresses (under a name only this query uses); the mode decides how the writer
        // retires the old versions (position deletes, or a rewrite of their files).
        let mode = table.merge_mode().map_err(|e| clean_error(&e))?;
        let target = Arc::new(table.merge_target(mode).map_err(|e| clean_error(&e))?);
        let scan_name = format!("__mw_merge_target_{}", job.inserts.len());
        job.session
            .register_table(scan_name.as_str(), target.clone())
            .map_err(|e| e.to_string())?;
        let sql = merge::merge_query(merge, &name.to_string(), &provider.schema(), &scan_name);
        let planned = match sql.and_then(|sql| parse(&sql)) {
            Ok(query) => self.plan_query(&query, job).await,
            Err(e) => Err(e),
        };
        let _ = job.session.deregister_table(scan_name.as_str());
        LogicalPlanBuilder::insert_into(
            planned?,
            table_reference(name),
            provider_as_source(target),
            InsertOp::Replace,
        )
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())
    }

    async fn create_table(&self, t: &CreateTable, job: &mut PlannedJob) -> Result<(), String> {
        let primary_key: Vec<String> = t.primary_key.iter().map(normalize_ident).collect();
        let schema =
            schema_of(&t.columns, &primary_key).map_err(|e| format!("table {}: {e}", t.name))?;
        if let Some((catalog, namespace, table)) = iceberg_parts(&t.name, self.iceberg) {
            if let Some(m) = t.metadata.first() {
                return Err(format!(
                    "table {}: column '{}' is a METADATA column; Iceberg tables have none",
                    t.name,
                    normalize_ident(&m.column)
                ));
            }
            let mut partitioning = Vec::new();
            for e in &t.partitioned_by {
                partitioning.push(
                    partition_field(e)
                        .map_err(|m| format!("table {}: PARTITIONED BY {e}: {m}", t.name))?,
                );
            }
            let mut properties: HashMap<String, String> = t.options_map().into_iter().collect();
            if let Some(c) = properties.remove("connector") {
                if c != "iceberg" {
                    return Err(format!(
                        "table {} is in the Iceberg catalog '{catalog}'; its connector can only be 'iceberg', not '{c}'",
                        t.name
                    ));
                }
            }
            if !primary_key.is_empty() {
                properties.insert("meltwater.primary-key".into(), primary_key.join(","));
            }
            let full = format!("{catalog}.{namespace}.{table}");
            let creation = table_creation(&full, &table, &schema, &partitioning, properties)
                .map_err(|e| e.to_string())?;
            if !self.options.create_tables {
                let exists = self.iceberg[&catalog]
                    .load(&namespace, &table)
                    .await
                    .map_err(|e| e.to_string())?;
                if exists.is_none() {
                    self.iceberg[&catalog]
                        .declare(&namespace, creation)
                        .map_err(|e| e.to_string())?;
                    job.actions.push(format!("would create table {full}"));
                }
                return Ok(());
            }
            let created = self.iceberg[&catalog]
                .create_table(&namespace, creation, t.if_not_exists)
                .await
                .map_err(|e| e.to_string())?;
            if created {
                job.actions.push(format!("created table {full}"));
            } else {
                self.check_existing_table(&catalog, &namespace, &table, &schema)
                    .await?;
            }
            return Ok(());
        }
        if t.name.0.len() > 1 {
            let first = t.name.0[0].to_string();
            if t.name.0.len() == 3 {
                return Err(format!(
                    "CREATE TABLE {}: '{first}' is not a catalog of this job; catalogs: {}",
                    t.name,
                    self.catalog_names()
                ));
            }
        }
        if let [cluster, _] = t.name.0.as_slice() {
            let cluster = cluster.as_ident().map(normalize_ident).unwrap_or_default();
            if self.options.kafka.iter().any(|c| c.name == cluster) {
                return Err(format!(
                    "CREATE TABLE {}: '{cluster}' is a Kafka cluster of the catalog file, whose tables are its registered topics; use the registered table, or declare this one under a one-part name",
                    t.name
                ));
            }
        }
        let table = connector_table(t)?;
        job.session
            .register_table(table_reference(&t.name), Arc::new(table))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `CREATE TABLE IF NOT EXISTS` of an existing table: its columns must match.
    async fn check_existing_table(
        &self,
        catalog: &str,
        ns: &str,
        table: &str,
        declared: &Schema,
    ) -> Result<(), String> {
        let Some(existing) = self.iceberg[catalog]
            .load(ns, table)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let have = existing.schema();
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        if names(&have) != names(declared) {
            return Err(format!(
                "table {catalog}.{ns}.{table} exists with columns ({}) but the job declares ({})",
                names(&have).join(", "),
                names(declared).join(", ")
            ));
        }
        Ok(())
    }

    fn catalog_names(&self) -> String {
        let mut names: Vec<&str> = self.iceberg.keys().map(String::as_str).collect();
        names.sort();
        names.join(", ")
    }

    async fn plan_query(&self, query: &Query, job: &PlannedJob) -> Result<LogicalPlan, String> {
        // Window function inputs are invisible to DataFusion's table resolution.
        for name in window_inputs(query) {
            let reference = table_reference(&name);
            if let Ok(table) = job.session.table_provider(reference.clone()).await {
                self.windows.preload(reference, provider_as_source(table));
            }
        }
        let state = job.session.state();
        let statement = DfStatement::Statement(Box::new(Statement::Query(Box::new(query.clone()))));
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| clean_error(&e))?;
        if let Some(reason) = source::unreadable_in(&plan) {
            return Err(reason);
        }
        Ok(plan)
    }

    async fn plan_insert(&self, insert: &Insert, job: &PlannedJob) -> Result<LogicalPlan, String> {
        let op = if insert.overwrite {
            InsertOp::Overwrite
        } else {
            InsertOp::Append
        };
        self.plan_insert_as(insert, job, op).await
    }

    /// An `INSERT` with `op`; [`InsertOp::Replace`] (from `MERGE`) replaces every row of
    /// an Iceberg table with the query's.
    async fn plan_insert_as(
        &self,
        insert: &Insert,
        job: &PlannedJob,
        op: InsertOp,
    ) -> Result<LogicalPlan, String> {
        let table_ref = table_reference(&insert.table);
        let sink = match job.session.table_provider(table_ref.clone()).await {
            Ok(p) => p,
            Err(_) => {
                let cluster = match insert.table.0.as_slice() {
                    [c, _] => c
                        .as_ident()
                        .map(normalize_ident)
                        .and_then(|c| self.options.kafka.iter().find(|k| k.name == c)),
                    _ => None,
                };
                let hint = match (iceberg_parts(&insert.table, self.iceberg), cluster) {
                    (Some(_), _) => {
                        "create it with CREATE TABLE [IF NOT EXISTS] in the job".to_string()
                    }
                    (None, Some(c)) => format!(
                            "register the topic in the catalog file as [kafka.{}.topics.<table>] (registered: {})",
                            c.name,
                        c.topics.iter().map(|t| t.table.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    (None, None) => format!(
                        "declare it with CREATE TABLE, or name an Iceberg table (catalogs: {})",
                        self.catalog_names()
                    ),
                };
                return Err(format!(
                    "INSERT INTO {}: no such table; {hint}",
                    insert.table
                ));
            }
        };
        if let Some(source) = sink.as_any().downcast_ref::<SourceTable>() {
            if !source.writable() {
                return Err(format!(
                    "INSERT INTO {}: the '{}' connector cannot be written to; write to an Iceberg, print or blackhole table",
                    insert.table,
                    source.connector()
                ));
            }
            if insert.overwrite {
                return Err(format!(
                    "INSERT OVERWRITE {}: a '{}' table only appends; use INSERT INTO",
                    insert.table,
                    source.connector()
                ));
            }
        }
        let query = self.plan_query(&insert.source, job).await?;
        let sink_schema = sink.schema();
        let sink_columns: Vec<usize> = if insert.columns.is_empty() {
            (0..sink_schema.fields().len()).collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| {
                    let n = normalize_ident(c);
                    sink_schema.index_of(&n).map_err(|_| {
                        format!(
                            "INSERT INTO {}: the table has no column '{n}'",
                            insert.table
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let query_fields = query.schema().fields().clone();
        if query_fields.len() != sink_columns.len() {
            return Err(format!(
                "INSERT INTO {}: the query yields {} columns but the table takes {} ({})",
                insert.table,
                query_fields.len(),
                sink_columns.len(),
                sink_columns
                    .iter()
                    .map(|&i| sink_schema.field(i).name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // One expression per sink column: the matching query column cast to the sink type,
        // or NULL for columns the INSERT does not list.
        let query_columns = query.schema().columns();
        let mut exprs = Vec::with_capacity(sink_schema.fields().len());
        for (i, field) in sink_schema.fields().iter().enumerate() {
            let expr = match sink_columns.iter().position(|&c| c == i) {
                Some(q) => {
                    let from = query_fields[q].data_type();
                    if !implicitly_castable(from, field.data_type()) {
                        return Err(format!(
                            "INSERT INTO {}: column {} '{}' of the query has type {} but column '{}' of the table has type {}; add a CAST",
                            insert.table,
                            q + 1,
                            query_fields[q].name(),
                            sql_type_name(from),
                            field.name(),
                            sql_type_name(field.data_type())
                        ));
                    }
                    let c = Expr::Column(query_columns[q].clone());
                    if from == field.data_type() {
                        c
                    } else {
                        cast(c, field.data_type().clone())
                    }
                }
                None => {
                    if !field.is_nullable() {
                        return Err(format!(
                            "INSERT INTO {}: column '{}' is NOT NULL and the INSERT does not give it",
                            insert.table,
                            field.name()
                        ));
                    }
                    cast(
                        Expr::Literal(datafusion::common::ScalarValue::Null, None),
                        field.data_type().clone(),
                    )
                }
            };
            exprs.push(expr.alias(field.name()));
        }
        let projected = LogicalPlanBuilder::from(query)
            .project(exprs)
            .map_err(|e| e.to_string())?;
        let plan = LogicalPlanBuilder::insert_into(
            projected.build().map_err(|e| e.to_string())?,
            table_ref,
            provider_as_source(sink),
            op,
        )
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
        Ok(plan)
    }
}

/// Why a statement is rejected in a mode: `None` when the plan can run in it.
pub fn mode_rejection(plan: &LogicalPlan, mode: Mode) -> Option<String> {
    if mode == Mode::Batch {
        for s in sources_of(plan) {
            if let Boundedness::Unbounded { reason } = s.boundedness {
                return Some(format!(
                    "table '{}' ({} connector) is unbounded because {reason}; batch mode reads bounded sources only (run with --mode stream, or bound the source)",
                    s.name, s.connector
                ));
            }
        }
    }
    None
}

fn table_reference(name: &ObjectName) -> TableReference {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(normalize_ident)
        .collect();
    match parts.as_slice() {
        [t] => TableReference::bare(t.as_str()),
        [s, t] => TableReference::partial(s.as_str(), t.as_str()),
        [c, s, t] => TableReference::full(c.as_str(), s.as_str(), t.as_str()),
        _ => TableReference::bare(name.to_string()),
    }
}

/// The connector table a `CREATE TABLE` declares: a table of the job's DDL or a topic
/// registered in the catalog file (see [`catalogs::KafkaCluster`]).
pub(crate) fn connector_table(t: &CreateTable) -> Result<SourceTable, String> {
    let primary_key: Vec<String> = t.primary_key.iter().map(normalize_ident).collect();
    let schema =
        schema_of(&t.columns, &primary_key).map_err(|e| format!("table {}: {e}", t.name))?;
    if !t.partitioned_by.is_empty() {
        return Err(format!(
            "table {}: PARTITIONED BY applies to Iceberg tables only",
            t.name
        ));
    }
    let mut metadata = BTreeMap::new();
    for m in &t.metadata {
        let column = normalize_ident(&m.column);
        metadata.insert(column, (m.key.clone(), m.is_virtual));
    }
    let def = TableDef {
        name: t.name.to_string(),
        schema: Arc::new(schema),
        options: t.options_map(),
        primary_key,
        metadata,
    };
    let inner = create_connector_table(def.clone()).map_err(|e| e.to_string())?;
    // The late-rows policy only acts in stream mode, but an invalid one fails the job in
    // either mode, so that a job file that runs in one mode runs in the other.
    meltwater_connectors::late_records(&def, "source").map_err(|e| e.to_string())?;
    let watermark = match &t.watermark {
        Some(w) => {
            let column = normalize_ident(&w.column);
            if def.schema.index_of(&column).is_err() {
                return Err(format!(
                    "WATERMARK FOR {column}: the table has no column '{column}'"
                ));
            }
            Some(source::WatermarkDef {
                column,
                expr_sql: w.expr.to_string(),
            })
        }
        None => None,
    };
    Ok(SourceTable {
        name: t.name.to_string(),
        def,
        inner,
        watermark,
    })
}

/// A `PARTITIONED BY` entry: `col`, `days(col)`, `bucket(16, col)`, ...
fn partition_field(e: &SqlExpr) -> Result<PartitionFieldDef, String> {
    match e {
        SqlExpr::Identifier(i) => PartitionFieldDef::parse(None, &[normalize_ident(i)]),
        SqlExpr::Function(f) => {
            let FunctionArguments::List(list) = &f.args else {
                return Err("expected transform(column)".into());
            };
            let args = list
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(i))) => {
                        Ok(normalize_ident(i))
                    }
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v))) => {
                        Ok(v.to_string().trim_matches('\'').to_string())
                    }
                    other => Err(format!("unexpected argument {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            PartitionFieldDef::parse(Some(&f.name.to_string()), &args)
        }
        other => Err(format!(
            "expected a column or a transform such as days(ts), got {other}"
        )),
    }
}

fn unsupported(s: &Statement) -> String {
    let text = s.to_string();
    let head: String = text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "'{head} ...' is not supported in job files; use CREATE TABLE, CREATE VIEW, CREATE DATABASE, SET, INSERT INTO, INSERT OVERWRITE, DELETE, UPDATE or SELECT"
    )
}

/// DataFusion errors without their "Error during planning: " style prefixes.
fn clean_error(e: &datafusion::error::DataFusionError) -> String {
    let s = e.to_string();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        // Errors of table providers (an Iceberg table that cannot be loaded as asked).
        "External error: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    s
}

/// A type as SQL users write it, for messages.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                datafusion::arrow::datatypes::TimeUnit::Second => 0,
                datafusion::arrow::datatypes::TimeUnit::Millisecond => 3,
                datafusion::arrow::datatypes::TimeUnit::Microsecond => 6,
                datafusion::arrow::datatypes::TimeUnit::Nanosecond => 9,
            };
            if tz.is_some() {
                format!("TIMESTAMP_LTZ({p})")
            } else {
                format!("TIMESTAMP({p})")
            }
        }
        other => other.to_string(),
    }
}
