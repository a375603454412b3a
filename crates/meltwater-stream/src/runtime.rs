//! Runs a [`StreamGraph`]: one tokio task per subtask of each operator chain, bounded
//! channels between chains, watermarks and barriers in band, and a checkpoint
//! coordinator.
//!
//! Checkpoint `n`: the coordinator asks every source subtask to inject barrier `n`
//! (recording its split positions). A subtask with several inputs aligns: it stops
//! reading an input once barrier `n` arrived on it, until it arrived on all, then
//! snapshots every operator of its chain, forwards the barrier and acknowledges with
//! what it stored. Subtasks whose input has ended snapshot on the coordinator's direct
//! request. Once every subtask acknowledged, the coordinator writes the manifest
//! atomically (the checkpoint is complete) and then commits the sinks' files.
//! When every source is exhausted, a final checkpoint commits what remains.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use futures::stream::{SelectAll, Stream, StreamExt};
use meltwater_connectors::kafka::KafkaCommit;
use meltwater_connectors::stream::{Split, SplitPosition, StreamSource};
use meltwater_iceberg::CommitSummary;
use meltwater_state::{
    key_group_hashes, key_groups, subtask_for_key_group, CheckpointManifest, CheckpointStore,
    KeyGroupRange, OperatorManifest, SubtaskManifest,
};
use tokio::sync::mpsc;

use crate::aggregate::assign::WindowAssignOperator;
use crate::aggregate::spec::AggregateSpec;
use crate::aggregate::updating::UpdatingAggregateOperator;
use crate::aggregate::window::WindowAggregateOperator;
use crate::graph::{NodeKind, Partitioning, SinkKind, StreamGraph};
use crate::message::{EventTime, Message, WatermarkStatus, MIN_WATERMARK};
use crate::metrics::{CheckpointStatus, JobMetrics, OperatorMetrics};
use crate::operator::{Operator, OperatorSnapshot, Output, RestoredState, SubtaskInfo};
use crate::ops::sink::{
    kafka_pending_of, pending_files_of, CollectSinkOperator, IcebergSinkOperator,
};
use crate::ops::stateless::StatelessOperator;
use crate::watermark::{WatermarkCombiner, WatermarkUpdate};

/// How a stream job runs.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub job_id: String,
    /// Root of the checkpoint store (`<dir>/<job>/chk-<n>`): a local path, an `s3://`,
    /// `file://` or `memory://` URL, or `profile:<name>[/<path>]`.
    pub checkpoint_dir: String,
    /// The catalog file's storage profiles (`[storage.<name>]`).
    pub storage: meltwater_state::StorageProfiles,
    pub checkpoint_interval: Duration,
    /// Complete checkpoints kept.
    pub retained: usize,
    /// Restore from this checkpoint directory (a path or URL, as the store lists it)
    /// instead of the newest one.
    pub from_checkpoint: Option<String>,
    /// Resume from the newest complete checkpoint (when `from_checkpoint` is unset).
    pub resume: bool,
    pub key_groups: u16,
    pub channel_capacity: usize,
    pub batch_size: usize,
    /// Splits without data for this long stop holding the watermark back.
    pub idle_timeout: Option<Duration>,
    /// Stops the job from outside (see [`StopSignal`]).
    pub stop: StopSignal,
    /// Fault injection for recovery tests: the process aborts right after checkpoint
    /// `n` is complete, before its sinks commit (the CLI sets it from
    /// `MELTWATER_ABORT_BEFORE_COMMIT`).
    pub abort_before_commit: Option<u64>,
    /// Fault injection: the process aborts right after checkpoint `n`'s sinks committed
    /// (`MELTWATER_ABORT_AFTER_COMMIT`).
    pub abort_after_commit: Option<u64>,
}

/// Stops a running job from outside. Clones share the signal.
///
/// - [`StopSignal::stop`]: as if the process stopped: every task is aborted and awaited,
///   no further checkpoint is taken and nothing more is committed. The next run resumes
///   from the last complete checkpoint.
/// - [`StopSignal::stop_after_checkpoint`]: a checkpoint is taken at once (or the one in
///   flight completes), its files are committed, then the tasks are aborted: the next run
///   resumes exactly where this one stopped and recomputes nothing.
///
/// Either way the run returns its report with `stopped` set.
#[derive(Debug, Clone)]
pub struct StopSignal(Arc<tokio::sync::watch::Sender<StopMode>>);

/// How a [`StopSignal`] asks the job to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Running,
    /// Stop after a checkpoint completed and committed.
    AfterCheckpoint,
    /// Stop now.
    Now,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(StopMode::Running).0))
    }
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop now (again is a no-op).
    pub fn stop(&self) {
        self.0.send_replace(StopMode::Now);
    }

    /// Asks the job to stop once a checkpoint taken now has completed and committed; a
    /// later [`StopSignal::stop`] still stops it at once.
    pub fn stop_after_checkpoint(&self) {
        self.0.send_if_modified(|m| {
            let changed = *m == StopMode::Running;
            if changed {
                *m = StopMode::AfterCheckpoint;
            }
            changed
        });
    }

    pub fn mode(&self) -> StopMode {
        *self.0.borrow()
    }

    /// Whether the job is being stopped at once.
    pub fn is_stopped(&self) -> bool {
        self.mode() == StopMode::Now
    }

    /// Resolves once the mode differs from `seen`, with the new mode.
    pub async fn changed_from(&self, seen: StopMode) -> StopMode {
        let mut rx = self.0.subscribe();
        let mode = match rx.wait_for(|m| *m != seen).await {
            Ok(m) => Some(*m),
            Err(_) => None,
        };
        match mode {
            Some(m) => m,
            None => std::future::pending().await,
        }
    }

    /// Resolves once [`StopSignal::stop`] was called.
    pub async fn stopped(&self) {
        self.changed_from(StopMode::Running).await;
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|m| *m == StopMode::Now).await;
    }
}

impl StreamOptions {
    pub fn new(job_id: impl Into<String>, checkpoint_dir: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            checkpoint_dir: checkpoint_dir.into(),
            storage: Default::default(),
            checkpoint_interval: Duration::from_secs(10),
            retained: 3,
            from_checkpoint: None,
            resume: true,
            key_groups: meltwater_state::DEFAULT_KEY_GROUPS,
            channel_capacity: 8,
            batch_size: 8192,
            idle_timeout: None,
            stop: StopSignal::default(),
            abort_before_commit: None,
            abort_after_commit: None,
        }
    }
}

/// What a finished stream run did.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    pub restored_from: Option<u64>,
    pub checkpoints: u64,
    pub last_checkpoint: Option<u64>,
    pub commits: Vec<CommitSummary>,
    /// Transactions of exactly-once kafka sinks (those that held records); on a restore,
    /// also the restored checkpoint's, committed now or found committed already.
    pub kafka_commits: Vec<KafkaCommit>,
    pub elapsed: Duration,
    /// The run was stopped through [`StreamOptions::stop`] rather than ending.
    pub stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{operator}: {message}")]
    Operator { operator: String, message: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("commit of checkpoint {checkpoint} failed: {message}")]
    Commit { checkpoint: u64, message: String },
}

fn df_message(e: &DataFusionError) -> String {
    let mut s = e.to_string();
    for prefix in ["External error: ", "Execution error: ", "Arrow error: "] {
        while let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_string();
        }
    }
    s
}

type TaskKey = (usize, usize); // (chain, subtask)

enum Control {
    Trigger(u64),
}

enum Event {
    Ack {
        task: TaskKey,
        checkpoint: u64,
        operators: Vec<(String, SubtaskManifest)>,
    },
    Finished {
        task: TaskKey,
    },
    Failed {
        operator: String,
        message: String,
    },
}

/// Everything a subtask needs to snapshot.
#[derive(Clone)]
struct SnapshotCtx {
    store: CheckpointStore,
    job_id: String,
    events: mpsc::UnboundedSender<Event>,
    /// Set when the job is being stopped from outside.
    stop: StopSignal,
}

/// An operator of a chain with its identity and counters.
struct ChainOp {
    info: SubtaskInfo,
    op: Box<dyn Operator>,
    metrics: Arc<OperatorMetrics>,
    /// Late records already added to `metrics` (shared by every subtask).
    late_reported: u64,
    /// Spilled bytes already added to `metrics`.
    spilled_reported: u64,
    /// Where the operator's side output (late rows) goes, when the graph reads it.
    side: Option<Outputs>,
}

impl ChainOp {
    /// Adds what the operator's counters gained since the last report to its metrics.
    fn report_counters(&mut self) {
        let counters = self.op.counters();
        JobMetrics::add(
            &self.metrics.late_records,
            counters.late_records - self.late_reported,
        );
        self.late_reported = counters.late_records;
        JobMetrics::add(
            &self.metrics.spilled_bytes,
            counters.spilled_bytes - self.spilled_reported,
        );
        self.spilled_reported = counters.spilled_bytes;
    }
}

/// Where a chain's output goes.
struct Outputs {
    partitioning: Partitioning,
    senders: Vec<mpsc::Sender<Message>>,
    key_groups: u16,
    next: usize,
    metrics: Arc<OperatorMetrics>,
}

impl Outputs {
    async fn send(&mut self, target: usize, msg: Message) -> Result<()> {
        let tx = &self.senders[target];
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let t = Instant::now();
                JobMetrics::add(&self.metrics.backpressure_events, 1);
                let r = tx.send(msg).await;
                JobMetrics::add(&self.metrics.backpressure_ns, t.elapsed().as_nanos() as u64);
                r.map_err(|_| DataFusionError::Execution("downstream task stopped".into()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(DataFusionError::Execution("downstream task stopped".into()))
            }
        }
    }

    async fn broadcast(&mut self, msg: Message) -> Result<()> {
        for i in 0..self.senders.len() {
            self.send(i, msg.clone()).await?;
        }
        Ok(())
    }

    async fn data(&mut self, own_index: usize, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 || self.senders.is_empty() {
            return Ok(());
        }
        JobMetrics::add(&self.metrics.rows_out, batch.num_rows() as u64);
        let n = self.senders.len();
        match &self.partitioning {
            Partitioning::Forward => self.send(own_index % n, Message::Data(batch)).await,
            Partitioning::Single => self.send(0, Message::Data(batch)).await,
            Partitioning::Rebalance => {
                self.next = (self.next + 1) % n;
                let t = self.next;
                self.send(t, Message::Data(batch)).await
            }
            Partitioning::Hash { keys, .. } => {
                let rows = batch.num_rows();
                let arrays = keys
                    .iter()
                    .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(rows)))
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let groups = key_groups(&arrays, rows, self.key_groups)?;
                let mut per: Vec<Vec<u32>> = vec![Vec::new(); n];
                for (r, g) in groups.iter().enumerate() {
                    per[subtask_for_key_group(*g, self.key_groups, n)].push(r as u32);
                }
                for (t, idx) in per.into_iter().enumerate() {
                    if idx.is_empty() {
                        continue;
                    }
                    let part = if idx.len() == rows {
                        batch.clone()
                    } else {
                        take_record_batch(&batch, &UInt32Array::from(idx))?
                    };
                    self.send(t, Message::Data(part)).await?;
                }
                Ok(())
            }
        }
    }
}

/// A chain of operators in one subtask.
struct Chain {
    key: TaskKey,
    ops: Vec<ChainOp>,
    outputs: Outputs,
    ctx: SnapshotCtx,
    watermark: EventTime,
    /// The last checkpoint this chain snapshotted (0: none yet).
    last_checkpoint: u64,
}

impl Chain {
    /// Runs `batches` through operators `from..` and emits what comes out.
    async fn push_from(&mut self, from: usize, batches: Vec<RecordBatch>) -> Result<()> {
        self.push_input(from, 0, batches).await
    }

    /// Runs `batches`, arriving on input `input` of operator `from`, through operators
    /// `from..` and emits what comes out.
    async fn push_input(
        &mut self,
        from: usize,
        input: usize,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let mut batches = batches;
        let len = self.ops.len();
        for k in from..len {
            if batches.is_empty() {
                return Ok(());
            }
            let op = &mut self.ops[k];
            let mut out = Output::default();
            let input = if k == from { input } else { 0 };
            for b in batches {
                JobMetrics::add(&op.metrics.rows_in, b.num_rows() as u64);
                op.op.process(input, b, &mut out).await?;
            }
            // Operators that spill while processing (joins, updating aggregates) report it
            // here; late records are counted as watermarks arrive.
            op.report_counters();
            batches = out.take();
            if k + 1 < len {
                for b in &batches {
                    JobMetrics::add(&op.metrics.rows_out, b.num_rows() as u64);
                }
            }
            self.side_data(k, out.take_late()).await?;
        }
        for b in batches {
            self.outputs.data(self.key.1, b).await?;
        }
        Ok(())
    }

    /// Sends operator `k`'s late rows to its side output (dropped without one).
    async fn side_data(&mut self, k: usize, late: Vec<RecordBatch>) -> Result<()> {
        let own_index = self.key.1;
        if let Some(side) = self.ops[k].side.as_mut() {
            for b in late {
                side.data(own_index, b).await?;
            }
        }
        Ok(())
    }

    /// Sends `msg` (a watermark, status, barrier or the end) to every downstream subtask,
    /// of the chain's output and of its operators' side outputs.
    async fn broadcast(&mut self, msg: Message) -> Result<()> {
        for op in &mut self.ops {
            if let Some(side) = op.side.as_mut() {
                side.broadcast(msg.clone()).await?;
            }
        }
        self.outputs.broadcast(msg).await
    }

    /// Runs operator `k`'s output through the operators after it and its side output
    /// to its side consumer.
    async fn emit_from(&mut self, k: usize, mut out: Output) -> Result<()> {
        self.side_data(k, out.take_late()).await?;
        self.push_from(k + 1, out.take()).await
    }

    async fn watermark(&mut self, wm: EventTime) -> Result<()> {
        if wm <= self.watermark {
            return Ok(());
        }
        self.watermark = wm;
        let mut wm = wm;
        for k in 0..self.ops.len() {
            let mut out = Output::default();
            wm = self.ops[k].op.on_watermark(wm, &mut out).await?;
            self.ops[k].report_counters();
            self.emit_from(k, out).await?;
        }
        self.broadcast(Message::Watermark(wm)).await
    }

    /// Tells every downstream subtask whether this subtask holds the watermark back.
    async fn status(&mut self, status: WatermarkStatus) -> Result<()> {
        self.broadcast(Message::Status(status)).await
    }

    /// Emits what the combined watermark of the inputs did: `Active`, then the watermark,
    /// then `Idle`.
    async fn apply(&mut self, u: WatermarkUpdate) -> Result<()> {
        if u.became_active {
            self.status(WatermarkStatus::Active).await?;
        }
        if let Some(wm) = u.watermark {
            self.watermark(wm).await?;
        }
        if u.became_idle {
            self.status(WatermarkStatus::Idle).await?;
        }
        Ok(())
    }

    /// Snapshots every operator; `extra` is the source's state (chain head) if any.
    /// Snapshots every operator for `checkpoint` and acknowledges it to the coordinator.
    /// A checkpoint is snapshotted at most once: a finished task can be asked twice for
    /// the same one (by the trigger it had queued and again when the coordinator learns
    /// it finished), and a second snapshot would hand over emptied state (a sink's files
    /// already listed) that would replace the first acknowledgement. Returns whether a
    /// snapshot was taken.
    async fn snapshot(
        &mut self,
        checkpoint: u64,
        source: Option<(String, serde_json::Value)>,
    ) -> Result<bool> {
        if checkpoint <= self.last_checkpoint {
            return Ok(false);
        }
        self.last_checkpoint = checkpoint;
        let mut manifests = Vec::new();
        if let Some((id, state)) = source {
            manifests.push((
                id,
                SubtaskManifest {
                    index: self.key.1,
                    state,
                    ..Default::default()
                },
            ));
        }
        for k in 0..self.ops.len() {
            let mut out = Output::default();
            let snap: OperatorSnapshot = self.ops[k].op.snapshot(checkpoint, &mut out).await?;
            self.emit_from(k, out).await?;
            let info = &self.ops[k].info;
            let mut m = SubtaskManifest {
                index: info.index,
                state: snap.state,
                ..Default::default()
            };
            if let Some((file, bytes, rows)) = self
                .ctx
                .store
                .write_keyed(
                    &self.ctx.job_id,
                    checkpoint,
                    &info.operator_id,
                    info.index,
                    &snap.keyed,
                )
                .await
                .map_err(|e| DataFusionError::Execution(e.to_string()))?
            {
                m.keyed_file = Some(file);
                m.bytes = bytes;
                m.keyed_rows = rows;
            }
            manifests.push((info.operator_id.clone(), m));
        }
        let _ = self.ctx.events.send(Event::Ack {
            task: self.key,
            checkpoint,
            operators: manifests,
        });
        Ok(true)
    }

    async fn finish(&mut self) -> Result<()> {
        self.watermark(i64::MAX).await?;
        for k in 0..self.ops.len() {
            let mut out = Output::default();
            self.ops[k].op.finish(&mut out).await?;
            self.emit_from(k, out).await?;
        }
        self.broadcast(Message::End).await
    }
}

/// After a chain finished, it answers the coordinator's requests with snapshots of
/// its (flushed) operators until the job ends.
async fn serve_finished(
    chain: &mut Chain,
    control: &mut mpsc::UnboundedReceiver<Control>,
    source: Option<&SourceState>,
) -> Result<()> {
    while let Some(Control::Trigger(n)) = control.recv().await {
        chain
            .snapshot(n, source.map(|s| (s.operator_id.clone(), s.to_json())))
            .await?;
    }
    Ok(())
}

/// A non-source chain: reads its inputs, aligns barriers, processes.
async fn run_chain(
    mut chain: Chain,
    mut inputs: Vec<mpsc::Receiver<Message>>,
    input_of: Vec<usize>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<()> {
    let n = inputs.len();
    let mut blocked = vec![false; n];
    // Watermarks, idleness and the end of each input.
    let mut wm = WatermarkCombiner::new(n);
    let mut aligning: Option<u64> = None;
    let mut start = 0usize;
    loop {
        if wm.all_ended() {
            break;
        }
        let (j, msg) = poll_fn(|cx| {
            for o in 0..n {
                let j = (start + o) % n;
                if wm.is_ended(j) || blocked[j] {
                    continue;
                }
                match inputs[j].poll_recv(cx) {
                    Poll::Ready(m) => return Poll::Ready((j, m)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let msg = match msg {
            Some(m) => m,
            // The upstream task is gone without ending its stream because the job is
            // being stopped (its tasks are aborted): stop without finishing, so that no
            // window is flushed.
            None if chain.ctx.stop.is_stopped() => return Ok(()),
            None => Message::End,
        };
        start = (j + 1) % n;
        match msg {
            Message::Data(b) => chain.push_input(0, input_of[j], vec![b]).await?,
            Message::Watermark(w) => chain.apply(wm.watermark(j, w)).await?,
            // Idleness concerns watermarks only: an idle input still delivers barriers
            // (and data), so alignment keeps waiting on it.
            Message::Status(status) => chain.apply(wm.status(j, status)).await?,
            Message::Barrier(id) => {
                blocked[j] = true;
                aligning = Some(id);
            }
            Message::End => {
                blocked[j] = false;
                chain.apply(wm.end(j)).await?;
            }
        }
        if let Some(id) = aligning {
            if (0..n).all(|k| blocked[k] || wm.is_ended(k)) {
                let taken = chain.snapshot(id, None).await?;
                if taken {
                    chain.broadcast(Message::Barrier(id)).await?;
                }
                blocked.iter_mut().for_each(|b| *b = false);
                aligning = None;
            }
        }
    }
    chain.finish().await?;
    let _ = chain.ctx.events.send(Event::Finished { task: chain.key });
    serve_finished(&mut chain, &mut control, None).await
}

/// A source subtask's splits and where each stands.
#[derive(Debug, Clone)]
struct SourceState {
    operator_id: String,
    /// split id -> (position, exhausted)
    splits: BTreeMap<String, (SplitPosition, bool)>,
    /// Asked for its enumerator state at each checkpoint.
    source: Arc<dyn StreamSource>,
}

impl SourceState {
    fn to_json(&self) -> serde_json::Value {
        let splits: serde_json::Map<String, serde_json::Value> = self
            .splits
            .iter()
            .map(|(id, (pos, done))| {
                (
                    id.clone(),
                    serde_json::json!({"position": pos, "done": done}),
                )
            })
            .collect();
        serde_json::json!({ "splits": splits, "enumerator": self.source.enumerator_state() })
    }

    fn merge_json(&mut self, v: &serde_json::Value) {
        self.splits.extend(split_states(v));
    }
}

/// The splits a source subtask stored in a checkpoint ([`SourceState::to_json`]):
/// id -> (position, exhausted).
fn split_states(
    v: &serde_json::Value,
) -> impl Iterator<Item = (String, (SplitPosition, bool))> + '_ {
    v.get("splits")
        .and_then(|s| s.as_object())
        .into_iter()
        .flatten()
        .map(|(id, s)| {
            let pos = s.get("position").and_then(|p| p.as_u64()).unwrap_or(0);
            let done = s.get("done").and_then(|d| d.as_bool()).unwrap_or(false);
            (id.clone(), (pos, done))
        })
}

/// Which source subtask reads a split: stable across runs and parallelism changes only
/// through the split id.
fn owner_of(split: &str, parallelism: usize) -> usize {
    let ids: ArrayRef = Arc::new(StringArray::from(vec![split]));
    let h = key_group_hashes(&[ids], 1).map(|h| h[0]).unwrap_or(0);
    (h % parallelism as u64) as usize
}

type SplitStream =
    Pin<Box<dyn Stream<Item = (String, Result<Option<(RecordBatch, SplitPosition)>>)> + Send>>;

fn split_stream(
    id: String,
    reader: Box<dyn meltwater_connectors::stream::SplitReader>,
) -> SplitStream {
    Box::pin(futures::stream::unfold(Some(reader), move |reader| {
        let id = id.clone();
        async move {
            let mut reader = reader?;
            match reader.next_batch().await {
                Ok(Some(item)) => Some(((id, Ok(Some(item))), Some(reader))),
                Ok(None) => Some(((id, Ok(None)), None)),
                Err(e) => Some(((id, Err(DataFusionError::External(Box::new(e)))), None)),
            }
        }
    }))
}

/// What the source head of a chain reads.
struct SourceSpec {
    operator_id: String,
    source: Arc<dyn StreamSource>,
    read_projection: Option<Vec<usize>>,
    output_columns: Vec<usize>,
    watermark: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    metrics: Arc<OperatorMetrics>,
    job: Arc<JobMetrics>,
}

/// The largest value of a timestamp array, in milliseconds.
fn max_millis(a: &ArrayRef) -> Result<Option<i64>> {
    let ms = match a.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => a.clone(),
        DataType::Timestamp(_, _) => cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
        other => {
            return Err(DataFusionError::Plan(format!(
                "the watermark expression has type {other}; it must be a TIMESTAMP"
            )))
        }
    };
    let ints = cast(&ms, &DataType::Int64)?;
    Ok(datafusion::arrow::compute::max(
        ints.as_primitive::<Int64Type>(),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn run_source_chain(
    mut chain: Chain,
    spec: SourceSpec,
    mut state: SourceState,
    parallelism: usize,
    batch_size: usize,
    idle_timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<()> {
    let index = chain.key.1;
    let mut readers: SelectAll<SplitStream> = SelectAll::new();
    let mut split_wm: HashMap<String, (EventTime, Instant)> = HashMap::new();
    let mut open: HashSet<String> = HashSet::new();
    let discovery = spec.source.discovery_interval_ms();
    let mut next_discovery = Instant::now();
    // Whether this subtask told downstream it is idle.
    let mut idle = false;
    let err = |e: meltwater_connectors::ConnectorError| DataFusionError::External(Box::new(e));
    loop {
        // Discover splits (at start, then every interval when the source is monitored).
        if Instant::now() >= next_discovery {
            let splits: Vec<Split> = spec.source.discover_splits().await.map_err(err)?;
            for s in splits {
                if owner_of(&s.id, parallelism) != index || open.contains(&s.id) {
                    continue;
                }
                let (pos, done) = state.splits.get(&s.id).copied().unwrap_or((0, false));
                if done {
                    continue;
                }
                state.splits.insert(s.id.clone(), (pos, false));
                let reader = spec
                    .source
                    .open(&s, pos, spec.read_projection.as_deref(), batch_size)
                    .await
                    .map_err(err)?;
                open.insert(s.id.clone());
                split_wm.insert(s.id.clone(), (MIN_WATERMARK, Instant::now()));
                readers.push(split_stream(s.id.clone(), reader));
            }
            next_discovery = match discovery {
                Some(ms) => Instant::now() + Duration::from_millis(ms.max(1)),
                None => Instant::now() + Duration::from_secs(365 * 24 * 3600),
            };
        }
        if readers.is_empty() && discovery.is_none() {
            break;
        }
        let idle_at = source_progress(
            &mut chain,
            &split_wm,
            idle_timeout,
            discovery.is_some(),
            spec.watermark.is_some(),
            &mut idle,
            &spec.job,
        )
        .await?;
        let idle_wait = idle_at.map(|t| t.saturating_duration_since(Instant::now()));
        let wait = next_discovery.saturating_duration_since(Instant::now());
        tokio::select! {
            biased;
            c = control.recv() => {
                match c {
                    Some(Control::Trigger(n)) => {
                        if chain.snapshot(n, Some((spec.operator_id.clone(), state.to_json()))).await? {
                            chain.broadcast(Message::Barrier(n)).await?;
                        }
                    }
                    None => return Ok(()),
                }
            }
            item = readers.next(), if !readers.is_empty() => {
                let Some((id, item)) = item else { continue };
                match item? {
                    Some((batch, pos)) => {
                        if let Some(e) = state.splits.get_mut(&id) {
                            e.0 = pos;
                        }
                        let rows = batch.num_rows() as u64;
                        JobMetrics::add(&spec.metrics.rows_in, rows);
                        if let Some(wm) = &spec.watermark {
                            let v = wm.evaluate(&batch)?.into_array(batch.num_rows())?;
                            if let Some(m) = max_millis(&v)? {
                                let e = split_wm.entry(id.clone()).or_insert((MIN_WATERMARK, Instant::now()));
                                e.0 = e.0.max(m);
                            }
                        }
                        if let Some(e) = split_wm.get_mut(&id) {
                            e.1 = Instant::now();
                        }
                        let out = batch.project(&spec.output_columns)?;
                        JobMetrics::add(&spec.metrics.rows_out, rows);
                        if idle {
                            idle = false;
                            chain.status(WatermarkStatus::Active).await?;
                        }
                        chain.push_from(0, vec![out]).await?;
                    }
                    None => {
                        if let Some(e) = state.splits.get_mut(&id) {
                            e.1 = true;
                        }
                        split_wm.remove(&id);
                    }
                }
            }
            _ = tokio::time::sleep(wait), if discovery.is_some() => {}
            _ = tokio::time::sleep(idle_wait.unwrap_or_default()), if idle_wait.is_some() => {}
        }
    }
    chain.finish().await?;
    let _ = chain.ctx.events.send(Event::Finished { task: chain.key });
    serve_finished(&mut chain, &mut control, Some(&state)).await
}

/// A source subtask's watermark status and watermark, from the splits it reads (split id
/// -> (watermark, when it last produced data)). A split without data for `idle_timeout`
/// stops holding the watermark back; once no split does (all idle, or none to read while
/// `monitored` discovery may bring some), the subtask turns idle downstream; it turns
/// active again as soon as a split counts (a new one, or an idle one producing data: the
/// caller sends `Active` before that data). Otherwise the watermark is the minimum over
/// the splits that count. Returns when the next split turns idle, if one may.
#[allow(clippy::too_many_arguments)]
async fn source_progress(
    chain: &mut Chain,
    splits: &HashMap<String, (EventTime, Instant)>,
    idle_timeout: Option<Duration>,
    monitored: bool,
    has_watermark: bool,
    idle: &mut bool,
    job: &JobMetrics,
) -> Result<Option<Instant>> {
    if splits.is_empty() && !monitored {
        // Bounded and read: the subtask ends (with the final watermark) instead.
        return Ok(None);
    }
    let now = Instant::now();
    let counting: Vec<(EventTime, Instant)> = splits
        .values()
        .filter(|(_, last)| idle_timeout.is_none_or(|t| now.duration_since(*last) < t))
        .copied()
        .collect();
    if counting.is_empty() {
        if !*idle {
            *idle = true;
            chain.status(WatermarkStatus::Idle).await?;
        }
        return Ok(None);
    }
    if *idle {
        *idle = false;
        chain.status(WatermarkStatus::Active).await?;
    }
    if has_watermark {
        if let Some(min) = counting.iter().map(|(w, _)| *w).min() {
            if min > chain.watermark && min > MIN_WATERMARK {
                chain.watermark(min).await?;
                job.watermark.store(min, Ordering::Relaxed);
            }
        }
    }
    Ok(idle_timeout.and_then(|t| counting.iter().map(|(_, last)| *last + t).min()))
}

fn build_operator(
    graph: &StreamGraph,
    node: &crate::graph::StreamNode,
    info: &SubtaskInfo,
    state: &SessionState,
) -> Result<Box<dyn Operator>> {
    let input_updating = node
        .input
        .as_ref()
        .is_some_and(|(from, _)| graph.nodes[*from].updating);
    Ok(match &node.kind {
        NodeKind::Stateless(steps) => Box::new(StatelessOperator::new(steps.clone())),
        NodeKind::Union => Box::new(crate::ops::stateless::UnionOperator::new(
            node.schema.clone(),
        )),
        NodeKind::WindowAssign { kind, time_index } => Box::new(WindowAssignOperator::try_new(
            *kind,
            *time_index,
            node.schema.clone(),
        )?),
        NodeKind::WindowAggregate {
            aggregate,
            window,
            memory_budget,
        } => {
            let spec = AggregateSpec::try_new(aggregate, state)?;
            let mut op = WindowAggregateOperator::try_new(spec, *window, info.clone())?;
            let index = graph.nodes.iter().position(|n| n.id == node.id);
            if index.is_some_and(|i| graph.side_consumer(i).is_some()) {
                op = op.with_side_output();
            }
            Box::new(match memory_budget {
                Some(budget) => op.with_memory_budget(*budget, spill_dir(info)),
                None => op,
            })
        }
        NodeKind::UpdatingAggregate {
            aggregate,
            ttl_ms,
            memory_budget,
        } => {
            let mut spec = AggregateSpec::try_new(aggregate, state)?;
            if input_updating {
                spec = spec.with_updating_input();
            }
            let op = UpdatingAggregateOperator::try_new(spec, info.clone(), *ttl_ms)?;
            Box::new(match memory_budget {
                Some(budget) => op.with_memory_budget(*budget, spill_dir(info)),
                None => op,
            })
        }
        NodeKind::SessionRows {
            gap,
            time_index,
            key_indices,
            memory_budget,
        } => {
            let op = crate::aggregate::SessionRowsOperator::try_new(
                *gap,
                *time_index,
                key_indices.clone(),
                node.schema.clone(),
                info.clone(),
            )?;
            Box::new(match memory_budget {
                Some(budget) => op.with_memory_budget(*budget, spill_dir(info)),
                None => op,
            })
        }
        NodeKind::Join(spec) => {
            let op = crate::ops::join::JoinOperator::try_new(spec.clone(), info.clone())?;
            Box::new(match spec.memory_budget {
                Some(budget) => op.with_memory_budget(budget, spill_dir(info)),
                None => op,
            })
        }
        NodeKind::Sink { kind, .. } => match kind {
            SinkKind::Iceberg { table, upsert } => Box::new(IcebergSinkOperator::new(
                table.clone(),
                info.index,
                *upsert,
                input_updating,
            )),
            SinkKind::Collect(rows) => Box::new(CollectSinkOperator::new(rows.clone())),
            SinkKind::Print { table, options } => {
                Box::new(crate::ops::sink::PrintSinkOperator::new(
                    table,
                    options,
                    info.index,
                    info.parallelism,
                    input_updating,
                ))
            }
            SinkKind::Blackhole => Box::new(crate::ops::sink::BlackholeSinkOperator),
            SinkKind::Kafka(options) => Box::new(crate::ops::sink::KafkaSinkOperator::new(
                options.clone(),
                info.index,
                input_updating,
            )),
        },
        NodeKind::Source { .. } => {
            return Err(DataFusionError::Internal(
                "a source is not a chained operator".into(),
            ))
        }
    })
}

/// Where an operator subtask spills state: a directory of this process under the
/// system's temporary directory, removed with the operator.
fn spill_dir(info: &SubtaskInfo) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "meltwater-spill-{}-{}-{}",
        std::process::id(),
        info.operator_id,
        info.index
    ))
}

/// The state a restored operator subtask receives.
async fn restored_state(
    manifest: &CheckpointManifest,
    info: &SubtaskInfo,
) -> Result<Option<RestoredState>> {
    let Some(op) = manifest.operators.get(&info.operator_id) else {
        return Ok(None);
    };
    let range: KeyGroupRange = info.key_group_range();
    let mut keyed = Vec::new();
    let mut states = Vec::new();
    for s in &op.subtasks {
        states.push(s.state.clone());
        if let Some(file) = &s.keyed_file {
            for b in manifest
                .read_keyed(file)
                .await
                .map_err(|e| DataFusionError::Execution(e.to_string()))?
            {
                let sel = range.select(&b)?;
                if sel.num_rows() > 0 {
                    keyed.push(sel);
                }
            }
        }
    }
    Ok(Some(RestoredState { keyed, states }))
}

/// What committing a checkpoint's sinks did.
#[derive(Debug, Default)]
struct SinkCommits {
    iceberg: Vec<CommitSummary>,
    kafka: Vec<KafkaCommit>,
}

/// Commits what the sinks listed in a complete checkpoint: the Iceberg sinks' files,
/// and the records of exactly-once kafka sinks (one transaction per sink).
async fn commit_sinks(
    graph: &StreamGraph,
    manifest: &CheckpointManifest,
    job_id: &str,
) -> std::result::Result<SinkCommits, StreamError> {
    let mut out = SinkCommits::default();
    let failed = |message: String| StreamError::Commit {
        checkpoint: manifest.checkpoint_id,
        message,
    };
    for node in &graph.nodes {
        let NodeKind::Sink { kind, .. } = &node.kind else {
            continue;
        };
        let Some(op) = manifest.operators.get(&node.id) else {
            continue;
        };
        match kind {
            SinkKind::Iceberg { table, .. } => {
                let mut files = Vec::new();
                for s in &op.subtasks {
                    files.extend(pending_files_of(&s.state).map_err(|e| failed(e.to_string()))?);
                }
                let summary = meltwater_iceberg::stream::commit_checkpoint(
                    table,
                    files,
                    job_id,
                    manifest.checkpoint_id,
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
                out.iceberg.push(summary);
            }
            SinkKind::Kafka(options) if options.exactly_once() => {
                let mut pending = Vec::new();
                for s in &op.subtasks {
                    if let Some(file) = &s.keyed_file {
                        let keyed = manifest
                            .read_keyed(file)
                            .await
                            .map_err(|e| failed(e.to_string()))?;
                        pending.extend(kafka_pending_of(keyed));
                    }
                }
                let commit = meltwater_connectors::kafka::commit_checkpoint(
                    options,
                    job_id,
                    &node.id,
                    manifest.checkpoint_id,
                    &pending,
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
                out.kafka.push(commit);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Tells every source that checkpoint `manifest` is complete, with its split positions
/// (Kafka commits them as consumer-group offsets). Monitoring only: a failure is
/// reported and the job goes on.
async fn notify_sources(graph: &StreamGraph, manifest: &CheckpointManifest) {
    for node in &graph.nodes {
        let NodeKind::Source { source, .. } = &node.kind else {
            continue;
        };
        let Some(op) = manifest.operators.get(&node.id) else {
            continue;
        };
        let positions: BTreeMap<String, SplitPosition> = op
            .subtasks
            .iter()
            .flat_map(|s| split_states(&s.state))
            .map(|(id, (position, _))| (id, position))
            .collect();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            source.checkpoint_complete(manifest.checkpoint_id, &positions),
        )
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "{}: after checkpoint {}: {e} (the job goes on)",
                node.name, manifest.checkpoint_id
            ),
            Err(_) => eprintln!(
                "{}: after checkpoint {}: no answer in 10 s (the job goes on)",
                node.name, manifest.checkpoint_id
            ),
        }
    }
}

/// Aborts every task, waits for them, and returns the report of a run stopped from
/// outside.
async fn stopped(
    handles: Vec<tokio::task::JoinHandle<()>>,
    mut report: StreamReport,
    started: Instant,
) -> StreamReport {
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    report.stopped = true;
    report.elapsed = started.elapsed();
    report
}

/// Asks the sources (which inject the barrier) and the tasks that already finished
/// (which snapshot on request) to take checkpoint `id`.
fn trigger_checkpoint(
    id: u64,
    source_tasks: &[TaskKey],
    finished: &HashSet<TaskKey>,
    controls: &HashMap<TaskKey, mpsc::UnboundedSender<Control>>,
) {
    for key in source_tasks {
        if !finished.contains(key) {
            let _ = controls[key].send(Control::Trigger(id));
        }
    }
    for key in finished {
        let _ = controls[key].send(Control::Trigger(id));
    }
}

/// Per upstream subtask, its channels to each downstream subtask.
type SubtaskSenders = Vec<Vec<mpsc::Sender<Message>>>;

/// Runs the graph until every source ends (bounded sources) or forever (unbounded).
pub async fn run_graph(
    graph: &StreamGraph,
    state: &SessionState,
    options: &StreamOptions,
    metrics: Arc<JobMetrics>,
) -> std::result::Result<StreamReport, StreamError> {
    let started = Instant::now();
    let store = CheckpointStore::open(&options.checkpoint_dir, &options.storage)
        .map_err(|e| StreamError::Checkpoint(e.to_string()))?;
    let restore = match &options.from_checkpoint {
        Some(dir) => Some(
            CheckpointManifest::open(dir, &options.storage)
                .await
                .map_err(|e| StreamError::Checkpoint(e.to_string()))?,
        ),
        None if options.resume => store
            .latest(&options.job_id)
            .await
            .map_err(|e| StreamError::Checkpoint(e.to_string()))?,
        None => None,
    };
    let mut report = StreamReport::default();
    if let Some(m) = &restore {
        if m.key_groups != options.key_groups {
            return Err(StreamError::Checkpoint(format!(
                "checkpoint {} has {} key groups but the job has {}; the key-group count cannot change",
                m.checkpoint_id, m.key_groups, options.key_groups
            )));
        }
        // A crash may have come between completing the checkpoint and committing its
        // files: commit them now (a commit that already happened is recognised and skipped).
        let commits = commit_sinks(graph, m, &options.job_id).await?;
        report.commits.extend(
            commits
                .iceberg
                .into_iter()
                .filter(|c| c.snapshot_id.is_some()),
        );
        report.kafka_commits.extend(
            commits
                .kafka
                .into_iter()
                .filter(|c| c.records > 0 || c.already_committed),
        );
        report.restored_from = Some(m.checkpoint_id);
    }

    let chains = graph.chains();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
    let ctx = SnapshotCtx {
        store: store.clone(),
        job_id: options.job_id.clone(),
        events: events_tx.clone(),
        stop: options.stop.clone(),
    };
    // Channels: for each chain with an upstream chain, one per (upstream, downstream) subtask pair.
    let chain_of = |node: usize| {
        chains
            .iter()
            .position(|c| c.contains(&node))
            .expect("node in a chain")
    };
    // Per chain: each subtask's receivers, and the operator input each receiver feeds.
    let mut receivers: HashMap<usize, (Vec<Vec<mpsc::Receiver<Message>>>, Vec<usize>)> =
        HashMap::new();
    // Keyed by the upstream chain and, for a side output, the operator emitting it.
    let mut senders: HashMap<(usize, Option<usize>), SubtaskSenders> = HashMap::new();
    for (c, chain) in chains.iter().enumerate() {
        let head = &graph.nodes[chain[0]];
        let Some((first, _)) = &head.input else {
            continue;
        };
        let p = head.parallelism;
        let mut rx: Vec<Vec<mpsc::Receiver<Message>>> = (0..p).map(|_| Vec::new()).collect();
        let froms: Vec<usize> = std::iter::once(*first)
            .chain(head.extra_inputs.iter().map(|(f, _)| *f))
            .collect();
        let mut input_of = Vec::new();
        for (input, from) in froms.into_iter().enumerate() {
            let up = chain_of(from);
            let p_up = graph.nodes[chains[up][0]].parallelism;
            let mut tx: Vec<Vec<mpsc::Sender<Message>>> = (0..p_up).map(|_| Vec::new()).collect();
            for u in 0..p_up {
                for d in 0..p {
                    let (s, r) = mpsc::channel(options.channel_capacity);
                    tx[u].push(s);
                    rx[d].push(r);
                }
            }
            input_of.extend(std::iter::repeat_n(input, p_up));
            let port = (input == 0 && head.side_input).then_some(from);
            senders.insert((up, port), tx);
        }
        receivers.insert(c, (rx, input_of));
    }

    let mut controls: HashMap<TaskKey, mpsc::UnboundedSender<Control>> = HashMap::new();
    let mut source_tasks: Vec<TaskKey> = Vec::new();
    let mut handles = Vec::new();
    let op_metrics = |node: usize| metrics.operators[node].clone();
    for (c, chain_nodes) in chains.iter().enumerate() {
        let head = &graph.nodes[chain_nodes[0]];
        let tail = *chain_nodes.last().expect("non-empty chain");
        let p = head.parallelism;
        let out_partitioning = graph
            .main_consumers(tail)
            .first()
            .and_then(|d| {
                let n = &graph.nodes[*d];
                n.input
                    .iter()
                    .chain(&n.extra_inputs)
                    .find(|(from, _)| *from == tail)
                    .map(|(_, part)| part.clone())
            })
            .unwrap_or(Partitioning::Forward);
        let mut chain_senders = senders.remove(&(c, None));
        // Side outputs of the chain's operators: (node, partitioning, senders per subtask).
        let mut side_senders: HashMap<usize, (Partitioning, SubtaskSenders)> = HashMap::new();
        for &n in chain_nodes {
            if let Some(d) = graph.side_consumer(n) {
                let part = graph.nodes[d]
                    .input
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or(Partitioning::Forward);
                if let Some(s) = senders.remove(&(c, Some(n))) {
                    side_senders.insert(n, (part, s));
                }
            }
        }
        let mut chain_receivers = receivers.remove(&c);
        for i in 0..p {
            let mut ops = Vec::new();
            for &n in chain_nodes {
                let node = &graph.nodes[n];
                if node.kind.is_source() {
                    continue;
                }
                let info = SubtaskInfo {
                    operator_id: node.id.clone(),
                    index: i,
                    parallelism: node.parallelism,
                    key_groups: options.key_groups,
                };
                let mut op = build_operator(graph, node, &info, state).map_err(|e| {
                    StreamError::Operator {
                        operator: node.name.clone(),
                        message: df_message(&e),
                    }
                })?;
                if let Some(m) = &restore {
                    if let Some(rs) = restored_state(m, &info)
                        .await
                        .map_err(|e| StreamError::Checkpoint(df_message(&e)))?
                    {
                        op.restore(rs).await.map_err(|e| {
                            StreamError::Checkpoint(format!(
                                "{}: restoring from checkpoint {}: {}",
                                node.name,
                                m.checkpoint_id,
                                df_message(&e)
                            ))
                        })?;
                    }
                }
                let side = side_senders.get_mut(&n).map(|(part, s)| Outputs {
                    partitioning: part.clone(),
                    senders: std::mem::take(&mut s[i]),
                    key_groups: options.key_groups,
                    next: i,
                    // Late rows are counted as the operator's late records, not its output.
                    metrics: Arc::new(OperatorMetrics::default()),
                });
                ops.push(ChainOp {
                    info,
                    op,
                    metrics: op_metrics(n),
                    late_reported: 0,
                    spilled_reported: 0,
                    side,
                });
            }
            let outputs = Outputs {
                partitioning: out_partitioning.clone(),
                senders: chain_senders
                    .as_mut()
                    .map(|s| std::mem::take(&mut s[i]))
                    .unwrap_or_default(),
                key_groups: options.key_groups,
                next: i,
                metrics: op_metrics(tail),
            };
            let chain = Chain {
                key: (c, i),
                ops,
                outputs,
                ctx: ctx.clone(),
                watermark: MIN_WATERMARK,
                last_checkpoint: 0,
            };
            let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
            controls.insert((c, i), ctl_tx);
            let events = events_tx.clone();
            let name = head.name.clone();
            if let NodeKind::Source {
                source,
                read_projection,
                output_columns,
                watermark,
                idle_timeout_ms,
            } = &head.kind
            {
                source_tasks.push((c, i));
                let mut st = SourceState {
                    operator_id: head.id.clone(),
                    splits: BTreeMap::new(),
                    source: source.clone(),
                };
                if let Some(m) = &restore {
                    if let Some(op) = m.operators.get(&head.id) {
                        for s in &op.subtasks {
                            st.merge_json(&s.state);
                        }
                        // Every subtask stored the same enumerator state; the source is
                        // shared by the subtasks, so the first restores it.
                        if let (0, Some(s)) = (i, op.subtasks.first()) {
                            source
                                .restore_enumerator(&s.state["enumerator"])
                                .map_err(|e| {
                                    StreamError::Checkpoint(format!(
                                        "{}: restoring from checkpoint {}: {e}",
                                        head.name, m.checkpoint_id
                                    ))
                                })?;
                        }
                    }
                }
                // Keep only the splits this subtask owns now.
                st.splits.retain(|id, _| owner_of(id, p) == i);
                let spec = SourceSpec {
                    operator_id: head.id.clone(),
                    source: source.clone(),
                    read_projection: read_projection.clone(),
                    output_columns: output_columns.clone(),
                    watermark: watermark.as_ref().map(|w| w.expr.clone()),
                    metrics: op_metrics(chain_nodes[0]),
                    job: metrics.clone(),
                };
                let bs = options.batch_size;
                // The table's timeout wins over the job's; 0 turns idleness off.
                let idle = match idle_timeout_ms {
                    Some(0) => None,
                    Some(ms) => Some(Duration::from_millis(*ms)),
                    None => options.idle_timeout,
                };
                handles.push(tokio::spawn(async move {
                    if let Err(e) = run_source_chain(chain, spec, st, p, bs, idle, ctl_rx).await {
                        let _ = events.send(Event::Failed {
                            operator: name,
                            message: df_message(&e),
                        });
                    }
                }));
            } else {
                let (inputs, input_of) = chain_receivers
                    .as_mut()
                    .map(|(r, input_of)| (std::mem::take(&mut r[i]), input_of.clone()))
                    .unwrap_or_default();
                handles.push(tokio::spawn(async move {
                    if let Err(e) = run_chain(chain, inputs, input_of, ctl_rx).await {
                        let _ = events.send(Event::Failed {
                            operator: name,
                            message: df_message(&e),
                        });
                    }
                }));
            }
        }
    }
    drop(events_tx);

    let abort = |handles: &Vec<tokio::task::JoinHandle<()>>| {
        for h in handles {
            h.abort();
        }
    };
    let total = controls.len();
    let mut finished: HashSet<TaskKey> = HashSet::new();
    // Checkpoint ids never repeat for a job id: above those in the store and those the
    // sink tables already hold (a run started afresh, or with another checkpoint
    // directory, must not have its commits mistaken for replays of earlier ones).
    let mut highest = store
        .highest_id(&options.job_id)
        .await
        .map_err(|e| StreamError::Checkpoint(e.to_string()))?
        .max(restore.as_ref().map(|m| m.checkpoint_id).unwrap_or(0));
    for node in &graph.nodes {
        if let NodeKind::Sink {
            kind: SinkKind::Iceberg { table, .. },
            ..
        } = &node.kind
        {
            let committed =
                meltwater_iceberg::stream::last_committed_checkpoint(table, &options.job_id)
                    .await
                    .map_err(|e| StreamError::Checkpoint(e.to_string()))?;
            highest = highest.max(committed.unwrap_or(0));
        }
    }
    let mut next_id = highest + 1;
    struct Pending {
        id: u64,
        triggered: Instant,
        triggered_at: String,
        acks: HashMap<TaskKey, Vec<(String, SubtaskManifest)>>,
    }
    impl Pending {
        fn new(id: u64) -> Self {
            Self {
                id,
                triggered: Instant::now(),
                triggered_at: chrono::Utc::now().to_rfc3339(),
                acks: HashMap::new(),
            }
        }
    }
    let mut pending: Option<Pending> = None;
    let mut final_done = false;
    let mut stop_mode = options.stop.mode();
    // The checkpoint after which a stop requested with a checkpoint takes effect.
    let mut drain_at: Option<u64> = None;
    let mut ticker = tokio::time::interval(options.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let parallelism_of: HashMap<String, (String, usize)> = graph
        .nodes
        .iter()
        .map(|n| (n.id.clone(), (n.name.clone(), n.parallelism)))
        .collect();
    loop {
        // Trigger the final checkpoint once everything finished.
        if pending.is_none() && finished.len() == total {
            if final_done {
                break;
            }
            final_done = true;
            let id = next_id;
            next_id += 1;
            for tx in controls.values() {
                let _ = tx.send(Control::Trigger(id));
            }
            pending = Some(Pending::new(id));
        }
        // A stop after a checkpoint: trigger one now unless one is in flight; the job
        // stops once it has completed and committed.
        let trigger_now =
            drain_at.is_none() && stop_mode == StopMode::AfterCheckpoint && finished.len() < total;
        if trigger_now {
            match &pending {
                Some(p) => drain_at = Some(p.id),
                None => {
                    let id = next_id;
                    next_id += 1;
                    trigger_checkpoint(id, &source_tasks, &finished, &controls);
                    drain_at = Some(id);
                    pending = Some(Pending::new(id));
                }
            }
        }
        tokio::select! {
            mode = options.stop.changed_from(stop_mode) => {
                stop_mode = mode;
                if mode == StopMode::Now {
                    return Ok(stopped(handles, report, started).await);
                }
                continue;
            }
            _ = ticker.tick(), if pending.is_none() && finished.len() < total => {
                let id = next_id;
                next_id += 1;
                trigger_checkpoint(id, &source_tasks, &finished, &controls);
                pending = Some(Pending::new(id));
            }
            ev = events_rx.recv() => {
                let Some(ev) = ev else {
                    abort(&handles);
                    return Err(StreamError::Checkpoint("every task stopped without finishing".into()));
                };
                match ev {
                    Event::Failed { operator, message } => {
                        abort(&handles);
                        return Err(StreamError::Operator { operator, message });
                    }
                    Event::Finished { task } => {
                        finished.insert(task);
                        if let Some(p) = &pending {
                            if !p.acks.contains_key(&task) {
                                let _ = controls[&task].send(Control::Trigger(p.id));
                            }
                        }
                    }
                    Event::Ack { task, checkpoint, operators } => {
                        if let Some(p) = pending.as_mut() {
                            if p.id == checkpoint {
                                // The first acknowledgement stands.
                                p.acks.entry(task).or_insert(operators);
                            }
                        }
                    }
                }
            }
        }
        if pending.as_ref().is_some_and(|p| p.acks.len() == total) {
            let p = pending.take().expect("checked above");
            let mut operators: BTreeMap<String, OperatorManifest> = BTreeMap::new();
            for (_, ops) in p.acks {
                for (id, sub) in ops {
                    let (name, parallelism) = parallelism_of.get(&id).cloned().unwrap_or_default();
                    let e = operators.entry(id).or_insert_with(|| OperatorManifest {
                        name,
                        parallelism,
                        subtasks: Vec::new(),
                    });
                    e.subtasks.push(sub);
                }
            }
            for o in operators.values_mut() {
                o.subtasks.sort_by_key(|s| s.index);
            }
            let mut manifest = CheckpointManifest {
                job_id: options.job_id.clone(),
                checkpoint_id: p.id,
                triggered_at: p.triggered_at,
                duration_ms: p.triggered.elapsed().as_millis() as u64,
                key_groups: options.key_groups,
                operators,
                dir: None,
            };
            manifest.dir = Some(
                store
                    .commit_manifest(&manifest)
                    .await
                    .map_err(|e| StreamError::Checkpoint(e.to_string()))?,
            );
            if options.abort_before_commit == Some(manifest.checkpoint_id) {
                eprintln!(
                    "aborting after checkpoint {} before its commit (MELTWATER_ABORT_BEFORE_COMMIT)",
                    manifest.checkpoint_id
                );
                std::process::abort();
            }
            let commits = commit_sinks(graph, &manifest, &options.job_id).await;
            let commits = match commits {
                Ok(c) => c,
                Err(e) => {
                    abort(&handles);
                    return Err(e);
                }
            };
            if options.abort_after_commit == Some(manifest.checkpoint_id) {
                eprintln!(
                    "aborting after checkpoint {} committed (MELTWATER_ABORT_AFTER_COMMIT)",
                    manifest.checkpoint_id
                );
                std::process::abort();
            }
            // A commit found in the table after its answer was lost is this run's.
            report
                .commits
                .extend(commits.iceberg.into_iter().filter(|c| {
                    c.snapshot_id.is_some() && (!c.already_committed || c.unknown_outcomes > 0)
                }));
            report.kafka_commits.extend(
                commits
                    .kafka
                    .into_iter()
                    .filter(|c| c.records > 0 && !c.already_committed),
            );
            notify_sources(graph, &manifest).await;
            let _ = store.prune(&options.job_id, options.retained).await;
            report.checkpoints += 1;
            report.last_checkpoint = Some(manifest.checkpoint_id);
            metrics
                .checkpoints_completed
                .fetch_add(1, Ordering::Relaxed);
            *metrics.last_checkpoint.lock().expect("metrics lock") = Some(CheckpointStatus {
                id: manifest.checkpoint_id,
                duration_ms: manifest.duration_ms,
                bytes: manifest.size_bytes(),
                completed_at: Some(Instant::now()),
            });
            if drain_at == Some(manifest.checkpoint_id) {
                return Ok(stopped(handles, report, started).await);
            }
        }
    }
    drop(controls);
    for h in handles {
        let _ = h.await;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

impl StreamOptions {
    /// Options from a job's `SET` statements over defaults:
    /// `execution.checkpointing.interval` (default 10 s), `execution.checkpointing.dir`
    /// (default `default_dir`), `execution.checkpointing.num-retained` (3),
    /// `table.exec.source.idle-timeout` (off), `pipeline.max-parallelism` (key groups,
    /// 128).
    pub fn from_settings(
        job_id: &str,
        settings: &BTreeMap<String, String>,
        default_dir: &str,
    ) -> std::result::Result<Self, String> {
        let mut o = StreamOptions::new(job_id, default_dir);
        let duration = |key: &str, v: &str| {
            crate::planner::parse_duration_ms(v)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("SET '{key}' = '{v}': expected a duration such as '10 s', '500 ms' or '1 min'"))
        };
        if let Some(v) = settings.get("execution.checkpointing.interval") {
            o.checkpoint_interval = duration("execution.checkpointing.interval", v)?;
            if o.checkpoint_interval.is_zero() {
                return Err("SET 'execution.checkpointing.interval': must be positive".into());
            }
        }
        if let Some(v) = settings.get("execution.checkpointing.dir") {
            o.checkpoint_dir = v.clone();
        }
        if let Some(v) = settings.get("execution.checkpointing.num-retained") {
            o.retained = v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("SET 'execution.checkpointing.num-retained' = '{v}': expected a positive integer"))?;
        }
        if let Some(v) = settings.get("table.exec.source.idle-timeout") {
            let d = duration("table.exec.source.idle-timeout", v)?;
            o.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = settings.get("pipeline.max-parallelism") {
            o.key_groups = v
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0 && *n <= 32768)
                .ok_or_else(|| format!("SET 'pipeline.max-parallelism' = '{v}': expected an integer from 1 to 32768"))?;
        }
        Ok(o)
    }
}
