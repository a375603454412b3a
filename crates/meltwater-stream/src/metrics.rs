//! Live counters of a running job, per operator: what the status line shows and what a
//! future web UI will read.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One operator's counters, summed over its subtasks.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    pub id: String,
    pub name: String,
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    /// Time spent waiting on a full output channel (backpressure from downstream).
    pub backpressure_ns: AtomicU64,
    /// How often a send found the channel full.
    pub backpressure_events: AtomicU64,
    pub late_records: AtomicU64,
    /// State bytes spilled to local files over the memory budget.
    pub spilled_bytes: AtomicU64,
}

/// What the status line shows about checkpoints.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStatus {
    pub id: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub completed_at: Option<std::time::Instant>,
}

#[derive(Debug)]
pub struct JobMetrics {
    pub operators: Vec<Arc<OperatorMetrics>>,
    /// The lowest watermark among source subtasks (ms), `i64::MIN` before any.
    pub watermark: AtomicI64,
    pub checkpoints_completed: AtomicU64,
    pub last_checkpoint: Mutex<Option<CheckpointStatus>>,
}

impl JobMetrics {
    pub fn new(ops: &[(String, String)]) -> Self {
        Self {
            operators: ops
                .iter()
                .map(|(id, name)| {
                    Arc::new(OperatorMetrics {
                        id: id.clone(),
                        name: name.clone(),
                        ..Default::default()
                    })
                })
                .collect(),
            watermark: AtomicI64::new(i64::MIN),
            checkpoints_completed: AtomicU64::new(0),
            last_checkpoint: Mutex::new(None),
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
