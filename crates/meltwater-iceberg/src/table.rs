//! `IcebergTable`: an Iceberg table as a DataFusion table, read by [`IcebergScanExec`]
//! and written by [`IcebergWriteExec`].

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{cast, col, lit, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use iceberg::table::Table;

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::merge::MergeTarget;
use crate::predicate::{filter_pushdown, to_iceberg_predicate};
use crate::rewrite::{IcebergRewriteExec, RowChange, RowLevelMode};
use crate::scan::IcebergScanExec;
use crate::schema::arrow_schema;
use crate::source::IcebergSource;
use crate::write::IcebergWriteExec;
use meltwater_connectors::stream::StreamSource;

/// An Iceberg table as loaded when the job was planned.
#[derive(Debug, Clone)]
pub struct IcebergTable {
    name: String,
    catalog: Arc<LakeCatalog>,
    table: Table,
    schema: SchemaRef,
    commits: Arc<JobCommits>,
    /// Time travel: the snapshot read instead of the current one (read-only).
    snapshot: Option<i64>,
}

impl IcebergTable {
    pub fn try_new(
        name: String,
        catalog: Arc<LakeCatalog>,
        table: Table,
        commits: Arc<JobCommits>,
    ) -> crate::Result<Self> {
        let schema = arrow_schema(table.metadata().current_schema())?;
        Ok(Self {
            name,
            catalog,
            table,
            schema,
            commits,
            snapshot: None,
        })
    }

    /// The table as of snapshot `id` (`FOR SYSTEM_VERSION AS OF id`): read-only, with
    /// the schema that snapshot was written with.
    pub fn at_snapshot(&self, id: i64) -> crate::Result<Self> {
        let metadata = self.table.metadata();
        let Some(snapshot) = metadata.snapshot_by_id(id) else {
            let mut known: Vec<String> = metadata
                .history()
                .iter()
                .map(|l| l.snapshot_id.to_string())
                .collect();
            if known.len() > 10 {
                known.drain(..known.len() - 10);
                known.insert(0, "...".into());
            }
            return Err(crate::IcebergError::Table {
                table: self.name.clone(),
                message: format!(
                    "no snapshot {id} (its snapshots, oldest first: {}; `meltwater catalog snapshots {}` lists them)",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") },
                    self.name
                ),
            });
        };
        let schema = snapshot
            .schema_id()
            .and_then(|s| metadata.schema_by_id(s))
            .unwrap_or_else(|| metadata.current_schema());
        Ok(Self {
            name: format!("{} (snapshot {id})", self.name),
            catalog: self.catalog.clone(),
            table: self.table.clone(),
            schema: arrow_schema(schema)?,
            commits: self.commits.clone(),
            snapshot: Some(id),
        })
    }

    /// The table as of `timestamp_ms` (`FOR SYSTEM_TIME AS OF`): the snapshot that was
    /// current then, by the table's snapshot log.
    pub fn as_of_time(&self, timestamp_ms: i64) -> crate::Result<Self> {
        let log = self.table.metadata().history();
        match log.iter().rev().find(|l| l.timestamp_ms <= timestamp_ms) {
            Some(l) => self.at_snapshot(l.snapshot_id),
            None => Err(crate::IcebergError::Table {
                table: self.name.clone(),
                message: format!(
                    "no snapshot at or before {} ({})",
                    format_ms(timestamp_ms),
                    match log.first() {
                        Some(first) => format!(
                            "the first was committed at {}",
                            format_ms(first.timestamp_ms)
                        ),
                        None => "the table has no snapshot".into(),
                    }
                ),
            }),
        }
    }

    /// The snapshot a time-travel read is pinned to.
    pub fn pinned_snapshot(&self) -> Option<i64> {
        self.snapshot
    }

    fn refuse_writes(&self, statement: &str) -> Result<()> {
        match self.snapshot {
            Some(_) => Err(DataFusionError::Plan(format!(
                "{statement} {}: a table read as of a past snapshot cannot be written to",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// `catalog.namespace.table`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table as loaded.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The table read in stream mode, one split per data file: the snapshot as loaded,
    /// then (with `monitor_ms`) the appends committed after it, looked for at that
    /// interval.
    ///
    /// A table pinned to a past snapshot is read as of that snapshot, then ends.
    pub fn stream_source(&self, monitor_ms: Option<u64>) -> Arc<dyn StreamSource> {
        let source = IcebergSource::new(self.name.clone(), self.table.clone(), self.schema.clone());
        Arc::new(match (self.snapshot, monitor_ms) {
            (Some(id), _) => source.at_snapshot(id),
            (None, Some(ms)) => source.monitored(self.catalog.clone(), ms),
            (None, None) => source,
        })
    }

    /// The catalog the table was loaded from (and commits go to).
    pub fn catalog(&self) -> &Arc<LakeCatalog> {
        &self.catalog
    }

    /// The job's registry of files to commit (detached in a cluster's processes).
    pub fn commits(&self) -> &Arc<JobCommits> {
        &self.commits
    }

    /// How `MERGE INTO` writes the table (`write.merge.mode`); an error names an unknown
    /// mode.
    pub fn merge_mode(&self) -> Result<RowLevelMode> {
        self.row_level_mode("MERGE INTO", "write.merge.mode")
    }

    /// The target of a `MERGE INTO` written in `mode` ([`MergeTarget`]).
    pub fn merge_target(&self, mode: RowLevelMode) -> Result<MergeTarget> {
        self.refuse_writes("MERGE INTO")?;
        Ok(MergeTarget::new(
            self.name.clone(),
            self.table.clone(),
            self.catalog.clone(),
            self.commits.clone(),
            self.schema.clone(),
            mode,
        ))
    }

    /// The target of a merge-on-read `MERGE INTO` ([`MergeTarget`]).
    pub fn merge_on_read_target(&self) -> Result<MergeTarget> {
        self.merge_target(RowLevelMode::MergeOnRead)
    }

    /// The write mode table property `property` names for `statement`.
    fn row_level_mode(&self, statement: &str, property: &str) -> Result<RowLevelMode> {
        let value = self.table.metadata().properties().get(property);
        RowLevelMode::from_property(value.map(String::as_str)).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "{statement} {}: '{property}' = '{}' is not a write mode; use 'copy-on-write' or 'merge-on-read'",
                self.name,
                value.map(String::as_str).unwrap_or_default()
            ))
        })
    }

    /// `DELETE` (`assignments` = `None`) or `UPDATE` of the rows matching `filters`
    /// ([`IcebergRewriteExec`]): copy-on-write of the files that hold them, or position
    /// deletes (and new data files) with `write.delete.mode` / `write.update.mode` =
    /// `merge-on-read`.
    async fn rewrite(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
        assignments: Option<Vec<(String, Expr)>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (statement, property) = match assignments {
            None => ("DELETE", "write.delete.mode"),
            Some(_) => ("UPDATE", "write.update.mode"),
        };
        self.refuse_writes(statement)?;
        let mode = self.row_level_mode(&format!("{statement} on"), property)?;
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
        let predicate = conjunction(filters.clone()).unwrap_or(lit(true));
        let predicate = state.create_physical_expr(predicate, &df_schema)?;
        let change = match assignments {
            None => RowChange::Delete,
            Some(assignments) => {
                let mut values = Vec::new();
                for field in self.schema.fields() {
                    let expr = match assignments.iter().find(|(c, _)| c == field.name()) {
                        Some((_, e)) => cast(e.clone(), field.data_type().clone()),
                        None => col(Column::new_unqualified(field.name())),
                    };
                    values.push(state.create_physical_expr(expr, &df_schema)?);
                }
                if let Some((c, _)) = assignments
                    .iter()
                    .find(|(c, _)| self.schema.index_of(c).is_err())
                {
                    return Err(DataFusionError::Plan(format!(
                        "UPDATE {}: the table has no column '{c}'",
                        self.name
                    )));
                }
                RowChange::Update(values)
            }
        };
        // The files the filter cannot rule out (partition and column-bound pruning).
        let mut builder = self.table.scan().select_all();
        if let Some(p) = to_iceberg_predicate(&filters) {
            builder = builder.with_filter(p);
        }
        let tasks = plan_tasks(
            builder,
            format!("planning the {statement} on {}", self.name),
        )
        .await?;
        Ok(Arc::new(IcebergRewriteExec::new(
            self.name.clone(),
            self.table.clone(),
            self.catalog.clone(),
            self.commits.clone(),
            tasks,
            self.schema.clone(),
            predicate,
            change,
            mode,
        )))
    }
}

/// `2026-03-01 12:00:00.000 UTC`.
fn format_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        None => format!("{ms} ms"),
    }
}

/// The file scan tasks of a scan; errors say `context`.
async fn plan_tasks(
    builder: iceberg::scan::TableScanBuilder<'_>,
    context: String,
) -> Result<Vec<iceberg::scan::FileScanTask>> {
    let fail = |e| external(context.clone(), e);
    builder
        .build()
        .map_err(fail)?
        .plan_files()
        .await
        .map_err(fail)?
        .try_collect()
        .await
        .map_err(fail)
}

fn external(context: String, e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(format!("{context}: {e}").into())
}

#[async_trait]
impl TableProvider for IcebergTable {
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
        Ok(filter_pushdown(filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let schema: SchemaRef = Arc::new(self.schema.project(projection)?);
        // A scan needs at least one column to count rows; read the first and drop it.
        let read_schema: SchemaRef = if projection.is_empty() && !self.schema.fields().is_empty() {
            Arc::new(self.schema.project(&[0])?)
        } else {
            schema.clone()
        };
        let columns: Vec<String> = read_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut builder = self.table.scan().select(columns);
        if let Some(id) = self.snapshot {
            builder = builder.snapshot_id(id);
        }
        if let Some(predicate) = to_iceberg_predicate(filters) {
            builder = builder.with_filter(predicate);
        }
        let tasks = match builder.build() {
            Ok(scan) => scan
                .plan_files()
                .await
                .map_err(|e| external(format!("planning the scan of {}", self.name), e))?
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| external(format!("planning the scan of {}", self.name), e))?,
            Err(e) => return Err(external(format!("scanning {}", self.name), e)),
        };
        let partitions = state.config().target_partitions();
        let split_size = self
            .table
            .metadata()
            .properties()
            .get(crate::scan::SPLIT_SIZE_PROPERTY)
            .and_then(|v| v.parse::<u64>().ok());
        let schema = if projection.is_empty() {
            Arc::new(Schema::empty())
        } else {
            schema
        };
        Ok(Arc::new(IcebergScanExec::new(
            self.name.clone(),
            self.table.file_io().clone(),
            tasks,
            partitions,
            split_size,
            read_schema,
            schema,
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.refuse_writes("INSERT INTO")?;
        let write = IcebergWriteExec::new(
            input,
            self.name.clone(),
            self.table.clone(),
            self.catalog.clone(),
            self.commits.clone(),
        );
        if insert_op == InsertOp::Overwrite {
            return Ok(Arc::new(write.with_overwrite()));
        }
        if insert_op == InsertOp::Replace {
            // `MERGE` writes through its [`MergeTarget`], never here.
            return Err(DataFusionError::Plan(format!(
                "{}: a replacing insert is not a statement Meltwater plans; use MERGE INTO",
                self.name
            )));
        }
        if crate::upsert::upsert_enabled(self.table.metadata()) {
            crate::upsert::upsert_key(&self.name, self.table.metadata())?;
        }
        Ok(Arc::new(write))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.rewrite(state, filters, None).await
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.rewrite(state, filters, Some(assignments)).await
    }
}
