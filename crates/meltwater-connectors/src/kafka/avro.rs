//! The `avro` and `avro-confluent` value formats of the kafka connector.
//!
//! - `avro`: a record value is one Avro binary datum whose schema is derived from the
//!   table's DDL ([`writer_schema`]): a record named after the table, its fields the value
//!   columns in order, a nullable column as the union `["null", T]` with default null.
//! - `avro-confluent`: the Confluent wire format, a magic byte 0, the 4-byte big-endian id
//!   of the writer schema in a schema registry (`avro-confluent.url`), then the datum.
//!   Reading fetches each id's schema once (`GET {url}/schemas/ids/{id}`) and resolves it
//!   against the DDL's schema as Avro schema resolution says: fields matched by name,
//!   writer fields the table lacks skipped, table columns the writer lacks null (when
//!   nullable), numeric promotions (int → long → float → double), string ↔ bytes, enum →
//!   string. Writing registers the DDL's schema under the subject `<topic>-value`
//!   (`<topic>-key` for keys; `avro-confluent.subject` overrides the value's) once per
//!   writer and prefixes each record with its id.
//!
//! Decoding goes straight from the bytes into Arrow builders: each writer schema is
//! compiled once into a plan of field reads, and a record's cells are collected before any
//! is appended, so a malformed record leaves no partial row.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::Schema as AvroSchema;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
};

use crate::format::sql_type_name;
use crate::options::OptionReader;
use crate::{ConnectorError, Result};

/// The Confluent wire format's first byte.
const MAGIC: u8 = 0;
/// Timeout of a schema registry request.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The options of the avro formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AvroFormat {
    /// `avro-confluent`: the schema registry.
    pub registry: Option<RegistryOptions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryOptions {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// The subject the value schema is registered under (default `<topic>-value`).
    pub subject: Option<String>,
}

/// The options of the avro formats (besides `format`).
pub(crate) const OPTIONS: &[&str] = &[
    "avro-confluent.url",
    "avro-confluent.schema-registry.url",
    "avro-confluent.subject",
];

impl AvroFormat {
    /// `format_name` is `avro` or `avro-confluent`.
    pub fn parse(o: &OptionReader<'_>, format_key: &str, format_name: &str) -> Result<Self> {
        let url = o
            .get("avro-confluent.url")
            .or_else(|| o.get("avro-confluent.schema-registry.url"));
        let subject = o.get("avro-confluent.subject");
        match format_name {
            "avro" => {
                for key in OPTIONS {
                    if o.get(key).is_some() {
                        return Err(o.invalid(
                            format_key,
                            format_name,
                            format!("'{key}' is an option of the 'avro-confluent' format"),
                        ));
                    }
                }
                Ok(Self { registry: None })
            }
            _ => {
                let url = match url {
                    Some(u) => u,
                    None => return Err(o.required("avro-confluent.url").unwrap_err()),
                };
                let key = if o.get("avro-confluent.url").is_some() {
                    "avro-confluent.url"
                } else {
                    "avro-confluent.schema-registry.url"
                };
                let parsed =
                    url::Url::parse(url).map_err(|e| o.invalid(key, url, e.to_string()))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(o.invalid(key, url, "expected an http:// or https:// URL"));
                }
                Ok(Self {
                    registry: Some(RegistryOptions {
                        url: url.trim_end_matches('/').to_string(),
                        subject: subject.map(str::to_string),
                    }),
                })
            }
        }
    }
}

/// What a table column holds, as far as Avro is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Text,
    Bytes,
    Decimal { precision: u8, scale: i8 },
    Date,
    TimestampMillis,
    TimestampMicros,
}

impl Target {
    fn of(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => Self::Bool,
            DataType::Int32 => Self::Int,
            DataType::Int64 => Self::Long,
            DataType::Float32 => Self::Float,
            DataType::Float64 => Self::Double,
            DataType::Utf8 => Self::Text,
            DataType::Binary => Self::Bytes,
            DataType::Decimal128(p, s) if *s >= 0 => Self::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::Date32 => Self::Date,
            DataType::Timestamp(TimeUnit::Millisecond, _) => Self::TimestampMillis,
            DataType::Timestamp(TimeUnit::Microsecond, _) => Self::TimestampMicros,
            _ => return None,
        })
    }

    fn avro_type(self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Bool => json!("boolean"),
            Self::Int => json!("int"),
            Self::Long => json!("long"),
            Self::Float => json!("float"),
            Self::Double => json!("double"),
            Self::Text => json!("string"),
            Self::Bytes => json!("bytes"),
            Self::Decimal { precision, scale } => json!({
                "type": "bytes", "logicalType": "decimal",
                "precision": precision, "scale": scale
            }),
            Self::Date => json!({"type": "int", "logicalType": "date"}),
            Self::TimestampMillis => json!({"type": "long", "logicalType": "timestamp-millis"}),
            Self::TimestampMicros => json!({"type": "long", "logicalType": "timestamp-micros"}),
        }
    }
}

/// An Avro name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A record name from a table name (`kafka_local.orders` → `kafka_local_orders`).
fn record_name(table: &str) -> String {
    let mut s: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

/// The columns of an Avro record, checked.
fn targets(table: &str, schema: &SchemaRef) -> Result<Vec<(String, Target, bool)>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let target = Target::of(f.data_type()).ok_or_else(|| ConnectorError::Unsupported {
                table: table.to_string(),
                message: format!(
                    "column '{}': type {} has no avro mapping (the avro formats read and write BOOLEAN, INT, BIGINT, FLOAT, DOUBLE, STRING, BYTES, DECIMAL, DATE, TIMESTAMP(3) and TIMESTAMP(6))",
                    f.name(),
                    sql_type_name(f.data_type())
                ),
            })?;
            if !is_avro_name(f.name()) {
                return Err(ConnectorError::Unsupported {
                    table: table.to_string(),
                    message: format!(
                        "column '{}': an avro field name is letters, digits and '_', not starting with a digit",
                        f.name()
                    ),
                });
            }
            Ok((f.name().clone(), target, f.is_nullable()))
        })
        .collect()
}

/// The Avro schema (JSON text) of the value columns `schema` of table `table`, with the
/// record named `name` (default: after the table).
pub(crate) fn writer_schema(table: &str, name: Option<&str>, schema: &SchemaRef) -> Result<String> {
    let fields: Vec<serde_json::Value> = targets(table, schema)?
        .into_iter()
        .map(|(name, target, nullable)| {
            if nullable {
                serde_json::json!({
                    "name": name, "type": ["null", target.avro_type()], "default": null
                })
            } else {
                serde_json::json!({"name": name, "type": target.avro_type()})
            }
        })
        .collect();
    Ok(serde_json::json!({
        "type": "record",
        "name": record_name(name.unwrap_or(table)),
        "fields": fields,
    })
    .to_string())
}

fn parse_schema(
    text: &str,
) -> std::result::Result<(AvroSchema, HashMap<Name, AvroSchema>), String> {
    let schema = AvroSchema::parse_str(text).map_err(|e| format!("invalid avro schema: {e}"))?;
    let names = ResolvedSchema::try_from(&schema)
        .map_err(|e| format!("invalid avro schema: {e}"))?
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect();
    Ok((schema, names))
}

// ---------------------------------------------------------------------------------------
// Reading

/// How a writer's long becomes the column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    One,
    Mul(i64),
    Div(i64),
}

/// One compiled read of a writer value into a column's cell.
#[derive(Debug, Clone)]
enum Read {
    Null,
    Bool,
    Long(Scale),
    Float,
    Double,
    /// Length-prefixed bytes or string.
    Bytes,
    Fixed(usize),
    Enum(Arc<Vec<String>>),
    /// Decimal's unscaled value: bytes (`None`) or fixed of this size.
    Decimal(Option<usize>),
    Union(Vec<Read>),
    /// A value the table has no column for (or, in a union, a branch it cannot take).
    Skip(Box<AvroSchema>),
    /// A union branch that cannot be read as the column: a record taking it is malformed.
    Fail(String),
}

/// A value of the record being decoded; bytes are ranges in the payload.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(i128),
    Bytes(Range<usize>),
    Symbol(Arc<Vec<String>>, usize),
}

/// A writer schema compiled against the table's columns.
#[derive(Debug)]
struct Plan {
    /// One per writer field: the column it fills (if any) and how it is read.
    fields: Vec<(Option<usize>, Read)>,
    names: HashMap<Name, AvroSchema>,
}

fn type_name(s: &AvroSchema) -> String {
    match s {
        AvroSchema::Null => "null".into(),
        AvroSchema::Boolean => "boolean".into(),
        AvroSchema::Int => "int".into(),
        AvroSchema::Long => "long".into(),
        AvroSchema::Float => "float".into(),
        AvroSchema::Double => "double".into(),
        AvroSchema::Bytes => "bytes".into(),
        AvroSchema::String => "string".into(),
        AvroSchema::Array(_) => "array".into(),
        AvroSchema::Map(_) => "map".into(),
        AvroSchema::Union(_) => "union".into(),
        AvroSchema::Record(r) => format!("record {}", r.name.name),
        AvroSchema::Enum(e) => format!("enum {}", e.name.name),
        AvroSchema::Fixed(f) => format!("fixed({})", f.size),
        AvroSchema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        AvroSchema::BigDecimal => "big-decimal".into(),
        AvroSchema::Uuid => "uuid".into(),
        AvroSchema::Date => "date".into(),
        AvroSchema::TimeMillis => "time-millis".into(),
        AvroSchema::TimeMicros => "time-micros".into(),
        AvroSchema::TimestampMillis => "timestamp-millis".into(),
        AvroSchema::TimestampMicros => "timestamp-micros".into(),
        AvroSchema::TimestampNanos => "timestamp-nanos".into(),
        AvroSchema::LocalTimestampMillis => "local-timestamp-millis".into(),
        AvroSchema::LocalTimestampMicros => "local-timestamp-micros".into(),
        AvroSchema::LocalTimestampNanos => "local-timestamp-nanos".into(),
        AvroSchema::Duration => "duration".into(),
        AvroSchema::Ref { name } => name.name.clone(),
    }
}

fn deref<'a>(s: &'a AvroSchema, names: &'a HashMap<Name, AvroSchema>) -> &'a AvroSchema {
    match s {
        AvroSchema::Ref { name } => names.get(name).unwrap_or(s),
        _ => s,
    }
}

/// How a writer value of schema `w` is read into a column of `target`; `Err` when it
/// cannot be.
fn resolve(
    w: &AvroSchema,
    names: &HashMap<Name, AvroSchema>,
    target: Target,
    nullable: bool,
) -> std::result::Result<Read, String> {
    use AvroSchema as S;
    let w = deref(w, names);
    if let S::Union(u) = w {
        return Ok(Read::Union(
            u.variants()
                .iter()
                .map(|v| resolve(v, names, target, nullable).unwrap_or_else(Read::Fail))
                .collect(),
        ));
    }
    if let S::Null = w {
        return if nullable {
            Ok(Read::Null)
        } else {
            Err("null for a NOT NULL column".into())
        };
    }
    let long_scale = |to_millis: bool| match (w, to_millis) {
        (S::TimestampMicros | S::LocalTimestampMicros, true) => Scale::Div(1_000),
        (S::TimestampNanos | S::LocalTimestampNanos, true) => Scale::Div(1_000_000),
        (S::TimestampMillis | S::LocalTimestampMillis, false) => Scale::Mul(1_000),
        (S::TimestampNanos | S::LocalTimestampNanos, false) => Scale::Div(1_000),
        _ => Scale::One,
    };
    let is_int = matches!(w, S::Int | S::Date | S::TimeMillis);
    let is_long = matches!(
        w,
        S::Long
            | S::TimeMicros
            | S::TimestampMillis
            | S::TimestampMicros
            | S::TimestampNanos
            | S::LocalTimestampMillis
            | S::LocalTimestampMicros
            | S::LocalTimestampNanos
    );
    let read = match target {
        Target::Bool if matches!(w, S::Boolean) => Read::Bool,
        Target::Int | Target::Date if is_int => Read::Long(Scale::One),
        Target::Long if is_int || is_long => Read::Long(Scale::One),
        Target::Float | Target::Double if is_int || is_long => Read::Long(Scale::One),
        Target::Float | Target::Double if matches!(w, S::Float) => Read::Float,
        Target::Double if matches!(w, S::Double) => Read::Double,
        Target::Text | Target::Bytes if matches!(w, S::String | S::Bytes | S::Uuid) => Read::Bytes,
        Target::Bytes if matches!(w, S::Fixed(_)) => match w {
            S::Fixed(f) => Read::Fixed(f.size),
            _ => unreachable!(),
        },
        Target::Text if matches!(w, S::Enum(_)) => match w {
            S::Enum(e) => Read::Enum(Arc::new(e.symbols.clone())),
            _ => unreachable!(),
        },
        Target::Decimal { scale, .. } => match w {
            S::Decimal(d) if d.scale != scale as usize => {
                return Err(format!(
                    "decimal({}, {}) has another scale than the column's {scale}",
                    d.precision, d.scale
                ))
            }
            S::Decimal(d) => match deref(&d.inner, names) {
                S::Fixed(f) => Read::Decimal(Some(f.size)),
                _ => Read::Decimal(None),
            },
            S::Bytes => Read::Decimal(None),
            S::Fixed(f) => Read::Decimal(Some(f.size)),
            _ => return Err(format!("cannot read avro {} as {target:?}", type_name(w))),
        },
        Target::TimestampMillis if is_long => Read::Long(long_scale(true)),
        Target::TimestampMicros if is_long => Read::Long(long_scale(false)),
        _ => {
            return Err(format!(
                "cannot read avro {} as {}",
                type_name(w),
                target_sql(target)
            ))
        }
    };
    Ok(read)
}

fn target_sql(t: Target) -> String {
    match t {
        Target::Bool => "BOOLEAN".into(),
        Target::Int => "INT".into(),
        Target::Long => "BIGINT".into(),
        Target::Float => "FLOAT".into(),
        Target::Double => "DOUBLE".into(),
        Target::Text => "STRING".into(),
        Target::Bytes => "BYTES".into(),
        Target::Decimal { precision, scale } => format!("DECIMAL({precision}, {scale})"),
        Target::Date => "DATE".into(),
        Target::TimestampMillis => "TIMESTAMP(3)".into(),
        Target::TimestampMicros => "TIMESTAMP(6)".into(),
    }
}

/// Compiles writer schema `text` against the table's columns.
fn compile(text: &str, columns: &[(String, Target, bool)]) -> std::result::Result<Plan, String> {
    let (schema, names) = parse_schema(text)?;
    let AvroSchema::Record(record) = deref(&schema, &names) else {
        return Err(format!(
            "the writer schema is a {}, not a record",
            type_name(&schema)
        ));
    };
    let mut fields = Vec::with_capacity(record.fields.len());
    let mut seen = vec![false; columns.len()];
    for f in &record.fields {
        match columns.iter().position(|(name, _, _)| *name == f.name) {
            Some(col) => {
                let (_, target, nullable) = columns[col];
                let read = resolve(&f.schema, &names, target, nullable)
                    .map_err(|e| format!("column '{}': {e}", f.name))?;
                if let Read::Union(branches) = &read {
                    if branches.iter().all(|b| matches!(b, Read::Fail(_))) {
                        return Err(format!(
                            "column '{}': no branch of the writer's union can be read as {}",
                            f.name,
                            target_sql(target)
                        ));
                    }
                }
                seen[col] = true;
                fields.push((Some(col), read));
            }
            None => fields.push((None, Read::Skip(Box::new(f.schema.clone())))),
        }
    }
    for (i, (name, _, nullable)) in columns.iter().enumerate() {
        if !seen[i] && !nullable {
            return Err(format!(
                "the writer schema has no field '{name}', and the column is NOT NULL"
            ));
        }
    }
    Ok(Plan { fields, names })
}

/// Reads Avro binary from a payload.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<Range<usize>, String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "truncated avro data: {n} bytes needed at byte {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ));
        }
        self.pos += n;
        Ok(self.pos - n..self.pos)
    }

    fn long(&mut self) -> std::result::Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated avro data at byte {}", self.pos));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(format!(
            "a varint longer than 10 bytes at byte {}",
            self.pos
        ))
    }

    fn len(&mut self) -> std::result::Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length {n} at byte {}", self.pos))
    }

    fn bytes(&mut self) -> std::result::Result<Range<usize>, String> {
        let n = self.len()?;
        self.take(n)
    }

    fn skip(
        &mut self,
        s: &AvroSchema,
        names: &HashMap<Name, AvroSchema>,
    ) -> std::result::Result<(), String> {
        use AvroSchema as S;
        match deref(s, names) {
            S::Null => {}
            S::Boolean => {
                self.take(1)?;
            }
            S::Int
            | S::Long
            | S::Date
            | S::TimeMillis
            | S::TimeMicros
            | S::TimestampMillis
            | S::TimestampMicros
            | S::TimestampNanos
            | S::LocalTimestampMillis
            | S::LocalTimestampMicros
            | S::LocalTimestampNanos
            | S::Enum(_) => {
                self.long()?;
            }
            S::Float => {
                self.take(4)?;
            }
            S::Double => {
                self.take(8)?;
            }
            S::Bytes | S::String | S::Uuid | S::BigDecimal => {
                self.bytes()?;
            }
            S::Fixed(f) => {
                self.take(f.size)?;
            }
            S::Duration => {
                self.take(12)?;
            }
            S::Decimal(d) => self.skip(&d.inner, names)?,
            S::Union(u) => {
                let i = self.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {i} does not exist"))?;
                self.skip(branch, names)?;
            }
            S::Record(r) => {
                for f in &r.fields {
                    self.skip(&f.schema, names)?;
                }
            }
            S::Array(a) => self.skip_blocks(|c| c.skip(&a.items, names))?,
            S::Map(m) => self.skip_blocks(|c| {
                c.bytes()?;
                c.skip(&m.types, names)
            })?,
            S::Ref { name } => return Err(format!("unknown avro type {}", name.name)),
        }
        Ok(())
    }

    fn skip_blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        loop {
            let n = self.long()?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = self.len()?;
                self.take(size)?;
                continue;
            }
            for _ in 0..n {
                item(self)?;
            }
        }
    }

    fn read(
        &mut self,
        r: &Read,
        names: &HashMap<Name, AvroSchema>,
    ) -> std::result::Result<Cell, String> {
        Ok(match r {
            Read::Null => Cell::Null,
            Read::Bool => match self.buf[self.take(1)?.start] {
                0 => Cell::Bool(false),
                1 => Cell::Bool(true),
                b => return Err(format!("invalid boolean byte {b}")),
            },
            Read::Long(scale) => {
                let v = self.long()?;
                Cell::Int(match scale {
                    Scale::One => v,
                    Scale::Mul(m) => v
                        .checked_mul(*m)
                        .ok_or_else(|| format!("timestamp {v} out of range"))?,
                    Scale::Div(d) => v.div_euclid(*d),
                })
            }
            Read::Float => {
                let r = self.take(4)?;
                Cell::Float(f32::from_le_bytes(self.buf[r].try_into().expect("4 bytes")) as f64)
            }
            Read::Double => {
                let r = self.take(8)?;
                Cell::Float(f64::from_le_bytes(self.buf[r].try_into().expect("8 bytes")))
            }
            Read::Bytes => Cell::Bytes(self.bytes()?),
            Read::Fixed(n) => Cell::Bytes(self.take(*n)?),
            Read::Enum(symbols) => {
                let i = self.long()?;
                match usize::try_from(i).ok().filter(|i| *i < symbols.len()) {
                    Some(i) => Cell::Symbol(symbols.clone(), i),
                    None => return Err(format!("enum symbol {i} does not exist")),
                }
            }
            Read::Decimal(size) => {
                let r = match size {
                    Some(n) => self.take(*n)?,
                    None => self.bytes()?,
                };
                Cell::Decimal(unscaled(&self.buf[r])?)
            }
            Read::Union(branches) => {
                let i = self.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {i} does not exist"))?;
                self.read(branch, names)?
            }
            Read::Skip(s) => {
                self.skip(s, names)?;
                Cell::Null
            }
            Read::Fail(e) => return Err(e.clone()),
        })
    }
}

/// A big-endian two's-complement integer.
fn unscaled(b: &[u8]) -> std::result::Result<i128, String> {
    if b.is_empty() {
        return Ok(0);
    }
    let negative = b[0] & 0x80 != 0;
    let sign = if negative { 0xff } else { 0 };
    // Longer than 16 bytes: the extra leading bytes must be sign extension.
    let (extra, digits) = b.split_at(b.len().saturating_sub(16));
    if extra.iter().any(|x| *x != sign)
        || (!extra.is_empty() && (digits[0] & 0x80 != 0) != negative)
    {
        return Err(format!(
            "a decimal of {} bytes does not fit 128 bits",
            b.len()
        ));
    }
    let mut buf = [sign; 16];
    buf[16 - digits.len()..].copy_from_slice(digits);
    Ok(i128::from_be_bytes(buf))
}

/// The builder of one column.
enum Builder {
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Decimal(Decimal128Builder, u8),
    Date(Date32Builder),
    Millis(TimestampMillisecondBuilder),
    Micros(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(target: Target, capacity: usize) -> Self {
        match target {
            Target::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            Target::Int => Self::Int(Int32Builder::with_capacity(capacity)),
            Target::Long => Self::Long(Int64Builder::with_capacity(capacity)),
            Target::Float => Self::Float(Float32Builder::with_capacity(capacity)),
            Target::Double => Self::Double(Float64Builder::with_capacity(capacity)),
            Target::Text => Self::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            Target::Bytes => Self::Bytes(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            Target::Decimal { precision, .. } => {
                Self::Decimal(Decimal128Builder::with_capacity(capacity), precision)
            }
            Target::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            Target::TimestampMillis => {
                Self::Millis(TimestampMillisecondBuilder::with_capacity(capacity))
            }
            Target::TimestampMicros => {
                Self::Micros(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
        }
    }

    /// Checks that `cell` fits the column (before any cell of the record is appended).
    fn check(&self, cell: &Cell, payload: &[u8]) -> std::result::Result<(), String> {
        match (self, cell) {
            (Self::Int(_) | Self::Date(_), Cell::Int(v)) if i32::try_from(*v).is_err() => {
                Err(format!("{v} does not fit the column"))
            }
            (Self::Text(_), Cell::Bytes(r)) => std::str::from_utf8(&payload[r.clone()])
                .map(|_| ())
                .map_err(|e| format!("the string is not UTF-8: {e}")),
            (Self::Decimal(_, p), Cell::Decimal(v)) => {
                if v.unsigned_abs() >= 10u128.pow(u32::from(*p)) {
                    Err(format!("the unscaled value {v} has more than {p} digits"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn append(&mut self, cell: &Cell, payload: &[u8]) {
        match (self, cell) {
            (Self::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Self::Int(b), Cell::Int(v)) => b.append_value(*v as i32),
            (Self::Long(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Float(b), Cell::Int(v)) => b.append_value(*v as f32),
            (Self::Float(b), Cell::Float(v)) => b.append_value(*v as f32),
            (Self::Double(b), Cell::Int(v)) => b.append_value(*v as f64),
            (Self::Double(b), Cell::Float(v)) => b.append_value(*v),
            (Self::Text(b), Cell::Bytes(r)) => b.append_value(
                std::str::from_utf8(&payload[r.clone()]).expect("checked before appending"),
            ),
            (Self::Text(b), Cell::Symbol(s, i)) => b.append_value(&s[*i]),
            (Self::Bytes(b), Cell::Bytes(r)) => b.append_value(&payload[r.clone()]),
            (Self::Decimal(b, _), Cell::Decimal(v)) => b.append_value(*v),
            (Self::Date(b), Cell::Int(v)) => b.append_value(*v as i32),
            (Self::Millis(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Micros(b), Cell::Int(v)) => b.append_value(*v),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Long(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Text(b) => b.append_null(),
            Self::Bytes(b) => b.append_null(),
            Self::Decimal(b, _) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Millis(b) => b.append_null(),
            Self::Micros(b) => b.append_null(),
        }
    }

    fn finish(&mut self, data_type: &DataType) -> Result<ArrayRef> {
        let array: ArrayRef = match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Long(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::Text(b) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Decimal(b, _) => Arc::new(b.finish().with_data_type(data_type.clone())),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Millis(b) => Arc::new(b.finish().with_data_type(data_type.clone())),
            Self::Micros(b) => Arc::new(b.finish().with_data_type(data_type.clone())),
        };
        Ok(array)
    }
}

/// Schema texts fetched from registries, by URL and id (shared by a process's readers).
static FETCHED: LazyLock<Mutex<HashMap<(String, u32), String>>> = LazyLock::new(Default::default);
/// Ids of schemas registered by this process, by URL, subject and schema text.
static REGISTERED: LazyLock<Mutex<Registered>> = LazyLock::new(Default::default);

/// Schema id by registry URL, subject and schema text.
type Registered = HashMap<(String, String, String), u32>;

/// A client of a Confluent-compatible schema registry.
#[derive(Debug, Clone)]
struct Registry {
    url: String,
    client: reqwest::Client,
}

/// What became of a request for a schema.
enum Fetched {
    Schema(String),
    /// The registry answered that it has no such id (or not an Avro schema).
    Missing(String),
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    fn new(url: &str) -> std::result::Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(REGISTRY_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {e}"))?;
        Ok(Self {
            url: url.to_string(),
            client,
        })
    }

    /// The status and body of the answer to `request` (`what` names it in errors).
    async fn call(
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> std::result::Result<(reqwest::StatusCode, Vec<u8>), String> {
        let response = request
            .header("Accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        Ok((status, body.to_vec()))
    }

    /// `GET /schemas/ids/{id}`; `Err` when the registry cannot be asked.
    async fn schema(&self, id: u32) -> std::result::Result<Fetched, String> {
        let key = (self.url.clone(), id);
        if let Some(s) = FETCHED.lock().expect("schema cache").get(&key) {
            return Ok(Fetched::Schema(s.clone()));
        }
        let url = format!("{}/schemas/ids/{id}", self.url);
        let (status, body) = Self::call(self.client.get(&url), &format!("GET {url}")).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Fetched::Missing(format!(
                "schema id {id} is not in the schema registry {}: {}",
                self.url,
                String::from_utf8_lossy(&body)
            )));
        }
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {url}: the answer is not JSON: {e}"))?;
        match json.get("schemaType").and_then(|t| t.as_str()) {
            None | Some("AVRO") => {}
            Some(other) => {
                return Ok(Fetched::Missing(format!(
                    "schema id {id} is a {other} schema, not an avro one"
                )))
            }
        }
        let schema = json
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| format!("GET {url}: the answer has no 'schema'"))?
            .to_string();
        FETCHED
            .lock()
            .expect("schema cache")
            .insert(key, schema.clone());
        Ok(Fetched::Schema(schema))
    }

    /// `POST /subjects/{subject}/versions`: the schema's id.
    async fn register(&self, subject: &str, schema: &str) -> std::result::Result<u32, String> {
        let key = (self.url.clone(), subject.to_string(), schema.to_string());
        if let Some(id) = REGISTERED.lock().expect("registered schemas").get(&key) {
            return Ok(*id);
        }
        let mut url = url::Url::parse(&self.url).map_err(|e| format!("{}: {e}", self.url))?;
        url.path_segments_mut()
            .map_err(|()| format!("{} cannot have a path", self.url))?
            .pop_if_empty()
            .extend(["subjects", subject, "versions"]);
        let request = self
            .client
            .post(url.as_str())
            .header("Content-Type", CONTENT_TYPE)
            .body(serde_json::json!({ "schema": schema }).to_string());
        let (status, body) = Self::call(request, &format!("POST {url}")).await?;
        if !status.is_success() {
            return Err(format!(
                "cannot register the schema under subject '{subject}': {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j.get("id").and_then(|i| i.as_u64()))
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                format!(
                    "POST {url}: the answer has no schema id: {}",
                    String::from_utf8_lossy(&body)
                )
            })?;
        REGISTERED
            .lock()
            .expect("registered schemas")
            .insert(key, id);
        Ok(id)
    }
}

/// Decodes record values into the table's value columns.
pub(crate) struct AvroDecoder {
    table: String,
    schema: SchemaRef,
    columns: Vec<(String, Target, bool)>,
    builders: Vec<Builder>,
    /// `avro`: the DDL's schema compiled against itself.
    plain: Option<Arc<Plan>>,
    registry: Option<Registry>,
    /// `avro-confluent`: the plan of each writer schema id seen, or why it has none.
    plans: HashMap<u32, std::result::Result<Arc<Plan>, String>>,
    row: Vec<Cell>,
}

impl AvroDecoder {
    pub fn new(
        table: &str,
        schema: &SchemaRef,
        format: &AvroFormat,
        capacity: usize,
    ) -> Result<Self> {
        let columns = targets(table, schema)?;
        let unsupported = |message: String| ConnectorError::Unsupported {
            table: table.to_string(),
            message,
        };
        let (plain, registry) = match &format.registry {
            None => {
                let text = writer_schema(table, None, schema)?;
                (
                    Some(Arc::new(compile(&text, &columns).map_err(unsupported)?)),
                    None,
                )
            }
            Some(r) => (None, Some(Registry::new(&r.url).map_err(unsupported)?)),
        };
        Ok(Self {
            table: table.to_string(),
            schema: schema.clone(),
            builders: columns
                .iter()
                .map(|(_, t, _)| Builder::new(*t, capacity))
                .collect(),
            row: vec![Cell::Null; columns.len()],
            columns,
            plain,
            registry,
            plans: HashMap::new(),
        })
    }

    fn malformed(
        &self,
        source: &str,
        offset: u64,
        column: Option<String>,
        message: String,
    ) -> ConnectorError {
        ConnectorError::MalformedRecord {
            table: self.table.clone(),
            source_name: source.to_string(),
            line: offset,
            column,
            message,
        }
    }

    /// The plan of a Confluent-framed payload and where its datum starts.
    async fn framed(
        &mut self,
        payload: &[u8],
        source: &str,
        offset: u64,
    ) -> Result<(Arc<Plan>, usize)> {
        if payload.len() < 5 || payload[0] != MAGIC {
            let message = match payload.first() {
                Some(b) if *b != MAGIC => format!(
                    "not in the Confluent wire format: the first byte is {b:#04x}, not the magic byte 0"
                ),
                _ => format!(
                    "not in the Confluent wire format: {} bytes, shorter than its 5-byte header",
                    payload.len()
                ),
            };
            return Err(self.malformed(source, offset, None, message));
        }
        let id = u32::from_be_bytes(payload[1..5].try_into().expect("4 bytes"));
        if !self.plans.contains_key(&id) {
            let registry = self.registry.as_ref().expect("a registry");
            let plan = match registry.schema(id).await {
                Ok(Fetched::Schema(text)) => compile(&text, &self.columns)
                    .map(Arc::new)
                    .map_err(|e| format!("writer schema {id} cannot be read as the table: {e}")),
                Ok(Fetched::Missing(why)) => Err(why),
                Err(e) => {
                    return Err(ConnectorError::Kafka {
                        table: self.table.clone(),
                        message: format!("cannot fetch writer schema {id}: {e}"),
                    })
                }
            };
            self.plans.insert(id, plan);
        }
        match &self.plans[&id] {
            Ok(plan) => Ok((plan.clone(), 5)),
            Err(e) => Err(self.malformed(source, offset, None, e.clone())),
        }
    }

    /// Decodes one record value into a row; a malformed one is a
    /// [`ConnectorError::MalformedRecord`] and leaves no row.
    pub async fn decode(&mut self, payload: &[u8], source: &str, offset: u64) -> Result<()> {
        let (plan, start) = match &self.plain {
            Some(plan) => (plan.clone(), 0),
            None => self.framed(payload, source, offset).await?,
        };
        for c in self.row.iter_mut() {
            *c = Cell::Null;
        }
        let mut cursor = Cursor {
            buf: payload,
            pos: start,
        };
        for (col, read) in &plan.fields {
            let cell = cursor.read(read, &plan.names).map_err(|e| {
                self.malformed(source, offset, col.map(|c| self.columns[c].0.clone()), e)
            })?;
            if let Some(c) = col {
                self.row[*c] = cell;
            }
        }
        if cursor.pos != payload.len() {
            return Err(self.malformed(
                source,
                offset,
                None,
                format!(
                    "{} bytes after the end of the avro record",
                    payload.len() - cursor.pos
                ),
            ));
        }
        for (i, cell) in self.row.iter().enumerate() {
            let (name, _, nullable) = &self.columns[i];
            let fits = if *cell == Cell::Null {
                if *nullable {
                    Ok(())
                } else {
                    Err("null for a NOT NULL column".to_string())
                }
            } else {
                self.builders[i].check(cell, payload)
            };
            if let Err(e) = fits {
                return Err(self.malformed(source, offset, Some(name.clone()), e));
            }
        }
        for (b, cell) in self.builders.iter_mut().zip(&self.row) {
            b.append(cell, payload);
        }
        Ok(())
    }

    /// The value columns of the rows decoded since the last call.
    pub fn finish(&mut self) -> Result<Vec<ArrayRef>> {
        self.builders
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(b, f)| b.finish(f.data_type()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Writing

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// The shortest big-endian two's-complement bytes of `v`.
fn decimal_bytes(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let sign = if v < 0 { 0xff } else { 0 };
    let mut start = 0;
    while start < 15 && bytes[start] == sign && (bytes[start + 1] & 0x80 != 0) == (v < 0) {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Encodes rows as Avro records of a DDL-derived schema, Confluent-framed when a
/// registry is set.
#[derive(Debug)]
pub(crate) struct AvroEncoder {
    table: String,
    schema: SchemaRef,
    columns: Vec<(String, Target, bool)>,
    schema_text: String,
    registry: Option<(Registry, String)>,
    /// Magic byte and schema id, once registered.
    header: Option<[u8; 5]>,
}

impl AvroEncoder {
    /// An encoder of the columns `schema`; `record` names the record, `subject` is the
    /// registry subject (used only with a registry).
    pub fn new(
        table: &str,
        record: &str,
        schema: &SchemaRef,
        format: &AvroFormat,
        subject: String,
    ) -> Result<Self> {
        let columns = targets(table, schema)?;
        let schema_text = writer_schema(table, Some(record), schema)?;
        let registry = match &format.registry {
            Some(r) => Some((
                Registry::new(&r.url).map_err(|message| ConnectorError::Unsupported {
                    table: table.to_string(),
                    message,
                })?,
                subject,
            )),
            None => None,
        };
        Ok(Self {
            table: table.to_string(),
            schema: schema.clone(),
            columns,
            schema_text,
            registry,
            header: None,
        })
    }

    /// Registers the schema (once) when writing to a registry.
    pub async fn ready(&mut self) -> Result<()> {
        if let (Some((registry, subject)), None) = (&self.registry, self.header) {
            let id = registry
                .register(subject, &self.schema_text)
                .await
                .map_err(|message| ConnectorError::Kafka {
                    table: self.table.clone(),
                    message,
                })?;
            let mut header = [MAGIC; 5];
            header[1..].copy_from_slice(&id.to_be_bytes());
            self.header = Some(header);
        }
        Ok(())
    }

    /// One encoded record per row of `batch` (whose columns are the encoder's).
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let rows = batch.num_rows();
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (i, f) in self.schema.fields().iter().enumerate() {
            let a = batch.column(i);
            arrays.push(if a.data_type() == f.data_type() {
                a.clone()
            } else {
                cast(a, f.data_type())?
            });
        }
        let header: &[u8] = match (&self.registry, &self.header) {
            (None, _) => &[],
            (Some(_), Some(h)) => h,
            (Some(_), None) => {
                return Err(ConnectorError::Kafka {
                    table: self.table.clone(),
                    message: "the avro schema is not registered yet".into(),
                })
            }
        };
        let mut out: Vec<Vec<u8>> = (0..rows)
            .map(|_| {
                let mut v = Vec::with_capacity(header.len() + 16 * self.columns.len());
                v.extend_from_slice(header);
                v
            })
            .collect();
        for ((name, target, nullable), a) in self.columns.iter().zip(&arrays) {
            for (row, buf) in out.iter_mut().enumerate() {
                if a.is_null(row) {
                    if !nullable {
                        return Err(ConnectorError::Kafka {
                            table: self.table.clone(),
                            message: format!(
                                "column '{name}' is NOT NULL but a row to write has null there"
                            ),
                        });
                    }
                    put_long(buf, 0);
                    continue;
                }
                if *nullable {
                    put_long(buf, 1);
                }
                match target {
                    Target::Bool => buf.push(u8::from(a.as_boolean().value(row))),
                    Target::Int => put_long(buf, a.as_primitive::<Int32Type>().value(row).into()),
                    Target::Date => put_long(buf, a.as_primitive::<Date32Type>().value(row).into()),
                    Target::Long => put_long(buf, a.as_primitive::<Int64Type>().value(row)),
                    Target::TimestampMillis => {
                        put_long(buf, a.as_primitive::<TimestampMillisecondType>().value(row))
                    }
                    Target::TimestampMicros => {
                        put_long(buf, a.as_primitive::<TimestampMicrosecondType>().value(row))
                    }
                    Target::Float => buf.extend_from_slice(
                        &a.as_primitive::<Float32Type>().value(row).to_le_bytes(),
                    ),
                    Target::Double => buf.extend_from_slice(
                        &a.as_primitive::<Float64Type>().value(row).to_le_bytes(),
                    ),
                    Target::Text => put_bytes(buf, a.as_string::<i32>().value(row).as_bytes()),
                    Target::Bytes => put_bytes(buf, a.as_binary::<i32>().value(row)),
                    Target::Decimal { .. } => put_bytes(
                        buf,
                        &decimal_bytes(a.as_primitive::<Decimal128Type>().value(row)),
                    ),
                }
            }
        }
        Ok(out)
    }
}

/// The avro encoders of a kafka sink: values, and keys when the table has a primary key.
#[derive(Debug)]
pub(crate) struct SinkAvro {
    values: AvroEncoder,
    keys: Option<AvroEncoder>,
}

impl SinkAvro {
    pub fn new(
        table: &str,
        topic: &str,
        schema: &SchemaRef,
        key_columns: &[usize],
        format: &AvroFormat,
    ) -> Result<Self> {
        let subject = format
            .registry
            .as_ref()
            .and_then(|r| r.subject.clone())
            .unwrap_or_else(|| format!("{topic}-value"));
        let values = AvroEncoder::new(table, table, schema, format, subject)?;
        let keys = if key_columns.is_empty() {
            None
        } else {
            let key_schema = Arc::new(schema.project(key_columns)?);
            Some(AvroEncoder::new(
                table,
                &format!("{table}_key"),
                &key_schema,
                format,
                format!("{topic}-key"),
            )?)
        };
        Ok(Self { values, keys })
    }

    pub async fn ready(&mut self) -> Result<()> {
        self.values.ready().await?;
        if let Some(k) = &mut self.keys {
            k.ready().await?;
        }
        Ok(())
    }

    pub fn values(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        self.values.encode(batch)
    }

    /// `keys` holds the key columns only.
    pub fn keys(&self, keys: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match &self.keys {
            Some(k) => k.encode(keys),
            None => Ok(vec![]),
        }
    }
}

#[cfg(test)]
mod tests;
