//! The operator contract: what every node of a [`crate::graph::StreamGraph`] does when
//! data, a watermark, a checkpoint barrier or the end of its input arrives.
//!
//! Operators are synchronous where they only compute (projection, aggregates) and async
//! where they do I/O (sinks); the runtime drives each subtask's chain of operators on
//! one task and moves batches between chained operators without channels.

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::error::Result;
use meltwater_state::KeyGroupRange;

use crate::message::EventTime;

/// Where an operator subtask sits in the job.
#[derive(Debug, Clone)]
pub struct SubtaskInfo {
    /// The operator's stable id (`agg#3`, or the user's hint).
    pub operator_id: String,
    pub index: usize,
    pub parallelism: usize,
    pub key_groups: u16,
}

impl SubtaskInfo {
    /// The key groups this subtask owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        KeyGroupRange::of_subtask(self.index, self.key_groups, self.parallelism)
    }
}

/// What an operator stores in a checkpoint.
#[derive(Debug, Default)]
pub struct OperatorSnapshot {
    /// Keyed state: each batch starts with a `__key_group` UInt16 column
    /// ([`meltwater_state::KEY_GROUP_COLUMN`]) followed by whatever columns the operator
    /// needs; on restore a subtask receives the rows of its key groups, from every old
    /// subtask, with that column removed.
    pub keyed: Vec<RecordBatch>,
    /// Non-keyed state as JSON (on restore every subtask receives every old subtask's value).
    pub state: serde_json::Value,
}

/// State handed to an operator before it processes anything after a restart.
#[derive(Debug, Default)]
pub struct RestoredState {
    /// Rows of this subtask's key groups (key-group column removed).
    pub keyed: Vec<RecordBatch>,
    /// The non-keyed state of every subtask of the checkpoint, in subtask order.
    pub states: Vec<serde_json::Value>,
}

/// Counters an operator keeps besides rows in and out (which the runtime counts).
#[derive(Debug, Default, Clone, Copy)]
pub struct OperatorCounters {
    /// Records dropped because they arrived after the watermark passed their window.
    pub late_records: u64,
    /// State bytes written to local spill files (over the operator's memory budget).
    pub spilled_bytes: u64,
}

/// Collects an operator's output, and its side output: the input rows a window
/// aggregate found late, when its graph node has a side-output consumer.
#[derive(Debug, Default)]
pub struct Output {
    pub batches: Vec<RecordBatch>,
    pub late: Vec<RecordBatch>,
}

impl Output {
    pub fn push(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }
    /// Adds late input rows to the side output.
    pub fn push_late(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.late.push(batch);
        }
    }
    pub fn take(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.batches)
    }
    pub fn take_late(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.late)
    }
}

/// A dataflow operator (one instance per subtask).
#[async_trait]
pub trait Operator: Send {
    /// A short name for status lines and metrics.
    fn name(&self) -> String;

    /// Restores state from a checkpoint; called once before any input.
    async fn restore(&mut self, _state: RestoredState) -> Result<()> {
        Ok(())
    }

    /// Processes a batch from input `input` (0 for single-input operators).
    async fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Output) -> Result<()>;

    /// The combined watermark of the operator's inputs advanced to `watermark`: emit
    /// what it completes. Returns the watermark to forward downstream (usually the same).
    async fn on_watermark(&mut self, watermark: EventTime, _out: &mut Output) -> Result<EventTime> {
        Ok(watermark)
    }

    /// Checkpoint `checkpoint_id`'s barrier arrived on every input: store state.
    /// Output pushed here goes downstream before the barrier.
    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot::default())
    }

    /// Every input ended: flush what remains (the final watermark has already been
    /// delivered through [`Operator::on_watermark`] with `i64::MAX`).
    async fn finish(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn counters(&self) -> OperatorCounters {
        OperatorCounters::default()
    }
}
