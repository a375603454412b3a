//! `IcebergScanExec`: reads a snapshot's file scan tasks in parallel.
//!
//! The crate's own scan returns one stream; here the planned tasks are packed into as
//! many groups as the session has target partitions (largest first, onto the lightest
//! group), and each DataFusion partition reads its group with the crate's `ArrowReader`,
//! which applies position and equality deletes. Memory per partition is the reader's
//! batch plus a row group being decoded.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatchOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;

use crate::deletes::{take_equality_deletes, DeleteCache};

/// Scans groups of Iceberg file tasks, one group per output partition.
#[derive(Debug)]
pub struct IcebergScanExec {
    pub(crate) table: String,
    pub(crate) file_io: FileIO,
    pub(crate) groups: Vec<Vec<FileScanTask>>,
    /// The schema of the batches the reader yields (the projected table columns).
    pub(crate) read_schema: SchemaRef,
    /// The output schema: `read_schema`, or no columns when the query needs only counts.
    pub(crate) schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// Equality-delete files loaded by any partition of this scan.
    deletes: Arc<DeleteCache>,
}

impl IcebergScanExec {
    pub fn new(
        table: String,
        file_io: FileIO,
        tasks: Vec<FileScanTask>,
        partitions: usize,
        read_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Self {
        let groups = pack(tasks, partitions.max(1));
        Self::from_groups(table, file_io, groups, read_schema, schema)
    }

    /// A scan of `groups` of tasks, one partition each (a scan planned elsewhere).
    pub(crate) fn from_groups(
        table: String,
        file_io: FileIO,
        groups: Vec<Vec<FileScanTask>>,
        read_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            table,
            file_io,
            groups,
            read_schema,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            deletes: Arc::new(DeleteCache::default()),
        }
    }

    /// Number of data files this scan reads.
    pub fn file_count(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// Packs tasks into at most `n` groups of similar byte size (largest first onto the
/// lightest group).
fn pack(mut tasks: Vec<FileScanTask>, n: usize) -> Vec<Vec<FileScanTask>> {
    tasks.sort_by(|a, b| {
        b.length
            .cmp(&a.length)
            .then_with(|| a.data_file_path.cmp(&b.data_file_path))
    });
    let n = n.min(tasks.len()).max(1);
    let mut groups: Vec<(u64, Vec<FileScanTask>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for task in tasks {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(size, _)| *size)
            .expect("n >= 1");
        lightest.0 += task.length.max(1);
        lightest.1.push(task);
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

impl DisplayAs for IcebergScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "IcebergScanExec: table={}, files={}, partitions={}",
            self.table,
            self.file_count(),
            self.groups.len()
        )
    }
}

impl ExecutionPlan for IcebergScanExec {
    meltwater_connectors::leaf_exec_methods!("IcebergScanExec");
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_scanned", partition);
        let files = MetricBuilder::new(&self.metrics).counter("files_scanned", partition);
        files.add(tasks.len());
        bytes.add(tasks.iter().map(|t| t.length as usize).sum());
        let file_io = self.file_io.clone();
        let batch_size = context.session_config().batch_size();
        let read_schema = self.read_schema.clone();
        let schema = self.schema.clone();
        let table = self.table.clone();
        let cache = self.deletes.clone();
        let batches =
            stream::once(async move { read_tasks(file_io, tasks, batch_size, &table, cache) })
                .try_flatten()
                .map(move |batch| {
                    let batch = batch?;
                    output_rows.add(batch.num_rows());
                    conform(&batch, &read_schema, &schema)
                });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// The rows of `tasks` (read with the crate's reader, deletes applied), in order.
/// Equality deletes are applied here by hash lookup ([`crate::deletes`]), with the
/// delete files loaded once into `cache`; position deletes by the crate's reader.
pub(crate) fn read_tasks(
    file_io: FileIO,
    tasks: Vec<FileScanTask>,
    batch_size: usize,
    table: &str,
    cache: Arc<DeleteCache>,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let runtime =
        iceberg::Runtime::try_current().map_err(|e| DataFusionError::External(Box::new(e)))?;
    let table = table.to_string();
    Ok(stream::iter(tasks)
        .then(move |mut task| {
            let file_io = file_io.clone();
            let runtime = runtime.clone();
            let cache = cache.clone();
            let table = table.clone();
            async move {
                let (equality, added) = take_equality_deletes(&mut task)?;
                let deletes = cache.load(&file_io, &task, &equality).await?;
                let batches = read_task(file_io, runtime, task, batch_size, &table)?;
                Ok::<_, DataFusionError>(batches.map(move |b| {
                    let mut b = b?;
                    if !deletes.is_empty() {
                        b = deletes.apply(b)?;
                    }
                    for name in &added {
                        if let Ok(i) = b.schema().index_of(name) {
                            b.remove_column(i);
                        }
                    }
                    Ok(b)
                }))
            }
        })
        .try_flatten()
        .boxed())
}

/// The rows of one task as the crate's reader yields them (the deletes left in the task
/// applied).
pub(crate) fn read_task(
    file_io: FileIO,
    runtime: iceberg::Runtime,
    task: FileScanTask,
    batch_size: usize,
    table: &str,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let reader = ArrowReaderBuilder::new(file_io, runtime)
        .with_batch_size(batch_size)
        .build();
    let path = task.data_file_path.clone();
    Ok(reader
        .read(stream::iter([Ok(task)]).boxed())
        .map_err(|e| {
            DataFusionError::External(
                format!("reading {path} of iceberg table {table}: {e}").into(),
            )
        })?
        .stream()
        .map_err(|e| DataFusionError::External(Box::new(e)))
        .boxed())
}

/// Gives a reader batch the plan's schema: same columns without the reader's field-id
/// metadata, or only the row count when the plan reads no columns.
pub(crate) fn conform(
    batch: &RecordBatch,
    read_schema: &SchemaRef,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    if schema.fields().is_empty() {
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        return Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &options,
        )?);
    }
    let columns = read_schema
        .fields()
        .iter()
        .map(|f| {
            let i = batch.schema().index_of(f.name())?;
            let column = batch.column(i).clone();
            if column.data_type() == f.data_type() {
                Ok(column)
            } else {
                Ok(datafusion::arrow::compute::cast(&column, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
