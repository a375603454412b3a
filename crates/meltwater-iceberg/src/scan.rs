//! `IcebergScanExec`: reads a snapshot's file scan tasks in parallel.
//!
//! The crate's own scan returns one stream; here the planned tasks are packed into as
//! many groups as the session has target partitions (largest first, onto the lightest
//! group), and each DataFusion partition reads its group with the crate's `ArrowReader`,
//! which applies the position deletes (equality deletes: [`crate::deletes`]). On a table
//! that sets `read.split.target-size`, a Parquet file larger than a partition's share of
//! the scan is first split into byte ranges
//! (tasks with `start`/`length`), so that one large file is read by several partitions:
//! the reader reads the row groups whose middle lies in the range, so the ranges of a
//! file read each row group once, and it takes the positions of position deletes in
//! the whole file, whichever row groups a task reads. Memory per partition is the
//! reader's batch plus a row group being decoded.

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
use iceberg::spec::DataFileFormat;

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
        split_size: Option<u64>,
        read_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Self {
        let tasks = match split_size {
            Some(size) => split(tasks, partitions.max(1), size),
            None => tasks,
        };
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
        let mut paths: Vec<&str> = self
            .groups
            .iter()
            .flatten()
            .map(|t| t.data_file_path.as_str())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        paths.len()
    }
}

/// Ranges are no smaller than this unless the table's split size is (each range reads
/// the file's footer again).
const MIN_SPLIT_BYTES: u64 = 16 << 20;

/// The table property bounding the bytes of one scan task (Iceberg's name). Files are
/// split only on tables that set it: reading two ranges of one local file on two
/// partitions measured slower than reading the file whole on one.
pub const SPLIT_SIZE_PROPERTY: &str = "read.split.target-size";

/// `tasks` with each Parquet file larger than a piece cut into byte ranges of about a
/// piece, which tile the task's range. A piece is a partition's share of the scan, at
/// least [`MIN_SPLIT_BYTES`], at most `split_size`. A range holding no row group's
/// middle reads nothing.
fn split(tasks: Vec<FileScanTask>, partitions: usize, split_size: u64) -> Vec<FileScanTask> {
    let total: u64 = tasks.iter().map(task_bytes).sum();
    let piece = (total / partitions.max(1) as u64)
        .max(MIN_SPLIT_BYTES)
        .min(split_size.max(1));
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let length = task_bytes(&task);
        if length <= piece || task.data_file_format != DataFileFormat::Parquet {
            out.push(task);
            continue;
        }
        let n = length.div_ceil(piece);
        let start = task.start;
        for k in 0..n {
            let (from, to) = (start + length * k / n, start + length * (k + 1) / n);
            let mut range = task.clone();
            range.start = from;
            range.length = to - from;
            // Known for the whole file only.
            range.record_count = None;
            out.push(range);
        }
    }
    out
}

/// The bytes `task` covers (a task of start and length 0 reads the whole file).
fn task_bytes(task: &FileScanTask) -> u64 {
    if task.start == 0 && task.length == 0 {
        task.file_size_in_bytes
    } else {
        task.length
    }
}

/// Packs tasks into at most `n` groups of similar byte size (largest first onto the
/// lightest group).
pub(crate) fn pack(mut tasks: Vec<FileScanTask>, n: usize) -> Vec<Vec<FileScanTask>> {
    tasks.sort_by(|a, b| {
        b.length
            .cmp(&a.length)
            .then_with(|| a.data_file_path.cmp(&b.data_file_path))
            .then_with(|| a.start.cmp(&b.start))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs::File;

    use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema as ArrowSchema};
    use iceberg::scan::FileScanTaskDeleteFile;
    use iceberg::spec::{DataContentType, NestedField, PrimitiveType, Schema, Type};
    use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
    use parquet::file::properties::WriterProperties;

    use super::*;

    fn field(name: &str, id: i32, nullable: bool) -> Field {
        typed_field(name, id, DataType::Int64, nullable)
    }

    fn typed_field(name: &str, id: i32, data_type: DataType, nullable: bool) -> Field {
        Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    }

    /// Writes `columns` to `path` in row groups of `rows_per_group` rows; returns its size.
    fn write(
        path: &str,
        schema: ArrowSchema,
        columns: Vec<ArrayRef>,
        rows_per_group: usize,
    ) -> u64 {
        let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::metadata(path).unwrap().len()
    }

    fn delete_file(path: &str, size: u64, kind: DataContentType) -> FileScanTaskDeleteFile {
        FileScanTaskDeleteFile {
            file_path: path.to_string(),
            file_size_in_bytes: size,
            file_type: kind,
            partition_spec_id: 0,
            equality_ids: (kind == DataContentType::EqualityDeletes).then(|| vec![1]),
        }
    }

    async fn read(tasks: Vec<FileScanTask>) -> Vec<(i64, i64)> {
        let cache = Arc::new(DeleteCache::default());
        let batches: Vec<RecordBatch> = read_tasks(FileIO::new_with_fs(), tasks, 64, "t", cache)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for b in batches {
            assert_eq!(
                b.num_columns(),
                1,
                "the key column read for the deletes is dropped"
            );
            let v = b.column(0).as_primitive::<Int64Type>();
            rows.extend(v.values().iter().map(|v| (v / 10, *v)));
        }
        rows.sort_unstable();
        rows
    }

    /// A file of 1000 rows in 10 row groups, split into ranges, reads the same rows as
    /// whole, with two equality-delete files (merged into one key set) and a position
    /// delete file (positions in the whole file) applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_file_reads_its_rows_once_with_equality_and_position_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let data = at("data.parquet");
        let ids: Vec<i64> = (0..1000).collect();
        let size = write(
            &data,
            ArrowSchema::new(vec![field("id", 1, false), field("v", 2, true)]),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 10))),
            ],
            100,
        );
        // Equality deletes: ids 150..250 in one file, 240..260 and 990 in another.
        let eq_schema = || ArrowSchema::new(vec![field("id", 1, false)]);
        let eq1 = at("eq1.parquet");
        let eq1_size = write(
            &eq1,
            eq_schema(),
            vec![Arc::new(Int64Array::from_iter_values(150..250))],
            1000,
        );
        let eq2 = at("eq2.parquet");
        let eq2_keys: Vec<i64> = (240..260).chain([990]).collect();
        let eq2_size = write(
            &eq2,
            eq_schema(),
            vec![Arc::new(Int64Array::from(eq2_keys))],
            1000,
        );
        // Position deletes: rows 0, 99, 100, 555 and 999 of the data file.
        let pos = at("pos.parquet");
        let positions = [0i64, 99, 100, 555, 999];
        let pos_schema = ArrowSchema::new(vec![
            typed_field("file_path", 2147483546, DataType::Utf8, false),
            typed_field("pos", 2147483545, DataType::Int64, false),
        ]);
        let pos_size = write(
            &pos,
            pos_schema,
            vec![
                Arc::new(StringArray::from(vec![data.clone(); positions.len()])),
                Arc::new(Int64Array::from(positions.to_vec())),
            ],
            1000,
        );
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "v", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let task = FileScanTask {
            file_size_in_bytes: size,
            start: 0,
            length: size,
            record_count: Some(1000),
            data_file_path: data.clone(),
            data_file_format: DataFileFormat::Parquet,
            schema: Arc::new(schema),
            project_field_ids: vec![2],
            predicate: None,
            deletes: vec![
                delete_file(&eq1, eq1_size, DataContentType::EqualityDeletes),
                delete_file(&pos, pos_size, DataContentType::PositionDeletes),
                delete_file(&eq2, eq2_size, DataContentType::EqualityDeletes),
            ],
            partition: None,
            partition_spec: None,
            name_mapping: None,
            case_sensitive: true,
        };
        let expected: Vec<(i64, i64)> = ids
            .iter()
            .filter(|i| !(150..260).contains(*i) && **i != 990 && !positions.contains(i))
            .map(|i| (*i, i * 10))
            .collect();
        assert_eq!(read(vec![task.clone()]).await, expected);

        for pieces in [2, 3, 7, 40] {
            let split_size = size.div_ceil(pieces);
            let tasks = split(vec![task.clone()], 4, split_size);
            assert_eq!(tasks.len() as u64, pieces, "{pieces}");
            assert_eq!(tasks.iter().map(|t| t.length).sum::<u64>(), size);
            assert!(tasks.iter().all(|t| t.record_count.is_none()));
            assert_eq!(read(tasks.clone()).await, expected, "{pieces} pieces");
            // Each range on its own reads a part: the parts are disjoint.
            let mut parts = Vec::new();
            for t in tasks {
                parts.extend(read(vec![t]).await);
            }
            parts.sort_unstable();
            assert_eq!(parts, expected, "{pieces} pieces read one by one");
        }
        // A file no larger than a piece stays whole.
        assert_eq!(split(vec![task.clone()], 4, size).len(), 1);
    }
}
