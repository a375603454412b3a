//! Batch mode (DESIGN.md §6): a planned job's logical plans run over bounded inputs.
//!
//! Each `INSERT` becomes a DataFusion physical plan (with Meltwater's operators for
//! window table functions), runs to completion on every partition, and leaves its data
//! files pending; when every `INSERT` of the job has succeeded the pending files are
//! committed, one snapshot per table. A failed run commits nothing.

pub mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{SchemaRef, UInt64Type};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::{collect, displayable, ExecutionPlan};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use meltwater_iceberg::CommitSummary;
use meltwater_plan::window::{WindowKind, WindowTvf};
use meltwater_plan::{mode_rejection, Mode, PlannedJob, PlannedStatement};

use crate::window::{SessionWindowExec, WindowAssignExec};

/// A batch run's failure, naming the statement it happened in when there is one.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{file}:{loc}: {message}")]
    Statement {
        file: String,
        loc: meltwater_sql::SourceLoc,
        message: String,
    },
    #[error("commit failed, nothing was written: {0}")]
    Commit(String),
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

/// The physical plan of a statement in batch mode.
pub async fn physical_plan(
    job: &PlannedJob,
    statement: &PlannedStatement,
) -> Result<Arc<dyn ExecutionPlan>, BatchError> {
    if let Some(reason) = mode_rejection(&statement.plan, Mode::Batch) {
        return Err(statement_error(job, statement, reason));
    }
    let state = job.session.state();
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

/// Runs a query and returns its rows.
pub async fn run_query(
    job: &PlannedJob,
    statement: &PlannedStatement,
) -> Result<Vec<RecordBatch>, BatchError> {
    let plan = physical_plan(job, statement).await?;
    collect(plan, job.session.task_ctx())
        .await
        .map_err(|e| statement_error(job, statement, error_message(&e)))
}

/// What a write statement does to its table, for reports.
fn operation_of(plan: &datafusion::logical_expr::LogicalPlan) -> &'static str {
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::logical_expr::{LogicalPlan, WriteOp};
    match plan {
        LogicalPlan::Dml(d) => match d.op {
            WriteOp::Insert(InsertOp::Overwrite) => "overwrite",
            WriteOp::Delete => "delete",
            WriteOp::Update => "update",
            _ => "insert",
        },
        _ => "insert",
    }
}

/// Runs every `INSERT` of the job, then commits what they wrote.
pub async fn run_job(job: &PlannedJob) -> Result<RunReport, BatchError> {
    let started = Instant::now();
    let mut inserts = Vec::new();
    // Plan everything first: a statement that cannot run fails the job before any work.
    let mut plans = Vec::new();
    for s in &job.inserts {
        plans.push(physical_plan(job, s).await?);
    }
    for (s, plan) in job.inserts.iter().zip(plans) {
        let t = Instant::now();
        let batches = match collect(plan, job.session.task_ctx()).await {
            Ok(b) => b,
            Err(e) => {
                job.commits.abort();
                return Err(statement_error(job, s, error_message(&e)));
            }
        };
        let rows = batches
            .iter()
            .filter(|b| b.num_columns() > 0)
            .map(|b| {
                b.column(0)
                    .as_primitive_opt::<UInt64Type>()
                    .map(|a| a.values().iter().sum::<u64>())
                    .unwrap_or(0)
            })
            .sum();
        inserts.push(InsertReport {
            operation: operation_of(&s.plan),
            target: s.target.clone().unwrap_or_default(),
            rows,
            elapsed: t.elapsed(),
        });
    }
    let commits = job
        .commits
        .commit_all()
        .await
        .map_err(|e| BatchError::Commit(e.to_string()))?;
    Ok(RunReport {
        inserts,
        commits,
        elapsed: started.elapsed(),
    })
}
