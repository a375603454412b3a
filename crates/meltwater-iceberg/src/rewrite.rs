//! `DELETE FROM t WHERE ...` and `UPDATE t SET ... WHERE ...` on Iceberg tables, by
//! copy-on-write (Iceberg's default `write.delete.mode` / `write.update.mode`) or by
//! merge-on-read.
//!
//! The files that may hold matching rows are found by pruning the snapshot the job read
//! with the filter (partitions, column bounds). Each one is read in full with its
//! deletes applied.
//!
//! Copy-on-write: when some rows match, the file is rewritten (without them, or with
//! their new values) and the commit removes the old file and adds the new ones in one
//! snapshot. The commit checks that every file it removes is still live, so a
//! concurrent rewrite of the same file fails it instead of resurrecting or losing rows
//! (snapshot isolation: rows appended concurrently are not looked at).
//!
//! Merge-on-read: the file stays; the positions of the matching rows are written as a
//! position-delete file ([`crate::position_delete`]) and, for `UPDATE`, their new values
//! as new data files, committed together as a row delta. The commit checks that every
//! file its deletes reference is still live (a concurrent compaction or rewrite of it
//! fails the commit), and an `UPDATE` also that no delete file committed since the job
//! read the table may apply to those files (else a row deleted concurrently would come
//! back with its new values).
//!
//! Files without a match stay untouched in both modes. A `DELETE` whose condition reads
//! identity partition columns only, and holds for a file's partition values, removes
//! that file whole by metadata, in both modes, without reading it (when no delete file
//! applies to it).
//!
//! Output: one row per task with the number of rows deleted or updated (`count`).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{filter_record_batch, not, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{stream, StreamExt};
use iceberg::scan::FileScanTask;
use iceberg::spec::{Literal, PrimitiveLiteral, Transform};
use iceberg::table::Table;

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::deletes::DeleteCache;
use crate::position_delete::{read_with_positions, write_position_deletes, PositionDeleteCache};
use crate::scan::{conform, read_tasks};
use crate::snapshot::AddedFiles;
use crate::write::{count_batch, count_schema, hand_over, TaskFileWriter};

/// What a rewrite does to the rows its predicate matches.
#[derive(Debug, Clone)]
pub enum RowChange {
    /// `DELETE`: drop them.
    Delete,
    /// `UPDATE`: one expression per table column giving its new value (the column
    /// itself where the statement does not set it).
    Update(Vec<Arc<dyn PhysicalExpr>>),
}

/// How a row-level change is written (Iceberg's `write.delete.mode`,
/// `write.update.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLevelMode {
    /// Rewrite the files holding changed rows.
    CopyOnWrite,
    /// Keep the files; delete the changed rows by position.
    MergeOnRead,
}

impl RowLevelMode {
    /// The mode a table property value names (`None`: the property is not set, Iceberg's
    /// default copy-on-write).
    pub fn from_property(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("copy-on-write") => Some(Self::CopyOnWrite),
            Some("merge-on-read") => Some(Self::MergeOnRead),
            Some(_) => None,
        }
    }
}

/// Changes the rows matching `predicate` in the files of one table that hold them.
pub struct IcebergRewriteExec {
    pub(crate) table_name: String,
    pub(crate) table: Table,
    catalog: Arc<LakeCatalog>,
    pub(crate) commits: Arc<JobCommits>,
    /// One candidate file per partition.
    pub(crate) tasks: Vec<FileScanTask>,
    pub(crate) schema: SchemaRef,
    pub(crate) predicate: Arc<dyn PhysicalExpr>,
    pub(crate) change: RowChange,
    pub(crate) mode: RowLevelMode,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// Equality-delete files loaded by any task of this rewrite.
    deletes: Arc<DeleteCache>,
    /// Position-delete files loaded by any merge-on-read task of this rewrite.
    positional: Arc<PositionDeleteCache>,
}

impl fmt::Debug for IcebergRewriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergRewriteExec")
            .field("table", &self.table_name)
            .field("files", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl IcebergRewriteExec {
    /// `tasks` are the files the filter could not rule out (their predicates are
    /// dropped: each file is read whole); `schema` is the table's Arrow schema, which
    /// `predicate` and the update expressions are bound to.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table_name: String,
        table: Table,
        catalog: Arc<LakeCatalog>,
        commits: Arc<JobCommits>,
        tasks: Vec<FileScanTask>,
        schema: SchemaRef,
        predicate: Arc<dyn PhysicalExpr>,
        change: RowChange,
        mode: RowLevelMode,
    ) -> Self {
        let mut seen = std::collections::HashSet::new();
        let tasks: Vec<FileScanTask> = tasks
            .into_iter()
            .filter(|t| seen.insert(t.data_file_path.clone()))
            .map(|mut t| {
                t.predicate = None;
                t
            })
            .collect();
        let output = if commits.is_detached() {
            crate::codec::written_files_schema()
        } else {
            count_schema()
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(output),
            Partitioning::UnknownPartitioning(tasks.len().max(1)),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            table_name,
            table,
            catalog,
            commits,
            tasks,
            schema,
            predicate,
            change,
            mode,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            deletes: Arc::new(DeleteCache::default()),
            positional: Arc::new(PositionDeleteCache::default()),
        }
    }
}

impl DisplayAs for IcebergRewriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let what = match self.change {
            RowChange::Delete => "delete",
            RowChange::Update(_) => "update",
        };
        let mode = match self.mode {
            RowLevelMode::CopyOnWrite => "copy-on-write",
            RowLevelMode::MergeOnRead => "merge-on-read",
        };
        write!(
            f,
            "IcebergRewriteExec: table={}, {what} where {}, {mode}, candidate_files={}",
            self.table_name,
            self.predicate,
            self.tasks.len()
        )
    }
}

impl ExecutionPlan for IcebergRewriteExec {
    meltwater_connectors::leaf_exec_methods!("IcebergRewriteExec");
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let Some(task) = self.tasks.get(partition).cloned() else {
            let (name, table) = (self.table_name.clone(), self.table.clone());
            let detached = self.commits.is_detached();
            let empty = stream::once(async move {
                if detached {
                    crate::codec::written_files_batch(&name, &table, 0, None)
                } else {
                    count_batch(0)
                }
            });
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, empty)));
        };
        let changed_rows = MetricBuilder::new(&self.metrics).counter("rows_changed", partition);
        let rewritten = MetricBuilder::new(&self.metrics).counter("files_rewritten", partition);
        let job = RewriteTask {
            table_name: self.table_name.clone(),
            table: self.table.clone(),
            catalog: self.catalog.clone(),
            commits: self.commits.clone(),
            schema: self.schema.clone(),
            predicate: self.predicate.clone(),
            change: self.change.clone(),
            batch_size: context.session_config().batch_size(),
            partition,
            deletes: self.deletes.clone(),
            positional: self.positional.clone(),
        };
        let mode = self.mode;
        let out = stream::once(async move {
            let (changed, files) = match (whole_file_deleted(&job, &task)?, mode) {
                (Some(rows), _) => {
                    // Metadata only: the file goes without being read, in either mode.
                    let files = AddedFiles {
                        removed: vec![task.data_file_path.clone()],
                        read_snapshot: job.table.metadata().current_snapshot_id(),
                        ..Default::default()
                    };
                    (rows, Some(files))
                }
                (None, RowLevelMode::CopyOnWrite) => job.run(task).await?,
                (None, RowLevelMode::MergeOnRead) => job.run_merge_on_read(task).await?,
            };
            changed_rows.add(changed as usize);
            if changed > 0 {
                rewritten.add(1);
            }
            hand_over(
                &job.table_name,
                &job.table,
                &job.catalog,
                &job.commits,
                changed,
                files,
            )
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, out)))
    }
}

struct RewriteTask {
    table_name: String,
    table: Table,
    catalog: Arc<LakeCatalog>,
    commits: Arc<JobCommits>,
    schema: SchemaRef,
    predicate: Arc<dyn PhysicalExpr>,
    change: RowChange,
    batch_size: usize,
    partition: usize,
    deletes: Arc<DeleteCache>,
    positional: Arc<PositionDeleteCache>,
}

/// The rows of `batch` the WHERE condition `predicate` matches (NULL: no match).
fn matching(predicate: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = mask
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| DataFusionError::Plan("the WHERE condition is not a boolean".into()))?;
    Ok(if mask.null_count() > 0 {
        prep_null_mask_filter(mask)
    } else {
        mask.clone()
    })
}

/// For a `DELETE`, the rows of `task`'s file when its WHERE condition holds for all of
/// them as its partition values tell: every column the condition reads is an identity
/// partition source, so the condition has one value for the whole file. Such a file is
/// removed whole, by metadata (Iceberg's delete by filter), without reading it. `None`
/// when that cannot be told from the metadata (other columns, a partition value of a
/// type not handled here, delete files that apply, an unknown row count): the file is
/// then read and rewritten or position-deleted as usual.
fn whole_file_deleted(job: &RewriteTask, task: &FileScanTask) -> Result<Option<u64>> {
    if !matches!(job.change, RowChange::Delete) || !task.deletes.is_empty() {
        return Ok(None);
    }
    // The file's spec; a planned task may not carry it, and then it is the table's
    // default spec when the table never had another one.
    let metadata = job.table.metadata();
    let spec = task.partition_spec.clone().or_else(|| {
        (metadata.partition_specs_iter().count() == 1)
            .then(|| metadata.default_partition_spec().clone())
    });
    let (Some(spec), Some(partition), Some(rows)) =
        (spec, task.partition.as_ref(), task.record_count)
    else {
        return Ok(None);
    };
    let read = datafusion::physical_expr::utils::collect_columns(&job.predicate);
    if read.is_empty() {
        return Ok(None);
    }
    let mut columns: Vec<ArrayRef> = job
        .schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    for column in &read {
        let Some(field) = job.schema.fields().get(column.index()) else {
            return Ok(None);
        };
        let Some(id) = task.schema.field_by_name(field.name()).map(|f| f.id) else {
            return Ok(None);
        };
        let Some(at) = spec
            .fields()
            .iter()
            .position(|p| p.source_id == id && p.transform == Transform::Identity)
        else {
            return Ok(None);
        };
        let value = match partition.fields().get(at) {
            Some(Some(Literal::Primitive(v))) => match partition_scalar(v, field.data_type()) {
                Some(v) => v.to_array_of_size(1)?,
                None => return Ok(None),
            },
            Some(None) => new_null_array(field.data_type(), 1),
            _ => return Ok(None),
        };
        columns[column.index()] = if value.data_type() == field.data_type() {
            value
        } else {
            datafusion::arrow::compute::cast(&value, field.data_type())?
        };
    }
    let one = RecordBatch::try_new(job.schema.clone(), columns)?;
    let mask = matching(&job.predicate, &one)?;
    Ok((mask.value(0)).then_some(rows))
}

/// A partition value as a scalar of (or castable to) `target`, for the types identity
/// partitions usually have; `None` for others.
fn partition_scalar(value: &PrimitiveLiteral, target: &DataType) -> Option<ScalarValue> {
    Some(match (value, target) {
        (PrimitiveLiteral::Boolean(v), _) => ScalarValue::Boolean(Some(*v)),
        (PrimitiveLiteral::Int(v), DataType::Date32) => ScalarValue::Date32(Some(*v)),
        (PrimitiveLiteral::Int(v), _) => ScalarValue::Int32(Some(*v)),
        (PrimitiveLiteral::Long(v), DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
            ScalarValue::TimestampMicrosecond(Some(*v), tz.clone())
        }
        (PrimitiveLiteral::Long(v), DataType::Timestamp(TimeUnit::Nanosecond, tz)) => {
            ScalarValue::TimestampNanosecond(Some(*v), tz.clone())
        }
        (PrimitiveLiteral::Long(v), DataType::Int64) => ScalarValue::Int64(Some(*v)),
        (PrimitiveLiteral::Long(v), DataType::Int32 | DataType::Int16 | DataType::Int8) => {
            ScalarValue::Int64(Some(*v))
        }
        (PrimitiveLiteral::String(v), _) => ScalarValue::Utf8(Some(v.clone())),
        (PrimitiveLiteral::Int128(v), DataType::Decimal128(p, s)) => {
            ScalarValue::Decimal128(Some(*v), *p, *s)
        }
        _ => return None,
    })
}

/// The new value of every column of `batch` (`values`: one expression per column), of
/// the column's type.
fn new_values(values: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    values
        .iter()
        .zip(batch.columns())
        .map(|(value, old)| {
            let new = value.evaluate(batch)?.into_array(batch.num_rows())?;
            Ok(if new.data_type() == old.data_type() {
                new
            } else {
                datafusion::arrow::compute::cast(&new, old.data_type())?
            })
        })
        .collect()
}

impl RewriteTask {
    /// A unique file name prefix for what this task writes.
    fn file_prefix(&self, what: &str) -> String {
        format!(
            "{}-{what}{:05}-{}",
            self.commits.identity().run_id,
            self.partition,
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Deletes the positions of the matching rows of one file (and, for `UPDATE`,
    /// writes their new values); returns the rows deleted or updated and the files to
    /// commit (none when no row matched).
    async fn run_merge_on_read(&self, task: FileScanTask) -> Result<(u64, Option<AddedFiles>)> {
        let name = &self.table_name;
        let mut batches = read_with_positions(
            self.table.file_io().clone(),
            task.clone(),
            self.batch_size,
            name,
            self.deletes.clone(),
            self.positional.clone(),
        )?;
        let prefix = self.file_prefix("mor");
        let mut writer = match &self.change {
            RowChange::Delete => None,
            RowChange::Update(_) => {
                Some(TaskFileWriter::try_new(name, &self.table, prefix.clone())?)
            }
        };
        let mut positions: Vec<i64> = Vec::new();
        while let Some(next) = batches.next().await {
            let (batch, pos) = next?;
            let batch = conform(&batch, &self.schema, &self.schema)?;
            let mask = matching(&self.predicate, &batch)?;
            if mask.true_count() == 0 {
                continue;
            }
            let matched = filter_record_batch(&batch, &mask)?;
            let pos = datafusion::arrow::compute::filter(&pos, &mask)?;
            let pos = pos
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("positions are Int64");
            positions.extend(pos.values().iter().copied());
            if let (Some(writer), RowChange::Update(values)) = (writer.as_mut(), &self.change) {
                let columns = new_values(values, &matched)?;
                writer
                    .write(&RecordBatch::try_new(matched.schema(), columns)?)
                    .await?;
            }
        }
        let data = match writer {
            Some(w) => w.close().await?,
            None => Vec::new(),
        };
        let changed = positions.len() as u64;
        if changed == 0 {
            return Ok((0, None));
        }
        let deletes = write_position_deletes(name, &self.table, &task, positions, prefix).await?;
        let files = AddedFiles {
            data,
            deletes,
            referenced: vec![task.data_file_path.clone()],
            read_snapshot: self.table.metadata().current_snapshot_id(),
            ..Default::default()
        };
        Ok((changed, Some(files)))
    }

    /// Rewrites one file; returns the rows deleted or updated (0: the file stays) and the
    /// files to commit.
    async fn run(&self, task: FileScanTask) -> Result<(u64, Option<AddedFiles>)> {
        let name = &self.table_name;
        let old_path = task.data_file_path.clone();
        let mut batches = read_tasks(
            self.table.file_io().clone(),
            vec![task],
            self.batch_size,
            name,
            self.deletes.clone(),
        )?;
        let prefix = self.file_prefix("rw");
        let mut writer = TaskFileWriter::try_new(name, &self.table, prefix)?;
        let mut changed = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = conform(&batch?, &self.schema, &self.schema)?;
            let mask = matching(&self.predicate, &batch)?;
            changed += mask.true_count() as u64;
            let out = match &self.change {
                RowChange::Delete => filter_record_batch(&batch, &not(&mask)?)?,
                RowChange::Update(values) => {
                    let columns = new_values(values, &batch)?
                        .iter()
                        .zip(batch.columns())
                        .map(|(new, old)| zip(&mask, new, old))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    RecordBatch::try_new(batch.schema(), columns)?
                }
            };
            if out.num_rows() > 0 {
                writer.write(&out).await?;
            }
        }
        let files = writer.close().await?;
        if changed == 0 {
            // Nothing matched after all (the filter could not rule the file out): the
            // copies were never needed.
            for f in &files {
                let _ = self.table.file_io().delete(f.file_path()).await;
            }
            return Ok((0, None));
        }
        let files = AddedFiles {
            data: files,
            removed: vec![old_path],
            read_snapshot: self.table.metadata().current_snapshot_id(),
            ..Default::default()
        };
        Ok((changed, Some(files)))
    }
}
