//! Connector tables as registered in a job's session: a thin wrapper that keeps the
//! connector's identity, so planners can find sources in a plan, ask their boundedness,
//! and read their counters.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use meltwater_connectors::{Boundedness, ConnectorTable, SourceMetrics, TableDef};

/// `WATERMARK FOR column AS expr`: the event-time column and the watermark expression
/// (SQL text, planned against the table's schema by the stream planner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkDef {
    pub column: String,
    pub expr_sql: String,
}

/// A connector table in a job.
#[derive(Debug)]
pub struct SourceTable {
    pub name: String,
    pub def: TableDef,
    pub inner: Arc<dyn ConnectorTable>,
    pub watermark: Option<WatermarkDef>,
}

impl SourceTable {
    pub fn boundedness(&self) -> Boundedness {
        self.inner.boundedness()
    }
    pub fn metrics(&self) -> Arc<SourceMetrics> {
        self.inner.metrics()
    }
    pub fn connector(&self) -> &str {
        self.inner.connector()
    }
    /// Whether `INSERT INTO` can write the table (`print`, `blackhole`).
    pub fn writable(&self) -> bool {
        self.inner.writable()
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }
    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }
    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }
    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.insert_into(state, input, insert_op).await
    }
}

/// What planners and reports need of a source found in a plan.
#[derive(Debug, Clone)]
pub struct SourceRef {
    pub name: String,
    pub connector: String,
    pub boundedness: Boundedness,
    pub metrics: Arc<SourceMetrics>,
}

/// The connector tables a plan scans, in plan order, without repeats.
pub fn sources_of(plan: &LogicalPlan) -> Vec<SourceRef> {
    let mut found: Vec<SourceRef> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                if let Some(source) = provider.as_any().downcast_ref::<SourceTable>() {
                    if !found.iter().any(|s| s.name == source.name) {
                        found.push(SourceRef {
                            name: source.name.clone(),
                            connector: source.connector().to_string(),
                            boundedness: source.boundedness(),
                            metrics: source.metrics(),
                        });
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Why `plan` cannot run because it reads a sink-only connector table (`print`,
/// `blackhole`): `table 'out': a print table is a sink only; it cannot be read`.
pub fn unreadable_in(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                if let Some(t) = provider.as_any().downcast_ref::<SourceTable>() {
                    if !t.inner.readable() {
                        found = Some(
                            meltwater_connectors::sink_only(&t.name, t.connector()).to_string(),
                        );
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
