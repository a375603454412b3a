//! Record-oriented decoding of the text formats (`csv`, `json`) into Arrow batches.
//!
//! The pieces, from bytes to batches:
//!
//! - A [`RecordFramer`] cuts a byte stream into records: [`CsvFramer`] runs the
//!   incremental `csv-core` parser (quoted fields may span lines and chunk boundaries),
//!   [`LineFramer`] cuts JSON lines. Both remember the 1-based line each record starts
//!   on, carry a partial record across chunks and never buffer more than one record.
//! - A [`RecordDecoder`] turns one record (CSV fields or one JSON object) into one row,
//!   parsing each value as its DDL column type, and appends it to Arrow builders until
//!   [`RecordDecoder::flush`] hands out a `RecordBatch` of the projected columns.
//!
//! The decoder is independent of where records come from: files feed it through a framer,
//! a message queue can call [`RecordDecoder::decode_message`] per message.
//!
//! # Malformed records
//! A record is malformed when a CSV record has the wrong number of fields, a JSON line is
//! not a JSON object, a value does not parse as its column's type, or a `NOT NULL` column
//! is null or missing. Every column of the DDL is parsed, also the ones the scan does not
//! project, so the set of rows a source yields does not depend on the query. Decoding is
//! two-phase: the record's values are parsed into scratch cells first and appended to
//! the builders only when all are valid, so a rejected record leaves no trace. Under
//! [`ErrorPolicy::Fail`] the record is a [`ConnectorError::MalformedRecord`] naming the
//! source, line and column; under [`ErrorPolicy::Skip`] it is dropped and counted.
//!
//! # Value syntax
//! - Nulls (CSV): a field equal to `'csv.null-literal'`, when set, is null in every
//!   column; an empty field is null in every non-string column (a string column reads it
//!   as the empty string). JSON: `null` or a missing key.
//! - `BOOLEAN`: `true` / `false`, any case (JSON: a boolean or such a string).
//! - Integers, floats, decimals: the usual decimal notation, surrounding blanks allowed
//!   (JSON: a number or such a string; a float for an integer column must be integral).
//! - `DATE`: `2026-03-01`.
//! - `TIMESTAMP`: `2026-03-01 12:00:00[.fff…]`, ISO-8601 `2026-03-01T12:00:00[.fff…]`,
//!   optionally followed by `Z` or an offset (`+02:00`); a value with an offset is
//!   converted to UTC, a value without one is taken as UTC (also for `TIMESTAMP WITH
//!   [LOCAL] TIME ZONE` columns, whose Arrow values are UTC instants).
//! - `STRING`: the text (JSON: strings as they are; numbers, booleans, objects and arrays
//!   as their JSON text). `BYTES`: the raw bytes of the text.
//!
//! # Memory
//! The decoder buffers at most `batch_size` rows in its builders, plus one record of
//! scratch; framers buffer at most one (partial) record.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BinaryViewBuilder, BooleanBuilder, Date32Builder,
    Decimal128Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    Int8Builder, LargeBinaryBuilder, LargeStringBuilder, RecordBatch, RecordBatchOptions,
    StringBuilder, StringViewBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
    TimestampNanosecondBuilder, TimestampSecondBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::{parse_decimal, string_to_datetime, Parser};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Schema, SchemaRef, TimeUnit, DECIMAL128_MAX_PRECISION,
};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{ConnectorError, ErrorPolicy, Result};

/// Options of the `csv` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// `'csv.field-delimiter'`, one byte; default `,`.
    pub delimiter: u8,
    /// `'csv.quote-character'`, one byte; default `"`.
    pub quote: u8,
    /// `'csv.header'`: the first record of each file is a header and is skipped.
    pub header: bool,
    /// `'csv.null-literal'`: a field equal to it is null in any column.
    pub null_literal: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            header: false,
            null_literal: None,
        }
    }
}

/// A record-oriented text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextFormat {
    /// One record per CSV line (RFC 4180 quoting; no header unless `header`).
    Csv(CsvOptions),
    /// One JSON object per line.
    Json,
}

impl TextFormat {
    /// `csv` or `json`.
    pub fn name(&self) -> &'static str {
        match self {
            TextFormat::Csv(_) => "csv",
            TextFormat::Json => "json",
        }
    }
}

/// Checks that every column of `schema` has a type the text formats can decode.
pub fn check_schema(table: &str, schema: &Schema, format: &TextFormat) -> Result<()> {
    for field in schema.fields() {
        ColumnKind::of(field.data_type()).ok_or_else(|| ConnectorError::UnsupportedType {
            table: table.to_string(),
            column: field.name().clone(),
            data_type: field.data_type().to_string(),
            what: format!("the {} format", format.name()),
        })?;
    }
    Ok(())
}

/// How a column's values are parsed; one per supported Arrow type family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Boolean,
    /// Signed integer of `bits` width.
    Int {
        bits: u8,
    },
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// UTF-8 text (Utf8, LargeUtf8, Utf8View).
    Text,
    /// Raw bytes (Binary, LargeBinary, BinaryView).
    Bytes,
    Date,
    Timestamp(TimeUnit),
}

impl ColumnKind {
    fn of(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Boolean => Self::Boolean,
            DataType::Int8 => Self::Int { bits: 8 },
            DataType::Int16 => Self::Int { bits: 16 },
            DataType::Int32 => Self::Int { bits: 32 },
            DataType::Int64 => Self::Int { bits: 64 },
            DataType::Float32 => Self::Float32,
            DataType::Float64 => Self::Float64,
            DataType::Decimal128(precision, scale) => Self::Decimal {
                precision: *precision,
                scale: *scale,
            },
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Self::Bytes,
            DataType::Date32 => Self::Date,
            DataType::Timestamp(unit, _) => Self::Timestamp(*unit),
            _ => return None,
        })
    }

    fn int_range(bits: u8) -> (i64, i64) {
        match bits {
            8 => (i8::MIN.into(), i8::MAX.into()),
            16 => (i16::MIN.into(), i16::MAX.into()),
            32 => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }

    /// Whether an empty CSV field is a value (the empty string) rather than null.
    fn is_textual(self) -> bool {
        matches!(self, Self::Text | Self::Bytes)
    }
}

/// The SQL spelling of a column type, for messages.
pub fn sql_type_name(data_type: &DataType) -> String {
    match ColumnKind::of(data_type) {
        Some(k) => k.to_string(),
        None => data_type.to_string(),
    }
}

/// SQL spelling of the kind, for messages.
impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boolean => f.write_str("BOOLEAN"),
            Self::Int { bits: 8 } => f.write_str("TINYINT"),
            Self::Int { bits: 16 } => f.write_str("SMALLINT"),
            Self::Int { bits: 32 } => f.write_str("INT"),
            Self::Int { .. } => f.write_str("BIGINT"),
            Self::Float32 => f.write_str("FLOAT"),
            Self::Float64 => f.write_str("DOUBLE"),
            Self::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            Self::Text => f.write_str("STRING"),
            Self::Bytes => f.write_str("BYTES"),
            Self::Date => f.write_str("DATE"),
            Self::Timestamp(TimeUnit::Second) => f.write_str("TIMESTAMP(0)"),
            Self::Timestamp(TimeUnit::Millisecond) => f.write_str("TIMESTAMP(3)"),
            Self::Timestamp(TimeUnit::Microsecond) => f.write_str("TIMESTAMP(6)"),
            Self::Timestamp(TimeUnit::Nanosecond) => f.write_str("TIMESTAMP(9)"),
        }
    }
}

/// One parsed value of the record being decoded. Text and bytes live in the decoder's
/// scratch buffers, so a cell never allocates.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(i128),
    /// Range in the text scratch buffer.
    Text(Range<usize>),
    /// Range in the bytes scratch buffer.
    Bytes(Range<usize>),
    /// Days since the epoch.
    Date(i32),
    /// Ticks of the column's unit since the epoch, UTC.
    Timestamp(i64),
}

/// Scratch space of one record.
#[derive(Debug, Default)]
struct Scratch {
    text: String,
    bytes: Vec<u8>,
}

impl Scratch {
    fn clear(&mut self) {
        self.text.clear();
        self.bytes.clear();
    }

    fn push_text(&mut self, s: &str) -> Cell {
        let start = self.text.len();
        self.text.push_str(s);
        Cell::Text(start..self.text.len())
    }

    fn push_bytes(&mut self, b: &[u8]) -> Cell {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        Cell::Bytes(start..self.bytes.len())
    }

    /// A cell holding `value`'s `Display` text.
    fn push_display(&mut self, kind: ColumnKind, value: impl fmt::Display) -> Cell {
        if kind == ColumnKind::Bytes {
            let start = self.bytes.len();
            // io::Write on Vec<u8> cannot fail.
            let _ = std::io::Write::write_fmt(&mut self.bytes, format_args!("{value}"));
            Cell::Bytes(start..self.bytes.len())
        } else {
            let start = self.text.len();
            // fmt::Write on String cannot fail.
            let _ = write!(self.text, "{value}");
            Cell::Text(start..self.text.len())
        }
    }
}

/// Why a record is malformed: the column at fault (if any) and a message.
#[derive(Debug)]
struct Rejection {
    column: Option<usize>,
    message: String,
}

/// Parses one textual value (a CSV field, or a JSON string for a non-string column).
fn parse_text(kind: ColumnKind, raw: &[u8], scratch: &mut Scratch) -> Result<Cell, String> {
    if kind == ColumnKind::Bytes {
        return Ok(scratch.push_bytes(raw));
    }
    let text = std::str::from_utf8(raw).map_err(|e| format!("invalid UTF-8: {e}"))?;
    if kind == ColumnKind::Text {
        return Ok(scratch.push_text(text));
    }
    let s = text.trim();
    let bad = || format!("cannot parse '{text}' as {kind}");
    match kind {
        ColumnKind::Boolean => {
            if s.eq_ignore_ascii_case("true") {
                Ok(Cell::Bool(true))
            } else if s.eq_ignore_ascii_case("false") {
                Ok(Cell::Bool(false))
            } else {
                Err(bad())
            }
        }
        ColumnKind::Int { bits } => {
            let v: i64 = s.parse().map_err(|_| bad())?;
            let (min, max) = ColumnKind::int_range(bits);
            if v < min || v > max {
                return Err(format!("value {v} is out of range for {kind}"));
            }
            Ok(Cell::Int(v))
        }
        ColumnKind::Float32 => s
            .parse::<f32>()
            .map(|v| Cell::Float(v.into()))
            .map_err(|_| bad()),
        ColumnKind::Float64 => s.parse::<f64>().map(Cell::Float).map_err(|_| bad()),
        ColumnKind::Decimal { precision, scale } => {
            parse_decimal::<Decimal128Type>(s, precision, scale)
                .map(Cell::Decimal)
                .map_err(|_| bad())
        }
        ColumnKind::Date => Date32Type::parse(s).map(Cell::Date).ok_or_else(bad),
        ColumnKind::Timestamp(unit) => {
            let t = string_to_datetime(&Utc, s).map_err(|_| bad())?;
            let ticks = match unit {
                TimeUnit::Second => Some(t.timestamp()),
                TimeUnit::Millisecond => Some(t.timestamp_millis()),
                TimeUnit::Microsecond => Some(t.timestamp_micros()),
                TimeUnit::Nanosecond => t.timestamp_nanos_opt(),
            };
            ticks
                .map(Cell::Timestamp)
                .ok_or_else(|| format!("'{text}' is out of range for {kind}"))
        }
        ColumnKind::Text | ColumnKind::Bytes => unreachable!("handled above"),
    }
}

/// The Arrow builder of one output column.
#[derive(Debug)]
enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal128(Decimal128Builder),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    Utf8View(StringViewBuilder),
    Binary(BinaryBuilder),
    LargeBinary(LargeBinaryBuilder),
    BinaryView(BinaryViewBuilder),
    Date32(Date32Builder),
    TimestampSecond(TimestampSecondBuilder),
    TimestampMillisecond(TimestampMillisecondBuilder),
    TimestampMicrosecond(TimestampMicrosecondBuilder),
    TimestampNanosecond(TimestampNanosecondBuilder),
}

impl ColumnBuilder {
    fn new(data_type: &DataType, capacity: usize) -> Result<Self> {
        Ok(match data_type {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int8 => Self::Int8(Int8Builder::with_capacity(capacity)),
            DataType::Int16 => Self::Int16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(p, s) => Self::Decimal128(
                Decimal128Builder::with_capacity(capacity).with_precision_and_scale(*p, *s)?,
            ),
            DataType::Utf8 => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
            DataType::LargeUtf8 => {
                Self::LargeUtf8(LargeStringBuilder::with_capacity(capacity, capacity * 8))
            }
            DataType::Utf8View => Self::Utf8View(StringViewBuilder::with_capacity(capacity)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 8)),
            DataType::LargeBinary => {
                Self::LargeBinary(LargeBinaryBuilder::with_capacity(capacity, capacity * 8))
            }
            DataType::BinaryView => Self::BinaryView(BinaryViewBuilder::with_capacity(capacity)),
            DataType::Date32 => Self::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Timestamp(unit, tz) => match unit {
                TimeUnit::Second => Self::TimestampSecond(
                    TimestampSecondBuilder::with_capacity(capacity).with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Millisecond => Self::TimestampMillisecond(
                    TimestampMillisecondBuilder::with_capacity(capacity)
                        .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Microsecond => Self::TimestampMicrosecond(
                    TimestampMicrosecondBuilder::with_capacity(capacity)
                        .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Nanosecond => Self::TimestampNanosecond(
                    TimestampNanosecondBuilder::with_capacity(capacity)
                        .with_timezone_opt(tz.clone()),
                ),
            },
            other => {
                return Err(ConnectorError::Arrow(
                    datafusion::arrow::error::ArrowError::NotYetImplemented(format!(
                        "no builder for {other}"
                    )),
                ))
            }
        })
    }

    /// Appends `cell`, which was parsed for this builder's column kind.
    fn append(&mut self, cell: &Cell, scratch: &Scratch) {
        macro_rules! put {
            ($b:expr, $v:expr) => {
                match $v {
                    Some(v) => $b.append_value(v),
                    None => $b.append_null(),
                }
            };
        }
        let text = |r: &Range<usize>| &scratch.text[r.clone()];
        let bytes = |r: &Range<usize>| &scratch.bytes[r.clone()];
        // The decoder parses each cell for its column's kind, so a cell of another
        // variant cannot reach a builder; the `_ => None` arms only keep this total.
        match self {
            Self::Boolean(b) => put!(
                b,
                if let Cell::Bool(v) = cell {
                    Some(*v)
                } else {
                    None
                }
            ),
            Self::Int8(b) => put!(b, int_cell(cell).and_then(|v| i8::try_from(v).ok())),
            Self::Int16(b) => put!(b, int_cell(cell).and_then(|v| i16::try_from(v).ok())),
            Self::Int32(b) => put!(b, int_cell(cell).and_then(|v| i32::try_from(v).ok())),
            Self::Int64(b) => put!(b, int_cell(cell)),
            Self::Float32(b) => put!(b, float_cell(cell).map(|v| v as f32)),
            Self::Float64(b) => put!(b, float_cell(cell)),
            Self::Decimal128(b) => put!(
                b,
                if let Cell::Decimal(v) = cell {
                    Some(*v)
                } else {
                    None
                }
            ),
            Self::Utf8(b) => put!(b, text_cell(cell).map(text)),
            Self::LargeUtf8(b) => put!(b, text_cell(cell).map(text)),
            Self::Utf8View(b) => put!(b, text_cell(cell).map(text)),
            Self::Binary(b) => put!(b, bytes_cell(cell).map(bytes)),
            Self::LargeBinary(b) => put!(b, bytes_cell(cell).map(bytes)),
            Self::BinaryView(b) => put!(b, bytes_cell(cell).map(bytes)),
            Self::Date32(b) => put!(
                b,
                if let Cell::Date(v) = cell {
                    Some(*v)
                } else {
                    None
                }
            ),
            Self::TimestampSecond(b) => put!(b, ts_cell(cell)),
            Self::TimestampMillisecond(b) => put!(b, ts_cell(cell)),
            Self::TimestampMicrosecond(b) => put!(b, ts_cell(cell)),
            Self::TimestampNanosecond(b) => put!(b, ts_cell(cell)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal128(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::LargeUtf8(b) => Arc::new(b.finish()),
            Self::Utf8View(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::LargeBinary(b) => Arc::new(b.finish()),
            Self::BinaryView(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::TimestampSecond(b) => Arc::new(b.finish()),
            Self::TimestampMillisecond(b) => Arc::new(b.finish()),
            Self::TimestampMicrosecond(b) => Arc::new(b.finish()),
            Self::TimestampNanosecond(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Boolean(b) => b.len(),
            Self::Int8(b) => b.len(),
            Self::Int16(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Int64(b) => b.len(),
            Self::Float32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Decimal128(b) => b.len(),
            Self::Utf8(b) => b.len(),
            Self::LargeUtf8(b) => b.len(),
            Self::Utf8View(b) => b.len(),
            Self::Binary(b) => b.len(),
            Self::LargeBinary(b) => b.len(),
            Self::BinaryView(b) => b.len(),
            Self::Date32(b) => b.len(),
            Self::TimestampSecond(b) => b.len(),
            Self::TimestampMillisecond(b) => b.len(),
            Self::TimestampMicrosecond(b) => b.len(),
            Self::TimestampNanosecond(b) => b.len(),
        }
    }
}

fn int_cell(cell: &Cell) -> Option<i64> {
    match cell {
        Cell::Int(v) => Some(*v),
        _ => None,
    }
}

fn float_cell(cell: &Cell) -> Option<f64> {
    match cell {
        Cell::Float(v) => Some(*v),
        _ => None,
    }
}

fn text_cell(cell: &Cell) -> Option<&Range<usize>> {
    match cell {
        Cell::Text(r) => Some(r),
        _ => None,
    }
}

fn bytes_cell(cell: &Cell) -> Option<&Range<usize>> {
    match cell {
        Cell::Bytes(r) => Some(r),
        _ => None,
    }
}

fn ts_cell(cell: &Cell) -> Option<i64> {
    match cell {
        Cell::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A DDL column as the decoder sees it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: ColumnKind,
    nullable: bool,
}

/// The fields of one framed CSV record: `data` holds the unescaped fields back to back,
/// `ends[i]` is the end offset of field `i` in `data`.
#[derive(Debug, Clone, Copy)]
pub struct CsvRecord<'a> {
    pub data: &'a [u8],
    pub ends: &'a [usize],
}

impl<'a> CsvRecord<'a> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the record has no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`; `i` must be below [`len`](Self::len).
    pub fn field(&self, i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// Decodes records of one text format into Arrow batches of a DDL schema.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use meltwater_connectors::format::{RecordDecoder, TextFormat};
/// use meltwater_connectors::ErrorPolicy;
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("id", DataType::Int64, false),
///     Field::new("name", DataType::Utf8, true),
/// ]));
/// let mut decoder =
///     RecordDecoder::new("users", &schema, None, TextFormat::Json, ErrorPolicy::Fail, 1024)
///         .unwrap();
/// decoder.decode_message(br#"{"id": 1, "name": "ada"}"#, "topic users", 1).unwrap();
/// decoder.decode_message(br#"{"id": 2}"#, "topic users", 2).unwrap();
/// let batch = decoder.flush().unwrap().unwrap();
/// assert_eq!(batch.num_rows(), 2);
/// assert!(batch.column(1).is_null(1));
/// ```
#[derive(Debug)]
pub struct RecordDecoder {
    table: String,
    format: TextFormat,
    policy: ErrorPolicy,
    /// Every DDL column, projected or not.
    columns: Vec<Column>,
    /// JSON key → column index.
    column_index: HashMap<String, usize>,
    /// Output column → DDL column index.
    projection: Vec<usize>,
    output_schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    /// Parsed values of the record being decoded, one per DDL column.
    cells: Vec<Cell>,
    scratch: Scratch,
    rows: usize,
    batch_size: usize,
    records_skipped: u64,
    /// Records handed to the decoder so far: decoded, skipped or ignored.
    records_seen: u64,
    /// Records still to drop unparsed (see [`Self::ignore_records`]).
    records_to_ignore: u64,
    /// Framer reused by [`Self::decode_message`] for CSV messages.
    message_framer: Option<CsvFramer>,
}

impl RecordDecoder {
    /// A decoder of `format` records into rows of `schema` (the DDL schema), producing the
    /// `projection` of it (all columns when `None`) in batches of up to `batch_size` rows.
    /// `table` names the table in errors.
    pub fn new(
        table: &str,
        schema: &SchemaRef,
        projection: Option<&[usize]>,
        format: TextFormat,
        policy: ErrorPolicy,
        batch_size: usize,
    ) -> Result<Self> {
        check_schema(table, schema, &format)?;
        let columns: Vec<Column> = schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                // check_schema accepted every type.
                kind: ColumnKind::of(f.data_type()).unwrap_or(ColumnKind::Text),
                nullable: f.is_nullable(),
            })
            .collect();
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..columns.len()).collect(),
        };
        let output_schema = Arc::new(schema.project(&projection)?);
        let batch_size = batch_size.max(1);
        let builders = output_schema
            .fields()
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type(), batch_size))
            .collect::<Result<Vec<_>>>()?;
        let column_index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Ok(Self {
            table: table.to_string(),
            format,
            policy,
            cells: vec![Cell::Null; columns.len()],
            columns,
            column_index,
            projection,
            output_schema,
            builders,
            scratch: Scratch::default(),
            rows: 0,
            batch_size,
            records_skipped: 0,
            records_seen: 0,
            records_to_ignore: 0,
            message_framer: None,
        })
    }

    /// Schema of the batches [`flush`](Self::flush) returns.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// The format this decoder reads.
    pub fn format(&self) -> &TextFormat {
        &self.format
    }

    /// Rows decoded and not yet flushed.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Whether a full batch is buffered; callers should [`flush`](Self::flush) then.
    pub fn is_full(&self) -> bool {
        self.rows >= self.batch_size
    }

    /// Records dropped under [`ErrorPolicy::Skip`] since the decoder was created.
    pub fn records_skipped(&self) -> u64 {
        self.records_skipped
    }

    /// Records handed to the decoder since it was created (through any `decode_*`
    /// method): the rows it decoded, the malformed records it skipped and the records it
    /// ignored. Right after a [`flush`](Self::flush) every one of them is accounted for,
    /// so this is the position in the input that a resumed read starts from.
    pub fn records_seen(&self) -> u64 {
        self.records_seen
    }

    /// Drops the next `n` records handed to the decoder without parsing them: neither
    /// rows nor errors nor skipped records. A reader resuming an input at record `n`
    /// frames the input from its start and lets the decoder ignore what it already read.
    pub fn ignore_records(&mut self, n: u64) {
        self.records_to_ignore += n;
    }

    /// Counts a record handed to the decoder; `true` when it is to be ignored.
    fn ignore_next(&mut self) -> bool {
        self.records_seen += 1;
        if self.records_to_ignore > 0 {
            self.records_to_ignore -= 1;
            true
        } else {
            false
        }
    }

    /// Hands out the buffered rows as a batch, `None` when there are none.
    pub fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        let batch =
            RecordBatch::try_new_with_options(self.output_schema.clone(), columns, &options)?;
        Ok(Some(batch))
    }

    /// Decodes one message holding one record (a JSON object, or a CSV line), e.g. the
    /// value of a queue message. `source` and `line` locate it in errors.
    pub fn decode_message(&mut self, message: &[u8], source: &str, line: u64) -> Result<()> {
        match &self.format {
            TextFormat::Json => self.decode_json(message, source, line),
            TextFormat::Csv(options) => {
                let mut framer = self.message_framer.take().unwrap_or_else(|| {
                    CsvFramer::new(&CsvOptions {
                        header: false,
                        ..options.clone()
                    })
                });
                framer.reset(line);
                let result = framer
                    .decode(message, self, source)
                    .and_then(|_| framer.finish(self, source));
                self.message_framer = Some(framer);
                result
            }
        }
    }

    /// Decodes one framed CSV record that starts on `line` of `source`.
    pub fn decode_csv(&mut self, record: CsvRecord<'_>, source: &str, line: u64) -> Result<()> {
        if self.ignore_next() {
            return Ok(());
        }
        let null_literal = match &self.format {
            TextFormat::Csv(o) => o.null_literal.as_deref(),
            TextFormat::Json => None,
        };
        self.scratch.clear();
        let parsed = parse_csv_cells(
            &self.columns,
            record,
            null_literal,
            &mut self.cells,
            &mut self.scratch,
        );
        self.finish_record(parsed, source, line)
    }

    /// Decodes one JSON object (one line of JSON-lines input) starting on `line` of
    /// `source`.
    pub fn decode_json(&mut self, record: &[u8], source: &str, line: u64) -> Result<()> {
        if self.ignore_next() {
            return Ok(());
        }
        let parsed = self.parse_json(record);
        self.finish_record(parsed, source, line)
    }

    /// Parses one JSON object into the cells of the record being decoded.
    fn parse_json(&mut self, record: &[u8]) -> Result<(), Rejection> {
        self.scratch.clear();
        self.cells.fill(Cell::Null);
        parse_json_cells(
            &self.columns,
            &self.column_index,
            record,
            &mut self.cells,
            &mut self.scratch,
        )
    }

    /// Whether one JSON object would decode into a row: the rejection as a
    /// malformed-record error whatever the policy. Nothing is appended or counted.
    pub fn check_json(&mut self, record: &[u8], source: &str, line: u64) -> Result<()> {
        let parsed = self.parse_json(record);
        let rejection = match parsed {
            Ok(()) => self.check_not_null(),
            Err(r) => Some(r),
        };
        match rejection {
            None => Ok(()),
            Some(rejection) => Err(ConnectorError::MalformedRecord {
                table: self.table.clone(),
                source_name: source.to_string(),
                line,
                column: rejection.column.map(|c| self.columns[c].name.clone()),
                message: rejection.message,
            }),
        }
    }

    /// Appends the parsed record, or applies the error policy to a rejection.
    fn finish_record(
        &mut self,
        parsed: Result<(), Rejection>,
        source: &str,
        line: u64,
    ) -> Result<()> {
        let rejection = match parsed {
            Ok(()) => self.check_not_null(),
            Err(r) => Some(r),
        };
        if let Some(rejection) = rejection {
            return match self.policy {
                ErrorPolicy::Skip => {
                    self.records_skipped += 1;
                    Ok(())
                }
                ErrorPolicy::Fail => Err(ConnectorError::MalformedRecord {
                    table: self.table.clone(),
                    source_name: source.to_string(),
                    line,
                    column: rejection.column.map(|c| self.columns[c].name.clone()),
                    message: rejection.message,
                }),
            };
        }
        for (builder, &c) in self.builders.iter_mut().zip(&self.projection) {
            builder.append(&self.cells[c], &self.scratch);
        }
        self.rows += 1;
        debug_assert!(self.builders.iter().all(|b| b.len() == self.rows));
        Ok(())
    }

    fn check_not_null(&self) -> Option<Rejection> {
        self.columns
            .iter()
            .zip(&self.cells)
            .position(|(col, cell)| !col.nullable && *cell == Cell::Null)
            .map(|c| Rejection {
                column: Some(c),
                message: "null or missing value for a NOT NULL column".into(),
            })
    }
}

fn parse_csv_cells(
    columns: &[Column],
    record: CsvRecord<'_>,
    null_literal: Option<&str>,
    cells: &mut [Cell],
    scratch: &mut Scratch,
) -> Result<(), Rejection> {
    if record.len() != columns.len() {
        return Err(Rejection {
            column: None,
            message: format!("expected {} fields, found {}", columns.len(), record.len()),
        });
    }
    for (c, (column, cell)) in columns.iter().zip(cells.iter_mut()).enumerate() {
        let raw = record.field(c);
        let is_null = null_literal.is_some_and(|n| n.as_bytes() == raw)
            || (raw.is_empty() && !column.kind.is_textual());
        *cell = if is_null {
            Cell::Null
        } else {
            parse_text(column.kind, raw, scratch).map_err(|message| Rejection {
                column: Some(c),
                message,
            })?
        };
    }
    Ok(())
}

fn parse_json_cells(
    columns: &[Column],
    column_index: &HashMap<String, usize>,
    record: &[u8],
    cells: &mut [Cell],
    scratch: &mut Scratch,
) -> Result<(), Rejection> {
    let mut failure = None;
    let mut current = None;
    let mut de = serde_json::Deserializer::from_slice(record);
    let result = RowSeed {
        columns,
        column_index,
        cells,
        scratch,
        current: &mut current,
        failure: &mut failure,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    result.map_err(|e| Rejection {
        column: current,
        message: failure.unwrap_or_else(|| describe_json_error(&e)),
    })
}

/// serde_json's message without its "at line 1 column N" suffix (a record is one line,
/// and the line that matters is the source's), with the byte position instead.
fn describe_json_error(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let prefix = if e.is_syntax() || e.is_eof() {
        "invalid JSON: "
    } else {
        ""
    };
    match e.column() {
        0 => format!("{prefix}{message}"),
        column => format!("{prefix}{message} (at character {column})"),
    }
}

/// Deserializes one JSON object into the record's cells.
struct RowSeed<'a> {
    columns: &'a [Column],
    column_index: &'a HashMap<String, usize>,
    cells: &'a mut [Cell],
    scratch: &'a mut Scratch,
    /// The column whose value is being read, for error messages.
    current: &'a mut Option<usize>,
    /// A conversion error's message (serde's own message would carry positions).
    failure: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(column) = map.next_key_seed(KeySeed(self.column_index))? {
            match column {
                Some(c) => {
                    *self.current = Some(c);
                    self.cells[c] = map.next_value_seed(CellSeed {
                        kind: self.columns[c].kind,
                        scratch: self.scratch,
                        failure: self.failure,
                    })?;
                    *self.current = None;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves a JSON key to its column index without allocating.
struct KeySeed<'a>(&'a HashMap<String, usize>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.get(key).copied())
    }
}

/// Deserializes one JSON value into a cell of the column's kind.
struct CellSeed<'a> {
    kind: ColumnKind,
    scratch: &'a mut Scratch,
    failure: &'a mut Option<String>,
}

impl CellSeed<'_> {
    fn fail<E: de::Error>(self, message: String) -> E {
        let error = E::custom(&message);
        *self.failure = Some(message);
        error
    }

    fn mismatch<E: de::Error>(self, found: &str) -> E {
        let message = format!("expected a {} value, found {found}", self.kind);
        self.fail(message)
    }

    fn integer<E: de::Error>(self, v: i128) -> Result<Cell, E> {
        match self.kind {
            ColumnKind::Int { bits } => {
                let (min, max) = ColumnKind::int_range(bits);
                if v < i128::from(min) || v > i128::from(max) {
                    let message = format!("value {v} is out of range for {}", self.kind);
                    return Err(self.fail(message));
                }
                Ok(Cell::Int(v as i64))
            }
            ColumnKind::Float32 => Ok(Cell::Float(f64::from(v as f32))),
            ColumnKind::Float64 => Ok(Cell::Float(v as f64)),
            ColumnKind::Decimal { precision, scale } => match scale_integer(v, precision, scale) {
                Some(d) => Ok(Cell::Decimal(d)),
                None => {
                    let message = format!("value {v} does not fit {}", self.kind);
                    Err(self.fail(message))
                }
            },
            ColumnKind::Text | ColumnKind::Bytes => Ok(self.scratch.push_display(self.kind, v)),
            _ => Err(self.mismatch("a number")),
        }
    }
}

/// `v` as the unscaled value of a `DECIMAL(precision, scale)`, if it fits.
pub(crate) fn scale_integer(v: i128, precision: u8, scale: i8) -> Option<i128> {
    let precision = u32::from(precision.min(DECIMAL128_MAX_PRECISION));
    let limit = 10i128.pow(precision);
    let unscaled = if scale >= 0 {
        v.checked_mul(10i128.checked_pow(scale as u32)?)?
    } else {
        v / 10i128.checked_pow(scale.unsigned_abs() as u32)?
    };
    (unscaled.abs() < limit).then_some(unscaled)
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = Cell;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cell, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.kind)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cell, E> {
        match self.kind {
            ColumnKind::Boolean => Ok(Cell::Bool(v)),
            ColumnKind::Text | ColumnKind::Bytes => Ok(self.scratch.push_display(self.kind, v)),
            _ => Err(self.mismatch("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell, E> {
        self.integer(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell, E> {
        self.integer(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell, E> {
        match self.kind {
            ColumnKind::Float32 => Ok(Cell::Float(f64::from(v as f32))),
            ColumnKind::Float64 => Ok(Cell::Float(v)),
            ColumnKind::Int { .. } if v.fract() == 0.0 && v.abs() < 1e19 => self.integer(v as i128),
            ColumnKind::Int { .. } => {
                let message = format!("expected an integer for {}, found {v}", self.kind);
                Err(self.fail(message))
            }
            ColumnKind::Decimal { precision, scale } => {
                // The shortest decimal spelling of the double, parsed exactly.
                let mut text = std::mem::take(&mut self.scratch.text);
                let start = text.len();
                let _ = write!(text, "{v}");
                let parsed = parse_decimal::<Decimal128Type>(&text[start..], precision, scale);
                text.truncate(start);
                self.scratch.text = text;
                match parsed {
                    Ok(d) => Ok(Cell::Decimal(d)),
                    Err(_) => {
                        let message = format!("value {v} does not fit {}", self.kind);
                        Err(self.fail(message))
                    }
                }
            }
            ColumnKind::Text | ColumnKind::Bytes => Ok(self.scratch.push_display(self.kind, v)),
            _ => Err(self.mismatch("a number")),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell, E> {
        match parse_text(self.kind, v.as_bytes(), self.scratch) {
            Ok(cell) => Ok(cell),
            Err(message) => Err(self.fail(message)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
        if !self.kind.is_textual() {
            return Err(self.mismatch("an object"));
        }
        let value: serde_json::Value =
            de::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(self.scratch.push_display(self.kind, value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
        if !self.kind.is_textual() {
            return Err(self.mismatch("an array"));
        }
        let value: serde_json::Value =
            de::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(self.scratch.push_display(self.kind, value))
    }
}

/// Cuts CSV input into records with the incremental `csv-core` parser.
#[derive(Debug)]
pub struct CsvFramer {
    reader: csv_core::Reader,
    header: bool,
    /// Records framed so far (including a skipped header).
    records: u64,
    /// Unescaped fields of the record being framed.
    out: Vec<u8>,
    out_len: usize,
    /// Field end offsets of the record being framed.
    ends: Vec<usize>,
    ends_len: usize,
    /// Whether the framer is between records.
    at_record_start: bool,
    /// Line the record being framed starts on.
    record_line: u64,
}

impl CsvFramer {
    /// A framer for one CSV input (one file, one message).
    pub fn new(options: &CsvOptions) -> Self {
        let reader = csv_core::ReaderBuilder::new()
            .delimiter(options.delimiter)
            .quote(options.quote)
            .build();
        Self {
            reader,
            header: options.header,
            records: 0,
            out: vec![0; 1024],
            out_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            at_record_start: true,
            record_line: 1,
        }
    }

    /// Starts a new input whose first line is `line`.
    pub fn reset(&mut self, line: u64) {
        self.reader.reset();
        self.reader.set_line(line);
        self.records = 0;
        self.out_len = 0;
        self.ends_len = 0;
        self.at_record_start = true;
        self.record_line = line;
    }

    /// Frames records from `input` into `decoder` until the input is consumed or the
    /// decoder holds a full batch. Returns the number of bytes consumed; the caller passes
    /// the rest again after flushing the decoder.
    pub fn decode(
        &mut self,
        input: &[u8],
        decoder: &mut RecordDecoder,
        source: &str,
    ) -> Result<usize> {
        let mut consumed = 0;
        while consumed < input.len() && !decoder.is_full() {
            if self.at_record_start {
                // Blank lines between records are not records; skipping them here keeps
                // the line count exact and lets the record's first line be known.
                let rest = &input[consumed..];
                let blank = rest
                    .iter()
                    .take_while(|&&b| b == b'\n' || b == b'\r')
                    .count();
                let newlines = rest[..blank].iter().filter(|&&b| b == b'\n').count() as u64;
                self.reader.set_line(self.reader.line() + newlines);
                consumed += blank;
                if consumed == input.len() {
                    break;
                }
                self.record_line = self.reader.line();
                self.at_record_start = false;
            }
            let (result, nin) = self.read(&input[consumed..]);
            consumed += nin;
            if result == csv_core::ReadRecordResult::Record {
                self.emit(decoder, source)?;
            }
        }
        Ok(consumed)
    }

    /// Ends the input: frames a last record that has no line terminator.
    pub fn finish(&mut self, decoder: &mut RecordDecoder, source: &str) -> Result<()> {
        if self.at_record_start {
            return Ok(());
        }
        loop {
            match self.read(&[]).0 {
                csv_core::ReadRecordResult::Record => self.emit(decoder, source)?,
                csv_core::ReadRecordResult::End => return Ok(()),
                // Only reported with input left; growing buffers is done in `read`.
                _ => {}
            }
        }
    }

    /// One `csv-core` step, growing the output buffers when they fill.
    fn read(&mut self, input: &[u8]) -> (csv_core::ReadRecordResult, usize) {
        use csv_core::ReadRecordResult as R;
        let mut consumed = 0;
        loop {
            let (result, nin, nout, nend) = self.reader.read_record(
                &input[consumed..],
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            consumed += nin;
            self.out_len += nout;
            self.ends_len += nend;
            match result {
                R::OutputFull => {
                    let len = self.out.len();
                    self.out.resize(len * 2, 0);
                }
                R::OutputEndsFull => {
                    let len = self.ends.len();
                    self.ends.resize(len * 2, 0);
                }
                R::InputEmpty | R::Record | R::End => return (result, consumed),
            }
        }
    }

    fn emit(&mut self, decoder: &mut RecordDecoder, source: &str) -> Result<()> {
        let record = CsvRecord {
            data: &self.out[..self.out_len],
            ends: &self.ends[..self.ends_len],
        };
        let is_header = self.header && self.records == 0;
        self.records += 1;
        let result = if is_header {
            Ok(())
        } else {
            decoder.decode_csv(record, source, self.record_line)
        };
        self.out_len = 0;
        self.ends_len = 0;
        self.at_record_start = true;
        result
    }
}

/// Cuts JSON-lines input into lines; blank lines are skipped.
#[derive(Debug)]
pub struct LineFramer {
    /// A line begun in an earlier chunk.
    partial: Vec<u8>,
    /// Line number of the next line to complete.
    line: u64,
}

impl Default for LineFramer {
    fn default() -> Self {
        Self {
            partial: Vec::new(),
            line: 1,
        }
    }
}

impl LineFramer {
    /// Frames lines from `input` into `decoder` until the input is consumed or the
    /// decoder holds a full batch; returns the bytes consumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        decoder: &mut RecordDecoder,
        source: &str,
    ) -> Result<usize> {
        let mut consumed = 0;
        while consumed < input.len() && !decoder.is_full() {
            let rest = &input[consumed..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    consumed += end + 1;
                    if self.partial.is_empty() {
                        self.emit(&rest[..end], decoder, source)?;
                    } else {
                        let mut line = std::mem::take(&mut self.partial);
                        line.extend_from_slice(&rest[..end]);
                        let result = self.emit(&line, decoder, source);
                        line.clear();
                        self.partial = line;
                        result?;
                    }
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    consumed = input.len();
                }
            }
        }
        Ok(consumed)
    }

    /// Ends the input: decodes a last line that has no terminator.
    pub fn finish(&mut self, decoder: &mut RecordDecoder, source: &str) -> Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.partial);
        self.emit(&line, decoder, source)
    }

    fn emit(&mut self, line: &[u8], decoder: &mut RecordDecoder, source: &str) -> Result<()> {
        let number = self.line;
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        decoder.decode_json(line, source, number)
    }
}

/// Cuts a byte stream of a text format into records.
#[derive(Debug)]
pub enum RecordFramer {
    /// Boxed: the `csv-core` parser carries its transition table.
    Csv(Box<CsvFramer>),
    Lines(LineFramer),
}

impl RecordFramer {
    /// A framer for one input (file) of `format`.
    pub fn new(format: &TextFormat) -> Self {
        match format {
            TextFormat::Csv(options) => Self::Csv(Box::new(CsvFramer::new(options))),
            TextFormat::Json => Self::Lines(LineFramer::default()),
        }
    }

    /// See [`CsvFramer::decode`] and [`LineFramer::decode`].
    pub fn decode(
        &mut self,
        input: &[u8],
        decoder: &mut RecordDecoder,
        source: &str,
    ) -> Result<usize> {
        match self {
            Self::Csv(f) => f.decode(input, decoder, source),
            Self::Lines(f) => f.decode(input, decoder, source),
        }
    }

    /// Ends the input, decoding a last unterminated record.
    pub fn finish(&mut self, decoder: &mut RecordDecoder, source: &str) -> Result<()> {
        match self {
            Self::Csv(f) => f.finish(decoder, source),
            Self::Lines(f) => f.finish(decoder, source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Array, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
        Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, StringArray,
    };
    use datafusion::arrow::datatypes::{
        Field, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };

    fn all_types_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("b", DataType::Boolean, true),
            Field::new("i8", DataType::Int8, true),
            Field::new("i16", DataType::Int16, true),
            Field::new("i32", DataType::Int32, true),
            Field::new("i64", DataType::Int64, false),
            Field::new("f32", DataType::Float32, true),
            Field::new("f64", DataType::Float64, true),
            Field::new("dec", DataType::Decimal128(10, 2), true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "tsz",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("bin", DataType::Binary, true),
        ]))
    }

    /// 2026-03-01T12:00:00Z in milliseconds.
    const NOON_MS: i64 = 1_772_366_400_000;
    /// 2026-03-01 in days.
    const MARCH_1: i32 = 20_513;

    fn decoder(schema: &SchemaRef, format: TextFormat, policy: ErrorPolicy) -> RecordDecoder {
        RecordDecoder::new("t", schema, None, format, policy, 1024).unwrap()
    }

    fn decode_all(decoder: &mut RecordDecoder, input: &[u8]) -> Result<()> {
        let mut framer = RecordFramer::new(&decoder.format().clone());
        let mut consumed = 0;
        while consumed < input.len() {
            consumed += framer.decode(&input[consumed..], decoder, "/data/in")?;
        }
        framer.finish(decoder, "/data/in")
    }

    fn csv() -> TextFormat {
        TextFormat::Csv(CsvOptions::default())
    }

    fn malformed(e: ConnectorError) -> (u64, Option<String>, String) {
        match e {
            ConnectorError::MalformedRecord {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected a malformed record, got {other}"),
        }
    }

    #[test]
    fn csv_decodes_every_type() {
        let schema = all_types_schema();
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let input = "true,-8,-16,-32,-64,1.5,2.25,123.45,hello,2026-03-01,2026-03-01 12:00:00.123,2026-03-01T12:00:00.123+02:00,raw\n\
                     FALSE,,,,7,,,-0.5,,,2026-03-01T12:00:00Z,2026-03-01 12:00:00,\n\
                     ,127,32767,2147483647,9223372036854775807,-1e3,NaN,1,\"a, \"\"quoted\"\"\nvalue\",2026-03-01,2026-03-01T12:00:00,2026-03-01T12:00:00.5,xyz";
        decode_all(&mut d, input.as_bytes()).unwrap();
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 3);

        let b = batch
            .column(0)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            [Some(true), Some(false), None]
        );
        let i8s = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .unwrap();
        assert_eq!(i8s.iter().collect::<Vec<_>>(), [Some(-8), None, Some(127)]);
        let i16s = batch
            .column(2)
            .as_any()
            .downcast_ref::<Int16Array>()
            .unwrap();
        assert_eq!(i16s.value(0), -16);
        assert_eq!(i16s.value(2), 32767);
        let i32s = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(i32s.value(0), -32);
        let i64s = batch
            .column(4)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(i64s.values().to_vec(), [-64, 7, i64::MAX]);
        let f32s = batch
            .column(5)
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        assert_eq!(
            f32s.iter().collect::<Vec<_>>(),
            [Some(1.5), None, Some(-1000.0)]
        );
        let f64s = batch
            .column(6)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(f64s.value(0), 2.25);
        assert!(f64s.value(2).is_nan());
        let dec = batch
            .column(7)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(dec.values().to_vec(), [12345, -50, 100]);
        assert_eq!(dec.data_type(), &DataType::Decimal128(10, 2));
        let s = batch
            .column(8)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(s.value(0), "hello");
        assert_eq!(s.value(1), "", "an empty string field is the empty string");
        assert!(s.is_valid(1));
        assert_eq!(s.value(2), "a, \"quoted\"\nvalue");
        let dates = batch
            .column(9)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(
            dates.iter().collect::<Vec<_>>(),
            [Some(MARCH_1), None, Some(MARCH_1)]
        );
        let ts = batch.column(10).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), [NOON_MS + 123, NOON_MS, NOON_MS]);
        let tsz = batch.column(11).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            tsz.values().to_vec(),
            [
                (NOON_MS - 2 * 3_600_000 + 123) * 1000,
                NOON_MS * 1000,
                NOON_MS * 1000 + 500_000
            ]
        );
        assert_eq!(
            tsz.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let bin = batch
            .column(12)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        assert_eq!(bin.value(0), b"raw");
        assert_eq!(bin.value(1), b"");
        assert_eq!(bin.value(2), b"xyz");
    }

    #[test]
    fn json_decodes_every_type() {
        let schema = all_types_schema();
        let mut d = decoder(&schema, TextFormat::Json, ErrorPolicy::Fail);
        let input = concat!(
            r#"{"b": true, "i8": -8, "i16": -16, "i32": -32, "i64": -64, "f32": 1.5, "f64": 2.25, "dec": 123.45, "s": "h\u00e9llo", "d": "2026-03-01", "ts": "2026-03-01 12:00:00.123", "tsz": "2026-03-01T12:00:00.123+02:00", "bin": "raw", "extra": {"x": [1]}}"#,
            "\n\n",
            r#"{"i64": 7, "s": 42, "dec": 3, "ts": "2026-03-01T12:00:00Z", "b": null}"#,
            "\r\n",
            r#"{"i64": "9", "i32": 4.0, "s": {"k": [true, null]}, "dec": "-0.5", "f64": 1e300, "tsz": "2026-03-01 12:00:00"}"#,
        );
        decode_all(&mut d, input.as_bytes()).unwrap();
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 3);
        let b = batch
            .column(0)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert_eq!(b.iter().collect::<Vec<_>>(), [Some(true), None, None]);
        let i32s = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(i32s.iter().collect::<Vec<_>>(), [Some(-32), None, Some(4)]);
        let i64s = batch
            .column(4)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(i64s.values().to_vec(), [-64, 7, 9]);
        let f64s = batch
            .column(6)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(
            f64s.iter().collect::<Vec<_>>(),
            [Some(2.25), None, Some(1e300)]
        );
        let dec = batch
            .column(7)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(dec.values().to_vec(), [12345, 300, -50]);
        let s = batch
            .column(8)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(s.value(0), "héllo");
        assert_eq!(s.value(1), "42");
        assert_eq!(s.value(2), r#"{"k":[true,null]}"#);
        let dates = batch
            .column(9)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(
            dates.iter().collect::<Vec<_>>(),
            [Some(MARCH_1), None, None]
        );
        let ts = batch.column(10).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), NOON_MS + 123);
        assert_eq!(ts.value(1), NOON_MS);
        assert!(ts.is_null(2));
        let tsz = batch.column(11).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(tsz.value(0), (NOON_MS - 7_200_000 + 123) * 1000);
        assert_eq!(tsz.value(2), NOON_MS * 1000);
        let bin = batch
            .column(12)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        assert_eq!(bin.value(0), b"raw");
    }

    #[test]
    fn timestamps_of_every_unit() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        decode_all(
            &mut d,
            b"2026-03-01 12:00:00.999,2026-03-01T12:00:00.123456789Z\n",
        )
        .unwrap();
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(
            batch
                .column(0)
                .as_primitive::<TimestampSecondType>()
                .value(0),
            NOON_MS / 1000
        );
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<TimestampNanosecondType>()
                .value(0),
            NOON_MS * 1_000_000 + 123_456_789
        );
    }

    fn two_column_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Int32, true),
        ]))
    }

    #[test]
    fn malformed_csv_fails_with_file_line_and_column() {
        let schema = two_column_schema();
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let err = decode_all(&mut d, b"1,10\n\n2,abc\n3,30\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "table 't': malformed record at /data/in line 3, column 'price': cannot parse 'abc' as INT"
        );

        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let (line, column, message) = malformed(decode_all(&mut d, b"1,10\n2\n").unwrap_err());
        assert_eq!((line, column), (2, None));
        assert_eq!(message, "expected 2 fields, found 1");

        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let (line, column, message) = malformed(decode_all(&mut d, b"1,10\n,5").unwrap_err());
        assert_eq!((line, column.as_deref()), (2, Some("id")));
        assert_eq!(message, "null or missing value for a NOT NULL column");

        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let (line, column, message) =
            malformed(decode_all(&mut d, b"1,10\n2,3000000000\n").unwrap_err());
        assert_eq!((line, column.as_deref()), (2, Some("price")));
        assert_eq!(message, "value 3000000000 is out of range for INT");
    }

    #[test]
    fn quoted_newlines_count_towards_line_numbers() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let (line, column, _) = malformed(decode_all(&mut d, b"\"a\nb\",1\nc,x\n").unwrap_err());
        assert_eq!((line, column.as_deref()), (3, Some("n")));
    }

    #[test]
    fn malformed_records_are_skipped_and_counted() {
        let schema = two_column_schema();
        let mut d = decoder(&schema, csv(), ErrorPolicy::Skip);
        decode_all(&mut d, b"1,10\n2,abc\n3\n4,40\n,50\n").unwrap();
        assert_eq!(d.records_skipped(), 3);
        let batch = d.flush().unwrap().unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), [1, 4]);
        let prices = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(prices.values().to_vec(), [10, 40]);

        let mut d = decoder(&schema, TextFormat::Json, ErrorPolicy::Skip);
        let input = b"{\"id\": 1}\n{\"id\": 2,\n[1]\n{\"price\": 3}\n{\"id\": \"x\"}\n{\"id\": 6}";
        decode_all(&mut d, input).unwrap();
        assert_eq!(d.records_skipped(), 4);
        let batch = d.flush().unwrap().unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), [1, 6]);
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let schema = two_column_schema();
        let cases: [(&[u8], u64, Option<&str>, &str); 6] = [
            (
                b"{\"id\": 1}\n{\"id\": 2, \"price\": \"cheap\"}\n",
                2,
                Some("price"),
                "cannot parse 'cheap' as INT",
            ),
            (
                b"{\"id\": 1}\n\n{\"id\": 2.5}",
                3,
                Some("id"),
                "expected an integer for BIGINT, found 2.5",
            ),
            (
                b"{\"id\": true}",
                1,
                Some("id"),
                "expected a BIGINT value, found a boolean",
            ),
            (
                b"{\"price\": 1}",
                1,
                Some("id"),
                "null or missing value for a NOT NULL column",
            ),
            (
                b"{\"id\": 1} x",
                1,
                None,
                "invalid JSON: trailing characters (at character 11)",
            ),
            (
                b"[1, 2]",
                1,
                None,
                "invalid type: sequence, expected a JSON object",
            ),
        ];
        for (input, line, column, message) in cases {
            let mut d = decoder(&schema, TextFormat::Json, ErrorPolicy::Fail);
            let got = malformed(decode_all(&mut d, input).unwrap_err());
            assert_eq!(
                got,
                (line, column.map(String::from), message.to_string()),
                "input {}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn csv_options_header_delimiter_null_literal() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let format = TextFormat::Csv(CsvOptions {
            delimiter: b';',
            header: true,
            null_literal: Some("\\N".into()),
            ..CsvOptions::default()
        });
        // CRLF line ends and blank lines keep the line count exact.
        let mut d = decoder(&schema, format.clone(), ErrorPolicy::Fail);
        let (line, column, _) =
            malformed(decode_all(&mut d, b"name;n\r\na;1\r\n\r\n\\N;\\N\r\n;\r\nb;x").unwrap_err());
        assert_eq!((line, column.as_deref()), (6, Some("n")));
        let mut d = decoder(&schema, format, ErrorPolicy::Fail);
        decode_all(&mut d, b"name;n\r\na;1\r\n\r\n\\N;\\N\r\n;\r\n").unwrap();
        let batch = d.flush().unwrap().unwrap();
        let names = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("")]
        );
        let n = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.iter().collect::<Vec<_>>(), [Some(1), None, None]);
    }

    #[test]
    fn projection_outputs_only_projected_columns_but_validates_all() {
        let schema = two_column_schema();
        let mut d =
            RecordDecoder::new("t", &schema, Some(&[1]), csv(), ErrorPolicy::Skip, 10).unwrap();
        decode_all(&mut d, b"1,10\nbad,20\n3,30\n").unwrap();
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(batch.num_columns(), 1);
        assert_eq!(batch.schema().field(0).name(), "price");
        let prices = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(prices.values().to_vec(), [10, 30]);
        assert_eq!(d.records_skipped(), 1);

        // No columns at all (COUNT(*)): rows are still counted.
        let mut d = RecordDecoder::new(
            "t",
            &schema,
            Some(&[]),
            TextFormat::Json,
            ErrorPolicy::Fail,
            10,
        )
        .unwrap();
        decode_all(&mut d, b"{\"id\":1}\n{\"id\":2}\n").unwrap();
        let batch = d.flush().unwrap().unwrap();
        assert_eq!((batch.num_rows(), batch.num_columns()), (2, 0));
    }

    #[test]
    fn framers_stop_at_batch_size_and_resume_across_chunks() {
        let schema = two_column_schema();
        for format in [csv(), TextFormat::Json] {
            let mut d =
                RecordDecoder::new("t", &schema, None, format.clone(), ErrorPolicy::Fail, 3)
                    .unwrap();
            let mut input = Vec::new();
            for i in 0..10 {
                match format {
                    TextFormat::Csv(_) => input.extend(format!("{i},\"{i}\"\n").bytes()),
                    TextFormat::Json => {
                        input.extend(format!("{{\"id\": {i}, \"price\": {i}}}\n").bytes())
                    }
                }
            }
            // Feed in 7-byte chunks to split records across chunk boundaries.
            let mut framer = RecordFramer::new(&format);
            let mut batches = Vec::new();
            for chunk in input.chunks(7) {
                let mut consumed = 0;
                while consumed < chunk.len() {
                    consumed += framer.decode(&chunk[consumed..], &mut d, "f").unwrap();
                    if d.is_full() {
                        batches.push(d.flush().unwrap().unwrap());
                    }
                }
            }
            framer.finish(&mut d, "f").unwrap();
            if let Some(b) = d.flush().unwrap() {
                batches.push(b);
            }
            let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
            assert_eq!(sizes, [3, 3, 3, 1], "{}", format.name());
            let ids: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(ids, (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn csv_messages_decode_one_record_each() {
        let schema = two_column_schema();
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        d.decode_message(b"1,2", "topic p0", 100).unwrap();
        d.decode_message(b"3,4\n", "topic p0", 101).unwrap();
        let (line, _, _) = malformed(d.decode_message(b"5", "topic p0", 102).unwrap_err());
        assert_eq!(line, 102);
        let batch = d.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
    }

    #[test]
    fn unsupported_types_are_rejected() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
            true,
        )]));
        let err = RecordDecoder::new("t", &schema, None, TextFormat::Json, ErrorPolicy::Fail, 8)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("table 't': column 'l' has type List"),
            "{err}"
        );
    }

    #[test]
    fn string_and_binary_variants() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8View, true),
            Field::new("l", DataType::LargeUtf8, true),
            Field::new("bv", DataType::BinaryView, true),
            Field::new("lb", DataType::LargeBinary, true),
        ]));
        for format in [csv(), TextFormat::Json] {
            let mut d = decoder(&schema, format.clone(), ErrorPolicy::Fail);
            let input: &[u8] = match format {
                TextFormat::Csv(_) => b"a,b,c,d\n",
                TextFormat::Json => br#"{"v": "a", "l": "b", "bv": "c", "lb": "d"}"#,
            };
            decode_all(&mut d, input).unwrap();
            let batch = d.flush().unwrap().unwrap();
            assert_eq!(batch.column(0).as_string_view().value(0), "a");
            assert_eq!(batch.column(1).as_string::<i64>().value(0), "b");
            assert_eq!(batch.column(2).as_binary_view().value(0), b"c");
            assert_eq!(batch.column(3).as_binary::<i64>().value(0), b"d");
        }
    }

    #[test]
    fn decimals_scale_and_check_precision() {
        assert_eq!(scale_integer(12, 4, 2), Some(1200));
        assert_eq!(scale_integer(100, 4, 2), None);
        assert_eq!(scale_integer(-99, 4, 2), Some(-9900));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Decimal128(4, 2),
            true,
        )]));
        let mut d = decoder(&schema, csv(), ErrorPolicy::Fail);
        let (_, _, message) = malformed(decode_all(&mut d, b"123.45\n").unwrap_err());
        assert_eq!(message, "cannot parse '123.45' as DECIMAL(4, 2)");
    }
}
