//! Aggregates over streams (window and updating).
//!
//! - [`assign::WindowAssignOperator`] appends window bounds to rows (stateless; the
//!   same assignment function as batch mode).
//! - [`window::WindowAggregateOperator`] aggregates rows per (window, key) and emits a
//!   window's rows once the watermark passes its end (append-only output); SESSION
//!   windows merge per key.
//! - [`session_rows::SessionRowsOperator`] is a SESSION window without an aggregate:
//!   it holds each session's rows until the watermark closes it, then emits them with
//!   the session's bounds.
//! - [`updating::UpdatingAggregateOperator`] is `GROUP BY` without a window: an updating
//!   output stream (+I, -U/+U, -D), over append-only or updating input.
//!
//! Both aggregates keep DataFusion [`Accumulator`]s per group and checkpoint them as
//! their `state()` values (merged back with `merge_batch` on restore). The window
//! aggregate over aligned windows (every window kind but merging SESSION) keeps its
//! state columnar instead when every aggregate has a DataFusion `GroupsAccumulator`
//! ([`columnar::ColumnarWindows`]), with the same checkpoint format.

pub mod assign;
mod columnar;
pub mod session_rows;
pub mod spec;
pub mod updating;
pub mod window;

pub use assign::WindowAssignOperator;
pub use session_rows::SessionRowsOperator;
pub use spec::AggregateSpec;
pub use updating::UpdatingAggregateOperator;
pub use window::{WindowAggregateOperator, WindowSpec};

use std::sync::Arc;

use datafusion::arrow::array::{
    new_empty_array, Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, filter, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::Accumulator;

use crate::message::EventTime;

/// One group's accumulators, one per aggregate function.
pub(crate) type Accumulators = Vec<Box<dyn Accumulator>>;

/// A batch's aggregate inputs (and optionally its key columns) reordered so each group's
/// rows are contiguous.
pub(crate) struct GroupedRows {
    /// Per aggregate: its input arrays, rows in group order.
    args: Vec<Vec<ArrayRef>>,
    /// Per aggregate: its FILTER mask, rows in group order.
    filters: Vec<Option<BooleanArray>>,
    /// The key columns given to [`GroupedRows::with_keys`], rows in group order.
    keys: Vec<ArrayRef>,
    /// Per group: (offset, length) in the reordered rows.
    ranges: Vec<(usize, usize)>,
}

/// Marks a row that belongs to no group (dropped).
pub(crate) const NO_GROUP: usize = usize::MAX;

impl GroupedRows {
    /// `ids[row]` is the row's group in `0..groups` or [`NO_GROUP`].
    pub(crate) fn new(
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        ids: &[usize],
        groups: usize,
    ) -> Result<Self> {
        Self::with_keys(args, filters, &[], ids, groups)
    }

    /// [`GroupedRows::new`], reordering the key columns `keys` as well.
    pub(crate) fn with_keys(
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        keys: &[ArrayRef],
        ids: &[usize],
        groups: usize,
    ) -> Result<Self> {
        let mut counts = vec![0usize; groups];
        for &g in ids {
            if g != NO_GROUP {
                counts[g] += 1;
            }
        }
        let mut ranges = Vec::with_capacity(groups);
        let mut offset = 0;
        for c in &counts {
            ranges.push((offset, *c));
            offset += c;
        }
        let mut next: Vec<usize> = ranges.iter().map(|r| r.0).collect();
        let mut order = vec![0u32; offset];
        for (row, &g) in ids.iter().enumerate() {
            if g != NO_GROUP {
                order[next[g]] = row as u32;
                next[g] += 1;
            }
        }
        // Rows already in group order (one group, none dropped): no copy.
        let identity =
            offset == ids.len() && order.iter().enumerate().all(|(i, &r)| r as usize == i);
        let order = UInt32Array::from(order);
        let reorder = |c: &ArrayRef| -> Result<ArrayRef> {
            if identity {
                Ok(Arc::clone(c))
            } else {
                Ok(take(c.as_ref(), &order, None)?)
            }
        };
        let args = args
            .iter()
            .map(|a| a.iter().map(reorder).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let keys = keys.iter().map(reorder).collect::<Result<Vec<_>>>()?;
        let filters = filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| -> Result<BooleanArray> {
                        if identity {
                            return Ok(f.clone());
                        }
                        let t = take(f, &order, None)?;
                        Ok(t.as_any()
                            .downcast_ref::<BooleanArray>()
                            .expect("take of a boolean array")
                            .clone())
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            args,
            filters,
            keys,
            ranges,
        })
    }

    /// Group `g`'s (offset, length) in the reordered rows.
    pub(crate) fn range(&self, g: usize) -> (usize, usize) {
        self.ranges[g]
    }

    /// Group `g`'s rows of the key columns.
    pub(crate) fn keys(&self, g: usize) -> Vec<ArrayRef> {
        let (offset, len) = self.ranges[g];
        self.keys.iter().map(|k| k.slice(offset, len)).collect()
    }

    /// Group `g`'s rows of aggregate `i`'s inputs.
    pub(crate) fn args(&self, i: usize, g: usize) -> Vec<ArrayRef> {
        let (offset, len) = self.ranges[g];
        self.args[i].iter().map(|a| a.slice(offset, len)).collect()
    }

    /// Group `g`'s rows of aggregate `i`'s FILTER mask (`None`: no FILTER).
    pub(crate) fn filter(&self, i: usize, g: usize) -> Option<BooleanArray> {
        let (offset, len) = self.ranges[g];
        self.filters[i].as_ref().map(|m| m.slice(offset, len))
    }

    /// Feeds group `g`'s rows into `accs` (retracting them if `retract`). Rows whose
    /// FILTER is false or NULL are skipped for that aggregate.
    pub(crate) fn update(&self, g: usize, accs: &mut Accumulators, retract: bool) -> Result<()> {
        let (_, len) = self.ranges[g];
        if len == 0 {
            return Ok(());
        }
        for (i, acc) in accs.iter_mut().enumerate() {
            let mut values = self.args(i, g);
            if let Some(mask) = self.filter(i, g) {
                if mask.true_count() == 0 {
                    continue;
                }
                if mask.true_count() < len {
                    values = values
                        .iter()
                        .map(|v| Ok(filter(v.as_ref(), &mask)?))
                        .collect::<Result<_>>()?;
                }
            }
            if retract {
                acc.retract_batch(&values)?;
            } else {
                acc.update_batch(&values)?;
            }
        }
        Ok(())
    }
}

/// All accumulators' state values, concatenated.
pub(crate) fn accumulator_state(accs: &mut Accumulators) -> Result<Vec<ScalarValue>> {
    let mut out = Vec::new();
    for a in accs.iter_mut() {
        out.extend(a.state()?);
    }
    Ok(out)
}

/// Merges row `row` of state columns (as written by [`accumulator_state`], starting at
/// `columns[0]`) into `accs`; `state_lens[i]` is accumulator `i`'s number of fields.
pub(crate) fn merge_state_row(
    accs: &mut Accumulators,
    columns: &[ArrayRef],
    row: usize,
    state_lens: &[usize],
) -> Result<()> {
    let mut c = 0;
    for (acc, &n) in accs.iter_mut().zip(state_lens) {
        let values: Vec<ArrayRef> = columns[c..c + n].iter().map(|a| a.slice(row, 1)).collect();
        acc.merge_batch(&values)?;
        c += n;
    }
    Ok(())
}

/// Merges `from`'s state into `into`.
pub(crate) fn merge_accumulators(into: &mut Accumulators, from: &mut Accumulators) -> Result<()> {
    for (a, b) in into.iter_mut().zip(from.iter_mut()) {
        let state = b.state()?;
        let arrays = state
            .into_iter()
            .map(|s| s.to_array())
            .collect::<Result<Vec<_>>>()?;
        a.merge_batch(&arrays)?;
    }
    Ok(())
}

/// Each accumulator's result.
pub(crate) fn evaluate(accs: &mut Accumulators) -> Result<Vec<ScalarValue>> {
    accs.iter_mut().map(|a| a.evaluate()).collect()
}

/// A column of `values` of type `data_type`.
pub(crate) fn scalars_to_array(values: Vec<ScalarValue>, data_type: &DataType) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(new_empty_array(data_type));
    }
    let array = ScalarValue::iter_to_array(values)?;
    if array.data_type() == data_type {
        Ok(array)
    } else {
        Ok(cast(&array, data_type)?)
    }
}

/// Columns from rows of scalars (`columns` of them, at least one row).
pub(crate) fn transpose_to_columns(
    rows: Vec<Vec<ScalarValue>>,
    columns: usize,
) -> Result<Vec<ArrayRef>> {
    let mut cols: Vec<Vec<ScalarValue>> = (0..columns)
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for (c, v) in row.into_iter().enumerate() {
            cols[c].push(v);
        }
    }
    cols.into_iter()
        .map(|c| ScalarValue::iter_to_array(c))
        .collect()
}

/// A window operator's non-keyed checkpoint state: the watermark it had reached.
pub(crate) fn watermark_state(watermark: EventTime) -> serde_json::Value {
    serde_json::json!({ "watermark": watermark })
}

/// The watermark to resume with after a restore: the lowest any old subtask had reached
/// (every row later than that was late before the checkpoint too), or `None` when the
/// checkpoint holds none.
pub(crate) fn restored_watermark(states: &[serde_json::Value]) -> Option<EventTime> {
    states
        .iter()
        .filter_map(|s| s.get("watermark").and_then(|w| w.as_i64()))
        .min()
}

/// The number of state fields of each accumulator `make` creates.
pub(crate) fn state_lens(make: &dyn Fn() -> Result<Accumulators>) -> Result<Vec<usize>> {
    make()?.iter_mut().map(|a| Ok(a.state()?.len())).collect()
}

/// Checkpoints `accs`: their state values (for [`merge_state_row`]). Since `state()`
/// may consume an accumulator's internals, `accs` is rebuilt from those values.
pub(crate) fn checkpoint_accumulators(
    accs: &mut Accumulators,
    make: &dyn Fn() -> Result<Accumulators>,
    state_lens: &[usize],
) -> Result<Vec<ScalarValue>> {
    let values = accumulator_state(accs)?;
    let arrays = values
        .iter()
        .map(|v| v.to_array())
        .collect::<Result<Vec<_>>>()?;
    let mut fresh = make()?;
    merge_state_row(&mut fresh, &arrays, 0, state_lens)?;
    *accs = fresh;
    Ok(values)
}

/// Encodes group keys (several columns) as comparable byte strings and back.
pub(crate) struct KeyCodec {
    /// `None` when there are no key columns: every row has the empty key.
    converter: Option<RowConverter>,
}

/// A batch's encoded keys.
pub(crate) enum EncodedKeys {
    Rows(Rows),
    Empty,
}

impl EncodedKeys {
    pub(crate) fn key(&self, row: usize) -> &[u8] {
        match self {
            EncodedKeys::Rows(r) => r.row(row).data(),
            EncodedKeys::Empty => &[],
        }
    }
}

impl KeyCodec {
    pub(crate) fn new(types: Vec<DataType>) -> Result<Self> {
        let converter = if types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                types.iter().map(|t| SortField::new(t.clone())).collect(),
            )?)
        };
        Ok(Self { converter })
    }

    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<EncodedKeys> {
        match &self.converter {
            Some(c) => Ok(EncodedKeys::Rows(c.convert_columns(columns)?)),
            None => Ok(EncodedKeys::Empty),
        }
    }

    /// The key columns of `keys` (as encoded by [`KeyCodec::encode`]).
    pub(crate) fn decode(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        match &self.converter {
            Some(c) => {
                let parser = c.parser();
                Ok(c.convert_rows(keys.iter().map(|k| parser.parse(k)))?)
            }
            None => Ok(vec![]),
        }
    }
}

/// Builds a snapshot batch: the key-group column (from the key columns), then `columns`.
pub(crate) fn snapshot_batch(
    key_columns: &[ArrayRef],
    key_group_count: u16,
    names: Vec<String>,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let rows = columns.first().map(|c| c.len()).unwrap_or(0);
    let groups = meltwater_state::key_groups(key_columns, rows, key_group_count)?;
    let fields: Vec<Field> = names
        .into_iter()
        .zip(&columns)
        .map(|(n, c)| Field::new(n, c.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    meltwater_state::with_key_groups(&batch, groups)
}

#[cfg(test)]
pub(crate) mod test_util;
