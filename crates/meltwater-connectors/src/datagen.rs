//! The `datagen` connector: deterministic generated rows, with Flink's option names.
//!
//! ```sql
//! CREATE TABLE orders (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3))
//! WITH ('connector' = 'datagen', 'number-of-rows' = '1000000',
//!       'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '1000000',
//!       'fields.customer.length' = '8', 'fields.amount.min' = '1', 'fields.amount.max' = '500',
//!       'fields.ts.max-past' = '1 d');
//! ```
//!
//! # Determinism
//! The value of column `c` in row `i` is a pure function of (`seed`, `c`'s name, `i`):
//! row `i` of a sequence column is `start + i`, and a random value is drawn from the
//! `i`-th output of a SplitMix64 stream keyed by the seed and a hash of the column name
//! (whether it is null, from a second such stream). So the rows do not depend on how they
//! are split into partitions or batches, and a batch run and a streaming run see the same
//! data; [`DataGenTable::generate`] is the function both use.
//!
//! # Options
//! | option | meaning |
//! |---|---|
//! | `number-of-rows` | rows to generate; without it (and without sequence columns) the table is unbounded |
//! | `rows-per-second` | rate of an unbounded scan (default 10000), over all partitions or splits; bounded scans generate as fast as the query consumes, except in stream mode when the option is set |
//! | `source.splits` | splits of the table in stream mode, 1 to 65536 (default 4); see [`DataGenSource`] |
//! | `seed` | `u64`, default 0 |
//! | `datagen.base-time` | the instant random dates and timestamps count back from (ISO-8601, default `2026-01-01T00:00:00Z`) |
//! | `fields.<col>.kind` | `random` (default) or `sequence` (integer, floating point, decimal and string columns) |
//! | `fields.<col>.start`, `.end` | inclusive integer bounds of a sequence (required for sequences) |
//! | `fields.<col>.min`, `.max` | bounds of random numbers: inclusive for integers and decimals, `[min, max)` for floats; default the type's range (floats: `[0, 1)`) |
//! | `fields.<col>.length` | length of random strings and bytes (alphanumeric), default 100 |
//! | `fields.<col>.max-past` | random dates and timestamps fall in `[base-time - max-past, base-time]` (`'10 s'`, `'5 min'`, `'1 h'`, `'1 d'` or milliseconds; default 0); timestamps have millisecond granularity |
//! | `fields.<col>.null-rate` | fraction of nulls, 0.0 to 1.0 (default 0; only for nullable columns) |
//!
//! With sequence columns the table has `min(number-of-rows, end - start + 1)` rows (the
//! shortest sequence), as in Flink.
//!
//! # Scan
//! A bounded scan splits rows `[0, n)` into `target_partitions` contiguous ranges and
//! produces batches of `batch_size` rows. An unbounded scan gives partition `p` the
//! chunks `p, p + P, p + 2P, ...` of a fixed chunk size and paces them to
//! `rows-per-second` over all partitions. Memory is one batch per partition.
//!
//! # Stream mode
//! [`ConnectorTable::stream_source`] splits the rows into `'source.splits'` splits read
//! from row positions; see [`DataGenSource`]. Every split yields the rows
//! [`DataGenTable::generate`] gives for its row numbers.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cast_utils::{parse_decimal, string_to_datetime};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, SchemaRef, TimeUnit, DECIMAL128_MAX_PRECISION,
};
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness as PlanBoundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use crate::options::{parse_duration_ms, OptionReader};
use crate::stream::StreamSource;
use crate::{Boundedness, ConnectorError, ConnectorTable, Result, SourceMetrics, TableDef};

mod source;
pub use source::{DataGenSource, UNBOUNDED_BLOCK_ROWS};

const CONNECTOR: &str = "datagen";
const TABLE_OPTIONS: &[&str] = &[
    "connector",
    "number-of-rows",
    "rows-per-second",
    "seed",
    "datagen.base-time",
    "source.splits",
    crate::WATERMARK_IDLE_TIMEOUT,
    crate::LATE_RECORDS,
    crate::LATE_RECORDS_TABLE,
];
const FIELD_OPTIONS: &[&str] = &[
    "kind",
    "start",
    "end",
    "min",
    "max",
    "length",
    "max-past",
    "null-rate",
];
/// Default of `'source.splits'`.
pub const DEFAULT_SOURCE_SPLITS: u64 = 4;
/// Largest `'source.splits'`.
pub const MAX_SOURCE_SPLITS: u64 = 65_536;
/// Default of `'rows-per-second'`, as in Flink.
pub const DEFAULT_ROWS_PER_SECOND: u64 = 10_000;
/// Default of `'fields.<col>.length'`, as in Flink.
pub const DEFAULT_STRING_LENGTH: usize = 100;
/// Default of `'datagen.base-time'`.
pub const DEFAULT_BASE_TIME: &str = "2026-01-01T00:00:00Z";
/// [`DEFAULT_BASE_TIME`] in milliseconds since the epoch.
const DEFAULT_BASE_MS: i64 = 1_767_225_600_000;

const MS_PER_DAY: i64 = 86_400_000;
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const NULL_STREAM_SALT: u64 = 0x6E75_6C6C_7261_7465; // "nullrate"
const ALPHANUMERIC: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th output of the SplitMix64 stream seeded with `seed`.
fn nth(seed: u64, i: u64) -> u64 {
    mix(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// FNV-1a of a column name: stable across platforms and releases, unlike `Hash`.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// How one column's values are made.
#[derive(Debug, Clone, PartialEq)]
enum ValueKind {
    /// `start + i`, for integer, float, decimal (whole numbers) and string columns.
    Sequence {
        start: i64,
        end: i64,
    },
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    /// Unscaled bounds.
    Decimal {
        min: i128,
        max: i128,
    },
    Bool,
    /// Alphanumeric text (or its bytes) of a fixed length.
    Text {
        length: usize,
    },
    /// Days before the base day, at most `max_past_days`.
    Date {
        max_past_days: u64,
    },
    /// Milliseconds before the base time, at most `max_past_ms`.
    Timestamp {
        max_past_ms: u64,
    },
}

/// The generator of one column.
#[derive(Debug, Clone)]
struct ColumnGenerator {
    data_type: DataType,
    kind: ValueKind,
    /// Key of the column's value stream.
    value_seed: u64,
    /// Key of the column's null stream.
    null_seed: u64,
    /// A row is null when its null draw is below this (`None`: never; rate 1.0 is
    /// `u64::MAX`, which with the `<=` test below makes every row null).
    null_threshold: Option<u64>,
}

/// What a `datagen` table generates: shared by the table, its scans and any streaming
/// source built from it.
#[derive(Debug)]
struct Generator {
    schema: SchemaRef,
    columns: Vec<ColumnGenerator>,
    /// Milliseconds since the epoch of `datagen.base-time`.
    base_ms: i64,
}

impl Generator {
    fn is_null(&self, column: &ColumnGenerator, row: u64) -> bool {
        column
            .null_threshold
            .is_some_and(|t| nth(column.null_seed, row) <= t)
    }

    fn generate_column(&self, column: &ColumnGenerator, rows: Range<u64>) -> Result<ArrayRef> {
        let base_day = self.base_ms.div_euclid(MS_PER_DAY);
        let len = (rows.end - rows.start) as usize;
        let valid = |i: u64| !self.is_null(column, i);
        let draw = |i: u64| nth(column.value_seed, i);
        let array: ArrayRef = match &column.kind {
            ValueKind::Sequence { start, .. } => match &column.data_type {
                DataType::Float32 | DataType::Float64 => {
                    Arc::new(Float64Array::from_iter(rows.map(|i| {
                        valid(i).then(|| (i128::from(*start) + i128::from(i)) as f64)
                    })))
                }
                DataType::Decimal128(p, s) => {
                    let factor = 10i128.pow(u32::from(s.unsigned_abs()));
                    Arc::new(
                        Decimal128Array::from_iter(rows.map(|i| {
                            valid(i).then(|| (i128::from(*start) + i128::from(i)) * factor)
                        }))
                        .with_precision_and_scale(*p, *s)?,
                    )
                }
                DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView => {
                    let mut b = StringBuilder::with_capacity(len, len * 8);
                    for i in rows {
                        if valid(i) {
                            b.append_value((i128::from(*start) + i128::from(i)).to_string());
                        } else {
                            b.append_null();
                        }
                    }
                    Arc::new(b.finish())
                }
                // Integer columns: the row count keeps start + i within [start, end].
                _ => Arc::new(Int64Array::from_iter(
                    rows.map(|i| valid(i).then(|| start.wrapping_add(i as i64))),
                )),
            },
            ValueKind::Int { min, max } => {
                let span = (i128::from(*max) - i128::from(*min) + 1) as u128;
                Arc::new(Int64Array::from_iter(rows.map(|i| {
                    valid(i).then(|| {
                        let offset = (u128::from(draw(i)) * span) >> 64;
                        (i128::from(*min) + offset as i128) as i64
                    })
                })))
            }
            ValueKind::Float { min, max } => Arc::new(Float64Array::from_iter(rows.map(|i| {
                valid(i).then(|| {
                    let unit = (draw(i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                    min + unit * (max - min)
                })
            }))),
            ValueKind::Decimal { min, max } => {
                let DataType::Decimal128(p, s) = column.data_type else {
                    return Err(internal("decimal generator on a non-decimal column"));
                };
                let span = (max - min + 1) as u128;
                Arc::new(
                    Decimal128Array::from_iter(rows.map(|i| {
                        valid(i).then(|| {
                            let hi = draw(i);
                            let wide = (u128::from(hi) << 64) | u128::from(mix(hi));
                            min + (wide % span) as i128
                        })
                    }))
                    .with_precision_and_scale(p, s)?,
                )
            }
            ValueKind::Bool => Arc::new(BooleanArray::from_iter(
                rows.map(|i| valid(i).then(|| draw(i) >> 63 == 1)),
            )),
            ValueKind::Text { length } => {
                let mut b = StringBuilder::with_capacity(len, len * length);
                let mut text = String::with_capacity(*length);
                for i in rows {
                    if valid(i) {
                        random_text(draw(i), *length, &mut text);
                        b.append_value(&text);
                    } else {
                        b.append_null();
                    }
                }
                Arc::new(b.finish())
            }
            ValueKind::Date { max_past_days } => Arc::new(Date32Array::from_iter(rows.map(|i| {
                valid(i).then(|| {
                    let back = draw(i) % (max_past_days + 1);
                    (base_day - back as i64) as i32
                })
            }))),
            ValueKind::Timestamp { max_past_ms } => {
                let DataType::Timestamp(unit, _) = &column.data_type else {
                    return Err(internal("timestamp generator on a non-timestamp column"));
                };
                Arc::new(Int64Array::from_iter(rows.map(|i| {
                    valid(i).then(|| {
                        let ms = self.base_ms - (draw(i) % (max_past_ms + 1)) as i64;
                        match unit {
                            TimeUnit::Second => ms.div_euclid(1000),
                            TimeUnit::Millisecond => ms,
                            TimeUnit::Microsecond => ms.saturating_mul(1000),
                            TimeUnit::Nanosecond => ms.saturating_mul(1_000_000),
                        }
                    })
                })))
            }
        };
        // Narrow integers, floats, other string types and timestamps are produced in a
        // wider form and cast; the values are in range by construction.
        if array.data_type() == &column.data_type {
            Ok(array)
        } else {
            Ok(cast(&array, &column.data_type)?)
        }
    }

    fn generate(&self, rows: Range<u64>, projection: Option<&[usize]>) -> Result<RecordBatch> {
        let all: Vec<usize>;
        let projection = match projection {
            Some(p) => p,
            None => {
                all = (0..self.columns.len()).collect();
                &all
            }
        };
        let schema = Arc::new(self.schema.project(projection)?);
        let arrays = projection
            .iter()
            .map(|&c| {
                let column = self.columns.get(c).ok_or_else(|| {
                    internal(&format!("projection index {c} is out of the schema"))
                })?;
                self.generate_column(column, rows.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let options =
            RecordBatchOptions::new().with_row_count(Some((rows.end - rows.start) as usize));
        Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
    }
}

fn internal(message: &str) -> ConnectorError {
    ConnectorError::Arrow(datafusion::arrow::error::ArrowError::ComputeError(format!(
        "datagen: {message}"
    )))
}

/// `length` alphanumeric characters drawn from the stream seeded with `seed`.
fn random_text(seed: u64, length: usize, out: &mut String) {
    out.clear();
    let mut bits = 0u64;
    let mut left = 0;
    for k in 0..length as u64 {
        if left == 0 {
            // 62^10 < 2^64: ten characters per draw.
            bits = nth(seed, k);
            left = 10;
        }
        out.push(char::from(ALPHANUMERIC[(bits % 62) as usize]));
        bits /= 62;
        left -= 1;
    }
}

/// A table of generated rows; see the [module documentation](self).
#[derive(Debug)]
pub struct DataGenTable {
    name: String,
    /// The definition the table was built from (what a scan's plan codec carries).
    def: Arc<TableDef>,
    generator: Arc<Generator>,
    rows: Option<u64>,
    rows_per_second: u64,
    /// Whether `'rows-per-second'` was set (a bounded stream source is paced only then).
    rate_set: bool,
    splits: u64,
    seed: u64,
    metrics: Arc<SourceMetrics>,
}

impl DataGenTable {
    /// Validates the options of `def`.
    pub fn try_new(def: TableDef) -> Result<Self> {
        def.reject_metadata(CONNECTOR)?;
        let options = OptionReader::new(&def, CONNECTOR);
        crate::watermark_idle_timeout_ms(&def, CONNECTOR)?;
        let kept = Arc::new(def.clone());
        let columns_list = def
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let valid_options = || {
            let mut valid: Vec<String> = TABLE_OPTIONS.iter().map(|o| format!("'{o}'")).collect();
            valid.push(format!(
                "'fields.<column>.<{}>' for columns {columns_list}",
                FIELD_OPTIONS.join("|")
            ));
            valid.join(", ")
        };

        // Field options by column, checking every key.
        let mut field_options: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (key, value) in &def.options {
            if TABLE_OPTIONS.contains(&key.as_str()) {
                continue;
            }
            let field = key
                .strip_prefix("fields.")
                .and_then(|rest| rest.rsplit_once('.'))
                .filter(|(column, property)| {
                    def.schema.field_with_name(column).is_ok() && FIELD_OPTIONS.contains(property)
                });
            match field {
                Some((column, property)) => {
                    field_options
                        .entry(column)
                        .or_default()
                        .insert(property, value.as_str());
                }
                None => return Err(options.unknown(key, valid_options())),
            }
        }

        let seed: u64 = options
            .parse("seed", "an unsigned 64-bit integer")?
            .unwrap_or(0);
        let number_of_rows: Option<u64> =
            options.parse("number-of-rows", "a non-negative integer")?;
        let rate = options.parse_with("rows-per-second", |v| match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a positive integer".to_string()),
        })?;
        let rows_per_second = rate.unwrap_or(DEFAULT_ROWS_PER_SECOND);
        let splits = options
            .parse_with("source.splits", |v| match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_SOURCE_SPLITS).contains(&n) => Ok(n),
                _ => Err(format!("expected an integer from 1 to {MAX_SOURCE_SPLITS}")),
            })?
            .unwrap_or(DEFAULT_SOURCE_SPLITS);
        let base_ms = options
            .parse_with("datagen.base-time", |v| {
                string_to_datetime(&Utc, v.trim())
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| {
                        "expected an ISO-8601 timestamp such as '2026-01-01T00:00:00Z'".into()
                    })
            })?
            .unwrap_or(DEFAULT_BASE_MS);

        let empty = BTreeMap::new();
        let mut columns = Vec::with_capacity(def.schema.fields().len());
        let mut sequence_rows: Option<u64> = None;
        for field in def.schema.fields() {
            let props = field_options.get(field.name().as_str()).unwrap_or(&empty);
            let column = column_generator(&options, seed, field, props)?;
            if let ValueKind::Sequence { start, end } = column.kind {
                let len = u64::try_from(i128::from(end) - i128::from(start) + 1).unwrap_or(0);
                sequence_rows = Some(sequence_rows.map_or(len, |r| r.min(len)));
            }
            columns.push(column);
        }
        let rows = match (number_of_rows, sequence_rows) {
            (Some(n), Some(s)) => Some(n.min(s)),
            (n, s) => n.or(s),
        };

        Ok(Self {
            name: def.name,
            def: kept,
            generator: Arc::new(Generator {
                schema: def.schema,
                columns,
                base_ms,
            }),
            rows,
            rows_per_second,
            rate_set: rate.is_some(),
            splits,
            seed,
            metrics: Arc::default(),
        })
    }

    /// `'source.splits'`: the number of splits in stream mode.
    pub fn source_splits(&self) -> u64 {
        self.splits
    }

    /// Rows the table holds, `None` when it is unbounded.
    pub fn row_count(&self) -> Option<u64> {
        self.rows
    }

    /// `'rows-per-second'` (the pace of an unbounded scan).
    pub fn rows_per_second(&self) -> u64 {
        self.rows_per_second
    }

    /// `'seed'`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Rows `rows` of the table with the `projection` of its columns (all when `None`):
    /// a pure function of the options and the row numbers.
    pub fn generate(&self, rows: Range<u64>, projection: Option<&[usize]>) -> Result<RecordBatch> {
        self.generator.generate(rows, projection)
    }
}

/// Builds the generator of `field` from its `fields.<col>.*` options.
fn column_generator(
    options: &OptionReader<'_>,
    table_seed: u64,
    field: &datafusion::arrow::datatypes::Field,
    props: &BTreeMap<&str, &str>,
) -> Result<ColumnGenerator> {
    let name = field.name();
    let key = |property: &str| format!("fields.{name}.{property}");
    let invalid = |property: &str, reason: String| {
        let value = props.get(property).copied().unwrap_or_default();
        options.invalid(&key(property), value, reason)
    };
    let not_for_type = |property: &str, what: &str| {
        invalid(
            property,
            format!(
                "applies to {what}; column '{name}' has type {}",
                field.data_type()
            ),
        )
    };
    let parse_i64 = |property: &str| -> Result<Option<i64>> {
        props
            .get(property)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| invalid(property, "expected an integer".into()))
            })
            .transpose()
    };
    let data_type = field.data_type();
    let supported = matches!(
        data_type,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Date32
            | DataType::Timestamp(..)
    );
    if !supported {
        return Err(ConnectorError::UnsupportedType {
            table: options.def.name.clone(),
            column: name.clone(),
            data_type: data_type.to_string(),
            what: "the datagen connector".into(),
        });
    }
    let is_text = matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    );
    let int_range = match data_type {
        DataType::Int8 => Some((i64::from(i8::MIN), i64::from(i8::MAX))),
        DataType::Int16 => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
        DataType::Int32 => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        DataType::Int64 => Some((i64::MIN, i64::MAX)),
        _ => None,
    };
    let is_float = matches!(data_type, DataType::Float32 | DataType::Float64);

    let sequence = match props.get("kind").map(|k| k.trim()) {
        None | Some("random") => false,
        Some("sequence") => true,
        Some(_) => return Err(invalid("kind", "expected 'random' or 'sequence'".into())),
    };
    let used = |property: &str| props.contains_key(property);

    let kind = if sequence {
        for property in ["min", "max", "length", "max-past"] {
            if used(property) {
                return Err(invalid(property, "does not apply to a sequence".into()));
            }
        }
        let (Some(start), Some(end)) = (parse_i64("start")?, parse_i64("end")?) else {
            let missing = if used("start") { "end" } else { "start" };
            return Err(ConnectorError::MissingOption {
                table: options.def.name.clone(),
                option: key(missing),
            });
        };
        if end < start {
            return Err(invalid("end", format!("is below 'start' ({start})")));
        }
        match data_type {
            _ if int_range.is_some() => {
                let (min, max) = int_range.unwrap_or((i64::MIN, i64::MAX));
                if start < min || end > max {
                    return Err(invalid(
                        if start < min { "start" } else { "end" },
                        format!("is out of range for {data_type}"),
                    ));
                }
            }
            DataType::Decimal128(p, s) => {
                let fits = |v: i64| crate::format::scale_integer(i128::from(v), *p, *s).is_some();
                if !fits(start) || !fits(end) {
                    return Err(invalid(
                        if fits(start) { "end" } else { "start" },
                        format!("does not fit {data_type}"),
                    ));
                }
            }
            _ if is_float || is_text => {}
            _ => {
                return Err(invalid(
                    "kind",
                    format!("a sequence cannot be generated for type {data_type}"),
                ))
            }
        }
        ValueKind::Sequence { start, end }
    } else {
        for property in ["start", "end"] {
            if used(property) {
                return Err(invalid(
                    property,
                    "applies only with 'kind' = 'sequence'".into(),
                ));
            }
        }
        if !(int_range.is_some() || is_float || matches!(data_type, DataType::Decimal128(..))) {
            for property in ["min", "max"] {
                if used(property) {
                    return Err(not_for_type(property, "numeric columns"));
                }
            }
        }
        if !is_text && used("length") {
            return Err(not_for_type("length", "string and bytes columns"));
        }
        if !matches!(data_type, DataType::Date32 | DataType::Timestamp(..)) && used("max-past") {
            return Err(not_for_type("max-past", "date and timestamp columns"));
        }
        match data_type {
            DataType::Boolean => ValueKind::Bool,
            _ if int_range.is_some() => {
                let (lo, hi) = int_range.unwrap_or((i64::MIN, i64::MAX));
                let min = parse_i64("min")?.unwrap_or(lo);
                let max = parse_i64("max")?.unwrap_or(hi);
                for (property, v) in [("min", min), ("max", max)] {
                    if v < lo || v > hi {
                        return Err(invalid(
                            property,
                            format!("is out of range for {data_type}"),
                        ));
                    }
                }
                if min > max {
                    return Err(invalid("max", format!("is below 'min' ({min})")));
                }
                ValueKind::Int { min, max }
            }
            _ if is_float => {
                let parse = |property: &str, default: f64| -> Result<f64> {
                    match props.get(property) {
                        None => Ok(default),
                        Some(v) => v
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .ok_or_else(|| invalid(property, "expected a finite number".into())),
                    }
                };
                let (min, max) = (parse("min", 0.0)?, parse("max", 1.0)?);
                if min > max {
                    return Err(invalid("max", format!("is below 'min' ({min})")));
                }
                ValueKind::Float { min, max }
            }
            DataType::Decimal128(p, s) => {
                let limit = 10i128.pow(u32::from((*p).min(DECIMAL128_MAX_PRECISION))) - 1;
                let parse = |property: &str, default: i128| -> Result<i128> {
                    match props.get(property) {
                        None => Ok(default),
                        Some(v) => {
                            parse_decimal::<Decimal128Type>(v.trim(), *p, *s).map_err(|_| {
                                invalid(property, format!("expected a {data_type} value"))
                            })
                        }
                    }
                };
                let (min, max) = (parse("min", -limit)?, parse("max", limit)?);
                if min > max {
                    return Err(invalid("max", "is below 'min'".into()));
                }
                ValueKind::Decimal { min, max }
            }
            _ if is_text => {
                let length = match props.get("length") {
                    None => DEFAULT_STRING_LENGTH,
                    Some(v) => v
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| invalid("length", "expected a non-negative integer".into()))?,
                };
                ValueKind::Text { length }
            }
            DataType::Date32 | DataType::Timestamp(..) => {
                let max_past_ms = match props.get("max-past") {
                    None => 0,
                    Some(v) => {
                        parse_duration_ms(v).map_err(|reason| invalid("max-past", reason))?
                    }
                };
                // Keep base - max-past representable in every unit.
                if max_past_ms > (i64::MAX / 1_000_000) as u64 {
                    return Err(invalid("max-past", "is too large".into()));
                }
                if matches!(data_type, DataType::Date32) {
                    ValueKind::Date {
                        max_past_days: max_past_ms / MS_PER_DAY as u64,
                    }
                } else {
                    ValueKind::Timestamp { max_past_ms }
                }
            }
            _ => {
                return Err(ConnectorError::UnsupportedType {
                    table: options.def.name.clone(),
                    column: name.clone(),
                    data_type: data_type.to_string(),
                    what: "the datagen connector".into(),
                })
            }
        }
    };

    let null_rate = match props.get("null-rate") {
        None => 0.0,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| invalid("null-rate", "expected a number from 0.0 to 1.0".into()))?,
    };
    if null_rate > 0.0 && !field.is_nullable() {
        return Err(invalid("null-rate", format!("column '{name}' is NOT NULL")));
    }
    let null_threshold = (null_rate > 0.0).then_some(if null_rate >= 1.0 {
        u64::MAX
    } else {
        (null_rate * 18_446_744_073_709_551_616.0) as u64
    });
    let value_seed = mix(mix(table_seed) ^ fnv1a(name));
    Ok(ColumnGenerator {
        data_type: data_type.clone(),
        kind,
        value_seed,
        null_seed: mix(value_seed ^ NULL_STREAM_SALT),
        null_threshold,
    })
}

#[async_trait]
impl TableProvider for DataGenTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.generator.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DataGenExec::try_new(
            self,
            projection.cloned(),
            state.config().target_partitions(),
            limit,
            self.metrics.clone(),
        )?))
    }
}

impl ConnectorTable for DataGenTable {
    fn connector(&self) -> &str {
        CONNECTOR
    }

    fn boundedness(&self) -> Boundedness {
        match self.rows {
            Some(_) => Boundedness::Bounded,
            None => Boundedness::Unbounded {
                reason: "'number-of-rows' is not set",
            },
        }
    }

    fn metrics(&self) -> Arc<SourceMetrics> {
        self.metrics.clone()
    }

    /// `'source.splits'` splits of generated rows; see [`DataGenSource`].
    fn stream_source(&self) -> Result<Arc<dyn StreamSource>> {
        let rate = match self.rows {
            Some(_) => self.rate_set.then_some(self.rows_per_second),
            None => Some(self.rows_per_second),
        };
        Ok(Arc::new(DataGenSource::new(
            self.name.clone(),
            self.generator.clone(),
            self.rows,
            self.splits,
            rate,
            self.metrics.clone(),
        )))
    }
}

/// Generates a datagen table's rows; see the [module documentation](self).
#[derive(Debug)]
pub struct DataGenExec {
    table: String,
    /// The table's definition (rebuilds the generator in another process).
    pub(crate) def: Arc<TableDef>,
    generator: Arc<Generator>,
    pub(crate) projection: Option<Vec<usize>>,
    rows: Option<u64>,
    rows_per_second: u64,
    pub(crate) partitions: usize,
    pub(crate) limit: Option<usize>,
    metrics: Arc<SourceMetrics>,
    properties: Arc<PlanProperties>,
}

impl DataGenExec {
    /// A scan of `table` over at most `target_partitions` partitions, counting into
    /// `metrics`.
    pub(crate) fn try_new(
        table: &DataGenTable,
        projection: Option<Vec<usize>>,
        target_partitions: usize,
        limit: Option<usize>,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Self> {
        let generator = table.generator.clone();
        let (rows, rows_per_second) = (table.rows, table.rows_per_second);
        let schema = match &projection {
            Some(p) => Arc::new(generator.schema.project(p)?),
            None => generator.schema.clone(),
        };
        let partitions = match rows {
            Some(n) => target_partitions.clamp(1, usize::try_from(n.max(1)).unwrap_or(usize::MAX)),
            None => target_partitions.max(1),
        };
        let boundedness = match rows {
            Some(_) => PlanBoundedness::Bounded,
            None => PlanBoundedness::Unbounded {
                requires_infinite_memory: false,
            },
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            boundedness,
        ));
        Ok(Self {
            table: table.name.clone(),
            def: table.def.clone(),
            generator,
            projection,
            rows,
            rows_per_second,
            partitions,
            limit,
            metrics,
            properties,
        })
    }

    /// The rows of `partition` in a bounded scan.
    pub fn partition_rows(&self, partition: usize) -> Range<u64> {
        let n = u128::from(self.rows.unwrap_or(0));
        let parts = self.partitions as u128;
        let p = partition as u128;
        let start = (n * p / parts) as u64;
        let end = (n * (p + 1) / parts) as u64;
        start..end
    }
}

impl DisplayAs for DataGenExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataGenExec: table={}, rows=", self.table)?;
        match self.rows {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "unbounded ({} rows/s)", self.rows_per_second)?,
        }
        write!(f, ", partitions={}", self.partitions)?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

/// The rows a partition still has to produce.
struct PartitionState {
    generator: Arc<Generator>,
    projection: Option<Vec<usize>>,
    metrics: Arc<SourceMetrics>,
    /// Bounded: the next row and the end. Unbounded: the next chunk number.
    next: u64,
    end: u64,
    unbounded: Option<Pacing>,
    batch_rows: u64,
    remaining: Option<u64>,
}

/// Pacing of an unbounded partition.
struct Pacing {
    partitions: u64,
    started: tokio::time::Instant,
    emitted: u64,
    rows_per_second: f64,
}

impl PartitionState {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let rows = match &mut self.unbounded {
            None => {
                if self.next >= self.end {
                    return Ok(None);
                }
                let rows = self.next..self.end.min(self.next + self.batch_rows);
                self.next = rows.end;
                rows
            }
            Some(pacing) => {
                let due = pacing.started
                    + Duration::from_secs_f64(pacing.emitted as f64 / pacing.rows_per_second);
                tokio::time::sleep_until(due).await;
                let chunk = self.next;
                self.next += pacing.partitions;
                let start = chunk.saturating_mul(self.batch_rows);
                pacing.emitted += self.batch_rows;
                start..start.saturating_add(self.batch_rows)
            }
        };
        let rows = match self.remaining.as_mut() {
            Some(remaining) => {
                let len = (rows.end - rows.start).min(*remaining);
                *remaining -= len;
                rows.start..rows.start + len
            }
            None => rows,
        };
        let batch = self.generator.generate(rows, self.projection.as_deref())?;
        SourceMetrics::add(&self.metrics.rows, batch.num_rows() as u64);
        Ok(Some(batch))
    }
}

impl ExecutionPlan for DataGenExec {
    crate::leaf_exec_methods!("DataGenExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return Err(DataFusionError::Internal(format!(
                "DataGenExec has {} partitions, asked for partition {partition}",
                self.partitions
            )));
        }
        let batch_size = context.session_config().batch_size().max(1) as u64;
        let state = match self.rows {
            Some(_) => {
                let range = self.partition_rows(partition);
                PartitionState {
                    generator: self.generator.clone(),
                    projection: self.projection.clone(),
                    metrics: self.metrics.clone(),
                    next: range.start,
                    end: range.end,
                    unbounded: None,
                    batch_rows: batch_size,
                    remaining: self.limit.map(|l| l as u64),
                }
            }
            None => {
                // Chunks of about a tenth of a second of this partition's share of the
                // rate, so pacing is smooth at low rates.
                let per_partition = self.rows_per_second as f64 / self.partitions as f64;
                let chunk = ((per_partition / 10.0) as u64).clamp(1, batch_size);
                PartitionState {
                    generator: self.generator.clone(),
                    projection: self.projection.clone(),
                    metrics: self.metrics.clone(),
                    next: partition as u64,
                    end: u64::MAX,
                    unbounded: Some(Pacing {
                        partitions: self.partitions as u64,
                        started: tokio::time::Instant::now(),
                        emitted: 0,
                        rows_per_second: per_partition,
                    }),
                    batch_rows: chunk,
                    remaining: self.limit.map(|l| l as u64),
                }
            }
        };
        let schema = self.properties.eq_properties.schema().clone();
        let stream = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(state))),
                Ok(None) => None,
                Err(e) => Some((Err(DataFusionError::from(e)), None)),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{
        Date32Type, Field, Float64Type, Int32Type, Int64Type, Schema, TimestampMillisecondType,
    };
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Int32, true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("amount", DataType::Decimal128(8, 2), true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "tsz",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("tiny", DataType::Int8, true),
        ]))
    }

    fn def(options: &[(&str, &str)]) -> TableDef {
        let mut map = BTreeMap::new();
        map.insert("connector".to_string(), "datagen".to_string());
        for (k, v) in options {
            map.insert(k.to_string(), v.to_string());
        }
        TableDef {
            name: "gen".into(),
            schema: schema(),
            options: map,
            primary_key: vec![],
            metadata: Default::default(),
        }
    }

    fn standard_options() -> Vec<(&'static str, &'static str)> {
        vec![
            ("number-of-rows", "1000"),
            ("seed", "7"),
            ("fields.n.min", "-5"),
            ("fields.n.max", "5"),
            ("fields.n.null-rate", "0.25"),
            ("fields.x.min", "10"),
            ("fields.x.max", "20"),
            ("fields.s.length", "12"),
            ("fields.amount.min", "1.50"),
            ("fields.amount.max", "2.50"),
            ("fields.d.max-past", "10 d"),
            ("fields.ts.max-past", "1 h"),
            ("fields.tsz.max-past", "5 min"),
        ]
    }

    async fn collect(table: DataGenTable, partitions: usize, batch_size: usize) -> RecordBatch {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(batch_size),
        );
        ctx.register_table("gen", Arc::new(table)).unwrap();
        let batches = ctx
            .sql("select * from gen order by id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    #[tokio::test]
    async fn same_rows_whatever_the_partitioning() {
        let mut options = standard_options();
        options.push(("fields.id.kind", "sequence"));
        options.push(("fields.id.start", "0"));
        options.push(("fields.id.end", "999999"));
        let one = collect(DataGenTable::try_new(def(&options)).unwrap(), 1, 8192).await;
        let four = collect(DataGenTable::try_new(def(&options)).unwrap(), 4, 37).await;
        assert_eq!(one.num_rows(), 1000);
        assert_eq!(
            pretty_format_batches(std::slice::from_ref(&one))
                .unwrap()
                .to_string(),
            pretty_format_batches(&[four]).unwrap().to_string()
        );

        // The table's own function gives the same rows in any slicing.
        let table = DataGenTable::try_new(def(&options)).unwrap();
        let whole = table.generate(0..1000, None).unwrap();
        let parts = [
            table.generate(0..1, None).unwrap(),
            table.generate(1..500, None).unwrap(),
            table.generate(500..1000, None).unwrap(),
        ];
        assert_eq!(whole, concat_batches(&whole.schema(), &parts).unwrap());
        assert_eq!(whole, one);

        // A different seed gives different data; the sequence stays.
        let mut reseeded = options.clone();
        reseeded.retain(|(k, _)| *k != "seed");
        reseeded.push(("seed", "8"));
        let other = DataGenTable::try_new(def(&reseeded))
            .unwrap()
            .generate(0..1000, None)
            .unwrap();
        assert_eq!(whole.column(0), other.column(0));
        for c in 1..whole.num_columns() {
            assert_ne!(whole.column(c), other.column(c), "column {c}");
        }
    }

    #[test]
    fn values_respect_bounds() {
        let table = DataGenTable::try_new(def(&standard_options())).unwrap();
        let batch = table.generate(0..1000, None).unwrap();

        let n = batch.column(1).as_primitive::<Int32Type>();
        let nulls = n.null_count();
        assert!(
            (180..320).contains(&nulls),
            "null-rate 0.25 gave {nulls} nulls"
        );
        assert!(n.iter().flatten().all(|v| (-5..=5).contains(&v)));
        // Both ends of the inclusive range occur.
        assert!(n.iter().flatten().any(|v| v == -5));
        assert!(n.iter().flatten().any(|v| v == 5));

        let x = batch.column(2).as_primitive::<Float64Type>();
        assert_eq!(x.null_count(), 0);
        assert!(x.values().iter().all(|v| (10.0..20.0).contains(v)));

        let s = batch.column(3).as_string::<i32>();
        assert!(s
            .iter()
            .flatten()
            .all(|v| v.len() == 12 && v.bytes().all(|b| b.is_ascii_alphanumeric())));
        assert_ne!(s.value(0), s.value(1));

        let flag = batch.column(4).as_boolean();
        let trues = flag.true_count();
        assert!((400..600).contains(&trues), "{trues} of 1000 true");

        let amount = batch.column(5).as_primitive::<Decimal128Type>();
        assert!(amount.values().iter().all(|v| (150..=250).contains(v)));

        let base_day = 20_454; // 2026-01-01
        let d = batch.column(6).as_primitive::<Date32Type>();
        assert!(d
            .values()
            .iter()
            .all(|v| (base_day - 10..=base_day).contains(v)));

        let base_ms = 1_767_225_600_000i64;
        let ts = batch.column(7).as_primitive::<TimestampMillisecondType>();
        assert!(ts
            .values()
            .iter()
            .all(|v| (base_ms - 3_600_000..=base_ms).contains(v)));
        let tsz = batch.column(8);
        assert_eq!(
            tsz.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let tsz = tsz.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert!(tsz
            .values()
            .iter()
            .all(|v| ((base_ms - 300_000) * 1000..=base_ms * 1000).contains(v)));

        // Default range of a TINYINT is the whole type.
        let tiny = batch
            .column(9)
            .as_primitive::<datafusion::arrow::datatypes::Int8Type>();
        assert!(tiny.values().iter().any(|v| *v < -64));
        assert!(tiny.values().iter().any(|v| *v > 64));
    }

    #[test]
    fn default_base_time_constants_agree() {
        let parsed = string_to_datetime(&Utc, DEFAULT_BASE_TIME).unwrap();
        assert_eq!(parsed.timestamp_millis(), DEFAULT_BASE_MS);
    }

    #[test]
    fn sequences_bound_the_row_count() {
        let seq = [
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "10"),
            ("fields.id.end", "19"),
        ];
        let table = DataGenTable::try_new(def(&seq)).unwrap();
        assert_eq!(table.row_count(), Some(10));
        assert_eq!(table.boundedness(), Boundedness::Bounded);
        let batch = table.generate(0..10, Some(&[0])).unwrap();
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), (10..20).collect::<Vec<_>>());

        let mut limited = seq.to_vec();
        limited.push(("number-of-rows", "4"));
        assert_eq!(
            DataGenTable::try_new(def(&limited)).unwrap().row_count(),
            Some(4)
        );

        let mut two = seq.to_vec();
        two.extend([
            ("fields.s.kind", "sequence"),
            ("fields.s.start", "100"),
            ("fields.s.end", "104"),
            ("fields.amount.kind", "sequence"),
            ("fields.amount.start", "1"),
            ("fields.amount.end", "1000"),
        ]);
        let table = DataGenTable::try_new(def(&two)).unwrap();
        assert_eq!(table.row_count(), Some(5));
        let batch = table.generate(0..5, Some(&[3, 5])).unwrap();
        let s = batch.column(0).as_string::<i32>();
        assert_eq!(
            s.iter().flatten().collect::<Vec<_>>(),
            ["100", "101", "102", "103", "104"]
        );
        let amount = batch.column(1).as_primitive::<Decimal128Type>();
        assert_eq!(amount.values().to_vec(), [100, 200, 300, 400, 500]);

        let unbounded = DataGenTable::try_new(def(&[])).unwrap();
        assert_eq!(unbounded.row_count(), None);
        assert_eq!(
            unbounded.boundedness(),
            Boundedness::Unbounded {
                reason: "'number-of-rows' is not set"
            }
        );
    }

    #[test]
    fn invalid_options_are_errors() {
        let err =
            |options: &[(&str, &str)]| DataGenTable::try_new(def(options)).unwrap_err().to_string();
        let unknown = err(&[("fields.nope.kind", "random")]);
        assert!(
            unknown.starts_with("table 'gen': unknown option 'fields.nope.kind' for connector 'datagen' (valid options: 'connector', 'number-of-rows'"),
            "{unknown}"
        );
        assert!(unknown.contains("for columns id, n, x"), "{unknown}");
        assert!(err(&[("rows", "5")]).contains("unknown option 'rows'"));
        assert!(err(&[("fields.id.colour", "red")]).contains("unknown option 'fields.id.colour'"));
        assert_eq!(
            err(&[("fields.id.kind", "sequence"), ("fields.id.start", "1")]),
            "table 'gen': missing required option 'fields.id.end'"
        );
        assert_eq!(
            err(&[("fields.n.min", "9"), ("fields.n.max", "3")]),
            "table 'gen': invalid value '3' for option 'fields.n.max': is below 'min' (9)"
        );
        assert_eq!(
            err(&[("fields.tiny.max", "300")]),
            "table 'gen': invalid value '300' for option 'fields.tiny.max': is out of range for Int8"
        );
        assert_eq!(
            err(&[("fields.s.min", "1")]),
            "table 'gen': invalid value '1' for option 'fields.s.min': applies to numeric columns; column 's' has type Utf8"
        );
        assert_eq!(
            err(&[("fields.id.null-rate", "0.5")]),
            "table 'gen': invalid value '0.5' for option 'fields.id.null-rate': column 'id' is NOT NULL"
        );
        assert!(err(&[("fields.n.null-rate", "1.5")]).contains("from 0.0 to 1.0"));
        assert!(err(&[("fields.ts.max-past", "soon")]).contains("expected a duration"));
        assert!(err(&[
            ("fields.flag.kind", "sequence"),
            ("fields.flag.start", "0"),
            ("fields.flag.end", "1")
        ])
        .contains("a sequence cannot be generated for type Boolean"));
        assert!(err(&[("number-of-rows", "-1")]).contains("'number-of-rows'"));
        assert!(err(&[("rows-per-second", "0")]).contains("positive"));
        assert!(err(&[("datagen.base-time", "yesterday")]).contains("ISO-8601"));
    }

    #[test]
    fn null_rate_one_is_all_nulls_and_base_time_moves_values() {
        let table = DataGenTable::try_new(def(&[
            ("fields.n.null-rate", "1"),
            ("datagen.base-time", "2030-06-01T00:00:00Z"),
            ("number-of-rows", "50"),
        ]))
        .unwrap();
        let batch = table.generate(0..50, Some(&[1, 6])).unwrap();
        assert_eq!(batch.column(0).null_count(), 50);
        let d = batch.column(1).as_primitive::<Date32Type>();
        // max-past defaults to 0: every date is the base day.
        assert!(d.values().iter().all(|v| *v == 22_066));
    }

    #[test]
    fn every_string_and_number_variant() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8View, true),
            Field::new("l", DataType::LargeUtf8, true),
            Field::new("b", DataType::Binary, true),
            Field::new("bv", DataType::BinaryView, true),
            Field::new("f", DataType::Float32, true),
            Field::new("i", DataType::Int16, true),
            Field::new("seq", DataType::Utf8View, true),
            Field::new("fseq", DataType::Float32, true),
            Field::new("sec", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let mut options = BTreeMap::new();
        for (k, v) in [
            ("connector", "datagen"),
            ("fields.v.length", "3"),
            ("fields.b.length", "4"),
            ("fields.seq.kind", "sequence"),
            ("fields.seq.start", "-2"),
            ("fields.seq.end", "2"),
            ("fields.fseq.kind", "sequence"),
            ("fields.fseq.start", "1"),
            ("fields.fseq.end", "100"),
            ("fields.sec.max-past", "1 d"),
            ("fields.ns.max-past", "1 d"),
        ] {
            options.insert(k.to_string(), v.to_string());
        }
        let table = DataGenTable::try_new(TableDef {
            name: "g".into(),
            schema: schema.clone(),
            options,
            primary_key: vec![],
            metadata: Default::default(),
        })
        .unwrap();
        assert_eq!(table.row_count(), Some(5));
        let batch = table.generate(0..5, None).unwrap();
        assert_eq!(batch.schema(), schema);
        assert!(batch
            .column(0)
            .as_string_view()
            .iter()
            .all(|s| s.unwrap().len() == 3));
        assert!(batch
            .column(2)
            .as_binary::<i32>()
            .iter()
            .all(|s| s.unwrap().len() == 4));
        let seq: Vec<_> = batch.column(6).as_string_view().iter().flatten().collect();
        assert_eq!(seq, ["-2", "-1", "0", "1", "2"]);
        let fseq = batch
            .column(7)
            .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
        assert_eq!(fseq.values().to_vec(), [1.0, 2.0, 3.0, 4.0, 5.0]);
        let base_ms = 1_767_225_600_000i64;
        let sec = batch
            .column(8)
            .as_primitive::<datafusion::arrow::datatypes::TimestampSecondType>();
        assert!(sec
            .values()
            .iter()
            .all(|v| (base_ms / 1000 - 86_400..=base_ms / 1000).contains(v)));
        let ns = batch
            .column(9)
            .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
        assert!(ns
            .values()
            .iter()
            .all(|v| v % 1_000_000 == 0 && *v <= base_ms * 1_000_000));
    }

    #[tokio::test]
    async fn limit_and_count() {
        let table = DataGenTable::try_new(def(&[("number-of-rows", "12345")])).unwrap();
        let metrics = table.metrics();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(3));
        ctx.register_table("gen", Arc::new(table)).unwrap();
        let batches = ctx
            .sql("select count(*) from gen")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            12345
        );
        assert_eq!(SourceMetrics::get(&metrics.rows), 12345);
        let batches = ctx
            .sql("select n from gen limit 7")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 7);
    }

    #[tokio::test]
    async fn unbounded_scan_is_paced_and_deterministic() {
        let table =
            DataGenTable::try_new(def(&[("rows-per-second", "200"), ("seed", "3")])).unwrap();
        let expected = table.generate(0..40, Some(&[1])).unwrap();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        ctx.register_table("gen", Arc::new(table)).unwrap();
        let started = std::time::Instant::now();
        let batches = ctx
            .sql("select n from gen limit 40")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        // 40 rows at 200 rows/s in chunks of 20: the second chunk is due after 100 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(90),
            "{:?}",
            started.elapsed()
        );
        let got = concat_batches(&batches[0].schema(), &batches).unwrap();
        assert_eq!(got.column(0), expected.column(0));
        assert_eq!(got.column(0).len(), 40);
    }
}
