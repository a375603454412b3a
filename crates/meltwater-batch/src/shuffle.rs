//! Shuffles between stages (DESIGN.md §6): a stage's task writes its output, split by
//! the exchange's partitioning, to local Arrow IPC files (LZ4-compressed by default); the next
//! stage's [`ShuffleReadExec`] reads back the files of one output partition.
//! (`--shuffle-compression` picks ZSTD or no compression instead.)
//!
//! Files are named `stage-<s>/t<task>-a<attempt>-p<partition>.arrow`, so a retried task
//! never reads or overwrites the files of a failed attempt; only the files of a task's
//! successful attempt are handed to readers.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
pub use datafusion::arrow::ipc::CompressionType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::repartition::BatchPartitioner;
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
            compression: Some(CompressionType::LZ4_FRAME),
            files: Mutex::new(vec![Vec::new(); partitions]),
        }
    }

    /// Compresses the files with `compression` (LZ4 by default; `None`: uncompressed).
    pub fn with_compression(mut self, compression: Option<CompressionType>) -> Self {
        self.compression = compression;
        self
    }

    pub fn partitions(&self) -> usize {
        self.exchange.partitions(self.tasks)
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

/// Writes the rows of one task to its shuffle files, one per output partition that
/// receives rows.
pub struct ShuffleWriter<'a> {
    output: &'a ShuffleOutput,
    task: usize,
    attempt: u32,
    batch_size: usize,
    partitioner: Option<BatchPartitioner>,
    parts: Vec<Option<PartWriter>>,
}

impl<'a> ShuffleWriter<'a> {
    pub fn try_new(
        output: &'a ShuffleOutput,
        task: usize,
        attempt: u32,
        batch_size: usize,
    ) -> Result<Self> {
        let partitioner = match &output.exchange {
            Exchange::Repartition(p) => Some(BatchPartitioner::try_new(
                p.clone(),
                Default::default(),
                task,
                output.tasks,
            )?),
            Exchange::Passthrough => None,
        };
        let dir = output.dir.join(format!("stage-{}", output.stage));
        std::fs::create_dir_all(&dir).map_err(|e| io_context(&dir, e))?;
        Ok(Self {
            output,
            task,
            attempt,
            batch_size,
            partitioner,
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

    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.partitioner.take() {
            Some(mut partitioner) => {
                let r = partitioner.partition(batch, |p, b| {
                    let w = self.part(p)?;
                    w.coalescer.push_batch(b)?;
                    w.drain()
                });
                self.partitioner = Some(partitioner);
                r
            }
            None => {
                let task = self.task;
                let w = self.part(task)?;
                w.coalescer.push_batch(batch)?;
                w.drain()
            }
        }
    }

    /// Flushes and closes the files.
    pub fn finish(mut self) -> Result<TaskOutput> {
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
