//! Idle source subtasks: a monitored filesystem source at parallelism 2 over one file
//! has a subtask without any split. It must not hold the watermark back, or a window
//! downstream never fires while the job runs (it never ends by itself).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::util::display::array_value_to_string;
use meltwater_plan::{plan_job, JobOptions, Mode};
use meltwater_stream::graph::NodeKind;
use meltwater_stream::job::finish_query;
use meltwater_stream::metrics::JobMetrics;
use meltwater_stream::planner::QueryOutput;
use meltwater_stream::{plan_stream, run_plan, StreamOptions};

const DEADLINE: Duration = Duration::from_secs(30);

/// The query's rows so far, `window_start|user_id|n`, sorted.
fn rows(query: &QueryOutput) -> Vec<String> {
    let mut out = Vec::new();
    for b in finish_query(query).expect("the collected rows") {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).expect("a printable value"))
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

/// Waits until `done` holds, or fails after [`DEADLINE`] saying what `state` shows.
async fn wait_until(
    what: &str,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return Err(format!("timed out waiting for {what}; now: {}", state()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Writes a file under a hidden name and renames it, as a monitored directory expects.
fn publish(dir: &Path, name: &str, text: &str) {
    let hidden = dir.join(format!(".{name}.inprogress"));
    std::fs::write(&hidden, text).unwrap();
    std::fs::rename(&hidden, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_fire_while_a_source_subtask_has_no_split() {
    let data = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    publish(
        data.path(),
        "a.csv",
        "user_id,ts\n\
         1,2026-03-01 12:00:01\n\
         2,2026-03-01 12:00:02\n\
         1,2026-03-01 12:00:11\n\
         1,2026-03-01 12:00:25\n",
    );
    let text = format!(
        "CREATE TABLE clicks (
           user_id INT,
           ts TIMESTAMP(3),
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
         ) WITH (
           'connector' = 'filesystem',
           'path' = '{}',
           'format' = 'csv',
           'csv.header' = 'true',
           'source.monitor-interval' = '50 ms'
         );

         SELECT window_start, user_id, COUNT(*) AS n
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
         GROUP BY window_start, window_end, user_id;",
        data.path().display()
    );
    let file = meltwater_sql::parse_job("idle.sql", &text, &BTreeMap::new()).unwrap();
    let job = plan_job(
        &file,
        &JobOptions {
            mode: Mode::Stream,
            job_id: Some("idle".into()),
            run_id: "idle-1".into(),
            parallelism: Some(2),
            catalogs: Vec::new(),
            kafka: Vec::new(),
            create_tables: false,
            memory_limit: None,
            spill_dir: None,
        },
    )
    .await
    .unwrap();
    let plan = plan_stream(&job, 2).unwrap();
    // Two source subtasks over one file: one of them owns no split.
    let source = plan
        .graph
        .nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::Source { .. }))
        .expect("a source");
    assert_eq!(source.parallelism, 2);
    let query = plan.queries[0].clone();

    let mut options = StreamOptions::new("idle", checkpoints.path().to_str().unwrap());
    options.checkpoint_interval = Duration::from_millis(100);
    options.resume = false;
    let stop = options.stop.clone();
    let metrics: Arc<Mutex<Option<Arc<JobMetrics>>>> = Arc::default();
    let slot = metrics.clone();
    let run = run_plan(&job, plan, &options, move |_, m| {
        *slot.lock().unwrap() = Some(m);
    });

    let first = [
        "2026-03-01T12:00:00|1|1",
        "2026-03-01T12:00:00|2|1",
        "2026-03-01T12:00:10|1|1",
    ];
    let second = [
        "2026-03-01T12:00:00|1|1",
        "2026-03-01T12:00:00|2|1",
        "2026-03-01T12:00:10|1|1",
        "2026-03-01T12:00:20|1|2",
    ];
    let checkpoints_done = || {
        metrics
            .lock()
            .unwrap()
            .as_ref()
            .map(|m| m.checkpoints_completed.load(Ordering::Relaxed))
            .unwrap_or(0)
    };
    let check = async {
        let result = async {
            // The file's watermark (12:00:24) closes the first two windows; the one
            // from 12:00:20 stays open.
            wait_until(
                "the windows before 12:00:20",
                || rows(&query) == first,
                || format!("{:?}", rows(&query)),
            )
            .await?;
            // Barriers still flow and align while every source subtask is idle.
            let done = checkpoints_done();
            wait_until(
                "two checkpoints while idle",
                || checkpoints_done() >= done + 2,
                || format!("{} checkpoints", checkpoints_done()),
            )
            .await?;
            // A new file: its subtask turns active, its rows join the open window and
            // its watermark (12:00:44) closes it; 12:00:40 stays open.
            publish(
                data.path(),
                "b.csv",
                "user_id,ts\n1,2026-03-01 12:00:27\n2,2026-03-01 12:00:45\n",
            );
            wait_until(
                "the window from 12:00:20",
                || rows(&query) == second,
                || format!("{:?}", rows(&query)),
            )
            .await
        }
        .await;
        // Stop the job whatever happened, so no task outlives the test.
        stop.stop();
        result
    };
    let (run, check) = tokio::join!(run, check);
    let (report, _) = run.expect("the job runs until stopped");
    check.unwrap();
    assert!(report.stopped);
    assert!(report.checkpoints >= 2, "{report:?}");
    // Stopping does not flush: the window from 12:00:40 never fired.
    assert_eq!(rows(&query), second);
}
