//! `run --mode stream`, `explain --mode stream` and `checkpoints`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use meltwater_plan::PlannedJob;
use meltwater_state::{CheckpointStore, StorageLocation, StorageProfiles};
use meltwater_stream::metrics::JobMetrics;
use meltwater_stream::{StreamOptions, StreamPlan};

use crate::report::{count, plural, size};

/// Where checkpoints go unless `SET 'execution.checkpointing.dir'` says otherwise.
pub const DEFAULT_CHECKPOINT_DIR: &str = "meltwater-data/checkpoints";

/// The stream options of a planned job, the catalog file's storage profiles and the
/// command line. The checkpoint locations are checked here (a misspelt profile, an unset
/// credential variable), before the job starts.
pub fn options(
    job: &PlannedJob,
    storage: StorageProfiles,
    checkpoint_dir: Option<&str>,
    from_checkpoint: Option<&str>,
    fresh: bool,
) -> Result<StreamOptions> {
    let mut o =
        StreamOptions::from_settings(&job.identity.job_id, &job.settings, DEFAULT_CHECKPOINT_DIR)
            .map_err(|e| anyhow!("{}: {e}", job.file))?;
    if let Some(d) = checkpoint_dir {
        o.checkpoint_dir = d.to_string();
    }
    o.storage = storage;
    o.from_checkpoint = from_checkpoint.map(str::to_string);
    o.resume = !fresh;
    // Fault injection for recovery tests.
    let checkpoint_var = |name: &str| -> Result<Option<u64>> {
        match std::env::var(name) {
            Ok(v) => {
                Ok(Some(v.parse().map_err(|_| {
                    anyhow!("{name}={v}: expected a checkpoint number")
                })?))
            }
            Err(_) => Ok(None),
        }
    };
    o.abort_before_commit = checkpoint_var("MELTWATER_ABORT_BEFORE_COMMIT")?;
    o.abort_after_commit = checkpoint_var("MELTWATER_ABORT_AFTER_COMMIT")?;
    CheckpointStore::open(&o.checkpoint_dir, &o.storage).map_err(|e| anyhow!(e.to_string()))?;
    if let Some(from) = &o.from_checkpoint {
        StorageLocation::open(from, &o.storage).map_err(|e| anyhow!(e.to_string()))?;
    }
    Ok(o)
}

/// The checkpoint store as users read it: a `profile:<name>` resolved to its URL.
pub fn checkpoint_location(opts: &StreamOptions) -> String {
    match CheckpointStore::open(&opts.checkpoint_dir, &opts.storage) {
        Ok(store) if store.root().to_string() != opts.checkpoint_dir => {
            format!("{} ({})", store.root(), opts.checkpoint_dir)
        }
        _ => opts.checkpoint_dir.clone(),
    }
}

/// A `print` or `blackhole` sink of a running job and its counters.
pub struct ConnectorSink {
    pub target: String,
    pub connector: &'static str,
    pub metrics: Arc<meltwater_stream::metrics::OperatorMetrics>,
}

impl ConnectorSink {
    /// Rows the sink received so far (every subtask).
    pub fn rows(&self) -> u64 {
        JobMetrics::get(&self.metrics.rows_in)
    }
}

/// The `print` and `blackhole` sinks of `plan`, whose rows the summary reports (Iceberg
/// sinks report their commits instead).
pub fn connector_sinks(plan: &StreamPlan, metrics: &JobMetrics) -> Vec<ConnectorSink> {
    use meltwater_stream::graph::{NodeKind, SinkKind};
    plan.graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let NodeKind::Sink { target, kind } = &n.kind else {
                return None;
            };
            let connector = match kind {
                SinkKind::Print { .. } => "print",
                SinkKind::Blackhole => "blackhole",
                _ => return None,
            };
            Some(ConnectorSink {
                target: target.clone(),
                connector,
                metrics: metrics.operators[i].clone(),
            })
        })
        .collect()
}

/// The dataflow as `explain --mode stream` prints it.
pub fn explain(plan: &StreamPlan) -> String {
    plan.graph.to_string()
}

/// Stops the job on SIGINT or SIGTERM: the first asks for a final checkpoint (committed)
/// and then stops, so the next run resumes exactly there; a second stops at once (the
/// next run resumes from the last complete checkpoint).
pub fn spawn_stop_on_signals(stop: meltwater_stream::StopSignal) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            if wait_for_signal().await.is_err() {
                return;
            }
            if first {
                eprintln!("stopping: taking a checkpoint and committing it first (signal again to stop at once)");
                stop.stop_after_checkpoint();
                first = false;
            } else {
                eprintln!("stopping now");
                stop.stop();
                return;
            }
        }
    })
}

/// Resolves on the next SIGINT or SIGTERM.
async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Prints a status line every `every` on stderr: rows/s in and out, watermark lag, the
/// last checkpoint, state spilled to disk and backpressured operators.
pub fn spawn_status(
    plan: &StreamPlan,
    metrics: Arc<JobMetrics>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let sources: Vec<usize> = plan
        .graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.kind.is_source())
        .map(|(i, _)| i)
        .collect();
    let sinks: Vec<usize> = plan
        .graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, meltwater_stream::graph::NodeKind::Sink { .. }))
        .map(|(i, _)| i)
        .collect();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last_in = 0u64;
        let mut last_out = 0u64;
        let mut last_bp: Vec<u64> = vec![0; metrics.operators.len()];
        loop {
            tokio::time::sleep(every).await;
            let rin: u64 = sources
                .iter()
                .map(|i| JobMetrics::get(&metrics.operators[*i].rows_out))
                .sum();
            let rout: u64 = sinks
                .iter()
                .map(|i| JobMetrics::get(&metrics.operators[*i].rows_in))
                .sum();
            let secs = every.as_secs_f64();
            let wm = metrics.watermark.load(Ordering::Relaxed);
            let lag = if wm == i64::MIN {
                "no watermark yet".to_string()
            } else {
                let now = chrono::Utc::now().timestamp_millis();
                format!("watermark lag {:.1} s", (now - wm) as f64 / 1000.0)
            };
            let ckpt = match metrics.last_checkpoint.lock().ok().and_then(|c| c.clone()) {
                Some(c) => format!(
                    "checkpoint {} ({} ms, {}, {:.0} s ago)",
                    c.id,
                    c.duration_ms,
                    size(c.bytes),
                    c.completed_at
                        .map(|t| t.elapsed().as_secs_f64())
                        .unwrap_or(0.0)
                ),
                None => "no checkpoint yet".into(),
            };
            let mut bp = Vec::new();
            for (i, op) in metrics.operators.iter().enumerate() {
                let ns = JobMetrics::get(&op.backpressure_ns);
                let delta = ns - last_bp[i];
                last_bp[i] = ns;
                if delta as f64 > every.as_nanos() as f64 * 0.1 {
                    bp.push(format!(
                        "{} {:.0}%",
                        op.id,
                        100.0 * delta as f64 / every.as_nanos() as f64
                    ));
                }
            }
            let spilled: u64 = metrics
                .operators
                .iter()
                .map(|op| JobMetrics::get(&op.spilled_bytes))
                .sum();
            let spilled = if spilled > 0 {
                format!(", spilled {}", size(spilled))
            } else {
                String::new()
            };
            eprintln!(
                "… {:.0} s: in {} rows/s, out {} rows/s (total {} in, {} out), {lag}, {ckpt}{spilled}{}",
                started.elapsed().as_secs_f64(),
                count(((rin - last_in) as f64 / secs) as u64),
                count(((rout - last_out) as f64 / secs) as u64),
                count(rin),
                count(rout),
                if bp.is_empty() {
                    String::new()
                } else {
                    format!(", backpressured: {}", bp.join(", "))
                }
            );
            last_in = rin;
            last_out = rout;
        }
    })
}

/// `meltwater checkpoints JOB`: the job's complete checkpoints.
pub async fn list_checkpoints(job: &PlannedJob, opts: &StreamOptions) -> Result<()> {
    let store = CheckpointStore::open(&opts.checkpoint_dir, &opts.storage)
        .map_err(|e| anyhow!(e.to_string()))?;
    let list = store
        .list(&job.identity.job_id)
        .await
        .map_err(|e| anyhow!(e.to_string()))?;
    println!(
        "job {}: {} in {}",
        job.identity.job_id,
        plural(list.len() as u64, "complete checkpoint"),
        store.job_dir(&job.identity.job_id)
    );
    if list.is_empty() {
        return Ok(());
    }
    println!(
        "{:>6}  {:<32}  {:>10}  {:>9}  {:>9}  path",
        "id", "triggered", "size", "duration", "operators"
    );
    for m in list {
        println!(
            "{:>6}  {:<32}  {:>10}  {:>7} ms  {:>9}  {}",
            m.checkpoint_id,
            m.triggered_at,
            size(m.size_bytes()),
            m.duration_ms,
            m.operators.len(),
            m.dir.as_ref().map(|d| d.to_string()).unwrap_or_default()
        );
    }
    Ok(())
}
