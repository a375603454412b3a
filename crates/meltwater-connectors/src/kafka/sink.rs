//! Writing a `kafka` table: rows encoded with the value format, keyed by the table's
//! primary key (when it has one) so the default partitioner sends a key's rows to one
//! partition, at most `sink.rate-limit` records a second per writer.
//!
//! `'sink.delivery-guarantee'`: `at-least-once` (default: every record is acknowledged
//! before a checkpoint or the end of a batch statement completes) or `exactly-once`
//! (batch mode: the statement's records are one transaction, committed when it ends, so
//! a failed statement leaves nothing a `read_committed` consumer sees).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, SendableRecordBatchStream,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

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
    /// Columns of the key (the primary key); empty: records have no key.
    key_columns: Vec<usize>,
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
        let key_columns = def
            .primary_key
            .iter()
            .map(|k| def.schema.index_of(k))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if let ValueFormat::Raw = options.format {
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
            guarantee,
            transactional_id_prefix: o
                .get("sink.transactional-id-prefix")
                .unwrap_or(&format!("meltwater-{}", def.name))
                .to_string(),
            rate_limit,
        })
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
}

impl Encoder {
    /// One encoded value per row.
    fn values(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        encode(&self.format, batch)
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Option<Vec<Vec<u8>>>> {
        if self.key_columns.is_empty() {
            return Ok(None);
        }
        let keys = batch.project(&self.key_columns)?;
        encode(&self.format, &keys).map(Some)
    }
}

fn encode(format: &ValueFormat, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let rows = batch.num_rows();
    match format {
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
pub struct KafkaWriter {
    options: KafkaSinkOptions,
    producer: FutureProducer,
    encoder: Encoder,
    in_flight: FuturesUnordered<DeliveryFuture>,
    transactional: bool,
    in_transaction: bool,
    started: tokio::time::Instant,
    written: u64,
}

impl KafkaWriter {
    /// A writer for subtask `subtask`; transactional ids are `<prefix>-<subtask>`.
    pub fn new(options: &KafkaSinkOptions, subtask: usize) -> Result<Self> {
        let mut config = options.producer_config();
        let transactional = options.guarantee == DeliveryGuarantee::ExactlyOnce;
        if transactional {
            config.set(
                "transactional.id",
                format!("{}-{subtask}", options.transactional_id_prefix),
            );
        }
        let producer: FutureProducer = config
            .create()
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
            },
            options: options.clone(),
            producer,
            in_flight: FuturesUnordered::new(),
            transactional,
            in_transaction: false,
            started: tokio::time::Instant::now(),
            written: 0,
        })
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(r) = self.in_flight.next().await {
            let table = &self.options.table;
            let topic = &self.options.topic;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(kafka_error(table, format!("writing to topic '{topic}'"), e))
                }
                Err(_) => {
                    return Err(kafka_error(
                        table,
                        format!("writing to topic '{topic}'"),
                        "the producer was dropped",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Sends the rows of `batch`; rows where `tombstone` is true are sent as a key with
    /// no value (a delete, for compacted topics and upsert readers).
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
        let values = self.encoder.values(batch)?;
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
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
            if !tombstone.is_some_and(|t| t[i]) {
                record = record.payload(value.as_slice());
            }
            if let Some(k) = &keys {
                record = record.key(k[i].as_slice());
            }
            let mut record = record;
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.in_flight.push(delivery);
                        break;
                    }
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        record = r;
                        if self.in_flight.is_empty() {
                            self.producer
                                .poll(Timeout::After(Duration::from_millis(10)));
                        } else {
                            self.settle_one().await?;
                        }
                    }
                    Err((e, _)) => {
                        return Err(kafka_error(
                            &self.options.table,
                            format!("writing to topic '{}'", self.options.topic),
                            e,
                        ))
                    }
                }
            }
            self.written += 1;
        }
        // Keep the number of unacknowledged records bounded.
        while self.in_flight.len() > 100_000 {
            self.settle_one().await?;
        }
        Ok(values.len() as u64)
    }

    /// Waits until every record sent so far is acknowledged (and, when transactional,
    /// commits the open transaction).
    pub async fn flush(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
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

/// Batch mode's sink: all rows through one writer, flushed (or committed) at the end.
#[derive(Debug)]
pub struct KafkaSink {
    options: KafkaSinkOptions,
}

impl KafkaSink {
    pub(crate) fn try_new(def: &TableDef, options: &KafkaOptions) -> Result<Self> {
        Ok(Self {
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
