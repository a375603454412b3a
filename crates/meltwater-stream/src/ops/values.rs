//! Constant rows (`VALUES`, `SELECT 'x', 1` without `FROM`) as a bounded source of one
//! split, computed with DataFusion once when the split opens.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{collect, ExecutionPlan};
use meltwater_connectors::stream::{Split, SplitPosition, SplitReader, StreamSource};
use meltwater_connectors::{ConnectorError, Result};

#[derive(Debug)]
pub struct ValuesSource {
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
}

impl ValuesSource {
    pub fn new(plan: Arc<dyn ExecutionPlan>, ctx: Arc<TaskContext>) -> Self {
        Self { plan, ctx }
    }
}

fn err(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unsupported {
        table: "VALUES".into(),
        message: e.to_string(),
    }
}

#[async_trait]
impl StreamSource for ValuesSource {
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        let s = self.plan.schema();
        match projection {
            Some(p) => Arc::new(s.project(p).expect("projection within the schema")),
            None => s,
        }
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        Ok(vec![Split {
            id: "values".into(),
        }])
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        None
    }

    async fn open(
        &self,
        _split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        _batch_size: usize,
    ) -> Result<Box<dyn SplitReader>> {
        let batches = collect(self.plan.clone(), self.ctx.clone())
            .await
            .map_err(err)?;
        let all = concat_batches(&self.plan.schema(), &batches).map_err(err)?;
        let all = match projection {
            Some(p) => all.project(p).map_err(err)?,
            None => all,
        };
        let start = (position as usize).min(all.num_rows());
        let rest = all.slice(start, all.num_rows() - start);
        Ok(Box::new(ValuesReader {
            batch: Some(rest),
            total: all.num_rows() as u64,
        }))
    }
}

struct ValuesReader {
    batch: Option<RecordBatch>,
    total: u64,
}

#[async_trait]
impl SplitReader for ValuesReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>> {
        Ok(self
            .batch
            .take()
            .filter(|b| b.num_rows() > 0)
            .map(|b| (b, self.total)))
    }
}
