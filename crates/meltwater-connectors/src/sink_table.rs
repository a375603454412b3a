//! Tables that are sinks only (`print`, `blackhole`): one table type, the sink as data.
//! Batch mode writes them through a DataFusion [`DataSinkExec`]; the stream planner
//! reads [`SinkTable::target`] to build its sink operator. Reading one is an error.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::print::{PrintOptions, PrintWriter};
use crate::stream::StreamSource;
use crate::{blackhole, print};
use crate::{sink_only, Boundedness, ConnectorTable, Result, SourceMetrics, TableDef};

/// Where a sink-only table's rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Lines on stdout or stderr (`'connector' = 'print'`).
    Print(PrintOptions),
    /// Nowhere; only counted (`'connector' = 'blackhole'`).
    Blackhole,
}

/// A `print` or `blackhole` table.
#[derive(Debug)]
pub struct SinkTable {
    name: String,
    schema: SchemaRef,
    target: SinkTarget,
    metrics: Arc<SourceMetrics>,
}

impl SinkTable {
    /// A `'connector' = 'print'` table (its options validated).
    pub fn print(def: TableDef) -> Result<Self> {
        def.reject_metadata("print")?;
        let options = print::options_of(&def)?;
        Ok(Self::new(def, SinkTarget::Print(options)))
    }

    /// A `'connector' = 'blackhole'` table (it takes no options).
    pub fn blackhole(def: TableDef) -> Result<Self> {
        def.reject_metadata("blackhole")?;
        blackhole::check_options(&def)?;
        Ok(Self::new(def, SinkTarget::Blackhole))
    }

    fn new(def: TableDef, target: SinkTarget) -> Self {
        Self {
            name: def.name,
            schema: def.schema,
            target,
            metrics: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn target(&self) -> &SinkTarget {
        &self.target
    }
}

#[async_trait]
impl TableProvider for SinkTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(sink_only(&self.name, self.connector()).into())
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} into the {} table {} is not supported; use INSERT INTO",
                self.connector(),
                self.name
            )));
        }
        let sink = SinkTableWriter {
            table: self.name.clone(),
            schema: self.schema.clone(),
            connector: self.connector().to_string(),
            // One partition (DataFusion merges the input's), so lines carry no subtask
            // prefix.
            print: match &self.target {
                SinkTarget::Print(options) => Some(PrintWriter::new(&self.name, options, 0, 1)),
                SinkTarget::Blackhole => None,
            },
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

impl ConnectorTable for SinkTable {
    fn connector(&self) -> &str {
        match self.target {
            SinkTarget::Print(_) => print::CONNECTOR,
            SinkTarget::Blackhole => blackhole::CONNECTOR,
        }
    }

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    fn metrics(&self) -> Arc<SourceMetrics> {
        self.metrics.clone()
    }

    fn stream_source(&self) -> Result<Arc<dyn StreamSource>> {
        Err(sink_only(&self.name, self.connector()))
    }

    fn writable(&self) -> bool {
        true
    }

    fn readable(&self) -> bool {
        false
    }
}

/// Batch mode's writer of a sink-only table: prints each batch (print) or drops it
/// (blackhole), and counts the rows.
#[derive(Debug)]
pub(crate) struct SinkTableWriter {
    pub(crate) table: String,
    pub(crate) schema: SchemaRef,
    pub(crate) connector: String,
    pub(crate) print: Option<PrintWriter>,
}

impl DisplayAs for SinkTableWriter {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "SinkTable: connector={}, table={}",
            self.connector, self.table
        )
    }
}

#[async_trait]
impl DataSink for SinkTableWriter {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut rows = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            if let Some(writer) = &self.print {
                writer.write(&batch, None)?;
            }
            rows += batch.num_rows() as u64;
        }
        Ok(rows)
    }
}
