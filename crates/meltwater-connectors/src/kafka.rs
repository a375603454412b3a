//! The `kafka` connector (Flink's option names): a topic's partitions as splits whose
//! positions are offsets, read in both modes.
//!
//! | option | meaning |
//! |---|---|
//! | `topic` | a topic, or several separated by `;` |
//! | `topic-pattern` | a regular expression over topic names (instead of `topic`) |
//! | `properties.bootstrap.servers` | the brokers (required) |
//! | `properties.group.id` | the consumer group (offsets committed for monitoring; `group-offsets` startup) |
//! | `properties.*` | passed to librdkafka (`properties.isolation.level`, security settings, ...) |
//! | `format` / `value.format` | `json`, `csv`, `raw` (one `STRING` or `BYTES` column), `avro` or `avro-confluent` (see [`avro`]) |
//! | `avro-confluent.url` (or `.schema-registry.url`), `avro-confluent.subject` | the schema registry of `avro-confluent`, the value schema's subject (default `<topic>-value`) |
//! | `scan.startup.mode` | `earliest-offset`, `latest-offset`, `group-offsets` (default), `timestamp`, `specific-offsets` |
//! | `scan.startup.timestamp-millis`, `scan.startup.specific-offsets` | for the last two (`partition:0,offset:42;partition:1,offset:7`) |
//! | `scan.bounded.mode` | `unbounded` (default), `latest-offset`, `timestamp`, `specific-offsets`, `group-offsets`: where a bounded read ends |
//! | `scan.bounded.timestamp-millis`, `scan.bounded.specific-offsets` | for those modes |
//! | `scan.topic-partition-discovery.interval` | how often an unbounded read looks for new partitions (default `1 min`; `0` turns it off) |
//! | `error.policy` | `fail` (default), `skip` (counted) or `dead-letter` (to `error.dead-letter.topic`, with the error in headers) |
//!
//! Metadata columns (`c TYPE METADATA FROM 'key' VIRTUAL`): `topic` (STRING), `partition`
//! (INT), `offset` (BIGINT), `timestamp` (TIMESTAMP(3) or TIMESTAMP_LTZ(3)),
//! `timestamp-type` (STRING), `key` (STRING or BYTES), `headers` (STRING: a JSON object of
//! header name to UTF-8 value).
//!
//! A split is one partition of one topic, `topic/partition`; its position is the next
//! offset to read plus one (0: not read yet, start where the startup mode says). The
//! offsets a run starts and (bounded) ends at are resolved once, when the partition is
//! first seen, and kept in the enumerator state of every checkpoint, so a restored job
//! reads the same range. Reads use `isolation.level = read_committed` unless set.

mod avro;
mod debezium;
pub mod infer;
mod reader;
mod sink;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::format::TextFormat;
use crate::options::{parse_duration_ms, OptionReader};
use crate::stream::{Split, SplitPosition, SplitReader, StreamSource};
use crate::{Boundedness, ConnectorError, ConnectorTable, Result, SourceMetrics, TableDef};

pub use reader::KafkaScanExec;
pub use sink::{
    commit_checkpoint, pending_records, DeliveryGuarantee, KafkaCommit, KafkaSink,
    KafkaSinkOptions, KafkaWriter, TOMBSTONE_COLUMN,
};

const CONNECTOR: &str = "kafka";
const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "topic-pattern",
    "format",
    "value.format",
    "key.format",
    "key.fields",
    "value.fields-include",
    "scan.startup.mode",
    "scan.startup.timestamp-millis",
    "scan.startup.specific-offsets",
    "scan.bounded.mode",
    "scan.bounded.timestamp-millis",
    "scan.bounded.specific-offsets",
    "scan.topic-partition-discovery.interval",
    "error.policy",
    "error.dead-letter.topic",
    "sink.delivery-guarantee",
    "sink.transactional-id-prefix",
    "sink.partitioner",
    "sink.rate-limit",
    "csv.field-delimiter",
    "csv.quote-character",
    "csv.null-literal",
    "json.timestamp-format.standard",
    "avro-confluent.url",
    "avro-confluent.schema-registry.url",
    "avro-confluent.subject",
    crate::WATERMARK_IDLE_TIMEOUT,
    crate::LATE_RECORDS,
    crate::LATE_RECORDS_TABLE,
];

/// The metadata keys the connector fills, with the types a column may declare.
const METADATA_KEYS: &str = "topic, partition, offset, timestamp, timestamp-type, key, headers";

/// Timeout of metadata and offset requests.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a column of the table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnSource {
    /// A field of the value (decoded by the value format).
    Value,
    /// A field of the key (`key.fields` with `'value.fields-include' = 'EXCEPT_KEY'`),
    /// decoded by the key format.
    KeyField,
    Topic,
    Partition,
    Offset,
    Timestamp,
    TimestampType,
    Key,
    Headers,
}

/// The value format.
#[derive(Debug, Clone)]
pub(crate) enum ValueFormat {
    Text(TextFormat),
    /// The whole value as the one value column.
    Raw,
    /// Debezium change events: an updating stream.
    DebeziumJson,
    /// `avro` (schema from the DDL) or `avro-confluent` (schema registry framing).
    Avro(avro::AvroFormat),
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartMode {
    Earliest,
    Latest,
    Group,
    Timestamp(i64),
    Specific(BTreeMap<i32, i64>),
}

/// Where a bounded read ends (exclusive).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StopMode {
    Unbounded,
    Latest,
    Group,
    Timestamp(i64),
    Specific(BTreeMap<i32, i64>),
}

/// What to do with a record the value format cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordPolicy {
    Fail,
    Skip,
    DeadLetter(String),
}

/// Which topics a table reads.
#[derive(Debug, Clone)]
pub(crate) enum Topics {
    List(Vec<String>),
    Pattern(regex::Regex),
}

/// A table's options, validated.
#[derive(Debug, Clone)]
pub(crate) struct KafkaOptions {
    /// The definition these options were parsed from (what the plan codec carries).
    pub def: Arc<TableDef>,
    pub table: String,
    pub schema: SchemaRef,
    pub columns: Vec<ColumnSource>,
    pub topics: Topics,
    /// librdkafka settings from `properties.*`.
    pub properties: BTreeMap<String, String>,
    pub format: ValueFormat,
    pub start: StartMode,
    pub stop: StopMode,
    pub discovery_ms: Option<u64>,
    pub policy: RecordPolicy,
    /// `key.format` and `key.fields`: how record keys are encoded, and from which columns.
    pub key: Option<KeyFields>,
}

/// `key.format` with `key.fields`.
#[derive(Debug, Clone)]
pub(crate) struct KeyFields {
    /// `json` or `raw`.
    pub format: ValueFormat,
    /// DDL column indices, in `key.fields` order.
    pub columns: Vec<usize>,
    /// `'value.fields-include' = 'EXCEPT_KEY'`: values hold the other columns only, and a
    /// read takes the key columns from the key.
    pub except_key: bool,
}

impl KafkaOptions {
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("group.id", format!("meltwater-{}", self.table));
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Whether the value format is a changelog (`debezium-json`): rows come with their
    /// kind in a last op column.
    pub fn changelog(&self) -> bool {
        matches!(self.format, ValueFormat::DebeziumJson)
    }

    /// The schema of what a reader returns for `projection` (DDL column indices): those
    /// columns, then the op column of a changelog format.
    pub fn output_schema(&self, projection: &[usize]) -> SchemaRef {
        let projected = self.schema.project(projection).expect("valid projection");
        if self.changelog() {
            crate::changelog::updating_schema(&projected)
        } else {
            Arc::new(projected)
        }
    }

    /// The value columns (those the value format decodes), as a schema.
    pub fn value_schema(&self) -> SchemaRef {
        let fields: Vec<_> = self
            .schema
            .fields()
            .iter()
            .zip(&self.columns)
            .filter(|(_, c)| **c == ColumnSource::Value)
            .map(|(f, _)| f.as_ref().clone())
            .collect();
        Arc::new(Schema::new(fields))
    }
}

fn parse_offsets(v: &str) -> std::result::Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let mut partition = None;
        let mut offset = None;
        for kv in part.split(',') {
            let (k, val) = kv
                .split_once(':')
                .ok_or_else(|| format!("expected 'partition:P,offset:O', got '{part}'"))?;
            match k.trim() {
                "partition" => partition = val.trim().parse::<i32>().ok(),
                "offset" => offset = val.trim().parse::<i64>().ok(),
                _ => return Err(format!("expected 'partition:P,offset:O', got '{part}'")),
            }
        }
        match (partition, offset) {
            (Some(p), Some(o)) if p >= 0 && o >= 0 => {
                out.insert(p, o);
            }
            _ => return Err(format!("expected 'partition:P,offset:O', got '{part}'")),
        }
    }
    if out.is_empty() {
        return Err("expected 'partition:0,offset:42;partition:1,offset:7'".into());
    }
    Ok(out)
}

impl KafkaOptions {
    pub fn parse(def: &TableDef) -> Result<Self> {
        let o = OptionReader::new(def, CONNECTOR);
        for key in def.options.keys() {
            if !OPTIONS.contains(&key.as_str()) && !key.starts_with("properties.") {
                return Err(o.unknown(key, format!("{}, properties.*", OPTIONS.join(", "))));
            }
        }
        let topics = match (o.get("topic"), o.get("topic-pattern")) {
            (Some(_), Some(_)) => {
                return Err(o.invalid(
                    "topic-pattern",
                    o.get("topic-pattern").unwrap_or_default(),
                    "set 'topic' or 'topic-pattern', not both",
                ))
            }
            (Some(t), None) => {
                let list: Vec<String> = t
                    .split(';')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err(o.invalid("topic", t, "expected a topic name"));
                }
                Topics::List(list)
            }
            (None, Some(p)) => Topics::Pattern(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| o.invalid("topic-pattern", p, e.to_string()))?,
            ),
            (None, None) => return Err(o.required("topic").unwrap_err()),
        };
        let mut properties = BTreeMap::new();
        for (k, v) in &def.options {
            if let Some(p) = k.strip_prefix("properties.") {
                properties.insert(p.to_string(), v.clone());
            }
        }
        if !properties.contains_key("bootstrap.servers") {
            return Err(o.required("properties.bootstrap.servers").unwrap_err());
        }
        let format_key = if o.get("value.format").is_some() {
            "value.format"
        } else {
            "format"
        };
        let format_name = o.required(format_key)?;
        let format =
            match format_name {
                "json" => ValueFormat::Text(TextFormat::Json),
                "csv" => ValueFormat::Text(TextFormat::Csv(crate::filesystem::csv_options(&o)?)),
                "raw" => ValueFormat::Raw,
                "debezium-json" => ValueFormat::DebeziumJson,
                "avro" | "avro-confluent" => {
                    ValueFormat::Avro(avro::AvroFormat::parse(&o, format_key, format_name)?)
                }
                other => return Err(o.invalid(
                    format_key,
                    other,
                    "expected 'json', 'csv', 'raw', 'debezium-json', 'avro' or 'avro-confluent'",
                )),
            };
        let key = Self::key_fields(def, &o, &format)?;
        // Columns: metadata or value.
        let mut columns = Vec::new();
        for f in def.schema.fields() {
            let source = match def.metadata.get(f.name()) {
                None => ColumnSource::Value,
                Some((key, _)) => {
                    let (source, ok) = match key.as_str() {
                        "topic" => (ColumnSource::Topic, matches!(f.data_type(), DataType::Utf8)),
                        "partition" => {
                            (ColumnSource::Partition, matches!(f.data_type(), DataType::Int32))
                        }
                        "offset" => (ColumnSource::Offset, matches!(f.data_type(), DataType::Int64)),
                        "timestamp" => (
                            ColumnSource::Timestamp,
                            matches!(f.data_type(), DataType::Timestamp(_, _)),
                        ),
                        "timestamp-type" => (
                            ColumnSource::TimestampType,
                            matches!(f.data_type(), DataType::Utf8),
                        ),
                        "key" => (
                            ColumnSource::Key,
                            matches!(f.data_type(), DataType::Utf8 | DataType::Binary),
                        ),
                        "headers" => {
                            (ColumnSource::Headers, matches!(f.data_type(), DataType::Utf8))
                        }
                        other => {
                            return Err(ConnectorError::Unsupported {
                                table: def.name.clone(),
                                message: format!(
                                    "column '{}': unknown metadata key '{other}' (the kafka connector has {METADATA_KEYS})",
                                    f.name()
                                ),
                            })
                        }
                    };
                    if !ok {
                        return Err(ConnectorError::Unsupported {
                            table: def.name.clone(),
                            message: format!(
                                "column '{}': metadata '{key}' cannot be read as {}",
                                f.name(),
                                crate::format::sql_type_name(f.data_type())
                            ),
                        });
                    }
                    source
                }
            };
            columns.push(source);
        }
        if let Some(k) = key.as_ref().filter(|k| k.except_key) {
            for &c in &k.columns {
                columns[c] = ColumnSource::KeyField;
            }
        }
        let value_fields = columns
            .iter()
            .filter(|c| **c == ColumnSource::Value)
            .count();
        if let ValueFormat::Raw = format {
            let value_types: Vec<&DataType> = def
                .schema
                .fields()
                .iter()
                .zip(&columns)
                .filter(|(_, c)| **c == ColumnSource::Value)
                .map(|(f, _)| f.data_type())
                .collect();
            if !matches!(value_types.as_slice(), [DataType::Utf8 | DataType::Binary]) {
                return Err(o.invalid(
                    format_key,
                    "raw",
                    format!("the raw format needs exactly one STRING or BYTES value column, the table has {value_fields}"),
                ));
            }
        }
        let timestamp = |key: &str| o.parse::<i64>(key, "milliseconds since the epoch");
        let start = match o.get("scan.startup.mode").unwrap_or("group-offsets") {
            "earliest-offset" => StartMode::Earliest,
            "latest-offset" => StartMode::Latest,
            "group-offsets" => StartMode::Group,
            "timestamp" => StartMode::Timestamp(
                timestamp("scan.startup.timestamp-millis")?.ok_or_else(|| {
                    o.required("scan.startup.timestamp-millis").unwrap_err()
                })?,
            ),
            "specific-offsets" => StartMode::Specific(
                o.parse_with("scan.startup.specific-offsets", parse_offsets)?
                    .ok_or_else(|| o.required("scan.startup.specific-offsets").unwrap_err())?,
            ),
            other => {
                return Err(o.invalid(
                    "scan.startup.mode",
                    other,
                    "expected 'earliest-offset', 'latest-offset', 'group-offsets', 'timestamp' or 'specific-offsets'",
                ))
            }
        };
        let stop = match o.get("scan.bounded.mode").unwrap_or("unbounded") {
            "unbounded" => StopMode::Unbounded,
            "latest-offset" => StopMode::Latest,
            "group-offsets" => StopMode::Group,
            "timestamp" => StopMode::Timestamp(
                timestamp("scan.bounded.timestamp-millis")?.ok_or_else(|| {
                    o.required("scan.bounded.timestamp-millis").unwrap_err()
                })?,
            ),
            "specific-offsets" => StopMode::Specific(
                o.parse_with("scan.bounded.specific-offsets", parse_offsets)?
                    .ok_or_else(|| o.required("scan.bounded.specific-offsets").unwrap_err())?,
            ),
            other => {
                return Err(o.invalid(
                    "scan.bounded.mode",
                    other,
                    "expected 'unbounded', 'latest-offset', 'group-offsets', 'timestamp' or 'specific-offsets'",
                ))
            }
        };
        let discovery_ms =
            match o.parse_with("scan.topic-partition-discovery.interval", parse_duration_ms)? {
                Some(0) => None,
                Some(ms) => Some(ms),
                None => Some(60_000),
            };
        let policy = match o.get("error.policy").unwrap_or("fail") {
            "fail" => RecordPolicy::Fail,
            "skip" => RecordPolicy::Skip,
            "dead-letter" => {
                RecordPolicy::DeadLetter(o.required("error.dead-letter.topic")?.to_string())
            }
            other => {
                return Err(o.invalid(
                    "error.policy",
                    other,
                    "expected 'fail', 'skip' or 'dead-letter'",
                ))
            }
        };
        crate::watermark_idle_timeout_ms(def, CONNECTOR)?;
        Ok(Self {
            def: Arc::new(def.clone()),
            table: def.name.clone(),
            schema: def.schema.clone(),
            columns,
            topics,
            properties,
            format,
            start,
            stop,
            discovery_ms,
            policy,
            key,
        })
    }

    /// `key.format`, `key.fields` and `value.fields-include`, validated.
    fn key_fields(
        def: &TableDef,
        o: &OptionReader<'_>,
        value_format: &ValueFormat,
    ) -> Result<Option<KeyFields>> {
        let include = o.get("value.fields-include").unwrap_or("ALL");
        let except_key = match include.to_ascii_uppercase().as_str() {
            "ALL" => false,
            "EXCEPT_KEY" => true,
            _ => {
                return Err(o.invalid(
                    "value.fields-include",
                    include,
                    "expected 'ALL' or 'EXCEPT_KEY'",
                ))
            }
        };
        let (format_name, fields) = match (o.get("key.format"), o.get("key.fields")) {
            (None, None) if except_key => {
                return Err(o.invalid(
                    "value.fields-include",
                    include,
                    "'EXCEPT_KEY' needs 'key.format' and 'key.fields'",
                ))
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(o.required("key.fields").unwrap_err()),
            (None, Some(_)) => return Err(o.required("key.format").unwrap_err()),
            (Some(f), Some(k)) => (f, k),
        };
        let mut columns = Vec::new();
        for name in fields.split(';').map(str::trim) {
            let c = def.schema.index_of(name).map_err(|_| {
                o.invalid(
                    "key.fields",
                    fields,
                    format!("the table has no column '{name}'"),
                )
            })?;
            if def.metadata.contains_key(name) {
                return Err(o.invalid(
                    "key.fields",
                    fields,
                    format!("'{name}' is a METADATA column; key fields are physical columns"),
                ));
            }
            if columns.contains(&c) {
                return Err(o.invalid("key.fields", fields, format!("'{name}' is listed twice")));
            }
            columns.push(c);
        }
        let format = match format_name {
            "json" => ValueFormat::Text(TextFormat::Json),
            "raw" => {
                let one_text = matches!(columns.as_slice(), [c]
                    if matches!(def.schema.field(*c).data_type(), DataType::Utf8 | DataType::Binary));
                if !one_text {
                    return Err(o.invalid(
                        "key.format",
                        "raw",
                        "a raw key is one STRING or BYTES column in 'key.fields'",
                    ));
                }
                ValueFormat::Raw
            }
            other => {
                return Err(o.invalid(
                    "key.format",
                    other,
                    "expected 'json' or 'raw' (csv and avro keys are not built yet)",
                ))
            }
        };
        if !def.primary_key.is_empty() {
            let mut pk: Vec<usize> = def
                .primary_key
                .iter()
                .filter_map(|k| def.schema.index_of(k).ok())
                .collect();
            let mut key = columns.clone();
            pk.sort_unstable();
            key.sort_unstable();
            if pk != key {
                return Err(o.invalid(
                    "key.fields",
                    fields,
                    "the table's PRIMARY KEY is its record key: list the same columns",
                ));
            }
        }
        if except_key
            && matches!(
                value_format,
                ValueFormat::Avro(_) | ValueFormat::DebeziumJson | ValueFormat::Raw
            )
        {
            return Err(o.invalid(
                "value.fields-include",
                include,
                "'EXCEPT_KEY' works with the json and csv value formats",
            ));
        }
        Ok(Some(KeyFields {
            format,
            columns,
            except_key,
        }))
    }

    /// The key columns read from record keys (`EXCEPT_KEY`), as a schema.
    pub fn key_schema(&self) -> SchemaRef {
        let fields: Vec<_> = self
            .schema
            .fields()
            .iter()
            .zip(&self.columns)
            .filter(|(_, c)| **c == ColumnSource::KeyField)
            .map(|(f, _)| f.as_ref().clone())
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// The offsets a split reads, resolved once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SplitRange {
    pub start: i64,
    /// Exclusive; `None` when unbounded.
    pub stop: Option<i64>,
}

/// `topic/partition`.
pub(crate) fn split_id(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

pub(crate) fn parse_split_id(id: &str) -> Option<(&str, i32)> {
    let (t, p) = id.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

fn kafka_error(table: &str, what: &str, e: impl fmt::Display) -> ConnectorError {
    ConnectorError::Kafka {
        table: table.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Metadata and offset lookups, on a blocking thread.
pub(crate) struct Admin {
    options: KafkaOptions,
    consumer: BaseConsumer,
}

impl Admin {
    pub fn new(options: &KafkaOptions) -> Result<Self> {
        let consumer: BaseConsumer = options
            .client_config()
            .create()
            .map_err(|e| kafka_error(&options.table, "cannot create a consumer", e))?;
        Ok(Self {
            options: options.clone(),
            consumer,
        })
    }

    /// The partitions of the table's topics that exist now.
    pub fn partitions(&self) -> Result<Vec<(String, i32)>> {
        let table = &self.options.table;
        let mut out = Vec::new();
        match &self.options.topics {
            Topics::List(topics) => {
                for t in topics {
                    let md = self
                        .consumer
                        .fetch_metadata(Some(t), REQUEST_TIMEOUT)
                        .map_err(|e| kafka_error(table, &format!("metadata of topic '{t}'"), e))?;
                    for topic in md.topics() {
                        if let Some(err) = topic.error() {
                            return Err(kafka_error(
                                table,
                                &format!("topic '{t}'"),
                                rdkafka::error::RDKafkaErrorCode::from(err),
                            ));
                        }
                        if topic.partitions().is_empty() {
                            return Err(kafka_error(
                                table,
                                &format!("topic '{t}'"),
                                "it does not exist",
                            ));
                        }
                        for p in topic.partitions() {
                            out.push((t.clone(), p.id()));
                        }
                    }
                }
            }
            Topics::Pattern(re) => {
                let md = self
                    .consumer
                    .fetch_metadata(None, REQUEST_TIMEOUT)
                    .map_err(|e| kafka_error(table, "cluster metadata", e))?;
                for topic in md.topics() {
                    if re.is_match(topic.name()) && topic.error().is_none() {
                        for p in topic.partitions() {
                            out.push((topic.name().to_string(), p.id()));
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| {
                kafka_error(
                    &self.options.table,
                    &format!("offsets of topic '{topic}' partition {partition}"),
                    e,
                )
            })
    }

    fn for_time(&self, topic: &str, partition: i32, ts: i64) -> Result<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ts))
            .map_err(|e| kafka_error(&self.options.table, "offsets for a timestamp", e))?;
        let got = self
            .consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(|e| kafka_error(&self.options.table, "offsets for a timestamp", e))?;
        Ok(got
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }

    fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got = self
            .consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(|e| kafka_error(&self.options.table, "committed offsets", e))?;
        Ok(got
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }

    /// Where a partition's read starts and ends. `discovered_later`: a partition that
    /// appeared while the job ran starts at its earliest offset.
    pub fn resolve(
        &self,
        topic: &str,
        partition: i32,
        discovered_later: bool,
    ) -> Result<SplitRange> {
        let (low, high) = self.watermarks(topic, partition)?;
        let start = if discovered_later {
            low
        } else {
            match &self.options.start {
                StartMode::Earliest => low,
                StartMode::Latest => high,
                StartMode::Group => self.committed(topic, partition)?.unwrap_or(
                    match self
                        .options
                        .properties
                        .get("auto.offset.reset")
                        .map(String::as_str)
                    {
                        Some("latest") | Some("largest") => high,
                        _ => low,
                    },
                ),
                StartMode::Timestamp(ts) => self.for_time(topic, partition, *ts)?.unwrap_or(high),
                StartMode::Specific(map) => map.get(&partition).copied().unwrap_or(low),
            }
        };
        let stop = match &self.options.stop {
            StopMode::Unbounded => None,
            StopMode::Latest => Some(high),
            StopMode::Group => Some(self.committed(topic, partition)?.unwrap_or(high)),
            StopMode::Timestamp(ts) => Some(self.for_time(topic, partition, *ts)?.unwrap_or(high)),
            StopMode::Specific(map) => Some(map.get(&partition).copied().unwrap_or(high)),
        };
        Ok(SplitRange {
            start: start.clamp(low, high.max(low)),
            stop,
        })
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectorError::Kafka {
            table: String::new(),
            message: format!("a metadata request failed: {e}"),
        })?
}

/// Resolved ranges per split, the enumerator state of the source.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct EnumeratorState {
    pub ranges: BTreeMap<String, SplitRange>,
}

/// A table's partitions as a stream source.
pub struct KafkaSource {
    options: KafkaOptions,
    state: Mutex<EnumeratorState>,
    metrics: Arc<SourceMetrics>,
    /// Commits the consumer group's offsets after checkpoints (created on first use).
    committer: Arc<Mutex<Option<BaseConsumer>>>,
    /// The ranges the table's first read resolved, shared by every source of the table
    /// in a job, so that all its statements read the same offsets.
    first_ranges: Arc<Mutex<Option<EnumeratorState>>>,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("table", &self.options.table)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    pub(crate) fn new(
        options: KafkaOptions,
        metrics: Arc<SourceMetrics>,
        first_ranges: Arc<Mutex<Option<EnumeratorState>>>,
    ) -> Self {
        Self {
            options,
            state: Mutex::default(),
            metrics,
            committer: Arc::default(),
            first_ranges,
        }
    }

    pub(crate) fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// The offset ranges resolved so far, by split id.
    pub(crate) fn resolved_ranges(&self) -> BTreeMap<String, SplitRange> {
        self.state.lock().expect("kafka enumerator").ranges.clone()
    }

    /// A source whose splits read `ranges` (resolved elsewhere) without asking the
    /// brokers again.
    pub(crate) fn with_ranges(
        options: KafkaOptions,
        metrics: Arc<SourceMetrics>,
        ranges: BTreeMap<String, SplitRange>,
    ) -> Self {
        let source = Self::new(options, metrics, Arc::default());
        source.state.lock().expect("kafka enumerator").ranges = ranges;
        source
    }

    fn range_of(&self, split: &str) -> Option<SplitRange> {
        self.state
            .lock()
            .expect("kafka enumerator")
            .ranges
            .get(split)
            .copied()
    }
}

#[async_trait]
impl StreamSource for KafkaSource {
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        let all: Vec<usize>;
        let projection = match projection {
            Some(p) => p,
            None => {
                all = (0..self.options.schema.fields().len()).collect();
                &all
            }
        };
        self.options.output_schema(projection)
    }

    fn changelog(&self) -> bool {
        self.options.changelog()
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        let options = self.options.clone();
        let known: BTreeMap<String, SplitRange> =
            self.state.lock().expect("kafka enumerator").ranges.clone();
        let first = known.is_empty();
        if first {
            // Another statement of the job read the table already: read what it read.
            let shared = self.first_ranges.lock().expect("kafka ranges").clone();
            if let Some(shared) = shared.filter(|s| !s.ranges.is_empty()) {
                let ids = shared
                    .ranges
                    .keys()
                    .map(|id| Split { id: id.clone() })
                    .collect();
                *self.state.lock().expect("kafka enumerator") = shared;
                return Ok(ids);
            }
        }
        let resolved = blocking(move || {
            let admin = Admin::new(&options)?;
            let mut out = Vec::new();
            for (topic, partition) in admin.partitions()? {
                let id = split_id(&topic, partition);
                if !known.contains_key(&id) {
                    out.push((id, admin.resolve(&topic, partition, !first)?));
                }
            }
            Ok(out)
        })
        .await?;
        let mut state = self.state.lock().expect("kafka enumerator");
        for (id, range) in resolved {
            state.ranges.entry(id).or_insert(range);
        }
        if first {
            self.first_ranges
                .lock()
                .expect("kafka ranges")
                .get_or_insert_with(|| state.clone());
        }
        Ok(state
            .ranges
            .keys()
            .map(|id| Split { id: id.clone() })
            .collect())
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        match self.options.stop {
            StopMode::Unbounded => self.options.discovery_ms,
            _ => None,
        }
    }

    fn enumerator_state(&self) -> serde_json::Value {
        serde_json::to_value(&*self.state.lock().expect("kafka enumerator"))
            .unwrap_or(serde_json::Value::Null)
    }

    fn restore_enumerator(&self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let restored: EnumeratorState =
            serde_json::from_value(state.clone()).map_err(|e| ConnectorError::Kafka {
                table: self.options.table.clone(),
                message: format!("the checkpoint's partition offsets cannot be read: {e}"),
            })?;
        *self.state.lock().expect("kafka enumerator") = restored;
        Ok(())
    }

    /// Commits the checkpoint's offsets (the next offset to read of each partition read
    /// from) for the table's consumer group (`properties.group.id`, default
    /// `meltwater-<table>`), so lag monitors and `group-offsets` startup see them.
    async fn checkpoint_complete(
        &self,
        _checkpoint_id: u64,
        positions: &BTreeMap<String, SplitPosition>,
    ) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (id, position) in positions {
            if let (Some((topic, partition)), true) = (parse_split_id(id), *position > 0) {
                tpl.add_partition_offset(topic, partition, Offset::Offset(*position as i64 - 1))
                    .map_err(|e| kafka_error(&self.options.table, "committing offsets", e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let committer = self.committer.clone();
        let options = self.options.clone();
        blocking(move || {
            let mut guard = committer.lock().expect("kafka committer");
            if guard.is_none() {
                *guard = Some(options.client_config().create().map_err(|e| {
                    kafka_error(
                        &options.table,
                        "cannot create a consumer to commit offsets",
                        e,
                    )
                })?);
            }
            guard
                .as_ref()
                .expect("created above")
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| kafka_error(&options.table, "committing the group's offsets", e))
        })
        .await
    }

    async fn open(
        &self,
        split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Box<dyn SplitReader>> {
        let range = match self.range_of(&split.id) {
            Some(r) => r,
            None => {
                // Not discovered by this source (a split of a checkpoint whose enumerator
                // state was lost): resolve it now.
                self.discover_splits().await?;
                self.range_of(&split.id)
                    .ok_or_else(|| ConnectorError::Kafka {
                        table: self.options.table.clone(),
                        message: format!("partition {} no longer exists", split.id),
                    })?
            }
        };
        let (topic, partition) =
            parse_split_id(&split.id).ok_or_else(|| ConnectorError::Kafka {
                table: self.options.table.clone(),
                message: format!("'{}' is not a topic partition", split.id),
            })?;
        let from = if position == 0 {
            range.start
        } else {
            position as i64 - 1
        };
        Ok(Box::new(reader::PartitionReader::open(
            &self.options,
            topic,
            partition,
            from,
            range.stop,
            projection,
            batch_size,
            self.metrics.clone(),
        )?))
    }
}

/// A `kafka` table: a source in both modes (bounded with `scan.bounded.mode`), and a
/// sink.
#[derive(Debug)]
pub struct KafkaTable {
    def: TableDef,
    options: KafkaOptions,
    metrics: Arc<SourceMetrics>,
    /// The offsets the job's first read of the table resolved (see [`KafkaSource`]).
    first_ranges: Arc<Mutex<Option<EnumeratorState>>>,
}

impl KafkaTable {
    /// The table's sink settings (an error when it cannot be written to).
    pub fn sink_options(&self) -> Result<KafkaSinkOptions> {
        KafkaSinkOptions::parse(&self.def, &self.options)
    }

    /// The primary key columns of the table.
    pub fn primary_key(&self) -> &[String] {
        &self.def.primary_key
    }

    pub fn try_new(def: TableDef) -> Result<Self> {
        let options = KafkaOptions::parse(&def)?;
        if let ValueFormat::Text(t) = &options.format {
            crate::format::check_schema(&def.name, &options.value_schema(), t)?;
        }
        if let ValueFormat::DebeziumJson = &options.format {
            crate::format::check_schema(&def.name, &options.value_schema(), &TextFormat::Json)?;
        }
        if options
            .key
            .as_ref()
            .is_some_and(|k| k.except_key && matches!(k.format, ValueFormat::Text(_)))
        {
            crate::format::check_schema(&def.name, &options.key_schema(), &TextFormat::Json)?;
        }
        if let ValueFormat::Avro(f) = &options.format {
            avro::AvroDecoder::new(&def.name, &options.value_schema(), f, 0)?;
        }
        Ok(Self {
            def,
            options,
            metrics: Arc::default(),
            first_ranges: Arc::default(),
        })
    }
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.options.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.options.stop == StopMode::Unbounded {
            return Err(DataFusionError::Plan(format!(
                "table '{}' (kafka connector) is unbounded because 'scan.bounded.mode' is not set; batch mode reads bounded sources only",
                self.def.name
            )));
        }
        let source = Arc::new(KafkaSource::new(
            self.options.clone(),
            self.metrics.clone(),
            self.first_ranges.clone(),
        ));
        let splits = source.discover_splits().await?;
        Ok(Arc::new(KafkaScanExec::new(
            source,
            splits,
            projection.cloned(),
            state.config().target_partitions(),
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::Plan(format!(
                "table '{}': a kafka table is appended to; it cannot be overwritten",
                self.def.name
            )));
        }
        let sink = KafkaSink::try_new(&self.def, &self.options)?;
        Ok(sink.into_exec(input))
    }
}

impl ConnectorTable for KafkaTable {
    fn connector(&self) -> &str {
        CONNECTOR
    }

    fn boundedness(&self) -> Boundedness {
        match self.options.stop {
            StopMode::Unbounded => Boundedness::Unbounded {
                reason: "'scan.bounded.mode' is not set",
            },
            _ => Boundedness::Bounded,
        }
    }

    fn metrics(&self) -> Arc<SourceMetrics> {
        self.metrics.clone()
    }

    fn stream_source(&self) -> Result<Arc<dyn StreamSource>> {
        Ok(Arc::new(KafkaSource::new(
            self.options.clone(),
            self.metrics.clone(),
            self.first_ranges.clone(),
        )))
    }

    fn writable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn def(options: &[(&str, &str)], metadata: &[(&str, &str)]) -> TableDef {
        TableDef {
            name: "orders".into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
                Field::new("off", DataType::Int64, true),
            ])),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            primary_key: vec![],
            metadata: metadata
                .iter()
                .map(|(c, k)| (c.to_string(), (k.to_string(), true)))
                .collect(),
        }
    }

    const BASE: &[(&str, &str)] = &[
        ("connector", "kafka"),
        ("topic", "orders"),
        ("properties.bootstrap.servers", "127.0.0.1:9092"),
        ("format", "json"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn key_fields_are_validated() {
        let o = KafkaOptions::parse(&def(
            &with(&[
                ("key.format", "json"),
                ("key.fields", "id"),
                ("value.fields-include", "EXCEPT_KEY"),
            ]),
            &[],
        ))
        .unwrap();
        assert_eq!(
            o.columns,
            vec![
                ColumnSource::KeyField,
                ColumnSource::Value,
                ColumnSource::Value
            ]
        );
        assert_eq!(o.key_schema().fields().len(), 1);
        assert_eq!(o.value_schema().fields().len(), 2);
        // ALL keeps every column in the value.
        let o = KafkaOptions::parse(&def(
            &with(&[("key.format", "raw"), ("key.fields", "name")]),
            &[],
        ))
        .unwrap();
        assert!(o.columns.iter().all(|c| *c == ColumnSource::Value));
        let err = |extra: &[(&'static str, &'static str)], metadata: &[(&str, &str)]| {
            KafkaOptions::parse(&def(&with(extra), metadata))
                .unwrap_err()
                .to_string()
        };
        let e = err(&[("key.format", "json")], &[]);
        assert!(e.contains("'key.fields'"), "{e}");
        let e = err(&[("key.fields", "id")], &[]);
        assert!(e.contains("'key.format'"), "{e}");
        let e = err(&[("value.fields-include", "EXCEPT_KEY")], &[]);
        assert!(e.contains("needs 'key.format' and 'key.fields'"), "{e}");
        let e = err(&[("key.format", "json"), ("key.fields", "nope")], &[]);
        assert!(e.contains("no column 'nope'"), "{e}");
        let e = err(&[("key.format", "raw"), ("key.fields", "id")], &[]);
        assert!(e.contains("one STRING or BYTES column"), "{e}");
        let e = err(
            &[("key.format", "json"), ("key.fields", "off")],
            &[("off", "offset")],
        );
        assert!(e.contains("METADATA column"), "{e}");
        let e = err(&[("key.format", "csv"), ("key.fields", "id")], &[]);
        assert!(e.contains("expected 'json' or 'raw'"), "{e}");
        let e = err(&[("value.fields-include", "SOME")], &[]);
        assert!(e.contains("expected 'ALL' or 'EXCEPT_KEY'"), "{e}");
        let mut keyed = def(
            &with(&[("key.format", "json"), ("key.fields", "name")]),
            &[],
        );
        keyed.primary_key = vec!["id".into()];
        let e = KafkaOptions::parse(&keyed).unwrap_err().to_string();
        assert!(e.contains("PRIMARY KEY is its record key"), "{e}");
    }

    #[test]
    fn options_are_validated_with_messages_naming_table_and_option() {
        let o = KafkaOptions::parse(&def(BASE, &[("off", "offset")])).unwrap();
        assert_eq!(o.start, StartMode::Group);
        assert_eq!(o.stop, StopMode::Unbounded);
        assert_eq!(
            o.columns,
            vec![
                ColumnSource::Value,
                ColumnSource::Value,
                ColumnSource::Offset
            ]
        );
        assert_eq!(o.value_schema().fields().len(), 2);

        let o = KafkaOptions::parse(&def(
            &with(&[
                ("scan.startup.mode", "specific-offsets"),
                (
                    "scan.startup.specific-offsets",
                    "partition:0,offset:42;partition:1,offset:7",
                ),
                ("scan.bounded.mode", "latest-offset"),
            ]),
            &[],
        ))
        .unwrap();
        assert_eq!(
            o.start,
            StartMode::Specific(BTreeMap::from([(0, 42), (1, 7)]))
        );
        assert_eq!(o.stop, StopMode::Latest);

        let err = |opts: &[(&'static str, &'static str)], md: &[(&str, &str)]| {
            KafkaOptions::parse(&def(&with(opts), md))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("scan.startup.mode", "earliest")], &[])
            .contains("invalid value 'earliest' for option 'scan.startup.mode'"));
        assert!(err(&[("scan.startup.mode", "timestamp")], &[])
            .contains("missing required option 'scan.startup.timestamp-millis'"));
        assert!(err(
            &[
                ("scan.startup.mode", "specific-offsets"),
                ("scan.startup.specific-offsets", "p0:1")
            ],
            &[]
        )
        .contains("expected 'partition:P,offset:O'"));
        assert!(err(&[("error.policy", "dead-letter")], &[])
            .contains("missing required option 'error.dead-letter.topic'"));
        assert!(err(&[("scan.bounded", "x")], &[]).contains("unknown option 'scan.bounded'"));
        assert!(err(&[], &[("off", "offsets")]).contains("unknown metadata key 'offsets'"));
        assert!(
            err(&[], &[("name", "offset")]).contains("metadata 'offset' cannot be read as STRING")
        );
        let e = KafkaOptions::parse(&def(
            &[("connector", "kafka"), ("topic", "t"), ("format", "json")],
            &[],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("'properties.bootstrap.servers'"), "{e}");
    }

    #[test]
    fn split_ids_round_trip() {
        assert_eq!(parse_split_id(&split_id("a/b", 3)), Some(("a/b", 3)));
        assert_eq!(parse_split_id("nopartition"), None);
    }
}
