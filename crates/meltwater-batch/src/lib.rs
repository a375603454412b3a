//! Batch mode (DESIGN.md §6): a planned job's logical plans run over bounded inputs.
//!
//! Each `INSERT` becomes a DataFusion physical plan (with Meltwater's operators for
//! window table functions). By default the plan is cut at its exchanges into stages
//! ([`stage`]) that run one after another through shuffle files on local disk
//! ([`shuffle`]), with failed tasks retried; the pipelined executor runs the whole plan
//! in memory at once instead. Either way the statement leaves its data files pending;
//! when every `INSERT` of the job has succeeded the pending files are committed, one
//! snapshot per table. A failed run commits nothing.

pub mod shuffle;
pub mod stage;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::{collect, displayable, ExecutionPlan};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use meltwater_iceberg::CommitSummary;
use meltwater_plan::window::{WindowKind, WindowTvf};
use meltwater_plan::{mode_rejection, Mode, PlannedJob, PlannedStatement};

use crate::stage::{FailTask, JobProgress, StageFailure, StageOptions, StagedPlan};
use crate::window::{SessionWindowExec, WindowAssignExec};

/// How batch mode executes a statement's physical plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Executor {
    /// Stage by stage through shuffle files on disk, with task retries (the default).
    #[default]
    Staged,
    /// DataFusion's pipelined execution, all in memory at once.
    Pipelined,
}

/// Options of a batch run.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub executor: Executor,
    /// Where shuffle files go: a directory for this run is made under it (default: the
    /// system's temporary directory).
    pub shuffle_dir: Option<PathBuf>,
    /// Keep the run's shuffle files instead of removing them when it ends.
    pub keep_shuffle: bool,
    /// Compression of the shuffle files (`None`: uncompressed).
    pub shuffle_compression: Option<shuffle::CompressionType>,
    /// Attempts per task before the job fails.
    pub max_attempts: u32,
    /// Fault injection for tests.
    pub fail_task: Option<FailTask>,
    /// Live progress of the stages, for a progress display.
    pub progress: Arc<JobProgress>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            executor: Executor::Staged,
            shuffle_dir: None,
            keep_shuffle: false,
            shuffle_compression: None,
            max_attempts: 3,
            fail_task: None,
            progress: Arc::default(),
        }
    }
}

impl BatchOptions {
    /// This run's shuffle directory.
    pub fn run_dir(&self, job: &PlannedJob) -> PathBuf {
        self.shuffle_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!(
                "meltwater-shuffle-{}-{}",
                job.identity.job_id, job.identity.run_id
            ))
    }
}

/// A batch run's failure, naming the statement it happened in when there is one.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{file}:{loc}: {message}")]
    Statement {
        file: String,
        loc: meltwater_sql::SourceLoc,
        message: String,
    },
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("{file}:{loc}: {failure}")]
    Stage {
        file: String,
        loc: meltwater_sql::SourceLoc,
        failure: StageFailure,
    },
    #[error("shuffle directory {path}: {message}")]
    Shuffle { path: String, message: String },
}

/// What one `INSERT` did.
#[derive(Debug, Clone)]
pub struct InsertReport {
    /// `insert`, `overwrite`, `delete` or `update`.
    pub operation: &'static str,
    pub target: String,
    pub rows: u64,
    pub elapsed: Duration,
}

/// What a run read and wrote.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub inserts: Vec<InsertReport>,
    pub commits: Vec<CommitSummary>,
    pub elapsed: Duration,
    /// Bytes spilled by sorts, aggregates and joins over the memory limit.
    pub spilled_bytes: u64,
}

/// Plans Meltwater's logical extension nodes into batch operators.
#[derive(Debug, Default)]
pub struct BatchExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for BatchExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _state: &SessionState,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(tvf) = node.as_any().downcast_ref::<WindowTvf>() else {
            return Ok(None);
        };
        let input_schema = logical_inputs[0].schema();
        let time_index = input_schema.index_of_column(&tvf.time_column)?;
        let schema: SchemaRef =
            Arc::new(UserDefinedLogicalNodeCore::schema(tvf).as_arrow().clone());
        let input = physical_inputs[0].clone();
        let plan: Arc<dyn ExecutionPlan> = match tvf.kind {
            WindowKind::Session { gap } => {
                let keys = tvf
                    .partition_keys
                    .iter()
                    .map(|k| input_schema.index_of_column(k))
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(SessionWindowExec::new(input, gap, time_index, keys, schema))
            }
            kind => Arc::new(WindowAssignExec::try_new(input, kind, time_index, schema)?),
        };
        Ok(Some(plan))
    }
}

/// The session's query planner for batch mode: DataFusion's, with Meltwater's operators.
#[derive(Debug, Default)]
pub struct BatchQueryPlanner;

#[async_trait]
impl QueryPlanner for BatchQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(BatchExtensionPlanner)])
            .create_physical_plan(plan, state)
            .await
    }
}

fn statement_error(job: &PlannedJob, s: &PlannedStatement, message: String) -> BatchError {
    BatchError::Statement {
        file: job.file.clone(),
        loc: s.loc,
        message,
    }
}

/// DataFusion errors as one line, without the "External error: " wrapping of
/// connector and Iceberg errors.
pub fn error_message(e: &DataFusionError) -> String {
    let mut s = e.to_string();
    for prefix in [
        "External error: ",
        "Execution error: ",
        "Error during planning: ",
        "This feature is not implemented: ",
    ] {
        while let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_string();
        }
    }
    s
}

/// The physical plan of a statement in batch mode, for `executor`.
pub async fn physical_plan(
    job: &PlannedJob,
    statement: &PlannedStatement,
    executor: Executor,
) -> Result<Arc<dyn ExecutionPlan>, BatchError> {
    if let Some(reason) = mode_rejection(&statement.plan, Mode::Batch) {
        return Err(statement_error(job, statement, reason));
    }
    let mut state = job.session.state();
    if executor == Executor::Staged {
        // A partitioned hash join's dynamic filter waits for every partition of the
        // join at a barrier; a stage retrying one task alone would wait forever.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
    }
    let optimized = state
        .optimize(&statement.plan)
        .map_err(|e| statement_error(job, statement, error_message(&e)))?;
    BatchQueryPlanner
        .create_physical_plan(&optimized, &state)
        .await
        .map_err(|e| statement_error(job, statement, error_message(&e)))
}

/// The physical plan as text, with partition counts.
pub fn display_physical(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

/// The stages of a statement's plan (for `explain`; nothing is written).
pub fn stages_of(plan: Arc<dyn ExecutionPlan>) -> Result<StagedPlan, BatchError> {
    StagedPlan::cut(plan, PathBuf::from("shuffle")).map_err(|e| BatchError::Shuffle {
        path: "shuffle".into(),
        message: error_message(&e),
    })
}

/// Runs one statement's plan with the options' executor; returns its output.
async fn execute(
    job: &PlannedJob,
    statement: &PlannedStatement,
    plan: Arc<dyn ExecutionPlan>,
    options: &BatchOptions,
    label: &str,
    index: usize,
) -> Result<Vec<RecordBatch>, BatchError> {
    match options.executor {
        Executor::Pipelined => collect(plan, job.session.task_ctx())
            .await
            .map_err(|e| statement_error(job, statement, error_message(&e))),
        Executor::Staged => {
            let dir = options
                .run_dir(job)
                .join(format!("statement-{}", index + 1));
            let staged = StagedPlan::cut_with(plan, dir, options.shuffle_compression)
                .map_err(|e| statement_error(job, statement, error_message(&e)))?;
            let stage_options = StageOptions {
                max_attempts: options.max_attempts,
                concurrency: job.session.state().config().target_partitions(),
                fail_task: options.fail_task,
            };
            stage::run_stages(
                &staged,
                label,
                job.session.task_ctx(),
                &stage_options,
                &options.progress,
            )
            .await
            .map_err(|failure| BatchError::Stage {
                file: job.file.clone(),
                loc: statement.loc,
                failure,
            })
        }
    }
}

/// Removes the run's shuffle directory (unless it is to be kept).
fn remove_shuffle(job: &PlannedJob, options: &BatchOptions) {
    if options.executor == Executor::Staged && !options.keep_shuffle {
        let dir = options.run_dir(job);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!(
                    "warning: cannot remove shuffle directory {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

/// Runs a query and returns its rows.
pub async fn run_query(
    job: &PlannedJob,
    statement: &PlannedStatement,
    options: &BatchOptions,
) -> Result<Vec<RecordBatch>, BatchError> {
    let plan = physical_plan(job, statement, options.executor).await?;
    let index = job.inserts.len()
        + job
            .queries
            .iter()
            .position(|q| std::ptr::eq(q, statement))
            .unwrap_or(0);
    let out = execute(job, statement, plan, options, "query", index).await;
    remove_shuffle(job, options);
    out
}

/// What a write statement does to its table, for reports.
pub fn operation_of(plan: &datafusion::logical_expr::LogicalPlan) -> &'static str {
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::logical_expr::{LogicalPlan, WriteOp};
    match plan {
        LogicalPlan::Dml(d) => match d.op {
            WriteOp::Insert(InsertOp::Overwrite) => "overwrite",
            // Only MERGE plans a replacing insert: it writes the table's new rows.
            WriteOp::Insert(InsertOp::Replace) => "merge",
            WriteOp::Delete => "delete",
            WriteOp::Update => "update",
            _ => "insert",
        },
        _ => "insert",
    }
}

/// The report of a write statement that wrote (or deleted, or updated) `rows`.
pub fn insert_report(s: &PlannedStatement, rows: u64, elapsed: Duration) -> InsertReport {
    InsertReport {
        operation: operation_of(&s.plan),
        target: s.target.clone().unwrap_or_default(),
        rows,
        elapsed,
    }
}

/// Commits what the run's statements wrote: one snapshot per table.
pub async fn commit_run(job: &PlannedJob) -> Result<Vec<CommitSummary>, BatchError> {
    job.commits
        .commit_all()
        .await
        .map_err(|e| BatchError::Commit(e.to_string()))
}

/// Runs every `INSERT` of the job, then commits what they wrote.
pub async fn run_job(job: &PlannedJob, options: &BatchOptions) -> Result<RunReport, BatchError> {
    let result = run_job_inner(job, options).await;
    remove_shuffle(job, options);
    result
}

async fn run_job_inner(job: &PlannedJob, options: &BatchOptions) -> Result<RunReport, BatchError> {
    let started = Instant::now();
    let mut inserts = Vec::new();
    // Plan everything first: a statement that cannot run fails the job before any work.
    let mut plans = Vec::new();
    for s in &job.inserts {
        plans.push(physical_plan(job, s, options.executor).await?);
    }
    let mut spilled_bytes = 0;
    for (i, (s, plan)) in job.inserts.iter().zip(plans).enumerate() {
        let t = Instant::now();
        let label = format!(
            "{} {}",
            operation_of(&s.plan),
            s.target.as_deref().unwrap_or("")
        );
        let result = execute(job, s, plan.clone(), options, &label, i).await;
        if options.executor == Executor::Pipelined {
            spilled_bytes += stage::spilled_bytes(&plan);
        }
        let batches = match result {
            Ok(b) => b,
            Err(e) => {
                job.commits.abort();
                return Err(e);
            }
        };
        inserts.push(insert_report(s, stage::final_rows(&batches), t.elapsed()));
    }
    let commits = commit_run(job).await?;
    if options.executor == Executor::Staged {
        spilled_bytes += options
            .progress
            .stages()
            .iter()
            .map(|p| stage::StageProgress::get(&p.spilled_bytes))
            .sum::<u64>();
    }
    Ok(RunReport {
        inserts,
        commits,
        elapsed: started.elapsed(),
        spilled_bytes,
    })
}
