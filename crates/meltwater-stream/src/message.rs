//! What flows on an edge of the dataflow: data, and in band with it, watermarks,
//! watermark status (idle or active), checkpoint barriers and the end of the stream.

use datafusion::arrow::array::RecordBatch;

/// Event time in milliseconds since the epoch.
pub type EventTime = i64;

/// The watermark before any source has produced one.
pub const MIN_WATERMARK: EventTime = i64::MIN;

#[derive(Debug, Clone)]
pub enum Message {
    Data(RecordBatch),
    /// No row with an event time at or below this will follow on this edge (rows that
    /// do are late).
    Watermark(EventTime),
    /// The upstream subtask stopped (`Idle`) or resumed (`Active`) holding the watermark
    /// back: while an edge is idle its watermark is left out of the receiver's combined
    /// watermark. Data and barriers still flow on an idle edge.
    Status(WatermarkStatus),
    /// Checkpoint `n`: everything before it on this edge belongs to checkpoint `n`.
    Barrier(u64),
    /// The upstream subtask finished (bounded input exhausted and flushed).
    End,
}

/// Whether an edge's watermark counts (Flink's `WatermarkStatus`). Every edge starts
/// active; a source subtask turns idle when it reads no split (none assigned yet, or all
/// of them idle for `table.exec.source.idle-timeout`) and active again before it emits
/// anything else; an operator turns idle when all its inputs that have not ended are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStatus {
    Active,
    Idle,
}
