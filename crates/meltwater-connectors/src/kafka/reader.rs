//! Reading one partition: messages decoded into Arrow batches with metadata columns,
//! malformed records handled by the table's policy; and the batch-mode scan over the
//! partitions of a bounded read.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    StringBuilder, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness as PlanBoundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Timestamp;

use super::{ColumnSource, KafkaOptions, KafkaSource, RecordPolicy, ValueFormat};
use crate::format::RecordDecoder;
use crate::stream::{Split, SplitPosition, SplitReader, StreamSource};
use crate::{ConnectorError, ErrorPolicy, Result, SourceMetrics};

/// How long a partially filled batch waits for more messages.
const LINGER: Duration = Duration::from_millis(50);
/// How long a batch is filled at most while messages keep arriving, so that a
/// checkpoint's barrier never waits long behind a batch being read.
const MAX_BATCH_TIME: Duration = Duration::from_millis(100);
/// How long a bounded read waits before asking where the consumer stands (control
/// records of transactions are never delivered, so the end offset may not be seen).
const POLL: Duration = Duration::from_millis(200);

/// The value columns decoded so far, in one of the formats.
enum Values {
    Text(Box<RecordDecoder>),
    RawText(StringBuilder),
    RawBytes(BinaryBuilder),
    /// `debezium-json`: the rows of change events and their kinds.
    Changes(Box<super::debezium::DebeziumDecoder>),
    Avro(Box<super::avro::AvroDecoder>),
}

/// Key columns decoded from record keys (`'value.fields-include' = 'EXCEPT_KEY'`).
enum Keys {
    Json(Box<RecordDecoder>),
    RawText(StringBuilder),
    RawBytes(BinaryBuilder),
}

impl Keys {
    /// Whether `key` decodes (nothing is appended): a malformed record otherwise.
    fn check(&mut self, key: Option<&[u8]>, table: &str, source: &str, offset: i64) -> Result<()> {
        let malformed = |message: String| ConnectorError::MalformedRecord {
            table: table.to_string(),
            source_name: source.to_string(),
            line: offset as u64,
            column: None,
            message,
        };
        match self {
            Keys::Json(d) => d
                .check_json(key.unwrap_or(b"{}"), source, offset as u64)
                .map_err(|e| match e {
                    ConnectorError::MalformedRecord {
                        table,
                        source_name,
                        line,
                        column,
                        message,
                    } => ConnectorError::MalformedRecord {
                        table,
                        source_name,
                        line,
                        column,
                        message: format!("in the record key: {message}"),
                    },
                    other => other,
                }),
            Keys::RawText(_) => match key.map(std::str::from_utf8) {
                Some(Err(e)) => Err(malformed(format!("the record key is not UTF-8: {e}"))),
                _ => Ok(()),
            },
            Keys::RawBytes(_) => Ok(()),
        }
    }

    /// Appends `key`'s columns `n` times (checked by [`Keys::check`] before).
    fn append(&mut self, key: Option<&[u8]>, n: usize, source: &str, offset: i64) -> Result<()> {
        for _ in 0..n {
            match self {
                Keys::Json(d) => d.decode_json(key.unwrap_or(b"{}"), source, offset as u64)?,
                Keys::RawText(b) => b.append_option(key.and_then(|k| std::str::from_utf8(k).ok())),
                Keys::RawBytes(b) => b.append_option(key),
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(match self {
            Keys::Json(d) => d.flush()?.map(|b| b.columns().to_vec()).unwrap_or_default(),
            Keys::RawText(b) => vec![Arc::new(b.finish())],
            Keys::RawBytes(b) => vec![Arc::new(b.finish())],
        })
    }
}

/// Which per-record metadata a reader collects.
#[derive(Default)]
struct Wanted {
    offset: bool,
    timestamp: bool,
    key: bool,
    headers: bool,
}

/// Metadata of the rows buffered (the vectors of what is not wanted stay empty).
#[derive(Default)]
struct Meta {
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    timestamp_types: Vec<&'static str>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<Option<String>>,
}

/// Reads one partition from an offset, to an end offset when bounded.
pub(crate) struct PartitionReader {
    options: KafkaOptions,
    topic: String,
    partition: i32,
    consumer: Arc<StreamConsumer>,
    /// The next offset to read.
    next: i64,
    stop: Option<i64>,
    values: Values,
    meta: Meta,
    /// The metadata the projection reads; only that is collected per record.
    wanted: Wanted,
    /// `topic 'orders' partition 2`, for decoding errors.
    source_name: String,
    /// Output column → DDL column.
    projection: Vec<usize>,
    output: SchemaRef,
    /// DDL column → position among the value columns.
    value_position: Vec<Option<usize>>,
    /// `EXCEPT_KEY`: the key columns' decoder, and DDL column → position among them.
    keys: Option<Keys>,
    key_position: Vec<Option<usize>>,
    batch_size: usize,
    rows: usize,
    dead_letters: Option<FutureProducer>,
    metrics: Arc<SourceMetrics>,
    skipped_reported: u64,
    done: bool,
}

impl fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionReader({}/{})", self.topic, self.partition)
    }
}

fn kafka_error(table: &str, what: String, e: impl fmt::Display) -> ConnectorError {
    ConnectorError::Kafka {
        table: table.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Headers as a JSON object of name to UTF-8 value.
fn headers_json(h: &rdkafka::message::BorrowedHeaders) -> String {
    let map: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|Header { key, value }| {
            (
                key.to_string(),
                value
                    .map(|v| serde_json::Value::String(String::from_utf8_lossy(v).into()))
                    .unwrap_or(serde_json::Value::Null),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

impl PartitionReader {
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        options: &KafkaOptions,
        topic: &str,
        partition: i32,
        from: i64,
        stop: Option<i64>,
        projection: Option<&[usize]>,
        batch_size: usize,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Self> {
        let table = &options.table;
        let consumer: StreamConsumer = options
            .client_config()
            .create()
            .map_err(|e| kafka_error(table, "cannot create a consumer".into(), e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| kafka_error(table, format!("topic '{topic}' partition {partition}"), e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error(table, format!("topic '{topic}' partition {partition}"), e))?;
        let batch_size = batch_size.max(1);
        let value_schema = options.value_schema();
        let values = match &options.format {
            ValueFormat::Text(format) => Values::Text(Box::new(RecordDecoder::new(
                table,
                &value_schema,
                None,
                format.clone(),
                match options.policy {
                    RecordPolicy::Skip => ErrorPolicy::Skip,
                    _ => ErrorPolicy::Fail,
                },
                batch_size,
            )?)),
            ValueFormat::Avro(format) => Values::Avro(Box::new(super::avro::AvroDecoder::new(
                table,
                &value_schema,
                format,
                batch_size,
            )?)),
            ValueFormat::Raw => match value_schema.field(0).data_type() {
                DataType::Binary => Values::RawBytes(BinaryBuilder::new()),
                _ => Values::RawText(StringBuilder::new()),
            },
            ValueFormat::DebeziumJson => Values::Changes(Box::new(
                super::debezium::DebeziumDecoder::new(table, &value_schema, batch_size)?,
            )),
        };
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..options.schema.fields().len()).collect(),
        };
        let output = options.output_schema(&projection);
        let mut k = 0;
        let value_position = options
            .columns
            .iter()
            .map(|c| {
                (*c == ColumnSource::Value).then(|| {
                    k += 1;
                    k - 1
                })
            })
            .collect();
        let mut k = 0;
        let key_position = options
            .columns
            .iter()
            .map(|c| {
                (*c == ColumnSource::KeyField).then(|| {
                    k += 1;
                    k - 1
                })
            })
            .collect();
        let keys = match &options.key {
            Some(key) if key.except_key => {
                let key_schema = options.key_schema();
                Some(match (&key.format, key_schema.field(0).data_type()) {
                    (ValueFormat::Raw, DataType::Binary) => Keys::RawBytes(BinaryBuilder::new()),
                    (ValueFormat::Raw, _) => Keys::RawText(StringBuilder::new()),
                    _ => Keys::Json(Box::new(RecordDecoder::new(
                        table,
                        &key_schema,
                        None,
                        crate::format::TextFormat::Json,
                        ErrorPolicy::Fail,
                        batch_size,
                    )?)),
                })
            }
            _ => None,
        };
        let mut wanted = Wanted::default();
        for c in &projection {
            match options.columns[*c] {
                ColumnSource::Offset => wanted.offset = true,
                ColumnSource::Timestamp | ColumnSource::TimestampType => wanted.timestamp = true,
                ColumnSource::Key => wanted.key = true,
                ColumnSource::Headers => wanted.headers = true,
                ColumnSource::Value
                | ColumnSource::KeyField
                | ColumnSource::Topic
                | ColumnSource::Partition => {}
            }
        }
        let dead_letters = match &options.policy {
            RecordPolicy::DeadLetter(_) => {
                let mut config = rdkafka::config::ClientConfig::new();
                for (k, v) in &options.properties {
                    config.set(k, v);
                }
                Some(config.create().map_err(|e| {
                    kafka_error(table, "cannot create the dead-letter producer".into(), e)
                })?)
            }
            _ => None,
        };
        Ok(Self {
            options: options.clone(),
            topic: topic.to_string(),
            partition,
            consumer: Arc::new(consumer),
            next: from,
            stop,
            values,
            meta: Meta::default(),
            wanted,
            source_name: format!("topic '{topic}' partition {partition}"),
            projection,
            output,
            value_position,
            keys,
            key_position,
            batch_size,
            rows: 0,
            dead_letters,
            metrics,
            skipped_reported: 0,
            done: false,
        })
    }

    fn malformed(&self, offset: i64, e: ConnectorError) -> ConnectorError {
        match e {
            ConnectorError::MalformedRecord {
                table,
                column,
                message,
                ..
            } => ConnectorError::MalformedMessage {
                table,
                topic: self.topic.clone(),
                partition: self.partition,
                offset,
                column,
                message,
            },
            other => other,
        }
    }

    /// Decodes one message; returns the rows it became (a change event may be two).
    async fn take(&mut self, msg: &BorrowedMessage<'_>) -> Result<usize> {
        let offset = msg.offset();
        let Some(payload) = msg.payload() else {
            // A tombstone (no value) carries no row.
            return Ok(0);
        };
        SourceMetrics::add(&self.metrics.bytes, payload.len() as u64);
        let source = &self.source_name;
        let key_check = match &mut self.keys {
            Some(k) => k.check(msg.key(), &self.options.table, source, offset),
            None => Ok(()),
        };
        let result = match key_check {
            Err(e) => Err(e),
            Ok(()) => match &mut self.values {
                Values::Text(d) => {
                    let before = d.buffered_rows();
                    d.decode_message(payload, source, offset as u64)
                        .map(|_| d.buffered_rows() - before)
                }
                Values::Changes(d) => d.decode(payload, source, offset as u64),
                Values::RawBytes(b) => {
                    b.append_value(payload);
                    Ok(1)
                }
                Values::Avro(d) => d.decode(payload, source, offset as u64).await.map(|()| 1),
                Values::RawText(b) => match std::str::from_utf8(payload) {
                    Ok(s) => {
                        b.append_value(s);
                        Ok(1)
                    }
                    Err(e) => Err(ConnectorError::MalformedRecord {
                        table: self.options.table.clone(),
                        source_name: source.clone(),
                        line: offset as u64,
                        column: None,
                        message: format!("the value is not UTF-8: {e}"),
                    }),
                },
            },
        };
        let appended = match result {
            Ok(a) => a,
            Err(e @ ConnectorError::MalformedRecord { .. }) => {
                let e = self.malformed(offset, e);
                match &self.options.policy {
                    RecordPolicy::DeadLetter(topic) => {
                        self.dead_letter(topic.clone(), msg, &e).await?;
                        0
                    }
                    RecordPolicy::Skip => {
                        SourceMetrics::add(&self.metrics.records_skipped, 1);
                        0
                    }
                    RecordPolicy::Fail => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(k) = &mut self.keys {
            k.append(msg.key(), appended, &self.source_name, offset)?;
        }
        for _ in 0..appended {
            let w = &self.wanted;
            if w.offset {
                self.meta.offsets.push(offset);
            }
            if w.timestamp {
                let (ts, kind) = match msg.timestamp() {
                    Timestamp::NotAvailable => (None, "NoTimestampType"),
                    Timestamp::CreateTime(t) => (Some(t), "CreateTime"),
                    Timestamp::LogAppendTime(t) => (Some(t), "LogAppendTime"),
                };
                self.meta.timestamps.push(ts);
                self.meta.timestamp_types.push(kind);
            }
            if w.key {
                self.meta.keys.push(msg.key().map(<[u8]>::to_vec));
            }
            if w.headers {
                self.meta.headers.push(msg.headers().map(headers_json));
            }
        }
        Ok(appended)
    }

    /// Sends a malformed record to the dead-letter topic (and waits for the broker's
    /// acknowledgement, so a checkpoint past it never loses it).
    async fn dead_letter(
        &self,
        topic: String,
        msg: &BorrowedMessage<'_>,
        error: &ConnectorError,
    ) -> Result<()> {
        let producer = self.dead_letters.as_ref().expect("dead-letter producer");
        let partition = self.partition.to_string();
        let offset = msg.offset().to_string();
        let message = error.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "meltwater.error",
                value: Some(message.as_str()),
            })
            .insert(Header {
                key: "meltwater.source.topic",
                value: Some(self.topic.as_str()),
            })
            .insert(Header {
                key: "meltwater.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "meltwater.source.offset",
                value: Some(offset.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| {
                kafka_error(
                    &self.options.table,
                    format!("cannot write to the dead-letter topic '{topic}'"),
                    e,
                )
            })?;
        SourceMetrics::add(&self.metrics.records_dead_lettered, 1);
        Ok(())
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let rows = self.rows;
        let mut ops = None;
        let values: Vec<ArrayRef> = match &mut self.values {
            Values::Text(d) => d.flush()?.map(|b| b.columns().to_vec()).unwrap_or_default(),
            Values::Changes(d) => {
                let (values, kinds) = d.flush()?;
                ops = Some(kinds);
                values
            }
            Values::RawText(b) => vec![Arc::new(b.finish())],
            Values::RawBytes(b) => vec![Arc::new(b.finish())],
            Values::Avro(d) => d.finish()?,
        };
        let key_values = match &mut self.keys {
            Some(k) => k.finish()?,
            None => Vec::new(),
        };
        let meta = std::mem::take(&mut self.meta);
        let offsets: ArrayRef = Arc::new(Int64Array::from(meta.offsets));
        let timestamps: ArrayRef = Arc::new(TimestampMillisecondArray::from(meta.timestamps));
        let timestamp_types: ArrayRef = Arc::new(StringArray::from(meta.timestamp_types));
        let headers: ArrayRef = Arc::new(StringArray::from(meta.headers));
        let mut columns = Vec::with_capacity(self.projection.len());
        for (out, &c) in self.projection.iter().enumerate() {
            let field = self.output.field(out);
            let array: ArrayRef = match self.options.columns[c] {
                ColumnSource::Value => {
                    values[self.value_position[c].expect("a value column")].clone()
                }
                ColumnSource::KeyField => {
                    key_values[self.key_position[c].expect("a key column")].clone()
                }
                ColumnSource::Topic => Arc::new(StringArray::from(vec![self.topic.as_str(); rows])),
                ColumnSource::Partition => Arc::new(Int32Array::from(vec![self.partition; rows])),
                ColumnSource::Offset => offsets.clone(),
                ColumnSource::Timestamp => cast(&timestamps, field.data_type())?,
                ColumnSource::TimestampType => timestamp_types.clone(),
                ColumnSource::Key => match field.data_type() {
                    DataType::Binary => Arc::new(
                        meta.keys
                            .iter()
                            .map(|k| k.as_deref())
                            .collect::<datafusion::arrow::array::BinaryArray>(),
                    ),
                    _ => Arc::new(
                        meta.keys
                            .iter()
                            .map(|k| k.as_deref().map(String::from_utf8_lossy))
                            .collect::<StringArray>(),
                    ),
                },
                ColumnSource::Headers => headers.clone(),
            };
            columns.push(array);
        }
        columns.extend(ops);
        self.rows = 0;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(self.output.clone(), columns, &options)?;
        SourceMetrics::add(&self.metrics.rows, rows as u64);
        Ok(Some(batch))
    }

    fn position(&self) -> SplitPosition {
        (self.next + 1) as SplitPosition
    }

    /// The consumer's fetch position: past control records it never delivers.
    fn fetch_position(&self) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.topic, self.partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    fn skipped_by_decoder(&mut self) {
        if let Values::Text(d) = &self.values {
            let n = d.records_skipped();
            SourceMetrics::add(&self.metrics.records_skipped, n - self.skipped_reported);
            self.skipped_reported = n;
        }
    }
}

#[async_trait]
impl SplitReader for PartitionReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>> {
        if self.done {
            return Ok(None);
        }
        let mut first_row: Option<tokio::time::Instant> = None;
        let mut taken = 0u32;
        loop {
            // A change event may add two rows.
            let room = usize::from(matches!(self.values, Values::Changes(_)));
            if (self.rows > 0 && self.rows + room >= self.batch_size)
                || first_row.is_some_and(|t| t.elapsed() >= MAX_BATCH_TIME)
            {
                break;
            }
            taken += 1;
            if taken.is_multiple_of(256) {
                // Messages that are ready never make `recv` wait: let the source's other
                // work (a checkpoint's barrier) run.
                tokio::task::yield_now().await;
            }
            if self.stop.is_some_and(|s| self.next >= s) {
                self.done = true;
                break;
            }
            let wait = match first_row {
                Some(t) => LINGER.saturating_sub(t.elapsed()),
                None => POLL,
            };
            let consumer = self.consumer.clone();
            let received = tokio::time::timeout(wait, consumer.recv()).await;
            match received {
                Ok(Ok(msg)) => {
                    let offset = msg.offset();
                    if self.stop.is_some_and(|s| offset >= s) {
                        self.next = self.stop.unwrap_or(offset);
                        self.done = true;
                        break;
                    }
                    let appended = self.take(&msg).await;
                    drop(msg);
                    self.next = offset + 1;
                    let appended = appended?;
                    if appended > 0 {
                        self.rows += appended;
                        first_row.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
                Ok(Err(e)) => {
                    return Err(kafka_error(
                        &self.options.table,
                        format!(
                            "reading topic '{}' partition {}",
                            self.topic, self.partition
                        ),
                        e,
                    ))
                }
                Err(_) => {
                    if self.rows > 0 {
                        break;
                    }
                    if let Some(stop) = self.stop {
                        if self.fetch_position().is_some_and(|p| p >= stop) {
                            self.next = stop;
                            self.done = true;
                            break;
                        }
                    }
                }
            }
        }
        self.skipped_by_decoder();
        match self.flush()? {
            Some(batch) => Ok(Some((batch, self.position()))),
            None => Ok(None),
        }
    }
}

/// Batch mode's scan of a bounded read: the partitions spread over the scan's
/// partitions, each read from its start to its end offset.
#[derive(Debug)]
pub struct KafkaScanExec {
    pub(crate) source: Arc<KafkaSource>,
    pub(crate) splits: Vec<Split>,
    pub(crate) projection: Option<Vec<usize>>,
    pub(crate) partitions: usize,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    pub fn new(
        source: Arc<KafkaSource>,
        splits: Vec<Split>,
        projection: Option<Vec<usize>>,
        target_partitions: usize,
    ) -> Self {
        // A changelog is applied as a whole (a row's insert and delete may be in
        // different partitions): one partition reads them all.
        let partitions = if source.options().changelog() {
            1
        } else {
            target_partitions.min(splits.len()).max(1)
        };
        let schema = Self::plain_schema(&source, projection.as_deref());
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            PlanBoundedness::Bounded,
        ));
        Self {
            source,
            splits,
            projection,
            partitions,
            properties,
        }
    }
}

impl KafkaScanExec {
    /// The scan's schema: the projected columns (a changelog's op column is consumed
    /// by the scan).
    fn plain_schema(source: &KafkaSource, projection: Option<&[usize]>) -> SchemaRef {
        let schema = &source.options().schema;
        match projection {
            Some(p) => Arc::new(schema.project(p).expect("valid projection")),
            None => schema.clone(),
        }
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let o = self.source.options();
        write!(
            f,
            "KafkaScanExec: table={}, partitions={}, splits={}",
            o.table,
            self.partitions,
            self.splits
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

impl ExecutionPlan for KafkaScanExec {
    crate::leaf_exec_methods!("KafkaScanExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let mine: Vec<Split> = self
            .splits
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.partitions == partition)
            .map(|(_, s)| s.clone())
            .collect();
        let source = self.source.clone();
        let projection = self.projection.clone();
        let batch_size = context.session_config().batch_size();
        let schema = source.schema(projection.as_deref());
        type State = (std::vec::IntoIter<Split>, Option<Box<dyn SplitReader>>);
        let init: State = (mine.into_iter(), None);
        let stream = futures::stream::unfold(init, move |(mut splits, mut reader)| {
            let source = source.clone();
            let projection = projection.clone();
            async move {
                loop {
                    if reader.is_none() {
                        let split = splits.next()?;
                        match source
                            .open(&split, 0, projection.as_deref(), batch_size)
                            .await
                        {
                            Ok(r) => reader = Some(r),
                            Err(e) => return Some((Err(DataFusionError::from(e)), (splits, None))),
                        }
                    }
                    match reader.as_mut().expect("opened").next_batch().await {
                        Ok(Some((batch, _))) => return Some((Ok(batch), (splits, reader))),
                        Ok(None) => reader = None,
                        Err(e) => return Some((Err(DataFusionError::from(e)), (splits, None))),
                    }
                }
            }
        });
        if self.source.options().changelog() {
            // Batch mode reads a changelog as the table it describes: every change of
            // the bounded range applied, in order within each partition.
            let plain = Self::plain_schema(&self.source, self.projection.as_deref());
            let out = plain.clone();
            let materialized = futures::stream::once(async move {
                let changes: Vec<RecordBatch> = stream
                    .collect::<Vec<DfResult<RecordBatch>>>()
                    .await
                    .into_iter()
                    .collect::<DfResult<_>>()?;
                let rows = crate::changelog::materialize(&changes, &out)?;
                Ok::<_, DataFusionError>(futures::stream::iter(rows.into_iter().map(Ok)))
            })
            .map(|r| match r {
                Ok(rows) => rows.boxed(),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            })
            .flatten();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                plain,
                materialized.boxed(),
            )));
        }
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}
