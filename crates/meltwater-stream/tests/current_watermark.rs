//! `CURRENT_WATERMARK(ts)` in stream mode: a filter routes the rows at or behind the
//! watermark (late rows) apart from the others, as the watermark stood when each row
//! arrived; in batch mode there is no watermark and no row is late.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::util::display::array_value_to_string;
use meltwater_plan::{plan_job, JobOptions, Mode};
use meltwater_stream::job::finish_query;
use meltwater_stream::{plan_stream, run_plan, StreamOptions};

/// Ids out of event-time order: after 12:00:05 arrives, 12:00:03 and 12:00:05 are at or
/// behind the watermark (no delay); after 12:00:09, so is 12:00:08.
const CSV: &str = "id,ts\n\
    1,2026-03-01 12:00:05\n\
    2,2026-03-01 12:00:03\n\
    3,2026-03-01 12:00:05\n\
    4,2026-03-01 12:00:07\n\
    5,2026-03-01 12:00:09\n\
    6,2026-03-01 12:00:08\n\
    7,2026-03-01 12:00:10\n";

fn job_text(path: &std::path::Path) -> String {
    format!(
        "CREATE TABLE events (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH (
           'connector' = 'filesystem', 'path' = '{}', 'format' = 'csv', 'csv.header' = 'true');
         SELECT id FROM events WHERE ts <= CURRENT_WATERMARK(ts);
         SELECT id FROM events WHERE CURRENT_WATERMARK(ts) IS NULL OR ts > CURRENT_WATERMARK(ts);",
        path.display()
    )
}

fn ids(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<i64> {
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| array_value_to_string(b.column(0), r).unwrap())
        })
        .map(|s| s.parse().unwrap())
        .collect();
    out.sort_unstable();
    out
}

async fn plan(mode: Mode, path: &std::path::Path) -> meltwater_plan::PlannedJob {
    let file = meltwater_sql::parse_job("late.sql", &job_text(path), &BTreeMap::new()).unwrap();
    plan_job(
        &file,
        &JobOptions {
            mode,
            job_id: Some("late".into()),
            run_id: "late-1".into(),
            parallelism: Some(1),
            catalogs: Vec::new(),
            kafka: Vec::new(),
            create_tables: false,
            memory_limit: None,
            spill_dir: None,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_those_at_or_behind_the_watermark_when_they_arrive() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("events.csv");
    std::fs::write(&path, CSV).unwrap();
    let checkpoints = tempfile::tempdir().unwrap();

    let job = plan(Mode::Stream, &path).await;
    let plan = plan_stream(&job, 1).unwrap();
    let (late, on_time) = (plan.queries[0].clone(), plan.queries[1].clone());
    let mut options = StreamOptions::new("late", checkpoints.path().to_str().unwrap());
    options.checkpoint_interval = Duration::from_secs(60);
    options.resume = false;
    // One row per batch, so the watermark moves between rows.
    options.batch_size = 1;
    run_plan(&job, plan, &options, |_, _| {}).await.unwrap();
    assert_eq!(ids(&finish_query(&late).unwrap()), vec![2, 3, 6]);
    assert_eq!(ids(&finish_query(&on_time).unwrap()), vec![1, 4, 5, 7]);
}

#[tokio::test]
async fn there_is_no_watermark_in_batch_mode() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("events.csv");
    std::fs::write(&path, CSV).unwrap();
    let job = plan(Mode::Batch, &path).await;
    let state = job.session.state();
    let mut results = Vec::new();
    for q in &job.queries {
        let physical = state.create_physical_plan(&q.plan).await.unwrap();
        results.push(ids(&datafusion::physical_plan::collect(
            physical,
            state.task_ctx(),
        )
        .await
        .unwrap()));
    }
    assert_eq!(results, vec![vec![], vec![1, 2, 3, 4, 5, 6, 7]]);
}
