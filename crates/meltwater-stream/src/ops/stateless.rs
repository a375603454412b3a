//! Filters and projections over Arrow batches with DataFusion physical expressions:
//! anything DataFusion evaluates row by row. On an updating stream the op column rides
//! along: expressions see the rows without it, and it is re-attached (filtered with
//! the rows).

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::error::Result;

use crate::changelog::{is_updating, updating_schema, OP_COLUMN};
use crate::graph::Step;
use crate::message::{EventTime, MIN_WATERMARK};
use crate::operator::{Operator, Output};

pub struct StatelessOperator {
    steps: Vec<Step>,
    /// The input's watermark so far, what `CURRENT_WATERMARK` returns here.
    watermark: Option<EventTime>,
}

impl StatelessOperator {
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            watermark: None,
        }
    }
}

/// Applies the steps to a batch (append-only: as is; updating: op column carried).
pub fn apply_steps(steps: &[Step], batch: RecordBatch) -> Result<RecordBatch> {
    let updating = is_updating(&batch.schema());
    let mut batch = batch;
    for step in steps {
        batch = match step {
            Step::Filter(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = mask.as_boolean();
                // NULL is not true: such rows are dropped.
                let mask = if mask.null_count() > 0 {
                    datafusion::arrow::compute::prep_null_mask_filter(mask)
                } else {
                    mask.clone()
                };
                filter_record_batch(&batch, &mask)?
            }
            Step::Project { exprs, schema } => {
                let rows = batch.num_rows();
                let mut columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(rows)))
                    .collect::<Result<Vec<_>>>()?;
                let schema = if updating {
                    let op = batch.column(batch.schema().index_of(OP_COLUMN)?).clone();
                    columns.push(op);
                    updating_schema(schema)
                } else {
                    schema.clone()
                };
                // Expressions may compute nullable values for non-null declared fields
                // (and the other way round); the plan's schema is the contract.
                RecordBatch::try_new_with_options(
                    schema,
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
        };
    }
    Ok(batch)
}

#[async_trait]
impl Operator for StatelessOperator {
    fn name(&self) -> String {
        "calc".into()
    }

    async fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let steps = &self.steps;
        let batch = meltwater_plan::watermark_fn::with_watermark(self.watermark, || {
            apply_steps(steps, batch)
        })?;
        out.push(batch);
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: EventTime, _out: &mut Output) -> Result<EventTime> {
        if watermark > MIN_WATERMARK {
            self.watermark = Some(watermark);
        }
        Ok(watermark)
    }
}

/// `UNION ALL`: passes every input's rows on, relabelled with the union's schema (the
/// planner has already coerced the inputs to the same column types).
pub struct UnionOperator {
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl UnionOperator {
    pub fn new(schema: datafusion::arrow::datatypes::SchemaRef) -> Self {
        Self { schema }
    }
}

#[async_trait]
impl Operator for UnionOperator {
    fn name(&self) -> String {
        "union".into()
    }

    async fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let rows = batch.num_rows();
        out.push(RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?);
        Ok(())
    }
}
