//! `IcebergTable`: an Iceberg table as a DataFusion table, read by [`IcebergScanExec`]
//! and written by [`IcebergWriteExec`].

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use iceberg::table::Table;

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::predicate::to_iceberg_predicate;
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
        })
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
    pub fn stream_source(&self, monitor_ms: Option<u64>) -> Arc<dyn StreamSource> {
        let source = IcebergSource::new(self.name.clone(), self.table.clone(), self.schema.clone());
        Arc::new(match monitor_ms {
            Some(ms) => source.monitored(self.catalog.clone(), ms),
            None => source,
        })
    }

    /// The catalog the table was loaded from (and commits go to).
    pub fn catalog(&self) -> &Arc<LakeCatalog> {
        &self.catalog
    }
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
        // Pruning is by partition and file statistics: rows still need the filter.
        Ok(filters
            .iter()
            .map(|f| {
                if to_iceberg_predicate(&[(*f).clone()]).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
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
        if insert_op == InsertOp::Replace {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} into the Iceberg table {} is not supported; use INSERT INTO or INSERT OVERWRITE",
                self.name
            )));
        }
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
        if crate::upsert::upsert_enabled(self.table.metadata()) {
            crate::upsert::upsert_key(&self.name, self.table.metadata())?;
        }
        Ok(Arc::new(write))
    }
}
