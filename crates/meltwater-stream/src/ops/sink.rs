//! Sinks: the Iceberg two-phase sink, the collecting sink of queries, and the `print`
//! and `blackhole` connector sinks.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::error::{DataFusionError, Result};
use meltwater_connectors::print::{PrintOptions, PrintWriter};
use meltwater_iceberg::stream::{IcebergStreamWriter, PendingDataFile};
use meltwater_iceberg::IcebergTable;

pub use crate::changelog::materialize;
use crate::changelog::{split_ops, RowKind};
use crate::operator::{Operator, OperatorSnapshot, Output};

/// Writes a stream into an Iceberg table. Files written between two barriers are
/// closed on the barrier and listed in the checkpoint; the coordinator commits them
/// once the checkpoint is complete (exactly once: the snapshot records the job and
/// checkpoint id, and a replayed commit is skipped).
///
/// An upserting sink (an updating input, or a table with `'write.upsert' = 'true'`)
/// keeps each key's last change until the barrier, then writes equality deletes for
/// those keys and the rows of the keys still present; `+I`/`+U` rows upsert, `-U`/`-D`
/// rows delete. Its input is hash-partitioned by the primary key, so a key's changes
/// all reach one subtask, in order.
pub struct IcebergSinkOperator {
    table: Arc<IcebergTable>,
    subtask: usize,
    upsert: bool,
    /// The input carries the op column.
    updating: bool,
    writer: Option<IcebergStreamWriter>,
}

impl IcebergSinkOperator {
    pub fn new(table: Arc<IcebergTable>, subtask: usize, upsert: bool, updating: bool) -> Self {
        Self {
            table,
            subtask,
            upsert,
            updating,
            writer: None,
        }
    }

    async fn writer(&mut self) -> Result<&mut IcebergStreamWriter> {
        if self.writer.is_none() {
            let w = if self.upsert {
                IcebergStreamWriter::upsert(&self.table, self.subtask)
            } else {
                IcebergStreamWriter::try_new(&self.table, self.subtask).await
            }
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("writer opened above"))
    }
}

/// The sink's entry in a checkpoint: files to commit.
pub fn pending_files_state(files: &[PendingDataFile]) -> serde_json::Value {
    serde_json::json!({ "pending_files": files })
}

/// The files a sink subtask listed in a checkpoint.
pub fn pending_files_of(state: &serde_json::Value) -> Result<Vec<PendingDataFile>> {
    match state.get("pending_files") {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| DataFusionError::Execution(format!("checkpoint: bad sink state: {e}"))),
    }
}

#[async_trait]
impl Operator for IcebergSinkOperator {
    fn name(&self) -> String {
        format!("iceberg sink {}", self.table.name())
    }

    async fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        let updating = self.updating;
        let w = self.writer().await?;
        let done = if updating {
            let (rows, ops) = split_ops(&batch)?;
            let retract: BooleanArray = ops.iter().map(|k| Some(!k.is_accumulate())).collect();
            w.write_changes(&rows, &retract).await
        } else {
            w.write(&batch).await
        };
        done.map_err(|e| DataFusionError::External(Box::new(e)))
    }

    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        let files = match self.writer.as_mut() {
            Some(w) => w
                .prepare_commit()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            None => Vec::new(),
        };
        Ok(OperatorSnapshot {
            keyed: Vec::new(),
            state: pending_files_state(&files),
        })
    }
}

/// Keeps a query's output for the caller.
pub struct CollectSinkOperator {
    rows: Arc<Mutex<Vec<RecordBatch>>>,
}

impl CollectSinkOperator {
    pub fn new(rows: Arc<Mutex<Vec<RecordBatch>>>) -> Self {
        Self { rows }
    }
}

#[async_trait]
impl Operator for CollectSinkOperator {
    fn name(&self) -> String {
        "collect".into()
    }

    async fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        self.rows.lock().expect("collect sink lock").push(batch);
        Ok(())
    }
}

/// Writes each row of its input to stdout (or stderr) as Flink's print connector does:
/// `+I[...]`, or the row's kind from the op column of an updating stream (`-U[...]`,
/// `+U[...]`, `-D[...]`), prefixed with the subtask's number when the sink runs with
/// parallelism above 1. Every batch is written and flushed as it arrives. Not
/// exactly-once: after a restore, rows since the last checkpoint print again.
pub struct PrintSinkOperator {
    table: String,
    writer: PrintWriter,
    updating: bool,
}

impl PrintSinkOperator {
    /// Subtask `subtask` of `parallelism`; `updating` when the input carries the op column.
    pub fn new(
        table: &str,
        options: &PrintOptions,
        subtask: usize,
        parallelism: usize,
        updating: bool,
    ) -> Self {
        Self {
            table: table.to_string(),
            writer: PrintWriter::new(table, options, subtask, parallelism),
            updating,
        }
    }
}

#[async_trait]
impl Operator for PrintSinkOperator {
    fn name(&self) -> String {
        format!("print sink {}", self.table)
    }

    async fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        if self.updating {
            let (rows, ops) = split_ops(&batch)?;
            let kinds: Vec<&str> = ops.iter().map(|k| k.short()).collect();
            self.writer.write(&rows, Some(&kinds))
        } else {
            self.writer.write(&batch, None)
        }
    }
}

/// Discards its input; the runtime's metrics count the rows it received (the operator's
/// rows in), which the run's summary reports.
#[derive(Debug, Default)]
pub struct BlackholeSinkOperator;

#[async_trait]
impl Operator for BlackholeSinkOperator {
    fn name(&self) -> String {
        "blackhole sink".into()
    }

    async fn process(
        &mut self,
        _input: usize,
        _batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        Ok(())
    }
}

/// Produces its input to a kafka topic. An updating input upserts: `+I`/`+U` rows are
/// written, `-D` rows become tombstones of their key, `-U` rows are dropped (the `+U`
/// that follows replaces them); with `debezium-json` every change is an event (`+I`/`+U`
/// create, `-U`/`-D` delete).
///
/// - `at-least-once`: each batch is sent as it arrives and every record is acknowledged
///   before the checkpoint's barrier passes.
/// - `exactly-once`: the records are kept until the barrier and stored in the checkpoint
///   (keyed state, one key group); once the checkpoint is complete the coordinator
///   produces them in one transaction
///   ([`meltwater_connectors::kafka::commit_checkpoint`]), so a `read_committed` reader
///   sees each record once, after the checkpoint that covers it. A restored subtask
///   starts with nothing pending: the coordinator commits the restored checkpoint's
///   records before the job starts.
pub struct KafkaSinkOperator {
    options: meltwater_connectors::kafka::KafkaSinkOptions,
    subtask: usize,
    writer: Option<meltwater_connectors::kafka::KafkaWriter>,
    updating: bool,
    /// Exactly-once: records since the last barrier, with their tombstone column.
    pending: Vec<RecordBatch>,
}

impl KafkaSinkOperator {
    pub fn new(
        options: meltwater_connectors::kafka::KafkaSinkOptions,
        subtask: usize,
        updating: bool,
    ) -> Self {
        Self {
            options,
            subtask,
            writer: None,
            updating,
            pending: Vec::new(),
        }
    }

    async fn writer(&mut self) -> Result<&mut meltwater_connectors::kafka::KafkaWriter> {
        if self.writer.is_none() {
            let options = self.options.clone();
            let subtask = self.subtask;
            let w = tokio::task::spawn_blocking(move || {
                meltwater_connectors::kafka::KafkaWriter::new(&options, subtask)
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("created above"))
    }

    async fn flush(&mut self) -> Result<()> {
        if let Some(w) = &mut self.writer {
            w.flush()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        Ok(())
    }
}

/// The records a kafka sink subtask kept in a checkpoint for its transaction (key-group
/// column removed), in the order they arrived.
pub fn kafka_pending_of(keyed: Vec<RecordBatch>) -> Vec<RecordBatch> {
    keyed
        .into_iter()
        .map(|mut b| {
            if b.num_columns() > 0
                && b.schema().field(0).name() == meltwater_state::KEY_GROUP_COLUMN
            {
                b.remove_column(0);
            }
            b
        })
        .collect()
}

#[async_trait]
impl Operator for KafkaSinkOperator {
    fn name(&self) -> String {
        format!("kafka sink {}", self.options.table)
    }

    async fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        let (rows, tombstones) = if self.updating && self.options.change_events() {
            // Change events: every row, retractions as deletes.
            let (rows, ops) = split_ops(&batch)?;
            let retract: Vec<bool> = ops.iter().map(|k| !k.is_accumulate()).collect();
            (rows, Some(retract))
        } else if self.updating {
            let (rows, ops) = split_ops(&batch)?;
            let keep: Vec<bool> = ops.iter().map(|k| *k != RowKind::UpdateBefore).collect();
            let mask = BooleanArray::from(keep);
            let rows = datafusion::arrow::compute::filter_record_batch(&rows, &mask)?;
            let tombstones: Vec<bool> = ops
                .iter()
                .filter(|k| **k != RowKind::UpdateBefore)
                .map(|k| *k == RowKind::Delete)
                .collect();
            (rows, Some(tombstones))
        } else {
            (batch, None)
        };
        if self.options.exactly_once() {
            let records =
                meltwater_connectors::kafka::pending_records(&rows, tombstones.as_deref())
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
            self.pending.push(records);
            return Ok(());
        }
        let writer = self.writer().await?;
        writer
            .write(&rows, tombstones.as_deref())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        if self.options.exactly_once() {
            let mut keyed = Vec::with_capacity(self.pending.len());
            let mut records = 0;
            for b in std::mem::take(&mut self.pending) {
                records += b.num_rows();
                keyed.push(meltwater_state::with_key_groups(&b, vec![0; b.num_rows()])?);
            }
            return Ok(OperatorSnapshot {
                keyed,
                state: serde_json::json!({ "pending_records": records }),
            });
        }
        self.flush().await?;
        Ok(OperatorSnapshot::default())
    }

    async fn finish(&mut self, _out: &mut Output) -> Result<()> {
        // Exactly-once records wait for the final checkpoint.
        self.flush().await
    }
}
