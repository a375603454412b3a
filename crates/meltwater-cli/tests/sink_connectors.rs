//! The `print` and `blackhole` sink connectors through the `meltwater` binary, in both
//! modes: the exact lines a print table writes (Flink's format), its prefixes and row
//! kinds, and the row counts the run summary reports.

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh working directory holding `job.sql` with `sql` as its text.
fn job_dir(sql: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("job.sql"), sql).expect("write job.sql");
    dir
}

/// Runs `meltwater run job.sql --mode MODE --parallelism P` in `dir`; asserts success.
fn run(dir: &Path, mode: &str, parallelism: usize) -> Output {
    let p = parallelism.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_meltwater"))
        .current_dir(dir)
        .args(["run", "job.sql", "--mode", mode, "--parallelism", &p])
        .output()
        .expect("run meltwater");
    assert!(
        out.status.success(),
        "meltwater run --mode {mode} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Whether `line` is a row a print table wrote: `[prefix> ]<kind>[...]`.
fn is_row(line: &str) -> bool {
    let body = match line.split_once("> ") {
        Some((_, rest)) => rest,
        None => line,
    };
    ["+I[", "-U[", "+U[", "-D["]
        .iter()
        .any(|k| body.starts_with(k))
        && body.ends_with(']')
}

/// The row lines of `output`, in order.
fn rows(output: &[u8]) -> Vec<String> {
    text(output)
        .lines()
        .filter(|l| is_row(l))
        .map(str::to_string)
        .collect()
}

/// A print table of every scalar column type a job declares, over a CSV file (whose empty
/// string fields are empty strings; other empty fields are NULL).
fn typed_job(dir: &Path) -> String {
    let data = dir.join("in.csv");
    std::fs::write(
        &data,
        "1,alice,12.50,2.5,true,2026-03-01,2026-03-01 12:00:00,2026-03-01 12:00:00,a\n\
         2,,0.05,1e7,false,2026-03-02,2026-03-01 12:00:05.250,2026-03-01T12:00:05.250Z,\n\
         3,\"c, d\",-3.00,,,,,,xyz\n",
    )
    .expect("write in.csv");
    format!(
        "CREATE TABLE src (id BIGINT, name STRING, amount DECIMAL(10, 2), ratio DOUBLE, ok BOOLEAN, \
           day DATE, ts TIMESTAMP(3), ts_ltz TIMESTAMP_LTZ(3), tag STRING) \
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
         CREATE TABLE out (id BIGINT, name STRING, amount DECIMAL(10, 2), ratio DOUBLE, ok BOOLEAN, \
           day DATE, ts TIMESTAMP(3), ts_ltz TIMESTAMP_LTZ(3), tag_bytes BYTES) \
         WITH ('connector' = 'print');\n\
         INSERT INTO out SELECT id, name, amount, ratio, ok, day, ts, ts_ltz, CAST(tag AS BYTEA) FROM src;\n",
        data.display()
    )
}

const TYPED_ROWS: [&str; 3] = [
    "+I[1, alice, 12.50, 2.5, true, 2026-03-01, 2026-03-01T12:00, 2026-03-01T12:00:00Z, [97]]",
    "+I[2, , 0.05, 1.0E7, false, 2026-03-02, 2026-03-01T12:00:05.250, 2026-03-01T12:00:05.250Z, []]",
    "+I[3, c, d, -3.00, null, null, null, null, null, [120, 121, 122]]",
];

#[test]
fn print_writes_flink_rows_in_batch_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sql = typed_job(dir.path());
    std::fs::write(dir.path().join("job.sql"), sql).unwrap();
    let out = run(dir.path(), "batch", 1);
    assert_eq!(rows(&out.stdout), TYPED_ROWS);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\ninsert out: 3 rows in "), "{stdout}");
    // Nothing else on stdout looks like a row, and nothing goes to stderr.
    assert!(rows(&out.stderr).is_empty());
}

#[test]
fn print_writes_flink_rows_in_stream_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sql = typed_job(dir.path());
    std::fs::write(dir.path().join("job.sql"), sql).unwrap();
    // One subtask: no prefix, the file's order.
    let out = run(dir.path(), "stream", 1);
    assert_eq!(rows(&out.stdout), TYPED_ROWS);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\nwrote out (print): 3 rows\n"), "{stdout}");

    // Two subtasks: each line starts with its subtask's 1-based number.
    let dir = tempfile::tempdir().unwrap();
    let sql = typed_job(dir.path());
    std::fs::write(dir.path().join("job.sql"), sql).unwrap();
    let out = run(dir.path(), "stream", 2);
    let mut lines = Vec::new();
    for line in rows(&out.stdout) {
        let (prefix, row) = line.split_once("> ").expect("a subtask prefix");
        assert!(prefix == "1" || prefix == "2", "{line}");
        lines.push(row.to_string());
    }
    lines.sort();
    let mut expected: Vec<String> = TYPED_ROWS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(lines, expected);
}

/// An updating stream (a global COUNT over two splits of three rows) into a print table
/// with an identifier.
const COUNT_JOB: &str = "
CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '6',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '6',
  'source.splits' = '2');
CREATE TABLE counts (n BIGINT) WITH ('connector' = 'print', 'print-identifier' = 'counts');
INSERT INTO counts SELECT COUNT(*) FROM src;
";

#[test]
fn print_shows_row_kinds_of_an_updating_stream() {
    let dir = job_dir(COUNT_JOB);
    let out = run(dir.path(), "batch", 1);
    assert_eq!(rows(&out.stdout), ["counts> +I[6]"]);

    // Each split is one batch: the count is inserted, then retracted and updated.
    let dir = job_dir(COUNT_JOB);
    let out = run(dir.path(), "stream", 1);
    assert_eq!(
        rows(&out.stdout),
        ["counts> +I[3]", "counts> -U[3]", "counts> +U[6]"]
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\nwrote counts (print): 3 rows\n"),
        "{stdout}"
    );
}

#[test]
fn print_to_standard_error() {
    let job = "CREATE TABLE out (n BIGINT, s STRING) WITH ('connector' = 'print', 'standard-error' = 'true');
INSERT INTO out VALUES (1, 'x'), (2, CAST(NULL AS STRING));
";
    for mode in ["batch", "stream"] {
        let dir = job_dir(job);
        let out = run(dir.path(), mode, 1);
        assert_eq!(rows(&out.stderr), ["+I[1, x]", "+I[2, null]"], "{mode}");
        assert!(rows(&out.stdout).is_empty(), "{mode}");
    }
}

const BLACKHOLE_JOB: &str = "
CREATE TABLE src (id BIGINT, name STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '1000',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '1000');
CREATE TABLE nowhere (id BIGINT, name STRING) WITH ('connector' = 'blackhole');
CREATE TABLE totals (n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO nowhere SELECT * FROM src;
INSERT INTO totals SELECT COUNT(*) FROM src GROUP BY id % 10;
";

#[test]
fn blackhole_counts_and_discards_in_both_modes() {
    let dir = job_dir(BLACKHOLE_JOB);
    let out = run(dir.path(), "batch", 2);
    let stdout = text(&out.stdout);
    assert!(rows(&out.stdout).is_empty(), "{stdout}");
    assert!(
        stdout.contains("\ninsert nowhere: 1,000 rows in "),
        "{stdout}"
    );
    assert!(stdout.contains("\ninsert totals: 10 rows in "), "{stdout}");

    // Stream mode takes the updating aggregate too, and counts every change it received.
    let dir = job_dir(BLACKHOLE_JOB);
    let out = run(dir.path(), "stream", 2);
    let stdout = text(&out.stdout);
    assert!(rows(&out.stdout).is_empty(), "{stdout}");
    assert!(
        stdout.contains("\nwrote nowhere (blackhole): 1,000 rows\n"),
        "{stdout}"
    );
    let changes: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote totals (blackhole): "))
        .and_then(|r| r.strip_suffix(" rows"))
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no count for totals in:\n{stdout}"));
    assert!(changes >= 10, "{stdout}");
}

#[test]
fn sink_tables_cannot_be_read() {
    for (connector, table) in [("print", "out"), ("blackhole", "bh")] {
        let job = format!(
            "CREATE TABLE {table} (n BIGINT) WITH ('connector' = '{connector}');
CREATE TABLE sink (n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT n FROM {table};
"
        );
        for mode in ["batch", "stream"] {
            let dir = job_dir(&job);
            let out = Command::new(env!("CARGO_BIN_EXE_meltwater"))
                .current_dir(dir.path())
                .args(["run", "job.sql", "--mode", mode])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{connector} {mode}");
            assert_eq!(
                text(&out.stderr).trim_end(),
                format!(
                    "error: job.sql:3:1: table '{table}': a {connector} table is a sink only; it cannot be read"
                )
            );
        }
    }
}
