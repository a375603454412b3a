//! `MERGE INTO` on Iceberg tables, by merge-on-read (`write.merge.mode` =
//! `merge-on-read`) or by a copy-on-write of the files holding matched rows (the
//! default, `copy-on-write`).
//!
//! The statement is planned as one query over [`MergeTarget`], the target table with two
//! more columns per row: the path of the data file holding it ([`FILE_COLUMN`]) and its
//! position in that file ([`POS_COLUMN`], Iceberg's `_pos`). [`MergeScanExec`] reads
//! each candidate file the way merge-on-read `DELETE` and `UPDATE` do
//! ([`crate::position_delete::read_with_positions`]): the whole file, rows numbered by a
//! running counter, its deletes applied. Only the files the pushed-down filters (the
//! `ON` condition's conjuncts on target columns) cannot rule out are read.
//!
//! The query joins the source with that scan and yields, per row, the target row's file
//! and position (null for a source row without a match), the action ([`ACTION_COLUMN`]:
//! [`UPDATE`], [`DELETE`], [`INSERT`] or null when no clause applies to a matched row),
//! a routing key ([`ROUTE_COLUMN`]: the file for a matched row, anything for an insert)
//! and the table's columns with their new values. [`IcebergMergeExec`] takes the rows
//! hashed by the routing key, so every matched row of one data file reaches one task,
//! which fails the statement when a target row is matched twice and writes the updated
//! and inserted rows as new data files. What happens to the updated and deleted rows'
//! old versions depends on the mode:
//!
//! - **Merge-on-read**: their positions are written as one position-delete file per data
//!   file. Everything lands in one row-delta snapshot that removes no file, validated
//!   like a merge-on-read `UPDATE`: the files the deletes reference must still be live,
//!   and no delete file that may apply to them may have been committed since the job
//!   read the table.
//! - **Copy-on-write**: each data file with an updated or deleted row is read again (its
//!   deletes applied) and its other rows are written to new files; the snapshot removes
//!   exactly those data files, validated like a copy-on-write `UPDATE` (each must still
//!   be live). Files without such a row stay as they are, so the cost follows the
//!   change, not the table; a statement that only inserts rewrites nothing. The delete
//!   files that applied to a replaced file stay in the table (they may apply to other
//!   files too; a compaction drops those that no longer apply).
//!
//! The files the scan read are handed to the writer in the plan ([`IcebergMergeExec`]
//! finds the scan in its input when it is planned), so the writer works the same in
//! this process or on a cluster's executors.
//!
//! Output: one row per task with the rows it updated, deleted and inserted (`count`).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::deletes::DeleteCache;
use crate::position_delete::{read_with_positions, write_position_deletes, PositionDeleteCache};
use crate::predicate::{filter_pushdown, to_iceberg_predicate};
use crate::rewrite::RowLevelMode;
use crate::scan::conform;
use crate::snapshot::AddedFiles;
use crate::table::IcebergTable;
use crate::write::{count_schema, hand_over, TaskFileWriter};

/// The path of the data file holding a target row.
pub const FILE_COLUMN: &str = "__mw_file";
/// The position of a target row in its data file.
pub const POS_COLUMN: &str = "__mw_pos";
/// What the statement does with a row: [`UPDATE`], [`DELETE`], [`INSERT`] or null.
pub const ACTION_COLUMN: &str = "__mw_action";
/// The key rows are distributed by to the writing tasks.
pub const ROUTE_COLUMN: &str = "__mw_route";
/// A matched target row gets new values.
pub const UPDATE: &str = "U";
/// A matched target row is deleted.
pub const DELETE: &str = "D";
/// A source row without a match is inserted.
pub const INSERT: &str = "I";

/// The data files the target scan of one statement read, by path: the writer places a
/// file's position deletes in its partition, or reads it again to rewrite it.
type ScannedFiles = Arc<HashMap<String, FileScanTask>>;

/// The target of a `MERGE`: read as the table's columns plus [`FILE_COLUMN`] and
/// [`POS_COLUMN`]; written (as an insert) by [`IcebergMergeExec`] in `mode`.
#[derive(Debug, Clone)]
pub struct MergeTarget {
    pub(crate) name: String,
    pub(crate) table: Table,
    catalog: Arc<LakeCatalog>,
    pub(crate) commits: Arc<JobCommits>,
    /// The table's columns.
    pub(crate) table_schema: SchemaRef,
    /// The table's columns, then the file and position columns.
    schema: SchemaRef,
    pub(crate) mode: RowLevelMode,
}

impl MergeTarget {
    pub(crate) fn new(
        name: String,
        table: Table,
        catalog: Arc<LakeCatalog>,
        commits: Arc<JobCommits>,
        table_schema: SchemaRef,
        mode: RowLevelMode,
    ) -> Self {
        Self {
            name,
            table,
            catalog,
            commits,
            schema: Arc::new(full_schema(&table_schema)),
            table_schema,
            mode,
        }
    }

    /// How the statement writes the table.
    pub fn mode(&self) -> RowLevelMode {
        self.mode
    }

    /// The target as the Iceberg table it writes (a cluster's client registers the
    /// files its writers report with it).
    pub fn iceberg_table(&self) -> crate::Result<IcebergTable> {
        IcebergTable::try_new(
            self.name.clone(),
            self.catalog.clone(),
            self.table.clone(),
            self.commits.clone(),
        )
    }
}

/// Whether `expr` names one of the file and position columns.
fn uses_row_address(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Expr::Column(c) = e {
            if c.name == FILE_COLUMN || c.name == POS_COLUMN {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

#[async_trait]
impl TableProvider for MergeTarget {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let mut pushdown = filter_pushdown(filters);
        for (p, f) in pushdown.iter_mut().zip(filters) {
            if uses_row_address(f) {
                *p = TableProviderFilterPushDown::Unsupported;
            }
        }
        Ok(pushdown)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| !uses_row_address(f))
            .cloned()
            .collect();
        let tasks = if self.table.metadata().current_snapshot().is_none() {
            Vec::new()
        } else {
            let mut builder = self.table.scan().select_all();
            if let Some(p) = to_iceberg_predicate(&filters) {
                builder = builder.with_filter(p);
            }
            let context = || format!("planning the MERGE INTO {}", self.name);
            builder
                .build()
                .map_err(|e| DataFusionError::External(format!("{}: {e}", context()).into()))?
                .plan_files()
                .await
                .map_err(|e| DataFusionError::External(format!("{}: {e}", context()).into()))?
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| DataFusionError::External(format!("{}: {e}", context()).into()))?
        };
        let mut seen = HashSet::new();
        let tasks: Vec<FileScanTask> = tasks
            .into_iter()
            .filter(|t| seen.insert(t.data_file_path.clone()))
            .collect();
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = projection.cloned().unwrap_or(all);
        Ok(Arc::new(MergeScanExec::new(
            self.name.clone(),
            self.table.clone(),
            tasks,
            state.config().target_partitions(),
            self.table_schema.clone(),
            projection,
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let scanned = Arc::new(scanned_files(&input));
        Ok(Arc::new(IcebergMergeExec::try_new(
            self.clone(),
            input,
            scanned,
        )?))
    }
}

/// The data files every [`MergeScanExec`] in `plan` reads, by path.
fn scanned_files(plan: &Arc<dyn ExecutionPlan>) -> HashMap<String, FileScanTask> {
    let mut files = HashMap::new();
    let _ = plan.apply(|node| {
        if let Some(scan) = node.as_any().downcast_ref::<MergeScanExec>() {
            for task in scan.groups.iter().flatten() {
                files.insert(task.data_file_path.clone(), task.clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    files
}

/// Reads candidate data files of the target with each row's file and position.
pub struct MergeScanExec {
    pub(crate) table_name: String,
    pub(crate) table: Table,
    /// The files of each output partition.
    pub(crate) groups: Vec<Vec<FileScanTask>>,
    /// The table's columns.
    pub(crate) table_schema: SchemaRef,
    /// Output columns, indexes into the table's columns followed by file and position.
    pub(crate) projection: Vec<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    deletes: Arc<DeleteCache>,
    positional: Arc<PositionDeleteCache>,
}

impl fmt::Debug for MergeScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergeScanExec")
            .field("table", &self.table_name)
            .finish_non_exhaustive()
    }
}

impl MergeScanExec {
    fn new(
        table_name: String,
        table: Table,
        tasks: Vec<FileScanTask>,
        partitions: usize,
        table_schema: SchemaRef,
        projection: Vec<usize>,
    ) -> Result<Self> {
        let groups = crate::scan::pack(tasks, partitions.max(1));
        Self::from_groups(table_name, table, groups, table_schema, projection)
    }

    /// The scan of `groups`, one output partition each (as a cluster's codec sends it).
    pub(crate) fn from_groups(
        table_name: String,
        table: Table,
        groups: Vec<Vec<FileScanTask>>,
        table_schema: SchemaRef,
        projection: Vec<usize>,
    ) -> Result<Self> {
        let n = groups.len();
        let schema = Arc::new(full_schema(&table_schema).project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table_name,
            table,
            groups,
            table_schema,
            projection,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            deletes: Arc::default(),
            positional: Arc::default(),
        })
    }

    /// Number of data files this scan reads.
    pub fn file_count(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// The table's columns, then the file and position columns.
fn full_schema(table_schema: &SchemaRef) -> Schema {
    let mut fields: Vec<Field> = table_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(FILE_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(POS_COLUMN, DataType::Int64, false));
    Schema::new(fields)
}

impl DisplayAs for MergeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "MergeScanExec: table={}, files={}, partitions={}",
            self.table_name,
            self.file_count(),
            self.groups.len()
        )
    }
}

impl ExecutionPlan for MergeScanExec {
    meltwater_connectors::leaf_exec_methods!("MergeScanExec");
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.properties.eq_properties.schema().clone();
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let batch_size = context.session_config().batch_size();
        let file_io = self.table.file_io().clone();
        let name = self.table_name.clone();
        let table_schema = self.table_schema.clone();
        let projection = self.projection.clone();
        let deletes = self.deletes.clone();
        let positional = self.positional.clone();
        let out_schema = schema.clone();
        let batches = stream::iter(tasks)
            .map(move |task| {
                let path = task.data_file_path.clone();
                let table_schema = table_schema.clone();
                let projection = projection.clone();
                let out_schema = out_schema.clone();
                let rows = rows.clone();
                let read = read_with_positions(
                    file_io.clone(),
                    task,
                    batch_size,
                    &name,
                    deletes.clone(),
                    positional.clone(),
                );
                let batches = match read {
                    Ok(s) => s,
                    Err(e) => return stream::once(async { Err(e) }).boxed(),
                };
                batches
                    .map(move |next| {
                        let (batch, positions) = next?;
                        let batch = conform(&batch, &table_schema, &table_schema)?;
                        let mut columns = batch.columns().to_vec();
                        columns.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                            path.as_str(),
                            batch.num_rows(),
                        ))) as ArrayRef);
                        columns.push(Arc::new(positions) as ArrayRef);
                        let columns = projection.iter().map(|&i| columns[i].clone()).collect();
                        let out = RecordBatch::try_new_with_options(
                            out_schema.clone(),
                            columns,
                            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                                .with_row_count(Some(batch.num_rows())),
                        )?;
                        rows.add(out.num_rows());
                        Ok(out)
                    })
                    .boxed()
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// Writes a `MERGE`: new data files for the updated and inserted rows, and for the
/// updated and deleted target rows either position deletes (merge-on-read) or a rewrite
/// of the files holding them (copy-on-write).
pub struct IcebergMergeExec {
    pub(crate) target: MergeTarget,
    input: Arc<dyn ExecutionPlan>,
    /// The data files the target scan read, by path.
    pub(crate) scanned: ScannedFiles,
    /// Indexes of the file, position, action and route columns in the input.
    file: usize,
    pos: usize,
    action: usize,
    route: usize,
    /// Indexes of the table's columns in the input, in table order.
    values: Vec<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// Delete files loaded by the copy-on-write rewrites of any task.
    deletes: Arc<DeleteCache>,
    positional: Arc<PositionDeleteCache>,
}

impl fmt::Debug for IcebergMergeExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergMergeExec")
            .field("table", &self.target.name)
            .finish_non_exhaustive()
    }
}

impl IcebergMergeExec {
    pub(crate) fn try_new(
        target: MergeTarget,
        input: Arc<dyn ExecutionPlan>,
        scanned: ScannedFiles,
    ) -> Result<Self> {
        let schema = input.schema();
        let index = |name: &str| {
            schema.index_of(name).map_err(|_| {
                DataFusionError::Plan(format!(
                    "MERGE INTO {}: the merge query has no column '{name}'",
                    target.name
                ))
            })
        };
        let (file, pos, action, route) = (
            index(FILE_COLUMN)?,
            index(POS_COLUMN)?,
            index(ACTION_COLUMN)?,
            index(ROUTE_COLUMN)?,
        );
        let values = target
            .table_schema
            .fields()
            .iter()
            .map(|f| index(f.name()))
            .collect::<Result<Vec<_>>>()?;
        let partitions = input.properties().output_partitioning().partition_count();
        let output = if target.commits.is_detached() {
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
        Ok(Self {
            target,
            input,
            scanned,
            file,
            pos,
            action,
            route,
            values,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            deletes: Arc::default(),
            positional: Arc::default(),
        })
    }
}

impl DisplayAs for IcebergMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let mode = match self.target.mode {
            RowLevelMode::CopyOnWrite => "copy-on-write of the files with matched rows",
            RowLevelMode::MergeOnRead => "merge-on-read",
        };
        write!(f, "IcebergMergeExec: table={}, {mode}", self.target.name)
    }
}

impl ExecutionPlan for IcebergMergeExec {
    fn name(&self) -> &str {
        "IcebergMergeExec"
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
    /// Every matched row of one data file reaches one task (one position-delete file or
    /// one rewrite per data file; a target row matched twice is seen by one task).
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let route = self.input.schema().field(self.route).name().clone();
        vec![Distribution::HashPartitioned(vec![Arc::new(Column::new(
            &route, self.route,
        ))])]
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The scan may no longer be below (a staged runtime reads its output from a
        // shuffle): the files it read stay with the writer.
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(Self::try_new(
                self.target.clone(),
                input,
                self.scanned.clone(),
            )?)),
            Err(_) => Err(DataFusionError::Internal(
                "IcebergMergeExec takes one input".into(),
            )),
        }
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch_size = context.session_config().batch_size();
        let input = self.input.execute(partition, context)?;
        let task = MergeTask {
            target: self.target.clone(),
            scanned: self.scanned.clone(),
            file: self.file,
            pos: self.pos,
            action: self.action,
            values: self.values.clone(),
            partition,
            batch_size,
            deletes: self.deletes.clone(),
            positional: self.positional.clone(),
        };
        let changed = MetricBuilder::new(&self.metrics).counter("rows_changed", partition);
        let rewritten = MetricBuilder::new(&self.metrics).counter("files_rewritten", partition);
        let out = stream::once(async move {
            let (rows, files) = task.run(input).await?;
            changed.add(rows as usize);
            if let Some(files) = &files {
                rewritten.add(files.removed.len());
            }
            let target = &task.target;
            hand_over(
                &target.name,
                &target.table,
                &target.catalog,
                &target.commits,
                rows,
                files,
            )
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), out)))
    }
}

struct MergeTask {
    target: MergeTarget,
    scanned: ScannedFiles,
    file: usize,
    pos: usize,
    action: usize,
    values: Vec<usize>,
    partition: usize,
    batch_size: usize,
    deletes: Arc<DeleteCache>,
    positional: Arc<PositionDeleteCache>,
}

/// A column of `batch` as `t` (the plan may carry strings as views or large strings).
fn column_as(batch: &RecordBatch, i: usize, t: &DataType) -> Result<ArrayRef> {
    let c = batch.column(i);
    Ok(if c.data_type() == t {
        c.clone()
    } else {
        cast(c, t)?
    })
}

/// The task's data file writer, opened on first use.
fn open_writer<'a>(
    writer: &'a mut Option<TaskFileWriter>,
    target: &MergeTarget,
    prefix: &str,
) -> Result<&'a mut TaskFileWriter> {
    if writer.is_none() {
        *writer = Some(TaskFileWriter::try_new(
            &target.name,
            &target.table,
            prefix.to_string(),
        )?);
    }
    Ok(writer.as_mut().expect("writer opened"))
}

impl MergeTask {
    /// The scan's task for the data file `file`.
    fn scanned_task(&self, file: &str) -> Result<FileScanTask> {
        self.scanned.get(file).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "MERGE INTO {}: a matched row names {file}, which the merge did not scan",
                self.target.name
            ))
        })
    }

    /// Consumes the task's rows; returns the rows updated, deleted and inserted, and the
    /// files to commit (none when nothing changed).
    async fn run(&self, mut input: SendableRecordBatchStream) -> Result<(u64, Option<AddedFiles>)> {
        let target = &self.target;
        let name = &target.name;
        let prefix = format!(
            "{}-merge{:05}-{}",
            target.commits.identity().run_id,
            self.partition,
            uuid::Uuid::new_v4().simple()
        );
        // Every matched target row of the task: its position and whether it goes.
        let mut matched: HashMap<String, Vec<(i64, bool)>> = HashMap::new();
        let mut writer: Option<TaskFileWriter> = None;
        let mut changed = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let files = column_as(&batch, self.file, &DataType::Utf8)?;
            let files = files.as_string::<i32>();
            let positions = column_as(&batch, self.pos, &DataType::Int64)?;
            let positions = positions.as_primitive::<Int64Type>();
            let actions = column_as(&batch, self.action, &DataType::Utf8)?;
            let actions = actions.as_string::<i32>();
            let mut write = Vec::with_capacity(batch.num_rows());
            for i in 0..batch.num_rows() {
                let action = actions.is_valid(i).then(|| actions.value(i));
                if files.is_valid(i) && positions.is_valid(i) {
                    let goes = matches!(action, Some(UPDATE | DELETE));
                    matched
                        .entry(files.value(i).to_string())
                        .or_default()
                        .push((positions.value(i), goes));
                    changed += goes as u64;
                    write.push(action == Some(UPDATE));
                } else {
                    let insert = action == Some(INSERT);
                    changed += insert as u64;
                    write.push(insert);
                }
            }
            let write = BooleanArray::from(write);
            if write.true_count() == 0 {
                continue;
            }
            let rows = filter_record_batch(&batch.project(&self.values)?, &write)?;
            open_writer(&mut writer, target, &prefix)?
                .write(&rows)
                .await?;
        }
        // The positions of the rows that go, per data file with some.
        let mut gone: Vec<(String, Vec<i64>)> = Vec::new();
        for (file, mut rows) in matched {
            rows.sort_unstable();
            if rows.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(DataFusionError::Execution(format!(
                    "MERGE INTO {name}: a target row matches more than one source row"
                )));
            }
            let positions: Vec<i64> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
            if !positions.is_empty() {
                gone.push((file, positions));
            }
        }
        gone.sort();
        let mut files = AddedFiles {
            read_snapshot: target.table.metadata().current_snapshot_id(),
            ..Default::default()
        };
        for (i, (file, positions)) in gone.into_iter().enumerate() {
            let task = self.scanned_task(&file)?;
            match target.mode {
                RowLevelMode::MergeOnRead => {
                    files.deletes.extend(
                        write_position_deletes(
                            name,
                            &target.table,
                            &task,
                            positions,
                            format!("{prefix}-{i}"),
                        )
                        .await?,
                    );
                    files.referenced.push(file);
                }
                RowLevelMode::CopyOnWrite => {
                    self.rewrite_without(task, &positions, &mut writer, &prefix)
                        .await?;
                    files.removed.push(file);
                }
            }
        }
        if let Some(w) = writer {
            files.data = w.close().await?;
        }
        if files.data.is_empty() && files.deletes.is_empty() && files.removed.is_empty() {
            return Ok((changed, None));
        }
        Ok((changed, Some(files)))
    }

    /// Copies the live rows of the data file of `task` but those at `positions` (sorted)
    /// into the task's writer: the file's replacement.
    async fn rewrite_without(
        &self,
        task: FileScanTask,
        positions: &[i64],
        writer: &mut Option<TaskFileWriter>,
        prefix: &str,
    ) -> Result<()> {
        let target = &self.target;
        let mut batches = read_with_positions(
            target.table.file_io().clone(),
            task,
            self.batch_size,
            &target.name,
            self.deletes.clone(),
            self.positional.clone(),
        )?;
        while let Some(next) = batches.next().await {
            let (batch, rows) = next?;
            let keep: BooleanArray = rows
                .values()
                .iter()
                .map(|p| Some(positions.binary_search(p).is_err()))
                .collect();
            if keep.true_count() == 0 {
                continue;
            }
            let batch = conform(&batch, &target.table_schema, &target.table_schema)?;
            let kept = filter_record_batch(&batch, &keep)?;
            open_writer(writer, target, prefix)?.write(&kept).await?;
        }
        Ok(())
    }
}
