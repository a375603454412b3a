//! The modes every `.slt` file runs in, behind one small trait.
//!
//! The harness plans each record's job itself (planning is mode-agnostic apart from the
//! [`Mode`] it is told) and hands the [`PlannedJob`] to a [`ModeRunner`], which only
//! executes: runs a job's `INSERT`s to the end of their bounded inputs and commits them,
//! or runs a query and returns its final rows. Batch mode is [`BatchRunner`]; the stream
//! runner will be one more impl listed in [`modes`], running the same files unchanged
//! (a query's rows are its final result once the watermark has passed the end of the
//! input, with updates and retractions applied).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use meltwater_plan::{Mode, PlannedJob, PlannedStatement};

/// Executes planned jobs in one mode.
#[async_trait]
pub trait ModeRunner: Send + Sync {
    /// The mode, passed to the planner and shown in test names.
    fn mode(&self) -> Mode;

    /// Runs every `INSERT` of `job` to the end of its input and commits what they wrote,
    /// so later queries read it. Returns the number of rows written.
    async fn run_inserts(&self, job: &PlannedJob) -> Result<u64, String>;

    /// Runs `query` (one of `job.queries`) and returns its final rows, in any order.
    async fn query(
        &self,
        job: &PlannedJob,
        query: &PlannedStatement,
    ) -> Result<Vec<RecordBatch>, String>;
}

/// The modes every file runs in.
pub fn modes() -> Vec<Arc<dyn ModeRunner>> {
    vec![Arc::new(BatchRunner), Arc::new(StreamRunner)]
}

/// Batch mode: `meltwater_batch`.
pub struct BatchRunner;

#[async_trait]
impl ModeRunner for BatchRunner {
    fn mode(&self) -> Mode {
        Mode::Batch
    }

    async fn run_inserts(&self, job: &PlannedJob) -> Result<u64, String> {
        let report = meltwater_batch::run_job(job, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(report.inserts.iter().map(|i| i.rows).sum())
    }

    async fn query(
        &self,
        job: &PlannedJob,
        query: &PlannedStatement,
    ) -> Result<Vec<RecordBatch>, String> {
        meltwater_batch::run_query(job, query, &Default::default())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Stream mode: `meltwater_stream`, over the same bounded sources. The run ends when
/// every source ended and the final watermark flushed the windows; a query's rows are
/// its changelog materialized. Checkpoints go to a temporary directory, every 200 ms,
/// so the files also exercise barriers in the middle of the data.
pub struct StreamRunner;

impl StreamRunner {
    async fn run(
        job: &PlannedJob,
        inserts: &[&PlannedStatement],
        queries: &[&PlannedStatement],
    ) -> Result<
        (
            meltwater_stream::StreamReport,
            Vec<meltwater_stream::QueryResult>,
        ),
        String,
    > {
        let parallelism = meltwater_stream::job::job_parallelism(job);
        let plan = meltwater_stream::plan_statements(job, inserts, queries, parallelism)
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut options = meltwater_stream::StreamOptions::from_settings(
            &job.identity.job_id,
            &job.settings,
            &dir.path().display().to_string(),
        )?;
        options.checkpoint_dir = dir.path().display().to_string();
        options.checkpoint_interval = std::time::Duration::from_millis(200);
        options.resume = false;
        meltwater_stream::run_plan(job, plan, &options, |_, _| {})
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl ModeRunner for StreamRunner {
    fn mode(&self) -> Mode {
        Mode::Stream
    }

    async fn run_inserts(&self, job: &PlannedJob) -> Result<u64, String> {
        let inserts: Vec<&PlannedStatement> = job.inserts.iter().collect();
        let (report, _) = Self::run(job, &inserts, &[]).await?;
        Ok(report.commits.iter().map(|c| c.rows).sum())
    }

    async fn query(
        &self,
        job: &PlannedJob,
        query: &PlannedStatement,
    ) -> Result<Vec<RecordBatch>, String> {
        let (_, mut results) = Self::run(job, &[], &[query]).await?;
        Ok(results.pop().map(|r| r.batches).unwrap_or_default())
    }
}
