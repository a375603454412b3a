//! Query results as sqllogictest rows: one string per value, one type letter per column.
//!
//! The normalisation, the same in every mode:
//!
//! | Arrow type | letter | value |
//! |---|---|---|
//! | Boolean | `B` | `true` / `false` |
//! | (U)Int8..64 | `I` | decimal |
//! | Float16/32/64 | `R` | rounded to 6 decimals, trailing zeros and dot dropped (`2.5`, `3`, `0.333333`), `NaN`, `inf`, `-inf` |
//! | Decimal | `R` | exact, with the column's scale (`12.50`) |
//! | Utf8 / LargeUtf8 / Utf8View | `T` | the text; the empty string as `(empty)` |
//! | Date32/64 | `D` | `2026-03-01` |
//! | Timestamp | `P` | ISO-8601 as Arrow prints it: `2026-03-01T12:00:05`, fractions only when non-zero (`…:05.250`), `Z`/offset for zoned types |
//! | anything else | `?` | Arrow's display |
//!
//! NULL is `NULL` in every type.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::ColumnType;

/// A column's type letter in a `query` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SltType {
    Boolean,
    Integer,
    Real,
    Text,
    Date,
    Timestamp,
    Other,
}

impl ColumnType for SltType {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'B' => Self::Boolean,
            'I' => Self::Integer,
            'R' => Self::Real,
            'T' => Self::Text,
            'D' => Self::Date,
            'P' => Self::Timestamp,
            _ => Self::Other,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Self::Boolean => 'B',
            Self::Integer => 'I',
            Self::Real => 'R',
            Self::Text => 'T',
            Self::Date => 'D',
            Self::Timestamp => 'P',
            Self::Other => '?',
        }
    }
}

impl SltType {
    pub fn of(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Self::Boolean,
            t if t.is_integer() => Self::Integer,
            t if t.is_floating() => Self::Real,
            DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Self::Real,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::Text,
            DataType::Date32 | DataType::Date64 => Self::Date,
            DataType::Timestamp(..) => Self::Timestamp,
            _ => Self::Other,
        }
    }
}

/// A float as the `.slt` files write it.
fn float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// The rows of `batches` and the type letters of their columns.
pub fn to_rows(batches: &[RecordBatch]) -> Result<(Vec<SltType>, Vec<Vec<String>>), String> {
    let Some(first) = batches.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| SltType::of(f.data_type()))
        .collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let columns = batch.columns();
        let formatters = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot format the result: {e}"))?;
        for row in 0..batch.num_rows() {
            let mut values = Vec::with_capacity(columns.len());
            for (column, formatter) in columns.iter().zip(&formatters) {
                values.push(value(column.as_ref(), formatter, row));
            }
            rows.push(values);
        }
    }
    Ok((types, rows))
}

fn value(column: &dyn Array, formatter: &ArrayFormatter<'_>, row: usize) -> String {
    if column.is_null(row) {
        return "NULL".into();
    }
    match column.data_type() {
        DataType::Float16 => float(column.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(column.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(column.as_primitive::<Float64Type>().value(row)),
        _ => {
            let s = formatter.value(row).to_string();
            if s.is_empty() && SltType::of(column.data_type()) == SltType::Text {
                "(empty)".into()
            } else {
                s
            }
        }
    }
}
