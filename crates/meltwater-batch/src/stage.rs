//! Staged execution (DESIGN.md §6): a physical plan cut at its exchanges into stages that
//! run one after another, each writing its output to shuffle files the next one reads.
//!
//! Cuts are made at every hash `RepartitionExec` (round-robin ones, which only spread
//! rows for parallelism, are dropped: the stage runs at its input's partitions), and
//! below every
//! `CoalescePartitionsExec` and `SortPreservingMergeExec` (which stay in the reading
//! stage and run over the files), except the statement's final merge: one reached from
//! the root through single-partition nodes with one input each (a sink over a scan, a
//! final aggregate or a sort) runs in the final stage's one task, reading its input's
//! partitions as they run, since writing them to disk first would only copy every row
//! once more. A broadcast join side is the coalesced input of a
//! `CollectLeft` hash join, so every task of the reading stage reads all of it. Within a
//! stage, tasks (one per partition) are independent, so a failed task is re-run alone
//! from its stage's inputs, on a fresh copy of the stage's plan.
//!
//! A join whose two inputs are hash shuffles gets a runtime key filter (as Spark's
//! injected runtime filters): the stage writing its left input, which runs first,
//! records the hashes of its keys, and the stage writing the right input drops the rows
//! that cannot match, when the join type discards unmatched right rows.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::JoinType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExprRef};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode, SortMergeJoinExec};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{displayable, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;

use crate::shuffle::{
    write_task, CompressionType, Exchange, FilterRole, KeyFilter, ShuffleOutput, ShuffleReadExec,
    TaskOutput,
};

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
    /// Cuts `plan` at its exchanges; shuffle files go under `dir`, uncompressed.
    pub fn cut(plan: Arc<dyn ExecutionPlan>, dir: PathBuf) -> Result<Self> {
        Self::cut_with(plan, dir, None)
    }

    /// Cuts `plan` at its exchanges; shuffle files go under `dir`, compressed with
    /// `compression` (`None`: uncompressed).
    pub fn cut_with(
        plan: Arc<dyn ExecutionPlan>,
        dir: PathBuf,
        compression: Option<CompressionType>,
    ) -> Result<Self> {
        let mut cutter = Cutter {
            dir,
            compression,
            stages: Vec::new(),
        };
        let (root, reads) = cutter.cut(plan, true)?;
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
    compression: Option<CompressionType>,
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
        let output = Arc::new(
            ShuffleOutput::new(id, exchange, tasks, self.dir.clone(), plan.schema())
                .with_compression(self.compression),
        );
        self.stages.push(Stage {
            id,
            plan,
            output: Some(output.clone()),
            reads,
        });
        output
    }

    /// Returns `plan` with its exchanges replaced by shuffle readers, and the stages the
    /// returned plan reads. `spine`: `plan` is reached from the statement's root through
    /// single-partition nodes with one input each, so it runs in the final stage's one
    /// task; a merge there stays in that task with its input (see [`StagedPlan`]).
    fn cut(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        spine: bool,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
        if let Some(r) = plan.as_any().downcast_ref::<RepartitionExec>() {
            if matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) && !r.preserve_order() {
                // A round-robin repartition only spreads rows over more partitions for
                // parallelism; through disk it would cost a full copy of its input.
                // The stage runs at its input's partition count instead.
                return self.cut(r.input().clone(), false);
            }
            let (input, reads) = self.cut(r.input().clone(), false)?;
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
        if is_merge && spine {
            // The final merge (into a sink or the result) reads its input's partitions
            // as they run, in the final stage's one task: through disk it would only
            // copy every row once more. Memory stays bounded the same way (the input's
            // operators spill under the pool; the merge streams).
            let child = plan.children()[0].clone();
            let (input, reads) = self.cut(child, false)?;
            return Ok((plan.with_new_children(vec![input])?, reads));
        }
        if is_merge {
            let child = plan.children()[0].clone();
            let (input, reads) = self.cut(child.clone(), false)?;
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
        let spine = spine
            && children.len() == 1
            && plan.properties().output_partitioning().partition_count() == 1;
        let mut reads = Vec::new();
        let mut new_children = Vec::with_capacity(children.len());
        let mut changed = false;
        for c in children {
            let (n, r) = self.cut(c.clone(), spine)?;
            changed |= !Arc::ptr_eq(&n, &c);
            new_children.push(n);
            reads.extend(r);
        }
        link_join_filter(&plan, &new_children);
        let plan = if changed {
            plan.with_new_children(new_children)?
        } else {
            plan
        };
        Ok((plan, reads))
    }
}

/// The shuffle a join input reads (through the sort a sort-merge join puts on it).
fn shuffle_of(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<ShuffleOutput>> {
    if let Some(r) = plan.as_any().downcast_ref::<ShuffleReadExec>() {
        return Some(r.output().clone());
    }
    let sort = plan.as_any().downcast_ref::<SortExec>()?;
    if sort.fetch().is_some() {
        return None;
    }
    shuffle_of(sort.input())
}

/// Whether `output` is a hash shuffle on exactly `keys`.
fn hashed_on(output: &ShuffleOutput, keys: &[PhysicalExprRef]) -> bool {
    match &output.exchange {
        Exchange::Repartition(Partitioning::Hash(exprs, _)) => exprs.as_slice() == keys,
        _ => false,
    }
}

/// Gives a join over two hash shuffles a key filter: its left input's stage (cut, so
/// run, before its right input's) builds it, and the right input's stage drops the rows
/// whose keys the left never had, when such rows make no output row: inner, left outer,
/// left semi and right semi joins. (Anti and mark joins may depend on unmatched rows,
/// NULL keys included.)
fn link_join_filter(plan: &Arc<dyn ExecutionPlan>, children: &[Arc<dyn ExecutionPlan>]) {
    let (join_type, on) = if let Some(j) = plan.as_any().downcast_ref::<HashJoinExec>() {
        if *j.partition_mode() != PartitionMode::Partitioned {
            return;
        }
        (*j.join_type(), j.on())
    } else if let Some(j) = plan.as_any().downcast_ref::<SortMergeJoinExec>() {
        (j.join_type(), j.on())
    } else {
        return;
    };
    if !matches!(
        join_type,
        JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::RightSemi
    ) || children.len() != 2
    {
        return;
    }
    let (Some(left), Some(right)) = (shuffle_of(&children[0]), shuffle_of(&children[1])) else {
        return;
    };
    let left_keys: Vec<PhysicalExprRef> = on.iter().map(|(l, _)| l.clone()).collect();
    let right_keys: Vec<PhysicalExprRef> = on.iter().map(|(_, r)| r.clone()).collect();
    if left.stage >= right.stage
        || left.filter().is_some()
        || right.filter().is_some()
        || !hashed_on(&left, &left_keys)
        || !hashed_on(&right, &right_keys)
        || left.partitions() != right.partitions()
    {
        return;
    }
    let filter = Arc::new(KeyFilter::default());
    left.set_filter(FilterRole::Build(filter.clone()));
    right.set_filter(FilterRole::Probe(filter));
}

/// The memory pool of a run under a memory limit: the session's, except for what a sort
/// reserves to merge its spill files. DataFusion reserves, per spill file, twice the
/// largest batch it spilled as measured in memory, where a sorted chunk still counts the
/// whole buffer it was sliced from: an estimate many times the batch it reads back. A
/// merge of two files could then take the whole limit and starve the other sorts of its
/// task (both inputs of a sort-merge join merge at once). Here a sort's merge is charged
/// at most a share of the limit, and granted up to eight shares of estimates.
#[derive(Debug)]
struct MergeSharePool {
    inner: Arc<dyn MemoryPool>,
    share: usize,
    /// Per merging consumer, the bytes granted to it.
    granted: Mutex<std::collections::HashMap<usize, usize>>,
}

impl MergeSharePool {
    fn is_merge(reservation: &MemoryReservation) -> bool {
        let c = reservation.consumer();
        !c.can_spill() && c.name().starts_with("ExternalSorterMerge")
    }
}

impl MemoryPool for MergeSharePool {
    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        if Self::is_merge(reservation) {
            let mut granted = self.granted.lock().expect("merge grants");
            let g = granted.entry(reservation.consumer().id()).or_default();
            let charge = (*g + additional).min(self.share) - (*g).min(self.share);
            *g += additional;
            self.inner.grow(reservation, charge);
        } else {
            self.inner.grow(reservation, additional)
        }
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        if Self::is_merge(reservation) {
            let mut granted = self.granted.lock().expect("merge grants");
            let g = granted.entry(reservation.consumer().id()).or_default();
            let after = g.saturating_sub(shrink);
            let refund = (*g).min(self.share) - after.min(self.share);
            *g = after;
            self.inner.shrink(reservation, refund);
        } else {
            self.inner.shrink(reservation, shrink)
        }
    }
    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if !Self::is_merge(reservation) {
            return self.inner.try_grow(reservation, additional);
        }
        let mut granted = self.granted.lock().expect("merge grants");
        let g = granted.entry(reservation.consumer().id()).or_default();
        if *g + additional > 8 * self.share && *g > 0 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} holds its share of the memory limit for merging ({} bytes)",
                reservation.consumer().name(),
                self.share
            )));
        }
        let charge = (*g + additional).min(self.share) - (*g).min(self.share);
        self.inner.try_grow(reservation, charge)?;
        *g += additional;
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.inner.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// `ctx` with its memory pool wrapped in a [`MergeSharePool`] when it has a limit: each
/// of the `concurrency` tasks' merges may hold half of its part of the limit.
fn with_merge_share(ctx: Arc<TaskContext>, concurrency: usize) -> Arc<TaskContext> {
    let MemoryLimit::Finite(limit) = ctx.memory_pool().memory_limit() else {
        return ctx;
    };
    let runtime = ctx.runtime_env();
    let pool = Arc::new(MergeSharePool {
        inner: runtime.memory_pool.clone(),
        share: limit / (2 * concurrency.max(1)),
        granted: Mutex::default(),
    });
    let Ok(runtime) = RuntimeEnvBuilder::from_runtime_env(&runtime)
        .with_memory_pool(pool)
        .build_arc()
    else {
        return ctx;
    };
    Arc::new(TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        ctx.session_config().clone(),
        ctx.scalar_functions().clone(),
        ctx.aggregate_functions().clone(),
        ctx.window_functions().clone(),
        runtime,
    ))
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

/// A task that failed for good: out of attempts, or with an error a retry would repeat
/// (an error in the data or the plan, shown as it is: it names its own file and line).
#[derive(Debug)]
pub struct StageFailure {
    pub stage: usize,
    pub task: usize,
    pub attempts: u32,
    pub cause: String,
    /// Whether the error was one a retry could cure.
    pub retryable: bool,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.retryable {
            write!(
                f,
                "stage {}, partition {} failed after {} attempt(s): {}",
                self.stage, self.task, self.attempts, self.cause
            )
        } else {
            f.write_str(&self.cause)
        }
    }
}

impl std::error::Error for StageFailure {}

/// Whether re-running a task might succeed: I/O and object-store failures, memory
/// exhaustion while other tasks held memory, a panicked task. Errors in the data or the
/// plan would fail again and fail the job at once.
pub fn is_retryable(e: &DataFusionError) -> bool {
    // Wrappers (context, shared, external DataFusion errors) say nothing of their cause.
    match e.find_root() {
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
                // A file that could not be read (not one that is missing or malformed).
                || matches!(
                    inner.downcast_ref::<meltwater_connectors::error::ConnectorError>(),
                    Some(meltwater_connectors::error::ConnectorError::Io { .. })
                )
                // Iceberg's FileIO marks transient storage errors as retryable.
                || inner
                    .downcast_ref::<iceberg::Error>()
                    .is_some_and(|e| e.retryable())
        }
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
pub fn final_rows(batches: &[RecordBatch]) -> u64 {
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
    let ctx = with_merge_share(ctx, options.concurrency);
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

/// A task of a stage, as the runner re-runs it.
#[derive(Clone)]
struct TaskRun {
    stage: usize,
    plan: Arc<dyn ExecutionPlan>,
    output: Option<Arc<ShuffleOutput>>,
    task: usize,
    ctx: Arc<TaskContext>,
    options: StageOptions,
    progress: Arc<StageProgress>,
    /// Plan instances the stage ran (the shared one, and a fresh copy per retry), for
    /// the spill metrics.
    instances: Arc<Mutex<Vec<Arc<dyn ExecutionPlan>>>>,
}

enum TaskError {
    Failed(StageFailure),
    /// Ran out of memory while other tasks of the stage held memory: to be re-run
    /// alone once they are done, from this attempt on.
    Deferred {
        next_attempt: u32,
    },
}

/// Why one attempt failed.
struct AttemptError {
    message: String,
    retryable: bool,
    memory: bool,
}

fn is_memory_error(e: &DataFusionError) -> bool {
    matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
}

async fn run_stage(
    stage: &Stage,
    ctx: Arc<TaskContext>,
    options: &StageOptions,
    progress: &Arc<StageProgress>,
) -> std::result::Result<Vec<RecordBatch>, StageFailure> {
    let tasks = stage.tasks();
    let instances = Arc::new(Mutex::new(vec![stage.plan.clone()]));
    let run_of = |task| TaskRun {
        stage: stage.id,
        plan: stage.plan.clone(),
        output: stage.output.clone(),
        task,
        ctx: ctx.clone(),
        options: options.clone(),
        progress: progress.clone(),
        instances: instances.clone(),
    };
    // All tasks at once (up to the concurrency), as DataFusion runs partitions.
    let mut results: Vec<_> = futures::stream::iter(0..tasks)
        .map(|task| {
            let run = run_of(task);
            async move { (task, run_task(&run, 1, false).await) }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    // Tasks that ran out of memory beside the others run again one at a time, each
    // with the whole budget.
    for (task, r) in results.iter_mut() {
        if let Err(TaskError::Deferred { next_attempt }) = r {
            *r = run_task(&run_of(*task), *next_attempt, true).await;
        }
    }
    let spilled: u64 = instances
        .lock()
        .expect("stage instances")
        .iter()
        .map(spilled_bytes)
        .sum();
    progress.spilled_bytes.store(spilled, Ordering::Relaxed);
    let mut batches = Vec::new();
    let mut outputs = Vec::new();
    results.sort_by_key(|(task, _)| *task);
    for (_, r) in results {
        match r {
            Ok(TaskResult::Final(b)) => batches.extend(b),
            Ok(TaskResult::Shuffle(o)) => outputs.push(o),
            Err(TaskError::Failed(f)) => return Err(f),
            Err(TaskError::Deferred { .. }) => unreachable!("deferred tasks were re-run"),
        }
    }
    if let Some(out) = &stage.output {
        for o in &outputs {
            out.publish(o);
        }
    }
    Ok(batches)
}

/// One attempt of a task, on its own tokio task so that a panic fails the attempt
/// instead of the runner.
async fn run_attempt(
    run: &TaskRun,
    plan: Arc<dyn ExecutionPlan>,
    attempt: u32,
) -> std::result::Result<TaskResult, AttemptError> {
    let (stage, task) = (run.stage, run.task);
    let inject = run
        .options
        .fail_task
        .filter(|f| f.stage == stage && f.task == task && attempt <= f.times);
    let injected = move || match inject {
        Some(_) => Err(DataFusionError::IoError(std::io::Error::other(format!(
            "injected failure of stage {stage}, partition {task}, attempt {attempt}"
        )))),
        None => Ok(()),
    };
    let output = run.output.clone();
    let ctx = run.ctx.clone();
    let handle = tokio::spawn(async move {
        match &output {
            Some(out) => write_task(plan, out, task, attempt, ctx, injected)
                .await
                .map(TaskResult::Shuffle),
            None => {
                // The final stage may have side effects (sink files registered for the
                // commit at its end), so a fault is injected before it starts.
                injected()?;
                let mut stream = plan.execute(task, ctx)?;
                let mut batches = Vec::new();
                while let Some(b) = stream.next().await {
                    batches.push(b?);
                }
                Ok(TaskResult::Final(batches))
            }
        }
    });
    match handle.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(AttemptError {
            message: crate::error_message(&e),
            retryable: is_retryable(&e),
            memory: is_memory_error(&e),
        }),
        Err(join) => Err(AttemptError {
            message: format!("the task panicked: {join}"),
            retryable: true,
            memory: false,
        }),
    }
}

/// Runs a task from `first_attempt` until it succeeds, fails for good, or (unless it
/// runs `alone`) runs out of memory beside other tasks.
async fn run_task(
    run: &TaskRun,
    first_attempt: u32,
    alone: bool,
) -> std::result::Result<TaskResult, TaskError> {
    let (stage, task) = (run.stage, run.task);
    let max = run.options.max_attempts.max(1);
    let progress = &run.progress;
    let mut attempt = first_attempt;
    loop {
        let plan = if attempt == 1 {
            run.plan.clone()
        } else {
            let fresh = reset_plan_states(run.plan.clone()).map_err(|e| {
                TaskError::Failed(StageFailure {
                    stage,
                    task,
                    attempts: attempt,
                    cause: crate::error_message(&e),
                    retryable: false,
                })
            })?;
            run.instances
                .lock()
                .expect("stage instances")
                .push(fresh.clone());
            fresh
        };
        match run_attempt(run, plan, attempt).await {
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
            Err(e) if attempt < max && e.retryable => {
                progress.retries.fetch_add(1, Ordering::Relaxed);
                if e.memory && !alone && run.options.concurrency > 1 {
                    eprintln!(
                        "stage {stage}, partition {task}: attempt {attempt} of {max} ran out of memory beside other tasks; it runs again alone after them: {}",
                        e.message
                    );
                    return Err(TaskError::Deferred {
                        next_attempt: attempt + 1,
                    });
                }
                eprintln!(
                    "stage {stage}, partition {task}: attempt {attempt} of {max} failed, retrying: {}",
                    e.message
                );
                attempt += 1;
            }
            Err(e) => {
                return Err(TaskError::Failed(StageFailure {
                    stage,
                    task,
                    attempts: attempt,
                    cause: e.message,
                    retryable: e.retryable,
                }));
            }
        }
    }
}
