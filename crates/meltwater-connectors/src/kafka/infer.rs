//! Schema inference from a topic's messages (`meltwater catalog infer-schema`).
//!
//! [`sample_topic`] reads up to N messages from the start of a topic's partitions with a
//! plain assigned consumer (no consumer group, nothing committed), spreading the sample
//! over the partitions. [`SchemaInference`] derives a column list from the values:
//!
//! - JSON: one column per key, in the order keys are first seen. Numbers are `BIGINT`
//!   (integral and within range) or `DOUBLE`; booleans `BOOLEAN`; strings `DATE`
//!   (`2026-03-01`), `TIMESTAMP(p)` (`2026-03-01T12:00:00.123Z`, `2026-03-01 12:00:00`:
//!   what the json format reads; p is 3, or 6 / 9 for finer fractions) or `STRING`;
//!   nested objects and arrays `STRING` (the json format reads them as their JSON text:
//!   the DDL has no ROW type).
//! - CSV (one record per message): columns `f1, f2, ...`, typed the same way from the text.
//! - Merging: `BIGINT` and `DOUBLE` widen to `DOUBLE`, timestamps to the finer precision,
//!   any other disagreement gives `STRING`; a column only ever null is `STRING`.
//!   Every column is nullable: a sample never proves a key is always there.
//!
//! ```
//! use meltwater_connectors::kafka::infer::{SampleFormat, SchemaInference};
//!
//! let mut inference = SchemaInference::new(SampleFormat::Json);
//! inference.add(br#"{"id": 1, "price": 2, "ts": "2026-03-01T12:00:00.5Z"}"#);
//! inference.add(br#"{"id": 2, "price": 2.5, "note": {"a": 1}}"#);
//! assert_eq!(
//!     inference.column_list(),
//!     ["id BIGINT", "price DOUBLE", "ts TIMESTAMP(3)", "note STRING"]
//! );
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::Utc;
use datafusion::arrow::compute::kernels::cast_utils::{string_to_datetime, Parser as _};
use datafusion::arrow::datatypes::Date32Type;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::de::{self, Deserialize, MapAccess, Visitor};

/// How message values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    Json,
    Csv,
}

impl SampleFormat {
    /// The `'format'` option value.
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::Json => "json",
            SampleFormat::Csv => "csv",
        }
    }
}

/// A column type the inference can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferredType {
    Boolean,
    BigInt,
    Double,
    Date,
    /// `TIMESTAMP(p)`, p in 3, 6, 9.
    Timestamp(u8),
    String,
}

impl fmt::Display for InferredType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InferredType::Boolean => f.write_str("BOOLEAN"),
            InferredType::BigInt => f.write_str("BIGINT"),
            InferredType::Double => f.write_str("DOUBLE"),
            InferredType::Date => f.write_str("DATE"),
            InferredType::Timestamp(p) => write!(f, "TIMESTAMP({p})"),
            InferredType::String => f.write_str("STRING"),
        }
    }
}

impl InferredType {
    /// The type both `self` and `other` values fit.
    fn merge(self, other: InferredType) -> InferredType {
        use InferredType::*;
        match (self, other) {
            (a, b) if a == b => a,
            (BigInt, Double) | (Double, BigInt) => Double,
            (Timestamp(p), Timestamp(q)) => Timestamp(p.max(q)),
            _ => String,
        }
    }

    /// The type of a text value: a date, a timestamp or a string.
    fn of_text(s: &str) -> InferredType {
        let bytes = s.as_bytes();
        if bytes.len() == 10 && Date32Type::parse(s).is_some() {
            return InferredType::Date;
        }
        // A date and a time of day, as the text formats read them.
        let has_time = bytes.len() >= 16 && matches!(bytes[10], b'T' | b' ') && bytes[13] == b':';
        if has_time && string_to_datetime(&Utc, s).is_ok() {
            let fraction = s
                .get(19..)
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|f| f.bytes().take_while(u8::is_ascii_digit).count())
                .unwrap_or(0);
            return InferredType::Timestamp(match fraction {
                0..=3 => 3,
                4..=6 => 6,
                _ => 9,
            });
        }
        InferredType::String
    }

    /// The type of a CSV field's text.
    fn of_csv_field(s: &str) -> InferredType {
        let t = s.trim();
        if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
            InferredType::Boolean
        } else if t.parse::<i64>().is_ok() {
            InferredType::BigInt
        } else if t.parse::<f64>().is_ok_and(f64::is_finite)
            && t.bytes().any(|b| b.is_ascii_digit())
        {
            InferredType::Double
        } else {
            InferredType::of_text(t)
        }
    }

    /// The type of a JSON value; `None` for null.
    fn of_json(v: &serde_json::Value) -> Option<InferredType> {
        use serde_json::Value;
        Some(match v {
            Value::Null => return None,
            Value::Bool(_) => InferredType::Boolean,
            Value::Number(n) if n.is_i64() => InferredType::BigInt,
            Value::Number(_) => InferredType::Double,
            Value::String(s) => InferredType::of_text(s),
            Value::Array(_) | Value::Object(_) => InferredType::String,
        })
    }
}

/// A column found in the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferredColumn {
    pub name: String,
    /// `None` while only nulls were seen.
    pub seen_type: Option<InferredType>,
    /// In how many records the column had a non-null value.
    pub non_null: usize,
}

impl InferredColumn {
    /// The column's type in the DDL.
    pub fn data_type(&self) -> InferredType {
        self.seen_type.unwrap_or(InferredType::String)
    }

    fn observe(&mut self, t: Option<InferredType>) {
        if let Some(t) = t {
            self.non_null += 1;
            self.seen_type = Some(match self.seen_type {
                Some(s) => s.merge(t),
                None => t,
            });
        }
    }
}

/// Column types inferred from message values, one message at a time.
#[derive(Debug, Clone)]
pub struct SchemaInference {
    format: SampleFormat,
    columns: Vec<InferredColumn>,
    index: HashMap<String, usize>,
    /// Messages that gave a row.
    pub records: usize,
    /// Messages that could not be read as the format (not a JSON object, bad CSV).
    pub rejected: usize,
    /// Why the first rejected message was rejected.
    pub first_rejection: Option<String>,
}

impl SchemaInference {
    pub fn new(format: SampleFormat) -> Self {
        Self {
            format,
            columns: Vec::new(),
            index: HashMap::new(),
            records: 0,
            rejected: 0,
            first_rejection: None,
        }
    }

    /// Takes one message value into account.
    pub fn add(&mut self, value: &[u8]) {
        let result = match self.format {
            SampleFormat::Json => serde_json::from_slice::<OrderedObject>(value)
                .map(|o| {
                    o.0.into_iter()
                        .map(|(k, v)| (k, InferredType::of_json(&v)))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| format!("not a JSON object: {e}")),
            SampleFormat::Csv => csv_fields(value).map(|fields| {
                fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let t = (!f.is_empty()).then(|| InferredType::of_csv_field(&f));
                        (format!("f{}", i + 1), t)
                    })
                    .collect()
            }),
        };
        match result {
            Ok(fields) => {
                self.records += 1;
                for (name, t) in fields {
                    let i = *self.index.entry(name.clone()).or_insert_with(|| {
                        self.columns.push(InferredColumn {
                            name,
                            seen_type: None,
                            non_null: 0,
                        });
                        self.columns.len() - 1
                    });
                    self.columns[i].observe(t);
                }
            }
            Err(e) => {
                self.rejected += 1;
                self.first_rejection.get_or_insert(e);
            }
        }
    }

    pub fn columns(&self) -> &[InferredColumn] {
        &self.columns
    }

    /// The DDL column definitions: `name TYPE`, names quoted where SQL needs it.
    pub fn column_list(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| format!("{} {}", sql_identifier(&c.name), c.data_type()))
            .collect()
    }

    /// `CREATE TABLE table (...) WITH (...)`, one column and one option a line.
    pub fn create_table_ddl(&self, table: &str, options: &[(String, String)]) -> String {
        let columns = self.column_list().join(",\n  ");
        let with = options
            .iter()
            .map(|(k, v)| format!("{} = {}", sql_string(k), sql_string(v)))
            .collect::<Vec<_>>()
            .join(",\n  ");
        format!(
            "CREATE TABLE {} (\n  {columns}\n) WITH (\n  {with}\n);",
            sql_identifier(table)
        )
    }
}

/// Words that start a clause, not a column, in a `CREATE TABLE` column list.
const CLAUSE_WORDS: [&str; 3] = ["watermark", "primary", "constraint"];

/// Whether a name is a lower-case SQL word (letters, digits, `_`; not starting with a
/// digit), which SQL reads the same unquoted.
pub fn is_plain_identifier(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A name as a DDL identifier: as it is when it is a plain word (unquoted identifiers
/// fold to lower case) that does not start a clause of the column list, else in double
/// quotes. Other keywords are fine as column names in DDL.
pub fn sql_identifier(name: &str) -> String {
    if is_plain_identifier(name) && !CLAUSE_WORDS.contains(&name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A SQL string literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A JSON object with its keys in document order.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// The fields of one CSV record (`,`-separated, `"`-quoted).
fn csv_fields(value: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(value).map_err(|e| format!("invalid UTF-8: {e}"))?;
    let line = text.trim_end_matches(['\r', '\n']);
    let mut reader = csv_core::Reader::new();
    let mut input = line.as_bytes();
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let (result, nin, nout) = reader.read_field(input, &mut buf);
        input = &input[nin..];
        field.extend_from_slice(&buf[..nout]);
        match result {
            csv_core::ReadFieldResult::InputEmpty if input.is_empty() => {
                // End of the message: let the reader finish the last field.
                let (result, _, nout) = reader.read_field(&[], &mut buf);
                field.extend_from_slice(&buf[..nout]);
                if matches!(result, csv_core::ReadFieldResult::Field { .. }) {
                    fields.push(String::from_utf8_lossy(&field).into_owned());
                }
                break;
            }
            csv_core::ReadFieldResult::InputEmpty | csv_core::ReadFieldResult::OutputFull => {}
            csv_core::ReadFieldResult::Field { record_end } => {
                fields.push(String::from_utf8_lossy(&field).into_owned());
                field.clear();
                if record_end {
                    break;
                }
            }
            csv_core::ReadFieldResult::End => break,
        }
    }
    if fields.is_empty() {
        return Err("an empty CSV record".into());
    }
    Ok(fields)
}

/// Why a topic could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("cannot reach the Kafka brokers {servers} within {timeout_s} s: {message}")]
    Unreachable {
        servers: String,
        timeout_s: u64,
        message: String,
    },
    #[error("topic '{topic}' does not exist on {servers}")]
    NoSuchTopic { topic: String, servers: String },
    #[error("topic '{topic}' holds no messages (partitions: {partitions}); produce some first, or write the DDL by hand")]
    EmptyTopic { topic: String, partitions: usize },
    #[error("topic '{topic}': {message}")]
    Kafka { topic: String, message: String },
}

/// What one partition gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSample {
    pub partition: i32,
    /// The partition's earliest and end offsets when sampling started.
    pub low: i64,
    pub high: i64,
    /// Messages read from it.
    pub read: usize,
}

/// Messages read from the start of a topic.
#[derive(Debug, Clone)]
pub struct TopicSample {
    /// Message values, tombstones left out.
    pub values: Vec<Vec<u8>>,
    pub tombstones: usize,
    pub partitions: Vec<PartitionSample>,
    /// Whether the time ran out before every partition gave its share.
    pub timed_out: bool,
}

/// How many of `max` messages to read from each partition: as evenly as the partitions'
/// sizes allow, filling up from the larger ones where smaller ones hold fewer.
fn shares(available: &[i64], max: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..available.len()).collect();
    order.sort_by_key(|&i| available[i]);
    let mut out = vec![0; available.len()];
    let mut left = max as i64;
    for (done, &i) in order.iter().enumerate() {
        let parts_left = (available.len() - done) as i64;
        let share = available[i].min((left + parts_left - 1) / parts_left);
        out[i] = share;
        left -= share;
    }
    out
}

/// Reads up to `max` message values from the start of `topic`'s partitions, spread over
/// the partitions. `properties` are librdkafka settings, `bootstrap.servers` among them;
/// no consumer group is joined and no offset is committed. Metadata requests and the
/// reading itself each give up after `timeout`.
pub fn sample_topic(
    properties: &BTreeMap<String, String>,
    topic: &str,
    max: usize,
    timeout: Duration,
) -> Result<TopicSample, InferError> {
    let servers = properties
        .get("bootstrap.servers")
        .cloned()
        .unwrap_or_default();
    let kafka = |message: String| InferError::Kafka {
        topic: topic.to_string(),
        message,
    };
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    if config.get("group.id").is_none() {
        config.set("group.id", "meltwater-infer-schema");
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| kafka(format!("cannot create a consumer: {e}")))?;
    let unreachable = |e: KafkaError| InferError::Unreachable {
        servers: servers.clone(),
        timeout_s: timeout.as_secs(),
        message: e.to_string(),
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(unreachable)?;
    let Some(md) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(InferError::NoSuchTopic {
            topic: topic.to_string(),
            servers,
        });
    };
    match md.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | None if md.partitions().is_empty() => {
            return Err(InferError::NoSuchTopic {
                topic: topic.to_string(),
                servers,
            })
        }
        Some(code) => return Err(kafka(code.to_string())),
        None => {}
    }
    let mut partitions = Vec::new();
    for p in md.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| kafka(format!("offsets of partition {}: {e}", p.id())))?;
        partitions.push(PartitionSample {
            partition: p.id(),
            low,
            high,
            read: 0,
        });
    }
    partitions.sort_by_key(|p| p.partition);
    let available: Vec<i64> = partitions.iter().map(|p| (p.high - p.low).max(0)).collect();
    if available.iter().all(|&n| n == 0) {
        return Err(InferError::EmptyTopic {
            topic: topic.to_string(),
            partitions: partitions.len(),
        });
    }
    // Each partition is read from its start to its share's end offset (exclusive).
    let stops: BTreeMap<i32, i64> = partitions
        .iter()
        .zip(shares(&available, max))
        .map(|(p, share)| (p.partition, p.low + share))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        if stops[&p.partition] > p.low {
            tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.low))
                .map_err(|e| kafka(e.to_string()))?;
        }
    }
    consumer.assign(&tpl).map_err(|e| kafka(e.to_string()))?;
    let mut sample = TopicSample {
        values: Vec::new(),
        tombstones: 0,
        partitions,
        timed_out: false,
    };
    let mut positions: BTreeMap<i32, i64> = sample
        .partitions
        .iter()
        .map(|p| (p.partition, p.low))
        .collect();
    let deadline = Instant::now() + timeout;
    let done = |positions: &BTreeMap<i32, i64>| positions.iter().all(|(p, at)| *at >= stops[p]);
    while !done(&positions) && sample.values.len() + sample.tombstones < max {
        if Instant::now() >= deadline {
            sample.timed_out = true;
            break;
        }
        // Transaction markers and aborted records take offsets without being messages.
        if let Ok(now) = consumer.position() {
            for e in now.elements_for_topic(topic) {
                if let Offset::Offset(o) = e.offset() {
                    let at = positions.entry(e.partition()).or_insert(o);
                    *at = (*at).max(o);
                }
            }
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| kafka(e.to_string()))?;
        let partition = message.partition();
        if message.offset() >= stops.get(&partition).copied().unwrap_or(0) {
            continue;
        }
        positions.insert(partition, message.offset() + 1);
        if let Some(p) = sample
            .partitions
            .iter_mut()
            .find(|p| p.partition == partition)
        {
            p.read += 1;
        }
        match message.payload() {
            Some(v) => sample.values.push(v.to_vec()),
            None => sample.tombstones += 1,
        }
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(format: SampleFormat, messages: &[&str]) -> SchemaInference {
        let mut i = SchemaInference::new(format);
        for m in messages {
            i.add(m.as_bytes());
        }
        i
    }

    #[test]
    fn json_types_and_key_order() {
        let i = infer(
            SampleFormat::Json,
            &[
                r#"{"zeta": 1, "amount": 2.5, "ok": true, "name": "x", "day": "2026-03-01",
                   "ts": "2026-03-01T12:00:00Z", "at": "2026-03-01 12:00:00.123456",
                   "tags": [1, 2], "nested": {"a": {"b": 1}}}"#,
            ],
        );
        assert_eq!(
            i.column_list(),
            [
                "zeta BIGINT",
                "amount DOUBLE",
                "ok BOOLEAN",
                "name STRING",
                "day DATE",
                "ts TIMESTAMP(3)",
                "at TIMESTAMP(6)",
                "tags STRING",
                "nested STRING",
            ]
        );
        assert_eq!((i.records, i.rejected), (1, 0));
    }

    #[test]
    fn json_widening_conflicts_and_missing_keys() {
        let i = infer(
            SampleFormat::Json,
            &[
                r#"{"id": 1, "v": 1, "mixed": 1, "ts": "2026-03-01T12:00:00Z", "n": null}"#,
                r#"{"id": 2, "v": 2.5, "mixed": "one", "ts": "2026-03-01T12:00:00.123456789Z"}"#,
                r#"{"id": 3, "late": false, "n": null}"#,
                r#"{"id": 18446744073709551615}"#,
            ],
        );
        assert_eq!(
            i.column_list(),
            [
                "id DOUBLE",
                "v DOUBLE",
                "mixed STRING",
                "ts TIMESTAMP(9)",
                "n STRING",
                "late BOOLEAN"
            ]
        );
        let non_null: Vec<usize> = i.columns().iter().map(|c| c.non_null).collect();
        assert_eq!(non_null, [4, 2, 2, 2, 0, 1]);
    }

    #[test]
    fn non_objects_are_counted_not_inferred() {
        let i = infer(SampleFormat::Json, &["[1, 2]", "{\"a\": 1", r#"{"a": 1}"#]);
        assert_eq!((i.records, i.rejected), (1, 2));
        assert!(
            i.first_rejection
                .as_deref()
                .unwrap()
                .starts_with("not a JSON object"),
            "{:?}",
            i.first_rejection
        );
        assert_eq!(i.column_list(), ["a BIGINT"]);
    }

    #[test]
    fn names_are_quoted_where_sql_needs_it() {
        let i = infer(
            SampleFormat::Json,
            &[
                r#"{"orderId": 1, "timestamp": "x", "a b": 1, "say \"hi\"": 1, "plain_1": 1, "primary": 1}"#,
            ],
        );
        assert_eq!(
            i.column_list(),
            [
                "\"orderId\" BIGINT",
                "timestamp STRING",
                "\"a b\" BIGINT",
                "\"say \"\"hi\"\"\" BIGINT",
                "plain_1 BIGINT",
                "\"primary\" BIGINT"
            ]
        );
    }

    #[test]
    fn csv_fields_by_position() {
        let i = infer(
            SampleFormat::Csv,
            &[
                "1,alice,12.5,true,2026-03-01 12:00:00",
                "2,\"bob, jr\",3,false,2026-03-01T12:00:01.5Z\n",
                "3,,x,,",
            ],
        );
        assert_eq!(
            i.column_list(),
            [
                "f1 BIGINT",
                "f2 STRING",
                "f3 STRING",
                "f4 BOOLEAN",
                "f5 TIMESTAMP(3)"
            ]
        );
        assert_eq!(csv_fields(b"a,\"b,c\",").unwrap(), ["a", "b,c", ""]);
    }

    #[test]
    fn ddl_lists_columns_and_options() {
        let i = infer(SampleFormat::Json, &[r#"{"id": 1, "name": "x"}"#]);
        let ddl = i.create_table_ddl(
            "orders",
            &[
                ("connector".into(), "kafka".into()),
                ("topic".into(), "it's".into()),
            ],
        );
        assert_eq!(
            ddl,
            "CREATE TABLE orders (\n  id BIGINT,\n  name STRING\n) WITH (\n  'connector' = 'kafka',\n  'topic' = 'it''s'\n);"
        );
    }

    #[test]
    fn shares_spread_the_sample_over_partitions() {
        assert_eq!(shares(&[1000, 1000, 1000], 100), [34, 33, 33]);
        assert_eq!(shares(&[5, 1000, 0], 100), [5, 95, 0]);
        assert_eq!(shares(&[5, 7], 100), [5, 7]);
        assert_eq!(shares(&[], 100), Vec::<i64>::new());
    }

    #[test]
    fn an_unreachable_broker_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens there in tests.
        let properties = BTreeMap::from([("bootstrap.servers".into(), "127.0.0.1:9".into())]);
        let e = sample_topic(&properties, "t", 10, Duration::from_millis(1500)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach the Kafka brokers 127.0.0.1:9 within 1 s"),
            "{e}"
        );
    }
}
