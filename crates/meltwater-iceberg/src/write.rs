//! `IcebergWriteExec`: writes its input to Parquet data files of an Iceberg table, one
//! writer per input partition, and hands the files to [`JobCommits`]; nothing is
//! visible in the table until the runtime commits.
//!
//! Partitioned tables: each batch is split by the table's partition spec (transforms
//! computed by the crate's splitter) and written through a fan-out writer holding one
//! open file per partition value seen by the task; files roll at the table's target
//! file size. Output: one row per task with the number of rows it wrote (`count`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{stream, StreamExt};
use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
use iceberg::spec::{DataFile, DataFileFormat, Transform};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::unpartitioned_writer::UnpartitionedWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::IcebergWriterBuilder;

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::error::IcebergContext;
use crate::snapshot::AddedFiles;
use crate::upsert::{upsert_enabled, UpsertWriter};

/// Writes its input into data files of one table and registers them for commit.
pub struct IcebergWriteExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) table_name: String,
    pub(crate) table: Table,
    /// The primary key when the write upserts (`'write.upsert' = 'true'`).
    upsert_key: Option<Vec<String>>,
    /// `INSERT OVERWRITE`: the commit replaces the partitions the new files fall in.
    pub(crate) overwrite: bool,
    pub(crate) catalog: Arc<LakeCatalog>,
    pub(crate) commits: Arc<JobCommits>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for IcebergWriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergWriteExec")
            .field("table", &self.table_name)
            .finish_non_exhaustive()
    }
}

/// The schema of a write's output: the rows each task wrote.
pub fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

/// The one-row output of a write task: the rows it wrote (or deleted, or updated).
pub(crate) fn count_batch(rows: u64) -> Result<RecordBatch> {
    let count: ArrayRef = Arc::new(UInt64Array::from(vec![rows]));
    Ok(RecordBatch::try_new(count_schema(), vec![count])?)
}

/// Hands over what a write task into `table` (named `name`) wrote, `files` (`None`:
/// nothing to commit), having written or changed `rows` rows; returns its output row.
/// A detached task (on a cluster) returns the files in that row for the job's client
/// ([`crate::codec::written_files_batch`]); any other registers them with `commits`.
pub(crate) fn hand_over(
    name: &str,
    table: &Table,
    catalog: &Arc<LakeCatalog>,
    commits: &JobCommits,
    rows: u64,
    files: Option<AddedFiles>,
) -> Result<RecordBatch> {
    if commits.is_detached() {
        return crate::codec::written_files_batch(name, table, rows, files);
    }
    if let Some(files) = files {
        commits.add_files(name, catalog.clone(), table.identifier().clone(), files);
    }
    count_batch(rows)
}

impl IcebergWriteExec {
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        table_name: String,
        table: Table,
        catalog: Arc<LakeCatalog>,
        commits: Arc<JobCommits>,
    ) -> Self {
        let partitions = input.properties().output_partitioning().partition_count();
        let output = if commits.is_detached() {
            crate::codec::written_files_schema()
        } else {
            count_schema()
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(output),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        let upsert_key = upsert_enabled(table.metadata())
            .then(|| crate::upsert::primary_key(table.metadata()))
            .filter(|k| !k.is_empty());
        Self {
            input,
            table_name,
            table,
            upsert_key,
            overwrite: false,
            catalog,
            commits,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    pub fn table_name(&self) -> &str {
        &self.table_name
    }

    /// Makes the write an `INSERT OVERWRITE`: its commit replaces every partition the
    /// new data falls in (dynamic partition overwrite; the whole table when it is
    /// unpartitioned). Rows are written as they are, without upserting.
    pub fn with_overwrite(mut self) -> Self {
        self.overwrite = true;
        self.upsert_key = None;
        self
    }

    fn table_schema_index(&self, column: &str) -> Option<usize> {
        let schema = self.table.metadata().current_schema();
        schema
            .as_struct()
            .fields()
            .iter()
            .position(|f| f.name == column)
    }
}

impl DisplayAs for IcebergWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let spec = self.table.metadata().default_partition_spec();
        write!(
            f,
            "IcebergWriteExec: table={}, partition_fields={}",
            self.table_name,
            spec.fields().len()
        )?;
        if let Some(key) = &self.upsert_key {
            write!(f, ", upsert_key=[{}]", key.join(", "))?;
        }
        if self.overwrite {
            write!(f, ", overwrite=partitions")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for IcebergWriteExec {
    fn name(&self) -> &str {
        "IcebergWriteExec"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    /// Rows of one identity-partition value go to one task, so a run writes about one
    /// file per partition value rather than one per task and value (Iceberg's
    /// `write.distribution-mode = hash`).
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let metadata = self.table.metadata();
        let schema = metadata.current_schema();
        let input_schema = self.input.schema();
        if let Some(key) = &self.upsert_key {
            // Every row of a key in one task: its writer keeps the key's last row.
            // Columns are matched by position (the input has the table's columns).
            let keys = key
                .iter()
                .filter_map(|k| self.table_schema_index(k))
                .filter(|i| *i < input_schema.fields().len())
                .map(|i| {
                    Arc::new(Column::new(input_schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>
                })
                .collect();
            return vec![Distribution::HashPartitioned(keys)];
        }
        let keys: Vec<Arc<dyn PhysicalExpr>> = metadata
            .default_partition_spec()
            .fields()
            .iter()
            .filter(|f| f.transform == Transform::Identity)
            .filter_map(|f| schema.name_by_field_id(f.source_id))
            .filter_map(|name| {
                input_schema
                    .index_of(name)
                    .ok()
                    .map(|i| (name.to_string(), i))
            })
            .map(|(name, i)| Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>)
            .collect();
        let hash = metadata
            .properties()
            .get("write.distribution-mode")
            .is_none_or(|m| m == "hash");
        if keys.is_empty() || !hash {
            vec![Distribution::UnspecifiedDistribution]
        } else {
            vec![Distribution::HashPartitioned(keys)]
        }
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "IcebergWriteExec takes one input".into(),
            ));
        }
        let write = Self::new(
            children.remove(0),
            self.table_name.clone(),
            self.table.clone(),
            self.catalog.clone(),
            self.commits.clone(),
        );
        Ok(Arc::new(if self.overwrite {
            write.with_overwrite()
        } else {
            write
        }))
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let rows_written = MetricBuilder::new(&self.metrics).counter("rows_written", partition);
        let bytes_written = MetricBuilder::new(&self.metrics).counter("bytes_written", partition);
        let files_written = MetricBuilder::new(&self.metrics).counter("files_written", partition);
        let task = WriteTask {
            table_name: self.table_name.clone(),
            table: self.table.clone(),
            catalog: self.catalog.clone(),
            commits: self.commits.clone(),
            partition,
            upsert: self.upsert_key.is_some(),
            overwrite: self.overwrite,
        };
        let out = stream::once(async move {
            let files = task.run(input).await?;
            let rows: u64 = files.data.iter().map(|f| f.record_count()).sum();
            let all = || files.data.iter().chain(files.deletes.iter());
            rows_written.add(rows as usize);
            bytes_written.add(all().map(|f| f.file_size_in_bytes() as usize).sum());
            files_written.add(all().count());
            if task.commits.is_detached() {
                crate::codec::injected_write_failure(&task.table_name, task.partition)?;
            }
            hand_over(
                &task.table_name,
                &task.table,
                &task.catalog,
                &task.commits,
                rows,
                Some(files),
            )
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), out)))
    }
}

struct WriteTask {
    table_name: String,
    table: Table,
    catalog: Arc<LakeCatalog>,
    commits: Arc<JobCommits>,
    partition: usize,
    upsert: bool,
    overwrite: bool,
}

impl WriteTask {
    async fn run(&self, mut input: SendableRecordBatchStream) -> Result<AddedFiles> {
        let prefix = format!("{}-{:05}", self.commits.identity().run_id, self.partition);
        if self.upsert {
            let mut writer = UpsertWriter::try_new(&self.table_name, &self.table, prefix)?;
            while let Some(batch) = input.next().await {
                writer.write(&batch?, None)?;
            }
            return Ok(writer.flush().await?);
        }
        let mut writer = TaskFileWriter::try_new(&self.table_name, &self.table, prefix)?;
        while let Some(batch) = input.next().await {
            writer.write(&batch?).await?;
        }
        Ok(AddedFiles {
            data: writer.close().await?,
            deletes: Vec::new(),
            replace_partitions: self.overwrite,
            read_snapshot: self.table.metadata().current_snapshot_id(),
            ..Default::default()
        })
    }
}

type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// A writer of data or delete files that splits batches by the table's default
/// partition spec: one open file per partition value seen (fan-out), or one stream of
/// files for an unpartitioned table.
// One per task: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PartitionedWriter<B: IcebergWriterBuilder> {
    Unpartitioned(UnpartitionedWriter<B>),
    Fanout {
        splitter: RecordBatchPartitionSplitter,
        writer: FanoutWriter<B>,
    },
}

impl<B: IcebergWriterBuilder> PartitionedWriter<B> {
    pub(crate) fn try_new(table_name: &str, table: &Table, builder: B) -> crate::Result<Self> {
        let metadata = table.metadata();
        let spec = metadata.default_partition_spec().clone();
        Ok(if spec.is_unpartitioned() {
            PartitionedWriter::Unpartitioned(UnpartitionedWriter::new(builder))
        } else {
            let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
                metadata.current_schema().clone(),
                spec,
            )
            .context(|| format!("writing {table_name} (partition spec)"))?;
            PartitionedWriter::Fanout {
                splitter,
                writer: FanoutWriter::new(builder),
            }
        })
    }

    /// Writes a batch with the table's file schema.
    pub(crate) async fn write(&mut self, name: &str, batch: RecordBatch) -> crate::Result<()> {
        match self {
            PartitionedWriter::Unpartitioned(writer) => writer
                .write(batch)
                .await
                .context(|| format!("writing {name}")),
            PartitionedWriter::Fanout { splitter, writer } => {
                let parts = splitter
                    .split(&batch)
                    .context(|| format!("writing {name} (partitioning)"))?;
                for (key, part) in parts {
                    writer
                        .write(key, part)
                        .await
                        .context(|| format!("writing {name}"))?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn close(self, name: &str) -> crate::Result<Vec<DataFile>> {
        match self {
            PartitionedWriter::Unpartitioned(writer) => writer.close().await,
            PartitionedWriter::Fanout { writer, .. } => writer.close().await,
        }
        .context(|| format!("writing {name} (closing files)"))
    }
}

/// The data file writer of one task (a batch write partition or a streaming sink
/// subtask): Parquet files rolling at the table's target file size, named
/// `<prefix>-<counter>.parquet` under the table's data location; partitioned tables
/// split each batch by the default partition spec and keep one open file per
/// partition value (fan-out).
pub(crate) struct TaskFileWriter {
    table_name: String,
    file_schema: SchemaRef,
    inner: PartitionedWriter<FileWriterBuilder>,
}

impl TaskFileWriter {
    /// `prefix` must make the file names unique in the table.
    pub(crate) fn try_new(table_name: &str, table: &Table, prefix: String) -> crate::Result<Self> {
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let target = |what: &str| format!("writing {table_name} ({what})");
        let file_schema: SchemaRef =
            Arc::new(schema_to_arrow_schema(&schema).context(|| target("schema"))?);
        let table_props = metadata
            .table_properties()
            .context(|| target("table properties"))?;
        let parquet = ParquetWriterBuilder::from_table_properties(&table_props, schema.clone());
        let location =
            DefaultLocationGenerator::new(metadata).context(|| target("data location"))?;
        let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            table_props.write_target_file_size_bytes,
            table.file_io().clone(),
            location,
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        Ok(Self {
            table_name: table_name.to_string(),
            file_schema,
            inner: PartitionedWriter::try_new(table_name, table, builder)?,
        })
    }

    /// Writes one batch with the table's columns (cast where only the representation
    /// differs).
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> crate::Result<()> {
        let batch = with_schema(batch, &self.file_schema)?;
        let name = format!("{} (data)", self.table_name);
        self.inner.write(&name, batch).await
    }

    /// Closes the open files and returns every file written.
    pub(crate) async fn close(self) -> crate::Result<Vec<DataFile>> {
        self.inner.close(&self.table_name).await
    }
}

/// Re-labels a batch with the table's file schema (field ids), casting where the plan's
/// type differs only in representation.
pub(crate) fn with_schema(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(DataFusionError::Plan(format!(
            "the query yields {} columns but the table has {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                Ok(datafusion::arrow::compute::cast(c, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
