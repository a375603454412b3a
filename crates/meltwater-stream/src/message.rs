//! What flows on an edge of the dataflow: data, and in band with it, watermarks,
//! checkpoint barriers and the end of the stream.

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
    /// Checkpoint `n`: everything before it on this edge belongs to checkpoint `n`.
    Barrier(u64),
    /// The upstream subtask finished (bounded input exhausted and flushed).
    End,
}
