//! The `print` connector: a sink that writes every row to stdout (or stderr) as Flink's
//! print connector does.
//!
//! ```sql
//! CREATE TABLE out (id BIGINT, name STRING) WITH ('connector' = 'print');
//! INSERT INTO out SELECT id, name FROM src;   -- prints +I[1, alice]
//! ```
//!
//! # Lines
//! One line per row: the row kind (`+I` for an append-only stream; `+I`, `-U`, `+U`, `-D`
//! for an updating one), then the values in brackets, separated by `, `: `+I[1, alice, null]`.
//! Values are written as Flink's `Row.toString()` writes the Java values of their SQL types
//! (see [`format_value`]): NULL as `null`, `DOUBLE` as Java's `Double.toString`
//! (`2.5`, `1.0`, `1.0E7`), `DECIMAL` as `BigDecimal.toString` (`12.50`, `1E-8`), `TIMESTAMP`
//! as `LocalDateTime.toString` (`2026-03-01T12:00`, `2026-03-01T12:00:05.250`),
//! `TIMESTAMP_LTZ` as `Instant.toString` (`2026-03-01T12:00:00Z`), `BYTES` as Java's signed
//! byte array (`[104, -1]`), `ARRAY` as `[1, 2, null]`.
//!
//! A line's prefix is Flink's `PrintSinkOutputWriter`'s: `'print-identifier'` gives
//! `identifier> `; when the sink runs with parallelism above 1 (stream mode), the 1-based
//! subtask index is added: `2> ` or `identifier:2> `.
//!
//! # Options
//! | option | meaning |
//! |---|---|
//! | `print-identifier` | a prefix for every line |
//! | `standard-error` | `true`: write to stderr instead of stdout (default `false`) |
//!
//! Each batch's lines are written with one call and flushed, so rows show as they come and
//! lines of parallel subtasks never mix. A print table cannot be read.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::{DataFusionError, Result as DfResult};

use crate::options::OptionReader;
use crate::{Result, TableDef};

pub(crate) const CONNECTOR: &str = "print";
const OPTIONS: &[&str] = &["connector", "print-identifier", "standard-error"];

/// The kind of every row of an append-only stream.
pub const INSERT_KIND: &str = "+I";

/// A print table's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrintOptions {
    /// `'print-identifier'`: the prefix of every line.
    pub identifier: Option<String>,
    /// `'standard-error'`: write to stderr instead of stdout.
    pub standard_error: bool,
}

impl PrintOptions {
    /// The prefix of the lines subtask `subtask` (0-based) of `parallelism` writes.
    pub fn prefix(&self, subtask: usize, parallelism: usize) -> String {
        match self.identifier.as_deref().filter(|i| !i.is_empty()) {
            Some(id) if parallelism > 1 => format!("{id}:{}> ", subtask + 1),
            Some(id) => format!("{id}> "),
            None if parallelism > 1 => format!("{}> ", subtask + 1),
            None => String::new(),
        }
    }
}

/// Writes rows of a print table: one subtask's writer.
#[derive(Debug, Clone)]
pub struct PrintWriter {
    pub(crate) table: String,
    pub(crate) prefix: String,
    pub(crate) standard_error: bool,
}

impl PrintWriter {
    /// The writer of subtask `subtask` (0-based) of `parallelism` of table `table`.
    pub fn new(table: &str, options: &PrintOptions, subtask: usize, parallelism: usize) -> Self {
        Self {
            table: table.to_string(),
            prefix: options.prefix(subtask, parallelism),
            standard_error: options.standard_error,
        }
    }

    /// The lines of `batch`, each ending in `\n`; `kinds` gives each row's kind (`+I`,
    /// `-U`, `+U`, `-D`), `None` means `+I` for every row.
    pub fn format(&self, batch: &RecordBatch, kinds: Option<&[&str]>) -> String {
        let mut out = String::new();
        for row in 0..batch.num_rows() {
            out.push_str(&self.prefix);
            let kind = kinds
                .and_then(|k| k.get(row).copied())
                .unwrap_or(INSERT_KIND);
            format_row(&mut out, kind, batch.columns(), row);
            out.push('\n');
        }
        out
    }

    /// Writes the lines of `batch` (see [`PrintWriter::format`]) with one call and
    /// flushes them.
    pub fn write(&self, batch: &RecordBatch, kinds: Option<&[&str]>) -> DfResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let text = self.format(batch, kinds);
        let result = if self.standard_error {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes()).and_then(|_| err.flush())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|_| out.flush())
        };
        result.map_err(|e| {
            DataFusionError::Execution(format!(
                "print table '{}': cannot write to {}: {e}",
                self.table,
                if self.standard_error {
                    "stderr"
                } else {
                    "stdout"
                }
            ))
        })
    }
}

/// Appends `kind[v1, v2, ...]`, the values of row `row` of `columns`, to `out`.
pub fn format_row(out: &mut String, kind: &str, columns: &[Arc<dyn Array>], row: usize) {
    out.push_str(kind);
    out.push('[');
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        format_value(out, c.as_ref(), row);
    }
    out.push(']');
}

/// Appends the value at `row` of `array` to `out` as Flink's print connector writes it:
/// the Java `toString()` of the value's Flink external type, `null` for NULL.
pub fn format_value(out: &mut String, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.push_str("null");
        return;
    }
    // Writing to a String cannot fail.
    let _ = write_value(out, array, row);
}

fn write_value(out: &mut String, a: &dyn Array, row: usize) -> fmt::Result {
    match a.data_type() {
        DataType::Null => out.push_str("null"),
        DataType::Boolean => write!(out, "{}", a.as_boolean().value(row))?,
        DataType::Int8 => write!(out, "{}", a.as_primitive::<Int8Type>().value(row))?,
        DataType::Int16 => write!(out, "{}", a.as_primitive::<Int16Type>().value(row))?,
        DataType::Int32 => write!(out, "{}", a.as_primitive::<Int32Type>().value(row))?,
        DataType::Int64 => write!(out, "{}", a.as_primitive::<Int64Type>().value(row))?,
        DataType::UInt8 => write!(out, "{}", a.as_primitive::<UInt8Type>().value(row))?,
        DataType::UInt16 => write!(out, "{}", a.as_primitive::<UInt16Type>().value(row))?,
        DataType::UInt32 => write!(out, "{}", a.as_primitive::<UInt32Type>().value(row))?,
        DataType::UInt64 => write!(out, "{}", a.as_primitive::<UInt64Type>().value(row))?,
        DataType::Float16 => out.push_str(&java_f32(
            a.as_primitive::<Float16Type>().value(row).to_f32(),
        )),
        DataType::Float32 => out.push_str(&java_f32(a.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => out.push_str(&java_double(a.as_primitive::<Float64Type>().value(row))),
        DataType::Decimal128(_, scale) => {
            let v = a.as_primitive::<Decimal128Type>().value(row);
            out.push_str(&java_big_decimal(v, *scale));
        }
        DataType::Utf8 => out.push_str(a.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => out.push_str(a.as_string::<i64>().value(row)),
        DataType::Utf8View => out.push_str(a.as_string_view().value(row)),
        DataType::Binary => java_bytes(out, a.as_binary::<i32>().value(row))?,
        DataType::LargeBinary => java_bytes(out, a.as_binary::<i64>().value(row))?,
        DataType::BinaryView => java_bytes(out, a.as_binary_view().value(row))?,
        DataType::FixedSizeBinary(_) => java_bytes(out, a.as_fixed_size_binary().value(row))?,
        DataType::Date32 => {
            let days = a.as_primitive::<Date32Type>().value(row);
            match NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)) {
                Some(d) => java_date(out, d)?,
                None => write!(out, "{days}")?,
            }
        }
        DataType::Date64 => {
            let ms = a.as_primitive::<Date64Type>().value(row);
            match DateTime::from_timestamp_millis(ms) {
                Some(t) => java_date(out, t.date_naive())?,
                None => write!(out, "{ms}")?,
            }
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(row),
            };
            match timestamp(v, *unit) {
                // TIMESTAMP_LTZ is a java.time.Instant: always seconds, in UTC.
                Some(t) if tz.is_some() => {
                    java_date(out, t.date())?;
                    write!(out, "T{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())?;
                    java_fraction(out, t.nanosecond())?;
                    out.push('Z');
                }
                // TIMESTAMP is a java.time.LocalDateTime.
                Some(t) => {
                    java_date(out, t.date())?;
                    out.push('T');
                    java_time(out, t.time())?;
                }
                None => write!(out, "{v}")?,
            }
        }
        DataType::List(_) => java_list(out, &a.as_list::<i32>().value(row))?,
        DataType::LargeList(_) => java_list(out, &a.as_list::<i64>().value(row))?,
        DataType::FixedSizeList(..) => java_list(out, &a.as_fixed_size_list().value(row))?,
        _ => {
            // Types no DDL declares (times, intervals, structs, maps, ...): Arrow's display.
            let options = FormatOptions::default().with_null("null");
            match ArrayFormatter::try_new(a, &options) {
                Ok(f) => write!(out, "{}", f.value(row))?,
                Err(_) => write!(out, "<{}>", a.data_type())?,
            }
        }
    }
    Ok(())
}

/// Java's `Double.toString`: plain with at least one fractional digit for magnitudes in
/// [1e-3, 1e7), else `d.dddE±n`; the shortest digits that read back as the same value.
fn java_double(v: f64) -> String {
    java_float(
        v.to_string(),
        format!("{v:e}"),
        v.is_nan(),
        v.is_infinite(),
        v.abs(),
        v.is_sign_negative(),
    )
}

/// Java's `Float.toString`: [`java_double`]'s rules with the shortest digits of the `f32`.
fn java_f32(v: f32) -> String {
    java_float(
        v.to_string(),
        format!("{v:e}"),
        v.is_nan(),
        v.is_infinite(),
        v.abs() as f64,
        v.is_sign_negative(),
    )
}

/// `Float.toString` / `Double.toString` from Rust's shortest plain (`plain`) and
/// scientific (`sci`) renderings of the same value.
fn java_float(
    plain: String,
    sci: String,
    nan: bool,
    infinite: bool,
    magnitude: f64,
    negative: bool,
) -> String {
    if nan {
        return "NaN".into();
    }
    if infinite {
        return if negative { "-Infinity" } else { "Infinity" }.into();
    }
    if magnitude == 0.0 {
        return if negative { "-0.0" } else { "0.0" }.into();
    }
    if (1e-3..1e7).contains(&magnitude) {
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
        if mantissa.contains('.') {
            format!("{mantissa}E{exponent}")
        } else {
            format!("{mantissa}.0E{exponent}")
        }
    }
}

/// Java's `BigDecimal.toString` of `unscaled × 10^-scale`: plain when the scale is not
/// negative and the adjusted exponent is at least -6 (`12.50`, `0.000001`), else
/// scientific (`1E-7`, `1.5E+3`).
fn java_big_decimal(unscaled: i128, scale: i8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as i64;
    let n = digits.len() as i64;
    let adjusted = n - 1 - scale;
    let mut out = String::new();
    if unscaled < 0 {
        out.push('-');
    }
    if scale >= 0 && adjusted >= -6 {
        if scale == 0 {
            out.push_str(&digits);
        } else if n > scale {
            let (int, frac) = digits.split_at((n - scale) as usize);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (scale - n) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('E');
        if adjusted >= 0 {
            out.push('+');
        }
        out.push_str(&adjusted.to_string());
    }
    out
}

/// A Java `byte[]` as `Arrays.toString` writes it: signed bytes.
fn java_bytes(out: &mut String, bytes: &[u8]) -> fmt::Result {
    out.push('[');
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write!(out, "{}", *b as i8)?;
    }
    out.push(']');
    Ok(())
}

/// An array's elements: `[1, null, 3]`.
fn java_list(out: &mut String, values: &Arc<dyn Array>) -> fmt::Result {
    out.push('[');
    for i in 0..values.len() {
        if i > 0 {
            out.push_str(", ");
        }
        format_value(out, values.as_ref(), i);
    }
    out.push(']');
    Ok(())
}

/// `LocalDate.toString`: `2026-03-01`; years beyond 9999 get a `+`.
fn java_date(out: &mut String, d: NaiveDate) -> fmt::Result {
    let y = d.year();
    if y > 9999 {
        write!(out, "+{y}")?;
    } else if y < 0 {
        write!(out, "-{:04}", -(y as i64))?;
    } else {
        write!(out, "{y:04}")?;
    }
    write!(out, "-{:02}-{:02}", d.month(), d.day())
}

/// `LocalTime.toString`: `HH:mm`, then `:ss` when seconds or nanoseconds are not zero,
/// then the fraction in groups of three digits.
fn java_time(out: &mut String, t: NaiveTime) -> fmt::Result {
    write!(out, "{:02}:{:02}", t.hour(), t.minute())?;
    let nanos = t.nanosecond();
    if t.second() > 0 || nanos > 0 {
        write!(out, ":{:02}", t.second())?;
        java_fraction(out, nanos)?;
    }
    Ok(())
}

/// `.SSS`, `.SSSSSS` or `.SSSSSSSSS`, whichever shows every non-zero digit; nothing for 0.
fn java_fraction(out: &mut String, nanos: u32) -> fmt::Result {
    if nanos == 0 {
        Ok(())
    } else if nanos.is_multiple_of(1_000_000) {
        write!(out, ".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        write!(out, ".{:06}", nanos / 1_000)
    } else {
        write!(out, ".{nanos:09}")
    }
}

fn timestamp(v: i64, unit: TimeUnit) -> Option<NaiveDateTime> {
    let (per_sec, nanos_per) = match unit {
        TimeUnit::Second => (1, 1_000_000_000),
        TimeUnit::Millisecond => (1_000, 1_000_000),
        TimeUnit::Microsecond => (1_000_000, 1_000),
        TimeUnit::Nanosecond => (1_000_000_000, 1),
    };
    let secs = v.div_euclid(per_sec);
    let nanos = (v.rem_euclid(per_sec) * nanos_per) as u32;
    DateTime::from_timestamp(secs, nanos).map(|t| t.naive_utc())
}

/// Validates a print table's options.
pub(crate) fn options_of(def: &TableDef) -> Result<PrintOptions> {
    let reader = OptionReader::new(def, CONNECTOR);
    for key in def.options.keys() {
        if !OPTIONS.contains(&key.as_str()) {
            let valid = OPTIONS
                .iter()
                .map(|o| format!("'{o}'"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(reader.unknown(key, valid));
        }
    }
    Ok(PrintOptions {
        identifier: reader.get("print-identifier").map(str::to_string),
        standard_error: reader.parse_bool("standard-error")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
        Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, ListArray, StringArray,
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::sink_table::{SinkTable, SinkTarget};
    use crate::ConnectorTable;

    fn value(array: ArrayRef, row: usize) -> String {
        let mut s = String::new();
        format_value(&mut s, array.as_ref(), row);
        s
    }

    fn values(array: ArrayRef) -> Vec<String> {
        (0..array.len()).map(|i| value(array.clone(), i)).collect()
    }

    #[test]
    fn integers_booleans_and_strings() {
        assert_eq!(
            values(Arc::new(Int8Array::from(vec![Some(-128), None, Some(7)]))),
            ["-128", "null", "7"]
        );
        assert_eq!(
            values(Arc::new(Int16Array::from(vec![-3, 300]))),
            ["-3", "300"]
        );
        assert_eq!(
            values(Arc::new(Int32Array::from(vec![i32::MIN]))),
            ["-2147483648"]
        );
        assert_eq!(
            values(Arc::new(Int64Array::from(vec![Some(i64::MAX), None]))),
            ["9223372036854775807", "null"]
        );
        assert_eq!(
            values(Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None
            ]))),
            ["true", "false", "null"]
        );
        assert_eq!(
            values(Arc::new(StringArray::from(vec![
                Some("alice"),
                Some(""),
                None,
                Some("a, b [c]")
            ]))),
            ["alice", "", "null", "a, b [c]"]
        );
    }

    #[test]
    fn floats_as_java_writes_them() {
        assert_eq!(
            values(Arc::new(Float64Array::from(vec![
                Some(1.0),
                Some(2.5),
                Some(-0.1),
                Some(0.0),
                Some(-0.0),
                Some(1e7),
                Some(1.5e-5),
                Some(0.001),
                Some(9_999_999.0),
                Some(123_456_789.125),
                Some(f64::NAN),
                Some(f64::INFINITY),
                Some(f64::NEG_INFINITY),
                None,
            ]))),
            [
                "1.0",
                "2.5",
                "-0.1",
                "0.0",
                "-0.0",
                "1.0E7",
                "1.5E-5",
                "0.001",
                "9999999.0",
                "1.23456789125E8",
                "NaN",
                "Infinity",
                "-Infinity",
                "null"
            ]
        );
        assert_eq!(
            values(Arc::new(Float32Array::from(vec![
                0.1f32, 3.0, 1e10, -2.5e-4
            ]))),
            ["0.1", "3.0", "1.0E10", "-2.5E-4"]
        );
    }

    #[test]
    fn decimals_as_big_decimal_writes_them() {
        let dec = |values: Vec<Option<i128>>, p: u8, s: i8| -> Vec<String> {
            super::tests::values(Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(p, s)
                    .unwrap(),
            ))
        };
        assert_eq!(
            dec(
                vec![Some(1250), Some(-5), Some(0), None, Some(123_456)],
                10,
                2
            ),
            ["12.50", "-0.05", "0.00", "null", "1234.56"]
        );
        assert_eq!(dec(vec![Some(42), Some(-7)], 10, 0), ["42", "-7"]);
        // BigDecimal goes scientific below an adjusted exponent of -6.
        assert_eq!(
            dec(vec![Some(1), Some(15), Some(0), Some(10)], 20, 8),
            ["1E-8", "1.5E-7", "0E-8", "1.0E-7"]
        );
        assert_eq!(dec(vec![Some(1)], 20, 6), ["0.000001"]);
    }

    #[test]
    fn dates_and_timestamps_as_java_time_writes_them() {
        // 2026-03-01 is day 20513 since the epoch.
        assert_eq!(
            values(Arc::new(Date32Array::from(vec![
                Some(20513),
                Some(0),
                Some(-1),
                None
            ]))),
            ["2026-03-01", "1970-01-01", "1969-12-31", "null"]
        );
        let base = 1_772_366_400i64; // 2026-03-01T12:00:00Z
        assert_eq!(
            values(Arc::new(TimestampSecondArray::from(vec![base, base + 5]))),
            ["2026-03-01T12:00", "2026-03-01T12:00:05"]
        );
        assert_eq!(
            values(Arc::new(TimestampMillisecondArray::from(vec![
                Some(base * 1000),
                Some(base * 1000 + 5_250),
                Some(base * 1000 + 7),
                None
            ]))),
            [
                "2026-03-01T12:00",
                "2026-03-01T12:00:05.250",
                "2026-03-01T12:00:00.007",
                "null"
            ]
        );
        assert_eq!(
            values(Arc::new(TimestampMicrosecondArray::from(vec![
                base * 1_000_000 + 1,
                base * 1_000_000 + 120_000,
                -1
            ]))),
            [
                "2026-03-01T12:00:00.000001",
                "2026-03-01T12:00:00.120",
                "1969-12-31T23:59:59.999999"
            ]
        );
        assert_eq!(
            values(Arc::new(TimestampNanosecondArray::from(vec![
                base * 1_000_000_000 + 1
            ]))),
            ["2026-03-01T12:00:00.000000001"]
        );
        // TIMESTAMP_LTZ: an Instant, always with seconds, in UTC.
        assert_eq!(
            values(Arc::new(
                TimestampMillisecondArray::from(vec![
                    Some(base * 1000),
                    Some(base * 1000 + 250),
                    None
                ])
                .with_timezone("UTC")
            )),
            ["2026-03-01T12:00:00Z", "2026-03-01T12:00:00.250Z", "null"]
        );
        assert_eq!(
            values(Arc::new(
                TimestampMicrosecondArray::from(vec![base * 1_000_000]).with_timezone("+02:00")
            )),
            ["2026-03-01T12:00:00Z"]
        );
    }

    #[test]
    fn bytes_and_arrays() {
        assert_eq!(
            values(Arc::new(BinaryArray::from(vec![
                Some(&b"hi"[..]),
                Some(&[0xff, 0x00][..]),
                Some(&[][..]),
                None
            ]))),
            ["[104, 105]", "[-1, 0]", "[]", "null"]
        );
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None, Some(3)]),
            Some(vec![]),
            None,
        ]);
        assert_eq!(values(Arc::new(list)), ["[1, null, 3]", "[]", "null"]);
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("alice"), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1250), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn lines_with_kinds_and_prefixes() {
        let plain = PrintWriter::new("out", &PrintOptions::default(), 0, 1);
        assert_eq!(
            plain.format(&batch(), None),
            "+I[1, alice, 12.50]\n+I[2, null, null]\n"
        );
        assert_eq!(
            plain.format(&batch(), Some(&["-U", "+U"])),
            "-U[1, alice, 12.50]\n+U[2, null, null]\n"
        );
        let named = PrintOptions {
            identifier: Some("sink".into()),
            standard_error: false,
        };
        assert_eq!(
            PrintWriter::new("out", &named, 0, 1).format(&batch(), Some(&["-D", "+I"])),
            "sink> -D[1, alice, 12.50]\nsink> +I[2, null, null]\n"
        );
        assert_eq!(named.prefix(1, 4), "sink:2> ");
        assert_eq!(PrintOptions::default().prefix(0, 2), "1> ");
        assert_eq!(PrintOptions::default().prefix(0, 1), "");
        let empty = PrintOptions {
            identifier: Some(String::new()),
            standard_error: true,
        };
        assert_eq!(empty.prefix(2, 3), "3> ");
    }

    fn def(options: &[(&str, &str)]) -> TableDef {
        TableDef {
            name: "out".into(),
            schema: batch().schema(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            primary_key: Vec::new(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn options_are_checked() {
        let t = SinkTable::print(def(&[
            ("connector", "print"),
            ("print-identifier", "x"),
            ("standard-error", "TRUE"),
        ]))
        .unwrap();
        assert_eq!(
            t.target(),
            &SinkTarget::Print(PrintOptions {
                identifier: Some("x".into()),
                standard_error: true
            })
        );
        let e = SinkTable::print(def(&[("connector", "print"), ("print-identifer", "x")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "table 'out': unknown option 'print-identifer' for connector 'print' (valid options: 'connector', 'print-identifier', 'standard-error')"
        );
        let e = SinkTable::print(def(&[("connector", "print"), ("standard-error", "yes")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value 'yes' for option 'standard-error'"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn cannot_be_read_and_writes_in_batch() {
        let t = Arc::new(SinkTable::print(def(&[("connector", "print")])).unwrap());
        assert!(!t.readable());
        assert!(t.writable());
        let e = t.stream_source().err().unwrap().to_string();
        assert_eq!(
            e,
            "table 'out': a print table is a sink only; it cannot be read"
        );
        let ctx = SessionContext::new();
        ctx.register_table("out", t.clone()).unwrap();
        let e = ctx.sql("SELECT * FROM out").await.unwrap().collect().await;
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("table 'out': a print table is a sink only"),);
        // An INSERT returns the row count (the rows go to stdout).
        let rows = ctx
            .sql("INSERT INTO out VALUES (1, 'a', 1.5), (2, NULL, NULL)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let count = rows[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
            .value(0);
        assert_eq!(count, 2);
    }
}
