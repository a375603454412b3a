//! Batch mode on a Ballista cluster (DESIGN.md §6).
//!
//! The same job, planned the same way, runs on a Ballista 53 cluster instead of the
//! embedded staged runtime: `meltwater run JOB --mode batch --cluster df://host:port`.
//!
//! - [`run_scheduler`] and [`run_executor`] are Ballista's scheduler and executor
//!   processes with Meltwater's codecs ([`codec`]), operators (the batch query planner
//!   for window table functions) and functions registered; the CLI runs them as
//!   `meltwater cluster scheduler` and `meltwater cluster executor`.
//! - [`run_job`] is the client: it sends each `INSERT` of a planned job to the
//!   scheduler as a logical plan, which Ballista cuts into stages at its exchanges and
//!   runs on the executors (shuffles between them over Arrow Flight). Iceberg writers on
//!   the executors hand the files they wrote back as output rows; the client registers
//!   them and commits once, after the last statement, exactly as the embedded runtime
//!   does, so a failed run commits nothing and a retried task's files are never
//!   committed twice.

pub mod codec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::arrow::array::RecordBatch;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::{FunctionRegistry, SessionState, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::collect;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use meltwater_batch::{
    commit_run, error_message, insert_report, BatchError, BatchQueryPlanner, RunReport,
};
use meltwater_iceberg::merge::MergeTarget;
use meltwater_iceberg::IcebergTable;
use meltwater_plan::{mode_rejection, Mode, PlannedJob, PlannedStatement};

use crate::codec::{MeltwaterLogicalCodec, MeltwaterPhysicalCodec};

/// Prints the cluster processes' log records at `MELTWATER_LOG`'s level (`error`,
/// `warn` (the default), `info`, `debug`) to standard error, one line each.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.0
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{} {} {}: {}",
                chrono_like_now(),
                record.level(),
                record.target(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

/// Seconds since the Unix epoch with milliseconds (log lines only need an order).
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// Installs the standard-error logger of a cluster process (once per process).
fn init_log() {
    let level = std::env::var("MELTWATER_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(Box::leak(Box::new(StderrLog(level)))).is_ok() {
        log::set_max_level(level);
    }
}

/// A cluster process that could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(String);

/// The scheduler's query planner: the batch planner, and a check that every node of
/// the plan can be sent to executors. Ballista encodes a stage's plan only when it
/// launches its tasks, where a node without a codec takes the executor out of the
/// cluster and leaves the job waiting; checked here, it fails the job at planning, with
/// the reason sent to the client.
#[derive(Debug)]
struct ClusterQueryPlanner;

#[async_trait::async_trait]
impl QueryPlanner for ClusterQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let physical = BatchQueryPlanner.create_physical_plan(plan, state).await?;
        PhysicalPlanNode::try_from_physical_plan(
            physical.clone(),
            &MeltwaterPhysicalCodec::default(),
        )?;
        Ok(physical)
    }
}

/// The session state a cluster's scheduler plans with (and whose functions its
/// executors know): DataFusion's defaults, Meltwater's batch operators and functions.
pub fn session_state(config: SessionConfig) -> DfResult<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(Arc::new(RuntimeEnvBuilder::new().build()?))
        .with_query_planner(Arc::new(ClusterQueryPlanner))
        .build();
    state.register_udf(Arc::new(meltwater_plan::watermark_fn::current_watermark()))?;
    Ok(state)
}

/// `df://host:port` (or `host:port`) as the scheduler's gRPC URL.
pub fn scheduler_url(cluster: &str) -> Result<String, String> {
    let rest = cluster
        .strip_prefix("df://")
        .or_else(|| cluster.strip_prefix("http://"))
        .unwrap_or(cluster);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("--cluster {cluster}: expected df://HOST:PORT"))?;
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("--cluster {cluster}: '{port}' is not a port"))?;
    if host.is_empty() {
        return Err(format!("--cluster {cluster}: expected df://HOST:PORT"));
    }
    Ok(format!("http://{host}:{port}"))
}

/// Runs a scheduler listening on `bind` until it fails; executors register with it and
/// clients send it jobs.
pub async fn run_scheduler(
    bind: SocketAddr,
    external_host: Option<String>,
) -> Result<(), ClusterError> {
    init_log();
    let mut config = SchedulerConfig::default()
        .with_hostname(external_host.unwrap_or_else(|| bind.ip().to_string()))
        .with_port(bind.port())
        .with_override_session_builder(Arc::new(session_state));
    config.bind_host = bind.ip().to_string();
    config.override_logical_codec = Some(Arc::new(MeltwaterLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(MeltwaterPhysicalCodec::default()));
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError(format!("cannot start the scheduler: {e}")))?;
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| ClusterError(format!("scheduler on {bind}: {e}")))
}

/// Where an executor listens, which scheduler it serves, and how much it takes on.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The Arrow Flight port other executors and clients fetch shuffle data from; the
    /// gRPC port is the next one.
    pub bind: SocketAddr,
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Tasks run at once (default: the number of cores).
    pub concurrent_tasks: Option<usize>,
    /// Where shuffle files go.
    pub work_dir: Option<String>,
    /// The executor's memory pool, in bytes (default: unbounded).
    pub memory_limit: Option<u64>,
}

/// Runs an executor until it fails: it registers with the scheduler, runs the tasks it
/// is given and serves their shuffle output.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    init_log();
    let registry = BallistaFunctionRegistry::from(
        &session_state(SessionConfig::new()).map_err(|e| ClusterError(e.to_string()))?,
    );
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(options.bind.ip().to_string()),
        port: options.bind.port(),
        grpc_port: options.bind.port().checked_add(1).ok_or_else(|| {
            ClusterError(format!(
                "executor port {}: the gRPC port (the next one) does not exist",
                options.bind.port()
            ))
        })?,
        scheduler_host: options.scheduler_host,
        scheduler_port: options.scheduler_port,
        work_dir: options.work_dir,
        memory_pool_size: options.memory_limit,
        print_thread_info: false,
        ..Default::default()
    };
    if let Some(n) = options.concurrent_tasks {
        config.concurrent_tasks = n;
    }
    config.override_function_registry = Some(Arc::new(registry));
    config.override_logical_codec = Some(Arc::new(MeltwaterLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(MeltwaterPhysicalCodec::default()));
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError(format!("executor on {}: {e}", options.bind)))
}

fn statement_error(job: &PlannedJob, s: &PlannedStatement, message: String) -> BatchError {
    BatchError::Statement {
        file: job.file.clone(),
        loc: s.loc,
        message,
    }
}

/// The Iceberg table a statement writes, when it writes one (a `MERGE` writes through
/// the table's merge target).
fn iceberg_target(plan: &LogicalPlan) -> Result<Option<IcebergTable>, String> {
    let LogicalPlan::Dml(dml) = plan else {
        return Ok(None);
    };
    let Ok(provider) = datafusion::datasource::source_as_provider(&dml.target) else {
        return Ok(None);
    };
    if let Some(target) = provider.as_any().downcast_ref::<MergeTarget>() {
        return target.iceberg_table().map(Some).map_err(|e| e.to_string());
    }
    Ok(provider.as_any().downcast_ref::<IcebergTable>().cloned())
}

/// The job session's context with the settings a cluster needs; they travel with each
/// statement to the scheduler, which plans with them.
fn cluster_task_context(job: &PlannedJob) -> Arc<TaskContext> {
    let state = job.session.state();
    let mut config = state.config().clone().upgrade_for_ballista();
    // A partitioned hash join's dynamic filter waits until every partition of the join
    // has built its side; executors run a stage's tasks a few at a time, so it would
    // wait forever (the embedded staged runtime turns it off for the same reason).
    config
        .options_mut()
        .optimizer
        .enable_join_dynamic_filter_pushdown = false;
    SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build()
        .task_ctx()
}

/// Runs one statement's plan on the cluster and returns its output.
async fn execute(
    job: &PlannedJob,
    statement: &PlannedStatement,
    url: &str,
) -> Result<Vec<RecordBatch>, BatchError> {
    if let Some(reason) = mode_rejection(&statement.plan, Mode::Batch) {
        return Err(statement_error(job, statement, reason));
    }
    let exec = DistributedQueryExec::<LogicalPlanNode>::with_extension(
        url.to_string(),
        BallistaConfig::default(),
        statement.plan.clone(),
        Arc::new(MeltwaterLogicalCodec::default()),
        job.session.session_id(),
    );
    collect(Arc::new(exec), cluster_task_context(job))
        .await
        .map_err(|e| {
            statement_error(
                job,
                statement,
                format!("on the cluster at {url}: {}", error_message(&e)),
            )
        })
}

/// Runs every `INSERT` of the job on the cluster at `cluster` (`df://host:port`), then
/// commits what they wrote.
pub async fn run_job(job: &PlannedJob, cluster: &str) -> Result<RunReport, BatchError> {
    let url = scheduler_url(cluster).map_err(|message| BatchError::Statement {
        file: job.file.clone(),
        loc: Default::default(),
        message,
    })?;
    let started = Instant::now();
    let mut inserts = Vec::new();
    for s in &job.inserts {
        let t = Instant::now();
        let batches = match execute(job, s, &url).await {
            Ok(b) => b,
            Err(e) => {
                job.commits.abort();
                return Err(e);
            }
        };
        let target = match iceberg_target(&s.plan) {
            Ok(target) => target,
            Err(e) => {
                job.commits.abort();
                return Err(statement_error(job, s, e));
            }
        };
        let rows = match target {
            Some(table) => match meltwater_iceberg::codec::register_written_files(&table, &batches)
            {
                Ok(rows) => rows,
                Err(e) => {
                    job.commits.abort();
                    return Err(statement_error(job, s, error_message(&e)));
                }
            },
            None => meltwater_batch::stage::final_rows(&batches),
        };
        inserts.push(insert_report(s, rows, t.elapsed()));
    }
    let commits = commit_run(job).await?;
    Ok(RunReport {
        inserts,
        commits,
        elapsed: started.elapsed(),
        spilled_bytes: 0,
    })
}
