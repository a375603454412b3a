//! What an aggregate computes, in physical form: the group expressions and the aggregate
//! functions (with their `FILTER` clauses) of a logical `Aggregate` node.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::plan_err;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Aggregate, Expr};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_planner::create_aggregate_expr_and_maybe_filter;

use crate::changelog;

/// The physical form of a logical `Aggregate`.
///
/// All expressions are evaluated on batches of [`AggregateSpec::input_schema`]. When the
/// input is an updating stream that schema ends with the op column
/// ([`changelog::OP_COLUMN`]); the expressions are then evaluated on the batch *as
/// received*, op column included (they reference columns by index, and the op column is
/// last, so no expression refers to it), and the operators read the op column themselves.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    /// Group expressions with their output names, in `GROUP BY` order.
    pub group_exprs: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// The aggregate functions, in output order.
    pub aggr_exprs: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's `FILTER (WHERE ...)` predicate.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    pub input_schema: SchemaRef,
    /// Group columns then aggregate columns (the `Aggregate` node's schema).
    pub output_schema: SchemaRef,
}

impl AggregateSpec {
    pub fn try_new(agg: &Aggregate, state: &SessionState) -> Result<AggregateSpec> {
        let logical_input = agg.input.schema();
        let input_schema: SchemaRef = Arc::clone(logical_input.inner());
        let output_schema: SchemaRef = Arc::clone(agg.schema.inner());
        let mut group_exprs = Vec::with_capacity(agg.group_expr.len());
        for (i, e) in agg.group_expr.iter().enumerate() {
            if matches!(e, Expr::GroupingSet(_)) {
                return plan_err!(
                    "GROUPING SETS, CUBE and ROLLUP are not supported in streaming aggregates ({e})"
                );
            }
            let physical = state.create_physical_expr(e.clone(), logical_input)?;
            group_exprs.push((physical, output_schema.field(i).name().clone()));
        }
        let mut aggr_exprs = Vec::with_capacity(agg.aggr_expr.len());
        let mut filters = Vec::with_capacity(agg.aggr_expr.len());
        for e in &agg.aggr_expr {
            let (expr, filter, _order_bys) = create_aggregate_expr_and_maybe_filter(
                e,
                logical_input,
                &input_schema,
                state.execution_props(),
            )?;
            aggr_exprs.push(expr);
            filters.push(filter);
        }
        Ok(AggregateSpec {
            group_exprs,
            aggr_exprs,
            filters,
            input_schema,
            output_schema,
        })
    }

    /// The same aggregate over an updating version of its input: the input schema gains
    /// the op column (last, so the expressions' column indices stay valid).
    pub fn with_updating_input(mut self) -> Self {
        if !changelog::is_updating(&self.input_schema) {
            self.input_schema = changelog::updating_schema(&self.input_schema);
        }
        self
    }

    /// Whether the input is an updating stream.
    pub fn is_updating_input(&self) -> bool {
        changelog::is_updating(&self.input_schema)
    }

    /// The group expressions' values on `batch`.
    pub fn evaluate_groups(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.group_exprs
            .iter()
            .map(|(e, _)| e.evaluate(batch)?.into_array(batch.num_rows()))
            .collect()
    }

    /// The group expressions' result types.
    pub fn group_types(&self) -> Result<Vec<DataType>> {
        self.group_exprs
            .iter()
            .map(|(e, _)| e.data_type(&self.input_schema))
            .collect()
    }

    /// Each aggregate's input arrays on `batch`: its arguments, then its `ORDER BY`
    /// expressions (what DataFusion's accumulators expect).
    pub fn evaluate_args(&self, batch: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        let rows = batch.num_rows();
        self.aggr_exprs
            .iter()
            .map(|a| {
                let all = a.all_expressions();
                all.args
                    .iter()
                    .chain(all.order_by_exprs.iter())
                    .map(|e| e.evaluate(batch)?.into_array(rows))
                    .collect()
            })
            .collect()
    }

    /// Each aggregate's `FILTER` mask on `batch` (`None`: no filter).
    pub fn evaluate_filters(&self, batch: &RecordBatch) -> Result<Vec<Option<BooleanArray>>> {
        self.filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(f) => {
                    let v = f.evaluate(batch)?.into_array(batch.num_rows())?;
                    Ok(Some(v.as_boolean().clone()))
                }
            })
            .collect()
    }

    /// The output schema's group fields.
    pub fn group_schema(&self) -> Schema {
        Schema::new(self.output_schema.fields()[..self.group_exprs.len()].to_vec())
    }
}
