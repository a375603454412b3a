//! Helpers for the aggregate operators' tests: real DataFusion plans over in-memory tables.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Aggregate, LogicalPlan};
use datafusion::prelude::SessionContext;
use meltwater_state::KeyGroupRange;

use super::AggregateSpec;
use crate::operator::{Operator, OperatorSnapshot, Output, RestoredState, SubtaskInfo};

pub(crate) fn info(index: usize, parallelism: usize) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: "agg#1".into(),
        index,
        parallelism,
        key_groups: 128,
    }
}

/// Plans `sql` over table `t` (an empty batch of `schema`) and returns its aggregate.
pub(crate) async fn spec_for(schema: SchemaRef, sql: &str) -> AggregateSpec {
    let ctx = SessionContext::new();
    ctx.register_batch("t", RecordBatch::new_empty(schema))
        .unwrap();
    let df = ctx.sql(sql).await.unwrap();
    // Analyzed (types coerced) but not optimized, as the stream planner sees it.
    let state = ctx.state();
    let plan = state
        .analyzer()
        .execute_and_check(df.logical_plan().clone(), state.config_options(), |_, _| {})
        .unwrap();
    let mut found: Option<Aggregate> = None;
    plan.apply(|p| {
        if let LogicalPlan::Aggregate(a) = p {
            found = Some(a.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    AggregateSpec::try_new(&found.expect("an aggregate"), &ctx.state()).unwrap()
}

/// (k Utf8, v Int64, ts Timestamp(ms))
pub(crate) fn source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]))
}

/// The source schema plus the window columns.
pub(crate) fn windowed_schema() -> SchemaRef {
    let mut fields: Vec<Field> = source_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in ["window_start", "window_end", "window_time"] {
        fields.push(Field::new(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// A source batch of (k, v, ts ms).
pub(crate) fn source(rows: &[(Option<&str>, Option<i64>, Option<i64>)]) -> RecordBatch {
    let k: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let v: ArrayRef = Arc::new(Int64Array::from(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    ));
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(source_schema(), vec![k, v, ts]).unwrap()
}

/// Each row as its values joined by `,` (NULL as `null`).
pub(crate) fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let vals: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        "null".to_string()
                    } else {
                        array_value_to_string(c, r).unwrap()
                    }
                })
                .collect();
            out.push(vals.join(","));
        }
    }
    out
}

pub(crate) async fn feed(op: &mut dyn Operator, batch: RecordBatch) -> Vec<RecordBatch> {
    let mut out = Output::default();
    op.process(0, batch, &mut out).await.unwrap();
    out.take()
}

pub(crate) async fn watermark(op: &mut dyn Operator, wm: i64) -> Vec<RecordBatch> {
    let mut out = Output::default();
    op.on_watermark(wm, &mut out).await.unwrap();
    out.take()
}

pub(crate) async fn snapshot(op: &mut dyn Operator) -> OperatorSnapshot {
    let mut out = Output::default();
    op.snapshot(1, &mut out).await.unwrap()
}

/// The part of `snapshot` subtask `index` of `parallelism` restores.
pub(crate) fn restored(
    snapshot: &OperatorSnapshot,
    index: usize,
    parallelism: usize,
) -> RestoredState {
    let range = KeyGroupRange::of_subtask(index, 128, parallelism);
    RestoredState {
        keyed: snapshot
            .keyed
            .iter()
            .map(|b| range.select(b).unwrap())
            .collect(),
        states: vec![snapshot.state.clone()],
    }
}

/// The rows of `batch` whose key (column `key_column`) belongs to subtask `index`.
pub(crate) fn route(
    batch: &RecordBatch,
    key_column: usize,
    index: usize,
    parallelism: usize,
) -> RecordBatch {
    let range = KeyGroupRange::of_subtask(index, 128, parallelism);
    let groups =
        meltwater_state::key_groups(&[batch.column(key_column).clone()], batch.num_rows(), 128)
            .unwrap();
    let mask: datafusion::arrow::array::BooleanArray =
        groups.iter().map(|g| Some(range.contains(*g))).collect();
    datafusion::arrow::compute::filter_record_batch(batch, &mask).unwrap()
}

/// A deterministic pseudo-random source: each call gives a number in `[0, n)`.
pub(crate) fn random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed;
    move |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    }
}

pub(crate) type Row = (Option<String>, Option<i64>, Option<i64>);

/// `batches` batches of `per_batch` rows over `keys` keys (and some NULL keys), values
/// in [0, 100) (some NULL); batch `b`'s times lie in [100 b - 200, 100 b + 100), so
/// some fall into windows the watermark `100 b - 150` of the batch before has fired.
pub(crate) fn random_batches(
    seed: u64,
    batches: usize,
    per_batch: usize,
    keys: u64,
) -> Vec<RecordBatch> {
    let mut next = random(seed);
    (0..batches)
        .map(|b| {
            let rows: Vec<Row> = (0..per_batch)
                .map(|_| {
                    let k = match next(20) {
                        0 => None,
                        _ => Some(format!("k{}", next(keys))),
                    };
                    let v = match next(10) {
                        0 => None,
                        _ => Some(next(100) as i64),
                    };
                    let t = (100 * b as i64 - 200 + next(300) as i64).max(0);
                    (k, v, Some(t))
                })
                .collect();
            let refs: Vec<_> = rows
                .iter()
                .map(|(k, v, t)| (k.as_deref(), *v, *t))
                .collect();
            source(&refs)
        })
        .collect()
}

/// The watermark after batch `b` of [`random_batches`].
pub(crate) fn random_watermark(b: usize) -> i64 {
    100 * b as i64 - 50
}
