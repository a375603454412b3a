//! `'scan.late-records' = 'side-output'`: the rows a window aggregate drops as late go to
//! the table `'scan.late-records.table'` names (here an Iceberg table, committed with the
//! checkpoints), and the window results are those of the default `'drop'` policy. A late
//! row is the source table's row (every column the late table declares, read or not by
//! the query, as the source holds it, not as a view computes it) with the bounds of the
//! window it was late for. Plan errors name the statement's line; batch mode has no late
//! rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use meltwater_iceberg::IcebergCatalogConfig;
use meltwater_plan::{plan_job, JobOptions, Mode, PlannedJob};
use meltwater_stream::job::finish_query;
use meltwater_stream::{plan_stream, run_plan, StreamOptions};

/// Out of event-time order (watermark = ts, one row per batch): after 12:00:12 arrives
/// the window [12:00:00, 12:00:10) has fired, so 3 (12:00:05) and 5 (12:00:09) are late;
/// after 12:00:25, [12:00:10, 12:00:20) has fired, so 8 (12:00:19) is late; 6 (12:00:11)
/// and 9 (12:00:21) are behind the watermark but their windows are still open. No query
/// reads `note`.
const CSV: &str = "id,k,note,ts\n\
    1,a,n1,2026-03-01 12:00:01\n\
    2,a,n2,2026-03-01 12:00:12\n\
    3,a,n3,2026-03-01 12:00:05\n\
    4,b,n4,2026-03-01 12:00:15\n\
    5,b,n5,2026-03-01 12:00:09\n\
    6,a,n6,2026-03-01 12:00:11\n\
    7,a,n7,2026-03-01 12:00:25\n\
    8,b,x,2026-03-01 12:00:19\n\
    9,a,n9,2026-03-01 12:00:21\n";

const WINDOWS: &str =
    "SELECT k, CAST(window_start AS STRING) AS w, COUNT(*) AS n, SUM(id) AS ids, \
       CAST(MAX(ts) AS STRING) AS last_ts \
     FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
     GROUP BY window_start, window_end, k;";

/// The job: `events` with `late_options` in its WITH clause, the late table, the windows.
fn job_text(csv: &Path, late_options: &str, late_columns: &str) -> String {
    job_with(csv, late_options, late_columns, WINDOWS)
}

/// The job with `windows` as its query.
fn job_with(csv: &Path, late_options: &str, late_columns: &str, windows: &str) -> String {
    format!(
        "CREATE TABLE events (id BIGINT, k STRING, note STRING, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH (
           'connector' = 'filesystem', 'path' = '{}', 'format' = 'csv', 'csv.header' = 'true'{late_options});
         CREATE TABLE IF NOT EXISTS lake.shop.late_events ({late_columns});
         CREATE TABLE files (id BIGINT) WITH (
           'connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');
         {windows}",
        csv.display(),
        csv.display()
    )
}

/// A temporary directory holding `events.csv`.
fn events_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("events.csv");
    std::fs::write(&csv, CSV).unwrap();
    (dir, csv)
}

const SIDE_OUTPUT: &str =
    ", 'scan.late-records' = 'side-output', 'scan.late-records.table' = 'lake.shop.late_events'";
const LATE_COLUMNS: &str = "id BIGINT, k STRING, note STRING, ts TIMESTAMP(6), \
     window_start TIMESTAMP(6), window_end TIMESTAMP(6)";

async fn plan(mode: Mode, dir: &Path, text: &str) -> Result<PlannedJob, String> {
    let file = meltwater_sql::parse_job("late.sql", text, &BTreeMap::new()).unwrap();
    plan_job(
        &file,
        &JobOptions {
            mode,
            job_id: Some("late".into()),
            run_id: "late-1".into(),
            parallelism: Some(1),
            catalogs: vec![IcebergCatalogConfig::sqlite(
                "lake",
                dir,
                Path::new("catalog.db"),
                Path::new("warehouse"),
                None,
            )],
            kafka: Vec::new(),
            create_tables: true,
            memory_limit: None,
            spill_dir: None,
        },
    )
    .await
    .map_err(|e| e.to_string())
}

fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                (0..b.num_columns())
                    .map(|c| array_value_to_string(b.column(c), r).unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
        .collect();
    out.sort();
    out
}

/// The stream graph of `text` at parallelism 1, as `explain` prints it.
async fn explain(dir: &Path, text: &str) -> String {
    let job = plan(Mode::Stream, dir, text).await.unwrap();
    plan_stream(&job, 1).unwrap().graph.to_string()
}

/// The stream planning error of `text`, without its position.
async fn stream_error(dir: &Path, text: &str) -> String {
    let job = plan(Mode::Stream, dir, text).await.unwrap();
    plan_stream(&job, 1).expect_err("a plan error").message
}

/// Runs `text` in stream mode (one row per batch, so the watermark moves between rows);
/// returns the window rows.
async fn run_stream(dir: &Path, text: &str) -> Vec<String> {
    run_stream_at(dir, text, 1).await
}

/// [`run_stream`] at `parallelism`.
async fn run_stream_at(dir: &Path, text: &str, parallelism: usize) -> Vec<String> {
    let job = plan(Mode::Stream, dir, text).await.unwrap();
    let plan = plan_stream(&job, parallelism).unwrap();
    let windows = plan.queries[0].clone();
    let checkpoints = tempfile::tempdir().unwrap();
    let mut options = StreamOptions::new("late", checkpoints.path().to_str().unwrap());
    options.checkpoint_interval = Duration::from_secs(60);
    options.resume = false;
    options.batch_size = 1;
    run_plan(&job, plan, &options, |_, _| {}).await.unwrap();
    rows(&finish_query(&windows).unwrap())
}

/// Runs batch query `sql` over the job's tables.
async fn query_batch(dir: &Path, text: &str, sql: &str) -> Vec<String> {
    let job = plan(Mode::Batch, dir, &format!("{text}\n{sql}"))
        .await
        .unwrap();
    let state = job.session.state();
    let q = job.queries.last().unwrap();
    let physical = state.create_physical_plan(&q.plan).await.unwrap();
    rows(
        &datafusion::physical_plan::collect(physical, state.task_ctx())
            .await
            .unwrap(),
    )
}

const LATE_ROWS: &str = "SELECT id, k, note, CAST(ts AS STRING), CAST(window_start AS STRING), \
       CAST(window_end AS STRING) \
     FROM lake.shop.late_events;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_go_to_the_side_output_and_windows_match_the_drop_policy() {
    let (dir, csv) = events_file();

    let with_side_output = job_text(&csv, SIDE_OUTPUT, LATE_COLUMNS);
    let graph = explain(dir.path(), &with_side_output).await;
    assert!(
        graph.contains("<- s1-window-agg-4 late rows FORWARD"),
        "{graph}"
    );
    // The source columns the late rows carry travel in operators of their own ids: the
    // window aggregate has the id (and so the state) it has under 'drop'.
    assert!(
        graph.contains("[s1-late-carry-1] calc: carry late-row columns <- s1-source-1"),
        "{graph}"
    );
    let dropping = explain(dir.path(), &job_text(&csv, "", LATE_COLUMNS)).await;
    assert!(
        dropping.contains("[s1-window-agg-4] window aggregate"),
        "{dropping}"
    );
    assert!(!dropping.contains("late"), "{dropping}");
    assert!(
        graph.contains("sink: iceberg lake.shop.late_events"),
        "{graph}"
    );

    let side = run_stream(dir.path(), &with_side_output).await;
    let late = query_batch(dir.path(), &with_side_output, LATE_ROWS).await;
    assert_eq!(
        late,
        vec![
            "3,a,n3,2026-03-01T12:00:05,2026-03-01T12:00:00,2026-03-01T12:00:10",
            "5,b,n5,2026-03-01T12:00:09,2026-03-01T12:00:00,2026-03-01T12:00:10",
            "8,b,x,2026-03-01T12:00:19,2026-03-01T12:00:10,2026-03-01T12:00:20",
        ]
    );

    let dropped = run_stream(dir.path(), &job_text(&csv, "", LATE_COLUMNS)).await;
    assert_eq!(side, dropped);
    assert_eq!(
        side,
        vec![
            "a,2026-03-01T12:00:00,1,1,2026-03-01T12:00:01",
            "a,2026-03-01T12:00:10,2,8,2026-03-01T12:00:12",
            "a,2026-03-01T12:00:20,2,16,2026-03-01T12:00:25",
            "b,2026-03-01T12:00:10,1,4,2026-03-01T12:00:15",
        ]
    );
    // The drop policy wrote nothing more to the late table.
    assert_eq!(
        query_batch(dir.path(), &with_side_output, LATE_ROWS)
            .await
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_has_no_late_rows() {
    let (dir, csv) = events_file();
    let text = job_text(&csv, SIDE_OUTPUT, LATE_COLUMNS);
    let job = plan(Mode::Batch, dir.path(), &text).await.unwrap();
    // No statement writes the late table: the side output exists in stream mode only
    // (batch mode has no watermark, so no row is late), and the table stays empty.
    assert!(job.inserts.is_empty());
    assert_eq!(job.queries.len(), 1);
    assert!(query_batch(dir.path(), &text, LATE_ROWS).await.is_empty());
}

/// The stream planning error of the job with `late_options` and `late_columns`.
async fn plan_error(late_options: &str, late_columns: &str) -> String {
    let (dir, csv) = events_file();
    let text = job_text(&csv, late_options, late_columns);
    let job = match plan(Mode::Stream, dir.path(), &text).await {
        Ok(job) => job,
        Err(e) => return e,
    };
    let e = plan_stream(&job, 1).expect_err("a plan error");
    format!("{}:{}: {}", e.file, e.loc.line, e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_errors_name_the_line_and_the_table() {
    // The windows are the statement on line 6.
    let unknown = plan_error(
        ", 'scan.late-records' = 'side-output', 'scan.late-records.table' = 'nowhere'",
        LATE_COLUMNS,
    )
    .await;
    assert!(
        unknown.starts_with("late.sql:6: 'scan.late-records.table' = 'nowhere' of table 'events': no table 'nowhere'"),
        "{unknown}"
    );
    let not_a_sink = plan_error(
        ", 'scan.late-records' = 'side-output', 'scan.late-records.table' = 'files'",
        LATE_COLUMNS,
    )
    .await;
    assert!(
        not_a_sink
            .starts_with("late.sql:6: 'scan.late-records.table' = 'files' of table 'events':")
            && not_a_sink.contains("the 'filesystem' connector cannot be written to"),
        "{not_a_sink}"
    );
    let missing_column = plan_error(SIDE_OUTPUT, "id BIGINT, amount DOUBLE").await;
    assert_eq!(
        missing_column,
        "late.sql:6: 'scan.late-records.table' = 'lake.shop.late_events' of table 'events': its column 'amount' is not a column of the late rows, which are the rows of 'events' and the bounds of the window they were late for (id, k, note, ts, window_start, window_end)"
    );
    let wrong_type = plan_error(SIDE_OUTPUT, "id BIGINT, ts BOOLEAN").await;
    assert_eq!(
        wrong_type,
        "late.sql:6: 'scan.late-records.table' = 'lake.shop.late_events' of table 'events': its column 'ts' has type Boolean, which the type Timestamp(ms) of 'events'.'ts' cannot be cast to"
    );
    let no_table = plan_error(", 'scan.late-records' = 'side-output'", LATE_COLUMNS).await;
    assert!(no_table.contains("scan.late-records.table"), "{no_table}");
    let bad_policy = plan_error(", 'scan.late-records' = 'keep'", LATE_COLUMNS).await;
    assert!(
        bad_policy.contains("invalid value 'keep' for option 'scan.late-records'")
            && bad_policy.contains("expected 'drop' or 'side-output'"),
        "{bad_policy}"
    );
}

/// HOP over a view that filters on a column and recomputes another: a late row is the
/// source's row (its `id`, not the view's `id * 10`; `note`, which the windows never
/// read), once per window it was late for, with that window's bounds; the late table
/// declares a subset of the source's columns, in its own order. Two window subtasks
/// behind the hash exchange, fed by one source subtask: with a second source subtask
/// that has no split, which rows are late would depend on whether a window subtask
/// learns that subtask ended before or after the rows arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_source_rows_behind_views_and_hop_copies() {
    let (dir, csv) = events_file();
    let windows = "SET 'operator.s1-source-1.parallelism' = '1'; \
         CREATE TEMPORARY VIEW tens AS \
           SELECT k, id * 10 AS id, ts FROM events WHERE note <> 'x'; \
         SELECT k, CAST(window_start AS STRING) AS w, COUNT(*) AS n, SUM(id) AS ids \
         FROM TABLE(HOP(TABLE tens, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)) \
         GROUP BY window_start, window_end, k;";
    let late_columns = "note STRING, id BIGINT, ts TIMESTAMP(6), window_start TIMESTAMP(6)";
    let text = job_with(&csv, SIDE_OUTPUT, late_columns, windows);
    let side = run_stream_at(dir.path(), &text, 2).await;
    // HOP(5 s, 10 s): a row at t is in the windows starting at t's 5-second floor and
    // 5 s before. After 12 the windows ending at 05 and 10 fired: 3 is late for
    // [00, 10). After 15, [05, 15) fired too: 5 is late for both its windows, 6 for
    // [05, 15). After 25, the windows ending at 20 and 25 fired: 9 is late for [15, 25);
    // 8 would be late for two windows, but the view filters it out before the windows.
    let late = query_batch(
        dir.path(),
        &text,
        "SELECT note, id, CAST(ts AS STRING), CAST(window_start AS STRING) \
         FROM lake.shop.late_events;",
    )
    .await;
    assert_eq!(
        late,
        vec![
            "n3,3,2026-03-01T12:00:05,2026-03-01T12:00:00",
            "n5,5,2026-03-01T12:00:09,2026-03-01T12:00:00",
            "n5,5,2026-03-01T12:00:09,2026-03-01T12:00:05",
            "n6,6,2026-03-01T12:00:11,2026-03-01T12:00:05",
            "n9,9,2026-03-01T12:00:21,2026-03-01T12:00:15",
        ]
    );
    let dropped = run_stream_at(dir.path(), &job_with(&csv, "", late_columns, windows), 2).await;
    assert_eq!(side, dropped);
    assert_eq!(
        side,
        vec![
            "a,2026-03-01T11:59:55,1,10",
            "a,2026-03-01T12:00:00,1,10",
            "a,2026-03-01T12:00:05,2,50",
            "a,2026-03-01T12:00:10,2,80",
            "a,2026-03-01T12:00:20,2,160",
            "a,2026-03-01T12:00:25,1,70",
            "b,2026-03-01T12:00:10,1,40",
            "b,2026-03-01T12:00:15,1,40",
        ]
    );
}

/// A window over a UNION ALL of two tables carries the late table's columns from each,
/// by name and cast to the late table's types (`id` is INT in one, BIGINT in the other);
/// a table without one of the columns is an error naming it; a window that also reads
/// rows that are not a source table's (an Iceberg table's) cannot have a side output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_over_unions_carry_the_columns_of_each_table() {
    let (dir, csv) = events_file();
    let job = |more_columns: &str, other: &str| {
        format!(
            "CREATE TABLE events (id BIGINT, k STRING, note STRING, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH (
               'connector' = 'filesystem', 'path' = '{csv}', 'format' = 'csv', 'csv.header' = 'true'{SIDE_OUTPUT});
             CREATE TABLE more ({more_columns}, WATERMARK FOR ts AS ts) WITH (
               'connector' = 'filesystem', 'path' = '{csv}', 'format' = 'csv', 'csv.header' = 'true'{SIDE_OUTPUT});
             CREATE TABLE IF NOT EXISTS lake.shop.late_events ({LATE_COLUMNS});
             CREATE TABLE IF NOT EXISTS lake.shop.other (k STRING, ts TIMESTAMP(3));
             CREATE TEMPORARY VIEW all_events AS
               SELECT k, ts FROM events UNION ALL SELECT k, ts FROM {other};
             SELECT k, COUNT(*) AS n
             FROM TABLE(TUMBLE(TABLE all_events, DESCRIPTOR(ts), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, k;",
            csv = csv.display()
        )
    };
    let union = job("id INT, k STRING, note STRING, ts TIMESTAMP(3)", "more");
    let graph = explain(dir.path(), &union).await;
    for part in [
        "[s1-late-carry-1] calc: carry late-row columns <- s1-source-1",
        "[s1-late-carry-2] calc: carry late-row columns <- s1-source-3",
        "sink: iceberg lake.shop.late_events",
    ] {
        assert!(graph.contains(part), "{graph}");
    }

    let without_note = job("id BIGINT, k STRING, ts TIMESTAMP(3)", "more");
    let e = stream_error(dir.path(), &without_note).await;
    assert_eq!(
        e,
        "'scan.late-records.table' = 'lake.shop.late_events' of table 'events': its column 'note' is not a column of the late rows, which are the rows of 'more' and the bounds of the window they were late for (id, k, ts, window_start, window_end)"
    );

    let with_iceberg = job(
        "id INT, k STRING, note STRING, ts TIMESTAMP(3)",
        "lake.shop.other",
    );
    let e = stream_error(dir.path(), &with_iceberg).await;
    assert!(
        e.starts_with("'scan.late-records.table' = 'lake.shop.late_events' of table 'events': a late row is the row of its source table, and this window reads Iceberg table"),
        "{e}"
    );
}

/// An invalid late-rows policy fails the job in batch mode too, where it would do
/// nothing, so that a job file that runs in one mode runs in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_rejects_an_invalid_policy_too() {
    let (dir, csv) = events_file();
    for (options, expected) in [
        (
            ", 'scan.late-records' = 'keep'",
            "invalid value 'keep' for option 'scan.late-records'",
        ),
        (
            ", 'scan.late-records' = 'side-output'",
            "scan.late-records.table",
        ),
    ] {
        let text = job_text(&csv, options, LATE_COLUMNS);
        let Err(e) = plan(Mode::Batch, dir.path(), &text).await else {
            panic!("batch mode planned {options}");
        };
        assert!(e.contains(expected), "{e}");
    }
}
