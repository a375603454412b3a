//! Updating streams (DESIGN.md §5): an append-only stream is plain rows; an updating
//! stream carries one more, last column, [`OP_COLUMN`], with each row's kind. Shared by
//! changelog sources (`debezium-json`) and the stream runtime.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int8Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::Result;

/// The name of the row-kind column of an updating stream.
pub const OP_COLUMN: &str = "__op";

/// What a row of an updating stream does to the result (Flink's `RowKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum RowKind {
    /// `+I`: a new row.
    Insert = 0,
    /// `-U`: the previous version of an updated row (retracted).
    UpdateBefore = 1,
    /// `+U`: the new version of an updated row.
    UpdateAfter = 2,
    /// `-D`: a row removed.
    Delete = 3,
}

impl RowKind {
    pub fn from_i8(v: i8) -> Option<Self> {
        Some(match v {
            0 => RowKind::Insert,
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            _ => return None,
        })
    }

    /// Whether the row adds to the result (`+I`, `+U`) rather than retracting (`-U`, `-D`).
    pub fn is_accumulate(self) -> bool {
        matches!(self, RowKind::Insert | RowKind::UpdateAfter)
    }

    pub fn short(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }
}

/// The op column's field.
pub fn op_field() -> Field {
    Field::new(OP_COLUMN, DataType::Int8, false)
}

/// `schema` plus the op column.
pub fn updating_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(op_field()));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Whether a batch's schema is that of an updating stream.
pub fn is_updating(schema: &Schema) -> bool {
    schema
        .fields()
        .last()
        .is_some_and(|f| f.name() == OP_COLUMN)
}

/// Appends an op column to `batch` (whose schema lacks it).
pub fn with_ops(batch: &RecordBatch, ops: &[RowKind]) -> Result<RecordBatch> {
    let schema = updating_schema(&batch.schema());
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(Int8Array::from_iter_values(
        ops.iter().map(|k| *k as i8),
    )));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Splits an updating batch into its rows (without the op column) and their kinds.
pub fn split_ops(batch: &RecordBatch) -> Result<(RecordBatch, Vec<RowKind>)> {
    let last = batch.num_columns() - 1;
    let ops = batch
        .column(last)
        .as_primitive::<Int8Type>()
        .values()
        .iter()
        .map(|v| RowKind::from_i8(*v).unwrap_or(RowKind::Insert))
        .collect();
    let mut rows = batch.clone();
    rows.remove_column(last);
    Ok((rows, ops))
}

/// The result a changelog describes: `+I`/`+U` rows added, `-U`/`-D` rows removed (one
/// equal row each), in order of first insertion. Append-only batches are returned as is.
pub fn materialize(batches: &[RecordBatch], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    if !is_updating(&first.schema()) {
        return Ok(batches.to_vec());
    }
    let converter = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    // Row bytes -> (count, batch, row) of the first occurrence.
    let mut live: HashMap<Vec<u8>, (i64, usize, usize, u64)> = HashMap::new();
    let mut seq = 0u64;
    let mut plain = Vec::new();
    for batch in batches {
        let (rows_batch, ops) = split_ops(batch)?;
        let rows_batch = RecordBatch::try_new(schema.clone(), rows_batch.columns().to_vec())?;
        let rows = converter.convert_columns(rows_batch.columns())?;
        let bi = plain.len();
        for (r, op) in ops.iter().enumerate() {
            let key = rows.row(r).as_ref().to_vec();
            let e = live.entry(key).or_insert((0, bi, r, seq));
            if op.is_accumulate() {
                if e.0 <= 0 {
                    *e = (e.0, bi, r, seq);
                }
                e.0 += 1;
            } else {
                e.0 -= 1;
            }
            seq += 1;
        }
        plain.push(rows_batch);
    }
    let mut kept: Vec<(u64, usize, usize, i64)> = live
        .into_values()
        .filter(|(c, ..)| *c > 0)
        .map(|(c, b, r, s)| (s, b, r, c))
        .collect();
    kept.sort();
    let mut out = Vec::new();
    for (_, b, r, c) in kept {
        let idx = UInt32Array::from(vec![r as u32; c as usize]);
        out.push(take_record_batch(&plain[b], &idx)?);
    }
    Ok(out)
}
