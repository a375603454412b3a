//! A planned job run in stream mode: plan the dataflow, run it, and hand back the
//! queries' final rows.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{
    concat_batches, lexsort_to_indices, take_record_batch, SortColumn,
};
use datafusion::error::Result as DfResult;
use meltwater_plan::PlannedJob;

use crate::metrics::JobMetrics;
use crate::ops::sink::materialize;
use crate::planner::{plan_stream, Finish, QueryOutput, StreamPlan};
use crate::runtime::{run_graph, StreamError, StreamOptions, StreamReport};

/// Why a stream job failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamJobError {
    #[error(transparent)]
    Plan(#[from] crate::planner::StreamPlanError),
    #[error(transparent)]
    Run(#[from] StreamError),
}

/// A query's final rows.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub statement: usize,
    pub batches: Vec<RecordBatch>,
}

/// The parallelism a job runs with: the session's target partitions (set from
/// `--parallelism` or `SET 'parallelism.default'`).
pub fn job_parallelism(job: &PlannedJob) -> usize {
    job.session.state().config().target_partitions().max(1)
}

/// Metrics for every operator of a plan, in node order.
pub fn job_metrics(plan: &StreamPlan) -> Arc<JobMetrics> {
    let ops: Vec<(String, String)> = plan
        .graph
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.name.clone()))
        .collect();
    Arc::new(JobMetrics::new(&ops))
}

/// Plans and runs a job in stream mode until its sources end.
pub async fn run_stream_job(
    job: &PlannedJob,
    options: &StreamOptions,
    on_start: impl FnOnce(&StreamPlan, Arc<JobMetrics>),
) -> Result<(StreamReport, Vec<QueryResult>), StreamJobError> {
    let plan = plan_stream(job, job_parallelism(job))?;
    run_plan(job, plan, options, on_start).await
}

/// Runs an already planned dataflow of `job`.
pub async fn run_plan(
    job: &PlannedJob,
    plan: StreamPlan,
    options: &StreamOptions,
    on_start: impl FnOnce(&StreamPlan, Arc<JobMetrics>),
) -> Result<(StreamReport, Vec<QueryResult>), StreamJobError> {
    let metrics = job_metrics(&plan);
    on_start(&plan, metrics.clone());
    let state = job.session.state();
    let report = run_graph(&plan.graph, &state, options, metrics).await?;
    let mut results = Vec::new();
    for q in &plan.queries {
        let batches = finish_query(q).map_err(|e| StreamError::Operator {
            operator: "query result".into(),
            message: e.to_string(),
        })?;
        results.push(QueryResult {
            statement: q.statement,
            batches,
        });
    }
    Ok((report, results))
}

/// The final result of a query: its changelog materialized, then its top-level
/// ORDER BY / LIMIT / projection applied.
pub fn finish_query(q: &QueryOutput) -> DfResult<Vec<RecordBatch>> {
    let collected = q.rows.lock().expect("collect lock").clone();
    let rows = materialize(&collected, &q.collected_schema)?;
    let mut batch = if rows.is_empty() {
        RecordBatch::new_empty(q.collected_schema.clone())
    } else {
        let schema = q.collected_schema.clone();
        let rows: Vec<RecordBatch> = rows
            .into_iter()
            .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
            .collect::<Result<_, _>>()?;
        concat_batches(&schema, &rows)?
    };
    for f in &q.finish {
        batch = match f {
            Finish::Sort { exprs, fetch } => {
                let columns = exprs
                    .iter()
                    .map(|e| {
                        Ok(SortColumn {
                            values: e.expr.evaluate(&batch)?.into_array(batch.num_rows())?,
                            options: Some(e.options),
                        })
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                let idx = if columns.is_empty() {
                    UInt32Array::from_iter_values(0..batch.num_rows() as u32)
                } else {
                    lexsort_to_indices(&columns, *fetch)?
                };
                take_record_batch(&batch, &idx)?
            }
            Finish::Limit { skip, fetch } => {
                let start = (*skip).min(batch.num_rows());
                let len = fetch.unwrap_or(usize::MAX).min(batch.num_rows() - start);
                batch.slice(start, len)
            }
            Finish::Project { exprs, schema } => {
                let rows = batch.num_rows();
                let cols = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(rows)))
                    .collect::<DfResult<Vec<_>>>()?;
                RecordBatch::try_new_with_options(
                    schema.clone(),
                    cols,
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
        };
    }
    let batch = RecordBatch::try_new_with_options(
        q.schema.clone(),
        batch.columns().to_vec(),
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?;
    Ok(vec![batch])
}
