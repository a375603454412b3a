//! Writing a `kafka` table: rows encoded with the value format, keyed by the table's
//! primary key (when it has one) so the default partitioner sends a key's rows to one
//! partition, at most `sink.rate-limit` records a second per writer.
//!
//! `'sink.delivery-guarantee'`: `at-least-once` (default: every record is acknowledged
//! before a checkpoint or the end of a batch statement completes) or `exactly-once`
//! (batch mode: the statement's records are one transaction, committed when it ends, so
//! a failed statement leaves nothing a `read_committed` consumer sees; stream mode:
//! the records of each checkpoint are kept in the checkpoint and produced in one
//! transaction once it is complete, see [`commit_checkpoint`]).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{KafkaOptions, Topics, ValueFormat};
use crate::format::TextFormat;
use crate::options::OptionReader;
use crate::{ConnectorError, Result, TableDef};

/// How records reach the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    AtLeastOnce,
    ExactlyOnce,
}

/// A kafka table's sink settings.
#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    pub table: String,
    pub topic: String,
    pub schema: SchemaRef,
    properties: Vec<(String, String)>,
    format: ValueFormat,
    /// Columns of the key (`key.fields`, else the primary key); empty: records have no
    /// key.
    key_columns: Vec<usize>,
    /// `key.format`; without it keys are encoded with the value format.
    key_format: Option<ValueFormat>,
    /// `'value.fields-include' = 'EXCEPT_KEY'`: the columns values hold.
    value_columns: Option<Vec<usize>>,
    pub guarantee: DeliveryGuarantee,
    transactional_id_prefix: String,
    /// Records per second per writer.
    rate_limit: Option<u64>,
}

impl KafkaSinkOptions {
    pub(crate) fn parse(def: &TableDef, options: &KafkaOptions) -> Result<Self> {
        let o = OptionReader::new(def, super::CONNECTOR);
        let topic = match &options.topics {
            Topics::List(t) if t.len() == 1 => t[0].clone(),
            _ => {
                return Err(ConnectorError::Unsupported {
                    table: def.name.clone(),
                    message: "a kafka table written to needs one 'topic'".into(),
                })
            }
        };
        if !def.metadata.is_empty() {
            return Err(ConnectorError::Unsupported {
                table: def.name.clone(),
                message: "a kafka table with METADATA columns cannot be written to yet".into(),
            });
        }
        let guarantee = match o.get("sink.delivery-guarantee").unwrap_or("at-least-once") {
            "at-least-once" => DeliveryGuarantee::AtLeastOnce,
            "exactly-once" => DeliveryGuarantee::ExactlyOnce,
            "none" => DeliveryGuarantee::AtLeastOnce,
            other => {
                return Err(o.invalid(
                    "sink.delivery-guarantee",
                    other,
                    "expected 'at-least-once' or 'exactly-once'",
                ))
            }
        };
        match o.get("sink.partitioner").unwrap_or("default") {
            "default" => {}
            other => {
                return Err(o.invalid(
                    "sink.partitioner",
                    other,
                    "expected 'default' (by key, records without a key spread by librdkafka)",
                ))
            }
        }
        let rate_limit = o.parse::<u64>("sink.rate-limit", "records per second, above 0")?;
        if rate_limit == Some(0) {
            return Err(o.invalid(
                "sink.rate-limit",
                "0",
                "expected records per second, above 0",
            ));
        }
        let (key_columns, key_format, value_columns) = match &options.key {
            Some(k) => (
                k.columns.clone(),
                Some(k.format.clone()),
                k.except_key.then(|| {
                    (0..def.schema.fields().len())
                        .filter(|c| !k.columns.contains(c))
                        .collect()
                }),
            ),
            None => (
                def.primary_key
                    .iter()
                    .map(|k| def.schema.index_of(k))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                None,
                None,
            ),
        };
        if let (ValueFormat::Raw, None) = (&options.format, &key_format) {
            if !key_columns.is_empty() && key_columns.len() != 1 {
                return Err(o.invalid(
                    "format",
                    "raw",
                    "a raw key is one column: declare a one-column PRIMARY KEY",
                ));
            }
        }
        Ok(Self {
            table: def.name.clone(),
            topic,
            schema: def.schema.clone(),
            properties: options
                .properties
                .iter()
                .filter(|(k, _)| {
                    // Consumer settings make librdkafka's producer warn.
                    !matches!(
                        k.as_str(),
                        "group.id" | "isolation.level" | "auto.offset.reset"
                    )
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            format: options.format.clone(),
            key_columns,
            key_format,
            value_columns,
            guarantee,
            transactional_id_prefix: o
                .get("sink.transactional-id-prefix")
                .unwrap_or(&format!("meltwater-{}", def.name))
                .to_string(),
            rate_limit,
        })
    }

    /// Whether values are change events (`debezium-json`): an updating stream is written
    /// as it is, retractions as delete events, and needs no primary key.
    pub fn change_events(&self) -> bool {
        matches!(self.format, ValueFormat::DebeziumJson)
    }

    /// Whether records are written in transactions.
    pub fn exactly_once(&self) -> bool {
        self.guarantee == DeliveryGuarantee::ExactlyOnce
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn kafka_error(
    table: &str,
    what: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> ConnectorError {
    ConnectorError::Kafka {
        table: table.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Encodes rows as message values (and keys).
struct Encoder {
    format: ValueFormat,
    key_columns: Vec<usize>,
    key_format: Option<ValueFormat>,
    value_columns: Option<Vec<usize>>,
    /// The avro formats: encoders of the table's schema (and its key's).
    avro: Option<super::avro::SinkAvro>,
}

impl Encoder {
    /// One encoded value per row.
    fn values(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let projected;
        let batch = match &self.value_columns {
            Some(columns) => {
                projected = batch.project(columns)?;
                &projected
            }
            None => batch,
        };
        match &self.avro {
            Some(a) => a.values(batch),
            None => encode(&self.format, batch),
        }
    }

    /// `debezium-json` values: each row as a change event, `{"before":null,"after":ROW,
    /// "op":"c"}`, or `{"before":ROW,"after":null,"op":"d"}` where `retract` is true (the
    /// row is retracted: `-U` or `-D`).
    fn change_events(&self, batch: &RecordBatch, retract: Option<&[bool]>) -> Result<Vec<Vec<u8>>> {
        let rows = encode(&self.format, batch)?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let (before, after, op): (&[u8], &[u8], &[u8]) = if retract.is_some_and(|r| r[i]) {
                    (&row, b"null", b"d")
                } else {
                    (b"null", &row, b"c")
                };
                let mut event = Vec::with_capacity(row.len() + 40);
                event.extend_from_slice(b"{\"before\":");
                event.extend_from_slice(before);
                event.extend_from_slice(b",\"after\":");
                event.extend_from_slice(after);
                event.extend_from_slice(b",\"op\":\"");
                event.extend_from_slice(op);
                event.extend_from_slice(b"\"}");
                event
            })
            .collect())
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Option<Vec<Vec<u8>>>> {
        if self.key_columns.is_empty() {
            return Ok(None);
        }
        let keys = batch.project(&self.key_columns)?;
        if let Some(format) = &self.key_format {
            return encode(format, &keys).map(Some);
        }
        match &self.avro {
            Some(a) => a.keys(&keys).map(Some),
            None => encode(&self.format, &keys).map(Some),
        }
    }
}

fn encode(format: &ValueFormat, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let rows = batch.num_rows();
    match format {
        // Keys of a change-event table are JSON, as Debezium writes them; its values are
        // wrapped in change events by `Encoder::values`.
        ValueFormat::DebeziumJson => encode(&ValueFormat::Text(TextFormat::Json), batch),
        ValueFormat::Avro(_) => {
            // The bare datum of the batch's own columns (a writer encodes with the
            // table's schema, Confluent-framed when registered: `Encoder::avro`).
            let plain = super::avro::AvroFormat { registry: None };
            super::avro::AvroEncoder::new("avro", "avro", &batch.schema(), &plain, String::new())?
                .encode(batch)
        }
        ValueFormat::Raw => {
            let col = batch.column(0);
            let mut out = Vec::with_capacity(rows);
            for i in 0..rows {
                out.push(match col.data_type() {
                    DataType::Binary => col.as_binary::<i32>().value(i).to_vec(),
                    DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes().to_vec(),
                    _ => datafusion::arrow::util::display::array_value_to_string(col, i)?
                        .into_bytes(),
                });
            }
            Ok(out)
        }
        ValueFormat::Text(TextFormat::Json) => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(batch)?;
                w.finish()?;
            }
            // JSON escapes newlines inside values: one line per row.
            Ok(buf
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect())
        }
        ValueFormat::Text(TextFormat::Csv(o)) => {
            let mut out = Vec::with_capacity(rows);
            for i in 0..rows {
                let mut buf = Vec::new();
                {
                    let mut w = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .with_delimiter(o.delimiter)
                        .build(&mut buf);
                    w.write(&batch.slice(i, 1))?;
                }
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                out.push(buf);
            }
            Ok(out)
        }
    }
}

/// A producer writing a table's rows; `flush` waits for every acknowledgement.
/// Counts a producer's unacknowledged records and keeps the first delivery error (the
/// delivery callback runs on the producer's polling thread: no future per record).
#[derive(Default)]
struct Deliveries {
    pending: std::sync::atomic::AtomicU64,
    error: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.error
                .lock()
                .expect("delivery error lock")
                .get_or_insert_with(|| e.to_string());
        }
        self.pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub struct KafkaWriter {
    options: KafkaSinkOptions,
    producer: Arc<ThreadedProducer<Deliveries>>,
    encoder: Encoder,
    transactional: bool,
    in_transaction: bool,
    started: tokio::time::Instant,
    written: u64,
}

impl KafkaWriter {
    /// A writer for subtask `subtask`; transactional ids are `<prefix>-<subtask>`.
    pub fn new(options: &KafkaSinkOptions, subtask: usize) -> Result<Self> {
        let id = options
            .exactly_once()
            .then(|| format!("{}-{subtask}", options.transactional_id_prefix));
        Self::with_transactional_id(options, id)
    }

    /// A writer whose records go in transactions of `transactional_id` when set.
    /// Creating it fences any earlier producer with that id (its open transaction is
    /// aborted).
    fn with_transactional_id(
        options: &KafkaSinkOptions,
        transactional_id: Option<String>,
    ) -> Result<Self> {
        let mut config = options.producer_config();
        let transactional = transactional_id.is_some();
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let producer: ThreadedProducer<Deliveries> = config
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka_error(&options.table, "cannot create a producer", e))?;
        if transactional {
            producer
                .init_transactions(Duration::from_secs(30))
                .map_err(|e| kafka_error(&options.table, "cannot start transactions", e))?;
        }
        Ok(Self {
            encoder: Encoder {
                format: options.format.clone(),
                key_columns: options.key_columns.clone(),
                key_format: options.key_format.clone(),
                value_columns: options.value_columns.clone(),
                avro: match &options.format {
                    ValueFormat::Avro(f) => Some(super::avro::SinkAvro::new(
                        &options.table,
                        &options.topic,
                        &options.schema,
                        // Avro keys unless `key.format` encodes them.
                        if options.key_format.is_some() {
                            &[]
                        } else {
                            &options.key_columns
                        },
                        f,
                    )?),
                    _ => None,
                },
            },
            options: options.clone(),
            producer: Arc::new(producer),
            transactional,
            in_transaction: false,
            started: tokio::time::Instant::now(),
            written: 0,
        })
    }

    /// The first delivery error, as this table's error.
    fn delivery_error(&self) -> Result<()> {
        match self
            .producer
            .context()
            .error
            .lock()
            .expect("delivery error lock")
            .as_ref()
        {
            Some(e) => Err(kafka_error(
                &self.options.table,
                format!("writing to topic '{}'", self.options.topic),
                e,
            )),
            None => Ok(()),
        }
    }

    fn pending(&self) -> u64 {
        self.producer
            .context()
            .pending
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends the rows of `batch`; rows where `tombstone` is true are sent as a key with
    /// no value (a delete, for compacted topics and upsert readers), or with
    /// `debezium-json`, as delete events of the row.
    pub async fn write(&mut self, batch: &RecordBatch, tombstone: Option<&[bool]>) -> Result<u64> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        if self.transactional && !self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| kafka_error(&self.options.table, "cannot begin a transaction", e))?;
            self.in_transaction = true;
        }
        if let Some(a) = &mut self.encoder.avro {
            a.ready().await?;
        }
        let change_events = matches!(self.options.format, ValueFormat::DebeziumJson);
        let values = if change_events {
            self.encoder.change_events(batch, tombstone)?
        } else {
            self.encoder.values(batch)?
        };
        let keys = self.encoder.keys(batch)?;
        let topic = self.options.topic.clone();
        for (i, value) in values.iter().enumerate() {
            if let Some(limit) = self.options.rate_limit {
                // Pace: the n-th record goes out no earlier than n / limit seconds in.
                let due = Duration::from_secs_f64(self.written as f64 / limit as f64);
                let elapsed = self.started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic);
            if change_events || !tombstone.is_some_and(|t| t[i]) {
                record = record.payload(value.as_slice());
            }
            if let Some(k) = &keys {
                record = record.key(k[i].as_slice());
            }
            let deliveries = &self.producer.context().pending;
            deliveries.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        // librdkafka's queue bounds the unacknowledged records: wait for
                        // the polling thread to drain some.
                        record = r;
                        self.delivery_error()?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        deliveries.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        return Err(kafka_error(
                            &self.options.table,
                            format!("writing to topic '{}'", self.options.topic),
                            e,
                        ));
                    }
                }
            }
            self.written += 1;
        }
        self.delivery_error()?;
        Ok(values.len() as u64)
    }

    /// Waits until every record sent so far is acknowledged (and, when transactional,
    /// commits the open transaction).
    pub async fn flush(&mut self) -> Result<()> {
        self.flush_with_marker(None).await
    }

    /// [`KafkaWriter::flush`]; a transaction also commits `marker`'s offsets for its
    /// consumer group, atomically with the records.
    async fn flush_with_marker(
        &mut self,
        marker: Option<(TopicPartitionList, rdkafka::consumer::ConsumerGroupMetadata)>,
    ) -> Result<()> {
        while self.pending() > 0 {
            self.delivery_error()?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.delivery_error()?;
        if let (true, Some((offsets, group))) = (self.in_transaction, marker) {
            let producer = self.producer.clone();
            let table = self.options.table.clone();
            tokio::task::spawn_blocking(move || {
                producer
                    .send_offsets_to_transaction(&offsets, &group, Duration::from_secs(60))
                    .map_err(|e| kafka_error(&table, "cannot record the commit marker", e))
            })
            .await
            .map_err(|e| {
                kafka_error(&self.options.table, "cannot record the commit marker", e)
            })??;
        }
        if self.in_transaction {
            let producer = self.producer.clone();
            let table = self.options.table.clone();
            tokio::task::spawn_blocking(move || {
                producer
                    .commit_transaction(Duration::from_secs(60))
                    .map_err(|e| kafka_error(&table, "cannot commit the transaction", e))
            })
            .await
            .map_err(|e| kafka_error(&self.options.table, "cannot commit the transaction", e))??;
            self.in_transaction = false;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

/// The column after a table's columns in the records an exactly-once stream sink keeps
/// in a checkpoint: true for a tombstone (a delete of the row's key).
pub const TOMBSTONE_COLUMN: &str = "__tombstone";

/// The records of `rows` as an exactly-once stream sink keeps them until its checkpoint
/// is complete: the rows followed by a [`TOMBSTONE_COLUMN`].
pub fn pending_records(rows: &RecordBatch, tombstone: Option<&[bool]>) -> Result<RecordBatch> {
    let flags: BooleanArray = match tombstone {
        Some(t) => t.iter().map(|b| Some(*b)).collect(),
        None => BooleanArray::from(vec![false; rows.num_rows()]),
    };
    let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        TOMBSTONE_COLUMN,
        DataType::Boolean,
        false,
    )));
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(flags));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// One checkpoint's records committed to a topic (or found committed already).
#[derive(Debug, Clone)]
pub struct KafkaCommit {
    pub table: String,
    pub topic: String,
    pub checkpoint_id: u64,
    pub records: u64,
    /// An earlier run had committed this checkpoint's transaction: nothing was sent.
    pub already_committed: bool,
}

/// Keeps `c` to what Kafka accepts in transactional ids and group ids.
fn client_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Produces the records sink `sink_id` of job `job_id` kept in complete checkpoint
/// `checkpoint_id` (batches from [`pending_records`], in order) in one transaction.
///
/// The transaction also commits, for the consumer group `<prefix>-<job>-<sink>`,
/// offset `checkpoint_id` on partition 0 of the topic: the commit marker. Before
/// producing, the marker is read; when it is at `checkpoint_id` or beyond, this
/// checkpoint's transaction was committed by an earlier run and nothing is sent. A
/// crash at any point therefore neither loses nor duplicates a record: the records are
/// in the checkpoint until the marker says they are in the topic, and the
/// transactional id (`<prefix>-<job>-<sink>`) fences a crashed run's producer, aborting
/// the transaction it left open.
pub async fn commit_checkpoint(
    options: &KafkaSinkOptions,
    job_id: &str,
    sink_id: &str,
    checkpoint_id: u64,
    pending: &[RecordBatch],
) -> Result<KafkaCommit> {
    let mut commit = KafkaCommit {
        table: options.table.clone(),
        topic: options.topic.clone(),
        checkpoint_id,
        records: 0,
        already_committed: false,
    };
    let records: usize = pending.iter().map(|b| b.num_rows()).sum();
    if records == 0 {
        return Ok(commit);
    }
    let name = client_id_part(&format!(
        "{}-{job_id}-{sink_id}",
        options.transactional_id_prefix
    ));
    let table = options.table.clone();
    let topic = options.topic.clone();
    let mut config = options.producer_config();
    config
        .set("group.id", &name)
        .set("enable.auto.commit", "false");
    for k in [
        "enable.idempotence",
        "linger.ms",
        "message.timeout.ms",
        "transactional.id",
        "acks",
        "compression.type",
        "batch.size",
    ] {
        config.remove(k);
    }
    let (committed, group) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| kafka_error(&table, "cannot create the commit marker's consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let offsets = consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .map_err(|e| kafka_error(&table, "cannot read the commit marker", e))?;
        let committed = match offsets.elements().first().map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => Some(n as u64),
            _ => None,
        };
        let group = consumer.group_metadata().ok_or_else(|| {
            kafka_error(&table, "cannot read the commit marker", "no group metadata")
        })?;
        Ok::<_, ConnectorError>((committed, group))
    })
    .await
    .map_err(|e| kafka_error(&options.table, "cannot read the commit marker", e))??;
    if committed.is_some_and(|c| c >= checkpoint_id) {
        commit.already_committed = true;
        return Ok(commit);
    }
    let opts = options.clone();
    let id = name.clone();
    let mut writer =
        tokio::task::spawn_blocking(move || KafkaWriter::with_transactional_id(&opts, Some(id)))
            .await
            .map_err(|e| kafka_error(&options.table, "cannot create a producer", e))??;
    for batch in pending {
        let flag = batch.num_columns() - 1;
        let tombstones: Vec<bool> = batch
            .column(flag)
            .as_boolean()
            .iter()
            .map(|b| b.unwrap_or(false))
            .collect();
        let mut rows = batch.clone();
        rows.remove_column(flag);
        commit.records += writer.write(&rows, Some(&tombstones)).await?;
    }
    let mut marker = TopicPartitionList::new();
    marker
        .add_partition_offset(&options.topic, 0, Offset::Offset(checkpoint_id as i64))
        .map_err(|e| kafka_error(&options.table, "cannot record the commit marker", e))?;
    writer.flush_with_marker(Some((marker, group))).await?;
    Ok(commit)
}

/// Batch mode's sink: all rows through one writer, flushed (or committed) at the end.
#[derive(Debug)]
pub struct KafkaSink {
    /// The table's definition (rebuilds the sink in another process).
    pub(crate) def: Arc<TableDef>,
    options: KafkaSinkOptions,
}

impl KafkaSink {
    pub(crate) fn try_new(def: &TableDef, options: &KafkaOptions) -> Result<Self> {
        Ok(Self {
            def: Arc::new(def.clone()),
            options: KafkaSinkOptions::parse(def, options)?,
        })
    }

    pub fn into_exec(self, input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(DataSinkExec::new(input, Arc::new(self), None))
    }
}

impl DisplayAs for KafkaSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "KafkaSink: table={}, topic={}",
            self.options.table, self.options.topic
        )
    }
}

#[async_trait]
impl DataSink for KafkaSink {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> &SchemaRef {
        &self.options.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let options = self.options.clone();
        let mut writer = tokio::task::spawn_blocking(move || KafkaWriter::new(&options, 0))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        let mut rows = 0;
        while let Some(batch) = data.next().await {
            rows += writer.write(&batch?, None).await?;
        }
        writer.flush().await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn debezium_values_are_create_and_delete_events() {
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            Field::new("page", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec!["a", "a"])),
                Arc::new(datafusion::arrow::array::Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let encoder = Encoder {
            format: ValueFormat::DebeziumJson,
            key_columns: vec![],
            key_format: None,
            value_columns: None,
            avro: None,
        };
        let events: Vec<String> = encoder
            .change_events(&batch, Some(&[true, false]))
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect();
        assert_eq!(
            events,
            vec![
                r#"{"before":{"page":"a","n":1},"after":null,"op":"d"}"#,
                r#"{"before":null,"after":{"page":"a","n":2},"op":"c"}"#,
            ]
        );
    }

    #[test]
    fn rows_encode_one_message_each() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a\nb"), None])),
            ],
        )
        .unwrap();
        let json = encode(&ValueFormat::Text(TextFormat::Json), &batch).unwrap();
        assert_eq!(
            json,
            vec![br#"{"id":1,"s":"a\nb"}"#.to_vec(), br#"{"id":2}"#.to_vec()]
        );
        let csv = encode(
            &ValueFormat::Text(TextFormat::Csv(Default::default())),
            &batch,
        )
        .unwrap();
        assert_eq!(csv, vec![b"1,\"a\nb\"".to_vec(), b"2,".to_vec()]);
        let raw = encode(&ValueFormat::Raw, &batch.project(&[1]).unwrap().slice(0, 1)).unwrap();
        assert_eq!(raw, vec![b"a\nb".to_vec()]);
    }
}
