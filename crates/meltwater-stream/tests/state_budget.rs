//! `SET 'state.memory-budget'` through the whole runtime: an updating aggregate, a join
//! and a SESSION window without an aggregate, at parallelism 2 with checkpoints landing
//! mid-data, spill their state (the job's metrics count it per operator) and give the
//! same final rows as the same job without a budget.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::util::display::array_value_to_string;
use meltwater_plan::{plan_job, JobOptions, Mode};
use meltwater_stream::job::finish_query;
use meltwater_stream::metrics::JobMetrics;
use meltwater_stream::{plan_stream, run_plan, StreamOptions};

/// 600 events over 40 keys, a second apart but shuffled within 4 s (the watermark trails
/// by 5 s, so none is late), and names for keys 0..30 (the others do not join).
fn write_data(dir: &std::path::Path) {
    let mut events = String::from("k,v,ts\n");
    let mut x: u64 = 17;
    for i in 0..600i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = (x >> 33) % 40;
        let t = i + ((x >> 20) % 4) as i64;
        let (m, s) = (t / 60, t % 60);
        writeln!(events, "{k},{i},2026-03-01 12:{m:02}:{s:02}").unwrap();
    }
    std::fs::write(dir.join("events.csv"), events).unwrap();
    let mut names = String::from("k,name\n");
    for k in 0..30 {
        writeln!(names, "{k},n{k}").unwrap();
    }
    std::fs::write(dir.join("names.csv"), names).unwrap();
}

fn job_text(dir: &std::path::Path, budget: Option<&str>) -> String {
    let set = budget
        .map(|b| format!("SET 'state.memory-budget' = '{b}';\n"))
        .unwrap_or_default();
    format!(
        "{set}CREATE TABLE t (k BIGINT, v BIGINT, ts TIMESTAMP(3),
           WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (
           'connector' = 'filesystem', 'path' = '{d}/events.csv', 'format' = 'csv',
           'csv.header' = 'true');
         CREATE TABLE u (k BIGINT, name STRING) WITH (
           'connector' = 'filesystem', 'path' = '{d}/names.csv', 'format' = 'csv',
           'csv.header' = 'true');
         SELECT k, COUNT(*) AS n, SUM(v) AS s, COUNT(DISTINCT v % 7) AS d FROM t GROUP BY k;
         SELECT t.k, t.v, u.name FROM t LEFT JOIN u ON t.k = u.k;
         SELECT k, v, window_start, window_end
           FROM TABLE(SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), INTERVAL '20' SECOND));",
        d = dir.display()
    )
}

/// Runs the job's three queries; returns each one's final rows (sorted) and the bytes
/// spilled per operator id.
async fn run(
    dir: &std::path::Path,
    budget: Option<&str>,
) -> (Vec<Vec<String>>, BTreeMap<String, u64>) {
    let file =
        meltwater_sql::parse_job("budget.sql", &job_text(dir, budget), &BTreeMap::new()).unwrap();
    let job = plan_job(
        &file,
        &JobOptions {
            mode: Mode::Stream,
            job_id: Some("budget".into()),
            run_id: "budget-1".into(),
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
    let queries = plan.queries.clone();
    let checkpoints = tempfile::tempdir().unwrap();
    let mut options = StreamOptions::new("budget", checkpoints.path().to_str().unwrap());
    options.checkpoint_interval = Duration::from_millis(20);
    options.resume = false;
    options.batch_size = 16;
    let metrics: Arc<Mutex<Option<Arc<JobMetrics>>>> = Arc::default();
    let seen = metrics.clone();
    run_plan(&job, plan, &options, move |_, m| {
        *seen.lock().unwrap() = Some(m);
    })
    .await
    .unwrap();
    let mut results = Vec::new();
    for q in &queries {
        let mut rows = Vec::new();
        for b in finish_query(q).unwrap() {
            for r in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect();
                rows.push(cells.join("|"));
            }
        }
        rows.sort();
        results.push(rows);
    }
    let metrics = metrics.lock().unwrap().clone().expect("the job started");
    let spilled = metrics
        .operators
        .iter()
        .map(|op| (op.id.clone(), JobMetrics::get(&op.spilled_bytes)))
        .collect();
    (results, spilled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_operators_spill_over_the_budget_with_the_same_rows() {
    let data = tempfile::tempdir().unwrap();
    write_data(data.path());
    let (expected, none) = run(data.path(), None).await;
    assert!(none.values().all(|b| *b == 0), "{none:?}");
    assert_eq!(expected[0].len(), 40);
    assert_eq!(expected[1].len(), 600);
    assert_eq!(expected[2].len(), 600);

    for budget in ["1", "4 KiB"] {
        let (got, spilled) = run(data.path(), Some(budget)).await;
        for (q, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "query {q}, budget {budget}");
        }
        for kind in ["group-agg", "join", "session-rows"] {
            let bytes: u64 = spilled
                .iter()
                .filter(|(id, _)| id.contains(kind))
                .map(|(_, b)| *b)
                .sum();
            assert!(
                bytes > 0,
                "{kind} spilled nothing under {budget}: {spilled:?}"
            );
        }
    }
}
