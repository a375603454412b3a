//! Shuffles between stages (DESIGN.md §6): a stage's task writes its output, split by
//! the exchange's partitioning, to local Arrow IPC files (uncompressed by default); the
//! next stage's [`ShuffleReadExec`] reads back the files of one output partition.
//! (`--shuffle-compression` picks LZ4 or ZSTD instead.)
//!
//! A hash shuffle into a join can carry a [`KeyFilter`]: the stage writing the join's
//! build side records the hashes of its keys, and the stage writing the other side,
//! which runs after it, drops the rows whose key hash the build side never had (rows
//! that cannot find a match), before they are written.
//!
//! Files are named `stage-<s>/t<task>-a<attempt>-p<partition>.arrow`, so a retried task
//! never reads or overwrites the files of a failed attempt; only the files of a task's
//! successful attempt are handed to readers.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
pub use datafusion::arrow::ipc::CompressionType;
use datafusion::common::hash_utils::create_hashes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::repartition::{BatchPartitioner, REPARTITION_RANDOM_STATE};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// How a stage's output is split for the stage that reads it.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// Rows routed by DataFusion's partitioner (hash, with the same hash function as its
    /// in-memory repartition, or round-robin) into the partitioning's partitions.
    Repartition(Partitioning),
    /// Each task's output kept whole as one partition: the input of a coalesce or a
    /// sort-preserving merge, which the reading stage runs.
    Passthrough,
}

impl Exchange {
    /// The number of partitions the reading stage sees, for a stage of `tasks` tasks.
    pub fn partitions(&self, tasks: usize) -> usize {
        match self {
            Exchange::Repartition(p) => p.partition_count(),
            Exchange::Passthrough => tasks,
        }
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exchange::Repartition(Partitioning::Hash(exprs, n)) => {
                let keys: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                write!(f, "hash [{}] into {n} partitions", keys.join(", "))
            }
            Exchange::Repartition(Partitioning::RoundRobinBatch(n)) => {
                write!(f, "round-robin into {n} partitions")
            }
            Exchange::Repartition(p) => write!(f, "{p}"),
            Exchange::Passthrough => write!(f, "one partition per task"),
        }
    }
}

/// A Bloom filter of the key hashes of a join's build side (the hashes DataFusion's hash
/// repartition computes, so equal keys on both sides of the join have equal hashes).
/// Blocked: a key sets three bits of one 512-bit block, so a lookup touches one cache
/// line. A false positive only keeps a row that finds no match.
#[derive(Debug)]
pub struct KeyFilter {
    words: Vec<AtomicU64>,
    /// Rows the other side's writers dropped, for the stage table.
    dropped: AtomicU64,
}

/// 2^15 blocks of 512 bits: 2 MiB, under 1 % false positives up to a million keys.
const FILTER_BLOCK_BITS: u32 = 15;

impl Default for KeyFilter {
    fn default() -> Self {
        Self {
            words: (0..(8usize << FILTER_BLOCK_BITS))
                .map(|_| AtomicU64::new(0))
                .collect(),
            dropped: AtomicU64::new(0),
        }
    }
}

/// The word of the filter's block and the three bits a hash sets (as masks per word).
#[inline]
fn filter_bits(hash: u64) -> (usize, [(usize, u64); 3]) {
    // Re-mix: the partition already took `hash % partitions`.
    let x = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let block = (x >> (64 - FILTER_BLOCK_BITS)) as usize * 8;
    let bit = |i: u32| {
        let b = ((x >> (9 * i)) & 511) as usize;
        (b / 64, 1u64 << (b % 64))
    };
    (block, [bit(0), bit(1), bit(2)])
}

impl KeyFilter {
    /// Whether a key of this hash may be on the build side.
    #[inline]
    pub fn may_contain(&self, hash: u64) -> bool {
        let (block, bits) = filter_bits(hash);
        bits.iter()
            .all(|(w, m)| self.words[block + w].load(Ordering::Relaxed) & m != 0)
    }

    /// Adds the bits a task collected.
    fn merge(&self, local: &[u64]) {
        for (w, bits) in self.words.iter().zip(local) {
            if *bits != 0 {
                w.fetch_or(*bits, Ordering::Relaxed);
            }
        }
    }

    /// Rows dropped so far by the writers of the probing side.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What a shuffle does with a join's [`KeyFilter`].
#[derive(Debug, Clone)]
pub enum FilterRole {
    /// The stage writes the join's build side: it records its key hashes.
    Build(Arc<KeyFilter>),
    /// The stage writes the join's other side, after the build side is complete: it
    /// drops the rows whose key hash the filter does not contain.
    Probe(Arc<KeyFilter>),
}

/// A stage's shuffle output: where its files go and, once its tasks have succeeded,
/// which files make up each output partition.
#[derive(Debug)]
pub struct ShuffleOutput {
    pub stage: usize,
    pub exchange: Exchange,
    /// Tasks of the writing stage.
    pub tasks: usize,
    pub dir: PathBuf,
    schema: SchemaRef,
    compression: Option<CompressionType>,
    /// Per output partition, the files of the tasks that completed.
    files: Mutex<Vec<Vec<PathBuf>>>,
    /// Set when the output is one side of a join whose other side is filtered.
    filter: OnceLock<FilterRole>,
}

impl ShuffleOutput {
    pub fn new(
        stage: usize,
        exchange: Exchange,
        tasks: usize,
        dir: PathBuf,
        schema: SchemaRef,
    ) -> Self {
        let partitions = exchange.partitions(tasks);
        Self {
            stage,
            exchange,
            tasks,
            dir,
            schema,
            compression: None,
            files: Mutex::new(vec![Vec::new(); partitions]),
            filter: OnceLock::new(),
        }
    }

    /// Compresses the files with `compression` (`None`, the default: uncompressed).
    pub fn with_compression(mut self, compression: Option<CompressionType>) -> Self {
        self.compression = compression;
        self
    }

    pub fn partitions(&self) -> usize {
        self.exchange.partitions(self.tasks)
    }

    /// Makes the output build or probe a join's key filter (once; a hash exchange only).
    pub fn set_filter(&self, role: FilterRole) {
        if matches!(self.exchange, Exchange::Repartition(Partitioning::Hash(..))) {
            let _ = self.filter.set(role);
        }
    }

    pub fn filter(&self) -> Option<&FilterRole> {
        self.filter.get()
    }

    fn files_of(&self, partition: usize) -> Vec<PathBuf> {
        self.files
            .lock()
            .expect("shuffle file list")
            .get(partition)
            .cloned()
            .unwrap_or_default()
    }

    /// Hands a task's successful output to the readers.
    pub fn publish(&self, written: &TaskOutput) {
        let mut files = self.files.lock().expect("shuffle file list");
        for f in &written.files {
            files[f.partition].push(f.path.clone());
        }
    }
}

/// One file a task wrote.
#[derive(Debug, Clone)]
pub struct ShuffleFile {
    pub partition: usize,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

/// What one successful task attempt wrote.
#[derive(Debug, Default, Clone)]
pub struct TaskOutput {
    pub files: Vec<ShuffleFile>,
}

impl TaskOutput {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

struct PartWriter {
    path: PathBuf,
    coalescer: BatchCoalescer,
    writer: FileWriter<BufWriter<File>>,
    rows: u64,
}

impl PartWriter {
    fn drain(&mut self) -> Result<()> {
        while let Some(b) = self.coalescer.next_completed_batch() {
            self.rows += b.num_rows() as u64;
            self.writer.write(&b)?;
        }
        Ok(())
    }
}

fn io_context(path: &Path, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::IoError(std::io::Error::other(format!(
        "shuffle file {}: {e}",
        path.display()
    )))
}

/// How a writer routes rows to output partitions.
enum Route {
    /// DataFusion's hash: the same function, seed and modulus as its `RepartitionExec`,
    /// so the partitions line up with other hash-partitioned inputs.
    Hash {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        partitions: usize,
        hashes: Vec<u64>,
        indices: Vec<Vec<u32>>,
    },
    /// Other partitionings, through DataFusion's partitioner.
    Partitioner(BatchPartitioner),
    /// Everything to the task's own partition.
    Passthrough,
}

/// A probing writer's use of a key filter: it stops filtering once the first rows have
/// shown that nearly all of them pass.
struct Probe {
    filter: Arc<KeyFilter>,
    seen: u64,
    kept: u64,
    active: bool,
}

impl Probe {
    /// Rows after which the pass rate is judged.
    const SAMPLE: u64 = 1 << 16;

    fn record(&mut self, seen: usize, kept: usize) {
        self.seen += seen as u64;
        self.kept += kept as u64;
        self.filter
            .dropped
            .fetch_add((seen - kept) as u64, Ordering::Relaxed);
        if self.seen >= Self::SAMPLE && self.kept * 10 > self.seen * 9 {
            self.active = false;
        }
    }
}

/// Writes the rows of one task to its shuffle files, one per output partition that
/// receives rows.
pub struct ShuffleWriter<'a> {
    output: &'a ShuffleOutput,
    task: usize,
    attempt: u32,
    batch_size: usize,
    route: Route,
    /// The bits of the build side's keys this task wrote (merged when it finishes).
    build: Option<(Arc<KeyFilter>, Vec<u64>)>,
    probe: Option<Probe>,
    parts: Vec<Option<PartWriter>>,
}

impl<'a> ShuffleWriter<'a> {
    pub fn try_new(
        output: &'a ShuffleOutput,
        task: usize,
        attempt: u32,
        batch_size: usize,
    ) -> Result<Self> {
        let route = match &output.exchange {
            Exchange::Repartition(Partitioning::Hash(exprs, n)) => Route::Hash {
                exprs: exprs.clone(),
                partitions: *n,
                hashes: Vec::new(),
                indices: vec![Vec::new(); *n],
            },
            Exchange::Repartition(p) => Route::Partitioner(BatchPartitioner::try_new(
                p.clone(),
                Default::default(),
                task,
                output.tasks,
            )?),
            Exchange::Passthrough => Route::Passthrough,
        };
        let (build, probe) = match output.filter() {
            Some(FilterRole::Build(f)) => (Some((f.clone(), vec![0; f.words.len()])), None),
            Some(FilterRole::Probe(f)) => (
                None,
                Some(Probe {
                    filter: f.clone(),
                    seen: 0,
                    kept: 0,
                    active: true,
                }),
            ),
            None => (None, None),
        };
        let dir = output.dir.join(format!("stage-{}", output.stage));
        std::fs::create_dir_all(&dir).map_err(|e| io_context(&dir, e))?;
        Ok(Self {
            output,
            task,
            attempt,
            batch_size,
            route,
            build,
            probe,
            parts: (0..output.partitions()).map(|_| None).collect(),
        })
    }

    fn part(&mut self, partition: usize) -> Result<&mut PartWriter> {
        if self.parts[partition].is_none() {
            let path = self.output.dir.join(format!(
                "stage-{}/t{:05}-a{}-p{:05}.arrow",
                self.output.stage, self.task, self.attempt, partition
            ));
            let file = File::create(&path).map_err(|e| io_context(&path, e))?;
            let options =
                IpcWriteOptions::default().try_with_compression(self.output.compression)?;
            let writer = FileWriter::try_new_with_options(
                BufWriter::with_capacity(1 << 20, file),
                &self.output.schema,
                options,
            )
            .map_err(|e| io_context(&path, e))?;
            self.parts[partition] = Some(PartWriter {
                path,
                coalescer: BatchCoalescer::new(self.output.schema.clone(), self.batch_size),
                writer,
                rows: 0,
            });
        }
        Ok(self.parts[partition].as_mut().expect("created above"))
    }

    fn push(&mut self, partition: usize, batch: RecordBatch) -> Result<()> {
        let w = self.part(partition)?;
        w.coalescer.push_batch(batch)?;
        w.drain()
    }

    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match std::mem::replace(&mut self.route, Route::Passthrough) {
            Route::Hash {
                exprs,
                partitions,
                mut hashes,
                mut indices,
            } => {
                let r = self.write_hashed(&batch, &exprs, partitions, &mut hashes, &mut indices);
                self.route = Route::Hash {
                    exprs,
                    partitions,
                    hashes,
                    indices,
                };
                r
            }
            Route::Partitioner(mut partitioner) => {
                let r = partitioner.partition(batch, |p, b| self.push(p, b));
                self.route = Route::Partitioner(partitioner);
                r
            }
            Route::Passthrough => self.push(self.task, batch),
        }
    }

    fn write_hashed(
        &mut self,
        batch: &RecordBatch,
        exprs: &[Arc<dyn PhysicalExpr>],
        partitions: usize,
        hashes: &mut Vec<u64>,
        indices: &mut [Vec<u32>],
    ) -> Result<()> {
        let rows = batch.num_rows();
        let arrays = exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(rows)))
            .collect::<Result<Vec<_>>>()?;
        hashes.clear();
        hashes.resize(rows, 0);
        create_hashes(&arrays, REPARTITION_RANDOM_STATE.random_state(), hashes)?;
        if let Some((_, bits)) = &mut self.build {
            for h in hashes.iter() {
                let (block, set) = filter_bits(*h);
                for (w, m) in set {
                    bits[block + w] |= m;
                }
            }
        }
        let modulus = partitions as u64;
        match self.probe.as_mut().filter(|p| p.active) {
            Some(probe) => {
                let mut kept = 0;
                for (i, h) in hashes.iter().enumerate() {
                    if probe.filter.may_contain(*h) {
                        indices[(*h % modulus) as usize].push(i as u32);
                        kept += 1;
                    }
                }
                probe.record(rows, kept);
            }
            None => {
                for (i, h) in hashes.iter().enumerate() {
                    indices[(*h % modulus) as usize].push(i as u32);
                }
            }
        }
        for (p, idx) in indices.iter_mut().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let part = if idx.len() == rows {
                batch.clone()
            } else {
                let taken = UInt32Array::from(std::mem::take(idx));
                datafusion::arrow::compute::take_record_batch(batch, &taken)?
            };
            idx.clear();
            self.push(p, part)?;
        }
        Ok(())
    }

    /// Flushes and closes the files.
    pub fn finish(mut self) -> Result<TaskOutput> {
        if let Some((filter, bits)) = &self.build {
            filter.merge(bits);
        }
        let mut out = TaskOutput::default();
        for (partition, part) in self.parts.iter_mut().enumerate() {
            let Some(w) = part else { continue };
            w.coalescer.finish_buffered_batch()?;
            w.drain()?;
            w.writer.finish().map_err(|e| io_context(&w.path, e))?;
            let bytes = std::fs::metadata(&w.path)
                .map_err(|e| io_context(&w.path, e))?
                .len();
            out.files.push(ShuffleFile {
                partition,
                path: w.path.clone(),
                rows: w.rows,
                bytes,
            });
        }
        self.parts.clear();
        Ok(out)
    }

    /// The files of this attempt so far (removed when the attempt fails).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.parts
            .iter()
            .flatten()
            .map(|w| w.path.clone())
            .collect()
    }
}

/// Runs one task of a stage that ends in a shuffle: executes partition `task` of `plan`
/// and writes its rows to the stage's files. `after_first_batch` is called once, after
/// the first batch has been written (fault injection in tests).
pub async fn write_task(
    plan: Arc<dyn ExecutionPlan>,
    output: &ShuffleOutput,
    task: usize,
    attempt: u32,
    ctx: Arc<TaskContext>,
    mut after_first_batch: impl FnMut() -> Result<()>,
) -> Result<TaskOutput> {
    let batch_size = ctx.session_config().batch_size();
    let mut writer = ShuffleWriter::try_new(output, task, attempt, batch_size)?;
    let result = async {
        let mut stream = plan.execute(task, ctx)?;
        let mut first = true;
        while let Some(batch) = stream.next().await {
            writer.write(batch?)?;
            if first {
                first = false;
                after_first_batch()?;
            }
        }
        Ok::<_, DataFusionError>(())
    }
    .await;
    match result {
        Ok(()) => writer.finish(),
        Err(e) => {
            for p in writer.paths() {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// Reads one output partition of a finished stage from its shuffle files.
#[derive(Debug)]
pub struct ShuffleReadExec {
    output: Arc<ShuffleOutput>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReadExec {
    /// A reader standing in for the plan node whose properties it keeps (the exchange it
    /// replaces, or the input of a coalesce or merge).
    pub fn new(output: Arc<ShuffleOutput>, properties: Arc<PlanProperties>) -> Self {
        Self {
            output,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    pub fn stage(&self) -> usize {
        self.output.stage
    }

    pub fn output(&self) -> &Arc<ShuffleOutput> {
        &self.output
    }
}

impl DisplayAs for ShuffleReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReadExec: stage={}, partitions={} ({})",
            self.output.stage,
            self.output.partitions(),
            self.output.exchange
        )
    }
}

impl ExecutionPlan for ShuffleReadExec {
    fn name(&self) -> &str {
        "ShuffleReadExec"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ShuffleReadExec is a leaf and takes no children".into(),
            ))
        }
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let files = self.output.files_of(partition);
        let schema = self.output.schema.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let mut builder = RecordBatchReceiverStreamBuilder::new(schema, 2);
        let tx = builder.tx();
        builder.spawn_blocking(move || {
            for path in files {
                let file = File::open(&path).map_err(|e| io_context(&path, e))?;
                let reader = FileReader::try_new(BufReader::with_capacity(1 << 20, file), None)
                    .map_err(|e| io_context(&path, e))?;
                for batch in reader {
                    let batch = batch.map_err(|e| io_context(&path, e))?;
                    baseline.record_output(batch.num_rows());
                    if tx.blocking_send(Ok(batch)).is_err() {
                        // The consumer is gone (a limit was reached, or the task failed).
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}
