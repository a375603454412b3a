//! Staged execution (DESIGN.md §6): a physical plan cut at its exchanges into stages that
//! run one after another, each writing its output to shuffle files the next one reads.
//!
//! Cuts are made at every `RepartitionExec` (hash or round-robin), and below every
//! `CoalescePartitionsExec` and `SortPreservingMergeExec` (which stay in the reading
//! stage and run over the files). A broadcast join side is the coalesced input of a
//! `CollectLeft` hash join, so every task of the reading stage reads all of it. Within a
//! stage, tasks (one per partition) are independent, so a failed task is re-run alone
//! from its stage's inputs, on a fresh copy of the stage's plan.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{displayable, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::shuffle::{write_task, Exchange, ShuffleOutput, ShuffleReadExec, TaskOutput};

/// One stage: a plan whose leaves are sources or readers of earlier stages.
#[derive(Debug)]
pub struct Stage {
    /// 1-based, in run order.
    pub id: usize,
    pub plan: Arc<dyn ExecutionPlan>,
    /// Where the stage's output goes; `None` for the final stage, whose output is the
    /// statement's result.
    pub output: Option<Arc<ShuffleOutput>>,
    /// The stages this one reads.
    pub reads: Vec<usize>,
}

impl Stage {
    pub fn tasks(&self) -> usize {
        self.plan
            .properties()
            .output_partitioning()
            .partition_count()
    }
}

/// A statement's plan cut into stages, in dependency order (the last is final).
#[derive(Debug)]
pub struct StagedPlan {
    pub stages: Vec<Stage>,
}

impl StagedPlan {
    /// Cuts `plan` at its exchanges; shuffle files go under `dir`.
    pub fn cut(plan: Arc<dyn ExecutionPlan>, dir: PathBuf) -> Result<Self> {
        let mut cutter = Cutter {
            dir,
            stages: Vec::new(),
        };
        let (root, reads) = cutter.cut(plan)?;
        let id = cutter.stages.len() + 1;
        cutter.stages.push(Stage {
            id,
            plan: root,
            output: None,
            reads,
        });
        Ok(Self {
            stages: cutter.stages,
        })
    }

    /// The stages as text, for `explain`.
    pub fn display(&self) -> String {
        let mut s = String::new();
        let n = self.stages.len();
        for st in &self.stages {
            let reads = if st.reads.is_empty() {
                "reads sources".to_string()
            } else {
                let ids: Vec<String> = st.reads.iter().map(|r| format!("stage {r}")).collect();
                format!("reads {}", ids.join(", "))
            };
            let to = match &st.output {
                Some(o) => format!("writes {}", o.exchange),
                None => "final".to_string(),
            };
            let _ = writeln!(
                s,
                "stage {}/{n}: {} tasks, {reads}, {to}",
                st.id,
                st.tasks()
            );
            for line in displayable(st.plan.as_ref())
                .indent(true)
                .to_string()
                .lines()
            {
                let _ = writeln!(s, "  {line}");
            }
        }
        s
    }
}

struct Cutter {
    dir: PathBuf,
    stages: Vec<Stage>,
}

impl Cutter {
    /// Pushes a stage running `plan` into a shuffle; returns its output.
    fn push(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        exchange: Exchange,
        reads: Vec<usize>,
    ) -> Arc<ShuffleOutput> {
        let id = self.stages.len() + 1;
        let tasks = plan.properties().output_partitioning().partition_count();
        let output = Arc::new(ShuffleOutput::new(
            id,
            exchange,
            tasks,
            self.dir.clone(),
            plan.schema(),
        ));
        self.stages.push(Stage {
            id,
            plan,
            output: Some(output.clone()),
            reads,
        });
        output
    }

    /// Returns `plan` with its exchanges replaced by shuffle readers, and the stages the
    /// returned plan reads.
    fn cut(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
        if let Some(r) = plan.as_any().downcast_ref::<RepartitionExec>() {
            let (input, reads) = self.cut(r.input().clone())?;
            let output = self.push(
                input,
                Exchange::Repartition(r.partitioning().clone()),
                reads,
            );
            let stage = output.stage;
            if r.preserve_order() {
                // Each reader partition concatenates files that are sorted each: sort
                // the partition again (a spilling sort) instead of claiming the order.
                let props = PlanProperties::new(
                    EquivalenceProperties::new(r.schema()),
                    r.partitioning().clone(),
                    r.properties().emission_type,
                    r.properties().boundedness,
                );
                let reader = Arc::new(ShuffleReadExec::new(output, Arc::new(props)));
                let ordering = r.properties().output_ordering().cloned().ok_or_else(|| {
                    DataFusionError::Internal(
                        "an order-preserving repartition without an ordering".into(),
                    )
                })?;
                let sort = SortExec::new(ordering, reader).with_preserve_partitioning(true);
                return Ok((Arc::new(sort), vec![stage]));
            }
            let reader = ShuffleReadExec::new(output, r.properties().clone());
            return Ok((Arc::new(reader), vec![stage]));
        }
        let is_merge = plan.as_any().is::<CoalescePartitionsExec>()
            || plan.as_any().is::<SortPreservingMergeExec>();
        if is_merge {
            let child = plan.children()[0].clone();
            let (input, reads) = self.cut(child.clone())?;
            let output = self.push(input, Exchange::Passthrough, reads);
            let stage = output.stage;
            let reader: Arc<dyn ExecutionPlan> =
                Arc::new(ShuffleReadExec::new(output, child.properties().clone()));
            return Ok((plan.with_new_children(vec![reader])?, vec![stage]));
        }
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        if children.is_empty() {
            return Ok((plan, Vec::new()));
        }
        let mut reads = Vec::new();
        let mut new_children = Vec::with_capacity(children.len());
        let mut changed = false;
        for c in children {
            let (n, r) = self.cut(c.clone())?;
            changed |= !Arc::ptr_eq(&n, &c);
            new_children.push(n);
            reads.extend(r);
        }
        let plan = if changed {
            plan.with_new_children(new_children)?
        } else {
            plan
        };
        Ok((plan, reads))
    }
}

/// Fault injection for tests: fail the first `times` attempts of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailTask {
    pub stage: usize,
    pub task: usize,
    pub times: u32,
}

impl FailTask {
    /// Parses `STAGE/TASK[xTIMES]`, e.g. `1/0x2` (stage 1, task 0, its first two attempts).
    pub fn parse(s: &str) -> Option<Self> {
        let (st, rest) = s.split_once('/')?;
        let (task, times) = match rest.split_once('x') {
            Some((t, n)) => (t, n.parse().ok()?),
            None => (rest, 1),
        };
        Some(Self {
            stage: st.trim().parse().ok()?,
            task: task.trim().parse().ok()?,
            times,
        })
    }
}

/// Options of the staged runtime.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Attempts per task before the job fails (at least 1).
    pub max_attempts: u32,
    /// Tasks of a stage run at once.
    pub concurrency: usize,
    pub fail_task: Option<FailTask>,
}

/// What a stage did, live while it runs.
#[derive(Debug, Default)]
pub struct StageProgress {
    /// `insert lake.db.t`, `query`, …
    pub statement: String,
    pub stage: usize,
    pub stages: usize,
    pub tasks: u64,
    pub tasks_done: AtomicU64,
    /// Rows the stage's tasks emitted (written to shuffle files, or the final output).
    pub rows: AtomicU64,
    pub bytes_written: AtomicU64,
    pub spilled_bytes: AtomicU64,
    pub retries: AtomicU64,
    pub started: Mutex<Option<Instant>>,
    pub elapsed: Mutex<Option<Duration>>,
}

impl StageProgress {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
    pub fn is_done(&self) -> bool {
        self.elapsed.lock().expect("stage progress").is_some()
    }
}

/// The stages of a run, as they are started.
#[derive(Debug, Default)]
pub struct JobProgress {
    stages: Mutex<Vec<Arc<StageProgress>>>,
}

impl JobProgress {
    pub fn stages(&self) -> Vec<Arc<StageProgress>> {
        self.stages.lock().expect("job progress").clone()
    }
    fn add(&self, stage: Arc<StageProgress>) {
        self.stages.lock().expect("job progress").push(stage);
    }
}

/// A stage that ran out of attempts.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage}, partition {task} failed after {attempts} attempt(s): {cause}")]
pub struct StageFailure {
    pub stage: usize,
    pub task: usize,
    pub attempts: u32,
    pub cause: String,
}

/// Whether re-running a task might succeed: I/O and object-store failures, memory
/// exhaustion while other tasks held memory, a panicked task. Errors in the data or the
/// plan would fail again and fail the job at once.
pub fn is_retryable(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::ArrowError(a, _) => {
            matches!(
                a.as_ref(),
                datafusion::arrow::error::ArrowError::IoError(..)
            )
        }
        DataFusionError::External(inner) => {
            inner.downcast_ref::<std::io::Error>().is_some()
                || inner
                    .downcast_ref::<DataFusionError>()
                    .is_some_and(is_retryable)
        }
        DataFusionError::Context(_, inner) => is_retryable(inner),
        DataFusionError::Shared(inner) => is_retryable(inner),
        DataFusionError::Diagnostic(_, inner) => is_retryable(inner),
        _ => false,
    }
}

/// Sum of the `spilled_bytes` metric over a plan tree.
pub fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    use datafusion::common::tree_node::TreeNode;
    let mut total = 0u64;
    let _ = plan.apply(|p| {
        if let Some(m) = p.metrics() {
            total += m.spilled_bytes().unwrap_or(0) as u64;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

/// Rows of a final stage's output: the rows a sink reports writing (its one `count`
/// column), else the rows themselves.
fn final_rows(batches: &[RecordBatch]) -> u64 {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::UInt64Type;
    batches
        .iter()
        .map(|b| {
            let counts = (b.num_columns() == 1 && b.schema().field(0).name() == "count")
                .then(|| b.column(0).as_primitive_opt::<UInt64Type>())
                .flatten();
            match counts {
                Some(c) => c.values().iter().sum::<u64>(),
                None => b.num_rows() as u64,
            }
        })
        .sum()
}

enum TaskResult {
    Shuffle(TaskOutput),
    Final(Vec<RecordBatch>),
}

/// Runs every stage of `staged` in order and returns the final stage's output.
pub async fn run_stages(
    staged: &StagedPlan,
    statement: &str,
    ctx: Arc<TaskContext>,
    options: &StageOptions,
    progress: &JobProgress,
) -> std::result::Result<Vec<RecordBatch>, StageFailure> {
    let n = staged.stages.len();
    let mut result = Vec::new();
    for stage in &staged.stages {
        let p = Arc::new(StageProgress {
            statement: statement.to_string(),
            stage: stage.id,
            stages: n,
            tasks: stage.tasks() as u64,
            ..Default::default()
        });
        *p.started.lock().expect("stage progress") = Some(Instant::now());
        progress.add(p.clone());
        let out = run_stage(stage, ctx.clone(), options, &p).await;
        let elapsed = p
            .started
            .lock()
            .expect("stage progress")
            .map(|s| s.elapsed());
        *p.elapsed.lock().expect("stage progress") = elapsed;
        result = out?;
    }
    Ok(result)
}

async fn run_stage(
    stage: &Stage,
    ctx: Arc<TaskContext>,
    options: &StageOptions,
    progress: &Arc<StageProgress>,
) -> std::result::Result<Vec<RecordBatch>, StageFailure> {
    let tasks = stage.tasks();
    // Plan instances this stage ran (the shared one, and a fresh copy per retry), for
    // the spill metrics.
    let instances = Arc::new(Mutex::new(vec![stage.plan.clone()]));
    let runs = futures::stream::iter(0..tasks)
        .map(|task| {
            let plan = stage.plan.clone();
            let output = stage.output.clone();
            let ctx = ctx.clone();
            let options = options.clone();
            let progress = progress.clone();
            let instances = instances.clone();
            let stage_id = stage.id;
            let handle = tokio::spawn(async move {
                run_task(
                    stage_id, plan, output, task, ctx, &options, &progress, &instances,
                )
                .await
            });
            async move {
                match handle.await {
                    Ok(r) => r,
                    Err(e) => Err(StageFailure {
                        stage: stage_id,
                        task,
                        attempts: 1,
                        cause: format!("the task's thread ended: {e}"),
                    }),
                }
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let results: Vec<_> = runs.collect().await;
    let spilled: u64 = instances
        .lock()
        .expect("stage instances")
        .iter()
        .map(spilled_bytes)
        .sum();
    progress.spilled_bytes.store(spilled, Ordering::Relaxed);
    let mut batches = Vec::new();
    let mut outputs = Vec::new();
    for r in results {
        match r? {
            TaskResult::Final(b) => batches.extend(b),
            TaskResult::Shuffle(o) => outputs.push(o),
        }
    }
    if let Some(out) = &stage.output {
        for o in &outputs {
            out.publish(o);
        }
    }
    Ok(batches)
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    stage: usize,
    plan: Arc<dyn ExecutionPlan>,
    output: Option<Arc<ShuffleOutput>>,
    task: usize,
    ctx: Arc<TaskContext>,
    options: &StageOptions,
    progress: &StageProgress,
    instances: &Mutex<Vec<Arc<dyn ExecutionPlan>>>,
) -> std::result::Result<TaskResult, StageFailure> {
    let max = options.max_attempts.max(1);
    let mut attempt = 1u32;
    loop {
        let plan = if attempt == 1 {
            plan.clone()
        } else {
            let fresh = reset_plan_states(plan.clone()).map_err(|e| StageFailure {
                stage,
                task,
                attempts: attempt,
                cause: crate::error_message(&e),
            })?;
            instances
                .lock()
                .expect("stage instances")
                .push(fresh.clone());
            fresh
        };
        let inject = options
            .fail_task
            .filter(|f| f.stage == stage && f.task == task && attempt <= f.times);
        let injected = || match inject {
            Some(_) => Err(DataFusionError::IoError(std::io::Error::other(format!(
                "injected failure of stage {stage}, partition {task}, attempt {attempt}"
            )))),
            None => Ok(()),
        };
        let result = match &output {
            Some(out) => write_task(plan, out, task, attempt, ctx.clone(), injected)
                .await
                .map(TaskResult::Shuffle),
            None => {
                async {
                    // The final stage may commit nothing yet may have side effects (sink
                    // files registered for the commit at its end), so a fault is injected
                    // before it starts.
                    injected()?;
                    let mut stream = plan.execute(task, ctx.clone())?;
                    let mut batches = Vec::new();
                    while let Some(b) = stream.next().await {
                        batches.push(b?);
                    }
                    Ok(TaskResult::Final(batches))
                }
                .await
            }
        };
        match result {
            Ok(r) => {
                match &r {
                    TaskResult::Shuffle(o) => {
                        progress.rows.fetch_add(o.rows(), Ordering::Relaxed);
                        progress
                            .bytes_written
                            .fetch_add(o.bytes(), Ordering::Relaxed);
                    }
                    TaskResult::Final(b) => {
                        progress.rows.fetch_add(final_rows(b), Ordering::Relaxed);
                    }
                }
                progress.tasks_done.fetch_add(1, Ordering::Relaxed);
                return Ok(r);
            }
            Err(e) if attempt < max && is_retryable(&e) => {
                progress.retries.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "stage {stage}, partition {task}: attempt {attempt} of {max} failed, retrying: {}",
                    crate::error_message(&e)
                );
                attempt += 1;
            }
            Err(e) => {
                return Err(StageFailure {
                    stage,
                    task,
                    attempts: attempt,
                    cause: crate::error_message(&e),
                });
            }
        }
    }
}
