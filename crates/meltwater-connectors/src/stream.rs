//! Connectors as streaming sources: a source is a set of **splits** (a file, a range of
//! generated rows, a Kafka partition), each read in order from a **position** that a
//! checkpoint records, so a restarted job resumes every split where the checkpoint left
//! it. Splits are owned by source subtasks; the split ids are stable across runs and
//! parallelism changes, so a checkpoint's positions can be handed to any subtask.

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::Result;

/// A unit of a source read by one subtask at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Split {
    /// Stable across runs: a file's absolute path, `rows-3-of-4` for datagen, ...
    pub id: String,
}

/// Where a split's reader is: records of the split emitted so far. Resuming at `n`
/// emits the split's records from the `n`-th (0-based) on.
pub type SplitPosition = u64;

/// A source in stream mode.
#[async_trait]
pub trait StreamSource: Send + Sync + std::fmt::Debug {
    /// The schema of the batches readers return (after projection; a changelog
    /// source's batches end with the op column, see [`StreamSource::changelog`]).
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef;

    /// Whether the source emits an updating stream (`debezium-json`): every batch
    /// ends with [`crate::changelog::OP_COLUMN`], each row's kind.
    fn changelog(&self) -> bool {
        false
    }

    /// The splits that exist now. Sources that watch for new data (a monitored
    /// directory) return more splits on later calls; each call returns all of them.
    async fn discover_splits(&self) -> Result<Vec<Split>>;

    /// How often to call [`StreamSource::discover_splits`] again; `None` when the
    /// split set is fixed (the source ends once its splits are read).
    fn discovery_interval_ms(&self) -> Option<u64>;

    /// What split discovery needs to resume after a restart besides the splits' own
    /// positions (e.g. the table snapshot an incremental read started from); stored in
    /// every checkpoint. `Null` when discovery keeps no state.
    fn enumerator_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores [`StreamSource::enumerator_state`] from a checkpoint, before the first
    /// discovery.
    fn restore_enumerator(&self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint_id` is complete (and its sinks committed); `positions` are
    /// the positions it holds for this source's splits. For monitoring and hand-over
    /// only (Kafka commits them as consumer-group offsets): a restart resumes from the
    /// checkpoint, never from what this records.
    async fn checkpoint_complete(
        &self,
        _checkpoint_id: u64,
        _positions: &std::collections::BTreeMap<String, SplitPosition>,
    ) -> Result<()> {
        Ok(())
    }

    /// Opens a split at a position.
    async fn open(
        &self,
        split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Box<dyn SplitReader>>;
}

/// Reads one split.
#[async_trait]
pub trait SplitReader: Send {
    /// The next batch and the position after it; `None` when the split is exhausted
    /// (never, for an unbounded split). Unbounded rate-limited splits wait inside.
    /// Batches hold at most the `batch_size` the split was opened with and at least one
    /// row. Once it has returned `None` it keeps returning `None`.
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>>;
}
