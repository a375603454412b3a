//! Whole-job restore through the CLI, with the process aborted at a chosen checkpoint
//! (`MELTWATER_ABORT_AFTER_COMMIT`, `MELTWATER_ABORT_BEFORE_COMMIT`: the process dies
//! as under SIGKILL, at a point the test knows) and restarted at another parallelism:
//!
//! - a job whose window aggregate, updating aggregate and join spill their state under
//!   `'state.memory-budget'` ends with the same Iceberg tables as its batch run;
//! - a job whose window aggregate sends late rows to an Iceberg side output ends with
//!   each late row in the late table once (the whole source row), and its window rows
//!   plus its late rows add up to the batch run's windows, window by window.
//!
//! Rows are read back with DuckDB (`integration/python/read_iceberg.py`).

use std::collections::BTreeMap;
use std::path::Path;

use meltwater_integration::{interop_python, meltwater_aborted, meltwater_ok, read_iceberg};
use serde_json::Value;

/// Runs `meltwater run job.sql --mode stream ARGS` with `env` set to abort the process at
/// a checkpoint, and checks that it did (`message` is the abort's line on stderr).
fn run_aborted(dir: &Path, args: &[&str], env: (&str, &str), message: &str) {
    let mut all = vec!["run", "job.sql", "--mode", "stream"];
    all.extend_from_slice(args);
    meltwater_aborted(dir, &all, env, message);
}

/// Aborts the job after checkpoint 2 committed (parallelism 2), then a restored run
/// after checkpoint 4 completed but before its commit (parallelism 3, so the next run
/// commits it), then runs it to the end at parallelism 1; returns that run's stdout.
fn abort_twice_then_finish(dir: &Path) -> String {
    run_aborted(
        dir,
        &[],
        ("MELTWATER_ABORT_AFTER_COMMIT", "2"),
        "aborting after checkpoint 2 committed",
    );
    run_aborted(
        dir,
        &["--parallelism", "3"],
        ("MELTWATER_ABORT_BEFORE_COMMIT", "4"),
        "aborting after checkpoint 4 before its commit",
    );
    let (stdout, _) = meltwater_ok(
        dir,
        &["run", "job.sql", "--mode", "stream", "--parallelism", "1"],
    );
    assert!(stdout.contains("restored from checkpoint 4"), "{stdout}");
    stdout
}

/// `namespace.table`'s rows as DuckDB reads them, sorted.
fn rows(python: &Path, dir: &Path, table: &str) -> Vec<Value> {
    read_iceberg(python, dir, table, "duckdb")
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

const SPILL_ROWS: u64 = 5_000;

/// The spilling job: `SPILL_ROWS` rows over 400 keys, none late (the watermark trails
/// by two hours, the timestamps span one), into a TUMBLE count (columnar window state),
/// an upserted total per key (updating aggregate) and a join with a key table (both
/// inputs in state). `settings` go after the job's own.
fn spill_job(keys_csv: &Path, suffix: &str, settings: &str) -> String {
    format!(
        r#"
SET 'pipeline.name' = 'spill{suffix}';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '300 ms';
{settings}
CREATE TABLE gen (
  id BIGINT, k INT, v INT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' HOUR
) WITH (
  'connector' = 'datagen', 'number-of-rows' = '{SPILL_ROWS}', 'rows-per-second' = '1000',
  'seed' = '11',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{SPILL_ROWS}',
  'fields.k.min' = '0', 'fields.k.max' = '399',
  'fields.v.min' = '0', 'fields.v.max' = '1000',
  'fields.ts.max-past' = '1 h'
);
CREATE TABLE names (k INT, name STRING) WITH (
  'connector' = 'filesystem', 'path' = '{keys}', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE IF NOT EXISTS lake.spill.windows{suffix} (
  window_start TIMESTAMP(6), k INT, n BIGINT, s BIGINT);
CREATE TABLE IF NOT EXISTS lake.spill.totals{suffix} (
  k INT, n BIGINT, s BIGINT, top INT, PRIMARY KEY (k) NOT ENFORCED);
CREATE TABLE IF NOT EXISTS lake.spill.named{suffix} (id BIGINT, name STRING);

INSERT INTO lake.spill.windows{suffix}
SELECT window_start, k, COUNT(*), SUM(v)
FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '10' MINUTE))
GROUP BY window_start, window_end, k;

INSERT INTO lake.spill.totals{suffix} SELECT k, COUNT(*), SUM(v), MAX(v) FROM gen GROUP BY k;

INSERT INTO lake.spill.named{suffix} SELECT gen.id, names.name FROM gen JOIN names ON gen.k = names.k;
"#,
        keys = keys_csv.display()
    )
}

#[test]
fn spilled_state_restores_at_another_parallelism_and_equals_the_batch_run() {
    let dir = tempfile::tempdir().unwrap();
    // Names for the even keys: the join drops the odd ones.
    let keys = dir.path().join("names.csv");
    let mut csv = String::from("k,name\n");
    for k in (0..400).step_by(2) {
        csv.push_str(&format!("{k},name-{k}\n"));
    }
    std::fs::write(&keys, csv).unwrap();
    std::fs::write(
        dir.path().join("job.sql"),
        spill_job(&keys, "", "SET 'state.memory-budget' = '16 KiB';"),
    )
    .unwrap();
    std::fs::write(dir.path().join("batch.sql"), spill_job(&keys, "_batch", "")).unwrap();

    let last = abort_twice_then_finish(dir.path());
    // The restored state spilled again in the last run (one line per operator).
    for op in ["window-agg", "group-agg", "join"] {
        assert!(
            last.lines()
                .any(|l| l.starts_with("spilled ") && l.contains(op)),
            "{op} did not spill:\n{last}"
        );
    }
    meltwater_ok(dir.path(), &["run", "batch.sql", "--mode", "batch"]);

    let Some(python) = interop_python("the spill restore test's read-back") else {
        return;
    };
    for table in ["windows", "totals", "named"] {
        let stream = rows(&python, dir.path(), &format!("spill.{table}"));
        let batch = rows(&python, dir.path(), &format!("spill.{table}_batch"));
        assert!(!batch.is_empty(), "spill.{table}_batch is empty");
        assert_eq!(stream.len(), batch.len(), "spill.{table}: row count");
        assert!(
            stream == batch,
            "spill.{table}: stream rows differ from batch rows"
        );
    }
}

const LATE_ROWS: u64 = 20_000;

/// The late-rows job: `LATE_ROWS` rows with timestamps over two minutes, the watermark 5
/// s behind the newest, into 10-second TUMBLE windows per key; rows whose window fired
/// go to `lake.late.late_rows` as the source's rows (`note` too, which no query reads).
/// The batch job (`_batch`) also writes the source rows to `lake.late.raw_batch`.
fn late_job(suffix: &str) -> String {
    let raw = if suffix.is_empty() {
        String::new()
    } else {
        format!(
            "CREATE TABLE IF NOT EXISTS lake.late.raw{suffix} (
               id BIGINT, k INT, note STRING, ts TIMESTAMP(6));
             INSERT INTO lake.late.raw{suffix} SELECT id, k, note, ts FROM gen;"
        )
    };
    format!(
        r#"
SET 'pipeline.name' = 'late{suffix}';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '300 ms';
CREATE TABLE gen (
  id BIGINT, k INT, note STRING, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'datagen', 'number-of-rows' = '{LATE_ROWS}', 'rows-per-second' = '5000',
  'seed' = '5',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{LATE_ROWS}',
  'fields.k.min' = '0', 'fields.k.max' = '3',
  'fields.note.length' = '6',
  'fields.ts.max-past' = '2 min',
  'scan.late-records' = 'side-output',
  'scan.late-records.table' = 'lake.late.late_rows'
);
CREATE TABLE IF NOT EXISTS lake.late.windows{suffix} (
  window_start TIMESTAMP(6), k INT, n BIGINT, ids BIGINT);
CREATE TABLE IF NOT EXISTS lake.late.late_rows (
  id BIGINT, k INT, note STRING, ts TIMESTAMP(6), window_start TIMESTAMP(6));
{raw}
INSERT INTO lake.late.windows{suffix}
SELECT window_start, k, COUNT(*), SUM(id)
FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, k;
"#
    )
}

/// A row's `(window_start, k)`.
fn window_key(row: &Value) -> (String, i64) {
    (row["window_start"].to_string(), row["k"].as_i64().unwrap())
}

#[test]
fn late_rows_survive_a_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), late_job("")).unwrap();
    std::fs::write(dir.path().join("batch.sql"), late_job("_batch")).unwrap();
    abort_twice_then_finish(dir.path());
    // Batch mode has no late rows: it writes the windows of every row (and the source
    // rows to compare with), and nothing to the late table.
    meltwater_ok(dir.path(), &["run", "batch.sql", "--mode", "batch"]);

    let Some(python) = interop_python("the late-rows restore test's read-back") else {
        return;
    };
    let late = rows(&python, dir.path(), "late.late_rows");
    let windows = rows(&python, dir.path(), "late.windows");
    let batch = rows(&python, dir.path(), "late.windows_batch");
    let raw: BTreeMap<i64, Value> = rows(&python, dir.path(), "late.raw_batch")
        .into_iter()
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect();
    assert_eq!(raw.len() as u64, LATE_ROWS);
    assert!(
        !late.is_empty() && !windows.is_empty(),
        "the data has both late and on-time rows: {} late, {} window rows",
        late.len(),
        windows.len()
    );

    // Each late row once, and it is the source's row.
    let mut late_by_window: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for row in &late {
        let id = row["id"].as_i64().unwrap();
        assert!(seen.insert(id, ()).is_none(), "late row {id} twice: {row}");
        let source = &raw[&id];
        for column in ["k", "note", "ts"] {
            assert_eq!(row[column], source[column], "late row {id}: {column}");
        }
        let entry = late_by_window.entry(window_key(row)).or_default();
        entry.0 += 1;
        entry.1 += id;
    }

    // Each window emitted once, and its rows plus its late rows are the batch window's.
    let mut stream: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for row in &windows {
        let counts = (row["n"].as_i64().unwrap(), row["ids"].as_i64().unwrap());
        assert!(
            stream.insert(window_key(row), counts).is_none(),
            "window emitted twice: {row}"
        );
    }
    let mut expected_keys = 0;
    for row in &batch {
        let key = window_key(row);
        let (n, ids) = stream.remove(&key).unwrap_or_default();
        let (late_n, late_ids) = late_by_window.remove(&key).unwrap_or_default();
        assert_eq!(
            (n + late_n, ids + late_ids),
            (row["n"].as_i64().unwrap(), row["ids"].as_i64().unwrap()),
            "window {key:?}: {n} rows and {late_n} late rows against the batch run's {row}"
        );
        expected_keys += 1;
    }
    assert!(expected_keys > 0);
    assert!(
        stream.is_empty(),
        "windows batch mode does not have: {stream:?}"
    );
    assert!(
        late_by_window.is_empty(),
        "late rows of windows batch mode does not have: {late_by_window:?}"
    );
}
