//! The staged batch runtime from the command line: a job over an input more than ten
//! times its memory limit completes by spilling and prints what the pipelined in-memory
//! run prints; an injected task failure is retried; a stage out of attempts fails the
//! job naming the stage, the partition and the cause, commits nothing, and leaves no
//! shuffle files behind.

use std::fmt::Write as _;
use std::path::Path;

use meltwater_integration::{meltwater, meltwater_with_env, printed_rows};

const JOB: &str = r#"
-- Small batches: a 2 MiB budget holds one batch per spill file in each merge.
SET 'datafusion.execution.batch_size' = '256';
CREATE TABLE src (id BIGINT, k BIGINT, s STRING) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE by_group (g BIGINT, n BIGINT, m BIGINT, t BIGINT) WITH ('connector' = 'print');
CREATE TABLE pairs (k BIGINT, n BIGINT, t BIGINT, l STRING) WITH ('connector' = 'print');
INSERT INTO by_group SELECT id % 40000, count(*), max(id), sum(k) FROM src GROUP BY id % 40000;
INSERT INTO pairs
SELECT a.k, count(*), sum(b.id), min(concat(a.s, b.s))
FROM src a JOIN src b ON a.id = b.id + 1 GROUP BY a.k;
"#;

const ROWS: u64 = 300_000;

/// About 24 MiB of CSV: an id, a small key and a 64-character string that varies.
fn write_input(dir: &Path) -> u64 {
    let mut csv = String::with_capacity(80 * ROWS as usize);
    csv.push_str("id,k,s\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for id in 0..ROWS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(
            csv,
            "{id},{},{:016x}{:016x}{:016x}{:016x}",
            id % 97,
            x,
            !x,
            x.rotate_left(17),
            x ^ id
        );
    }
    std::fs::write(dir.join("src.csv"), &csv).unwrap();
    csv.len() as u64
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut all = vec!["run", "job.sql", "--mode", "batch"];
    all.extend_from_slice(args);
    let out = meltwater_with_env(dir, &all, env);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shuffle_runs(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("meltwater-data/shuffle")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("meltwater-shuffle-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_job_ten_times_its_memory_limit_spills_and_matches_the_in_memory_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), JOB).unwrap();
    let input = write_input(dir.path());
    let limit: u64 = 2 * 1024 * 1024;
    assert!(input > 10 * limit);

    let (ok, pipelined, err) = run(dir.path(), &["--pipelined"], &[]);
    assert!(ok, "{pipelined}\n{err}");
    let (ok, staged, err) = run(dir.path(), &["--memory-limit", "2MiB"], &[]);
    assert!(ok, "{staged}\n{err}");

    assert!(staged.contains("memory limit 2.0 MiB"), "{staged}");
    let spilled = staged
        .lines()
        .find(|l| l.starts_with("spilled "))
        .unwrap_or_else(|| panic!("no spill reported:\n{staged}"));
    assert!(
        spilled.ends_with("to disk over the memory limit"),
        "{spilled}"
    );
    // The stage table lists every stage of both statements, all tasks done.
    let stage_lines: Vec<&str> = staged
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
                && l.contains("insert ")
        })
        .collect();
    assert!(stage_lines.len() >= 4, "{staged}");
    let rows = printed_rows(&staged);
    assert_eq!(
        rows.len(),
        40_000 + 97,
        "{}",
        &staged[..2000.min(staged.len())]
    );
    assert_eq!(rows, printed_rows(&pipelined));
    assert!(
        shuffle_runs(dir.path()).is_empty(),
        "shuffle files left behind"
    );
}

#[test]
fn failed_tasks_are_retried_and_exhausted_attempts_fail_the_job_without_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let job = r#"
CREATE TABLE src (id BIGINT, k BIGINT, s STRING) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE IF NOT EXISTS lake.db.totals (k BIGINT, n BIGINT, t BIGINT);
INSERT INTO lake.db.totals SELECT k, count(*), sum(id) FROM src GROUP BY k;
"#;
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    let mut csv = String::from("id,k,s\n");
    for id in 0..5000 {
        let _ = writeln!(csv, "{id},{},x{id}", id % 7);
    }
    std::fs::write(dir.path().join("src.csv"), csv).unwrap();

    // Explain shows the stages.
    let out = meltwater(dir.path(), &["explain", "job.sql"]);
    let explain = String::from_utf8_lossy(&out.stdout);
    // One file: read by one task, aggregated partially, then finally per key.
    assert!(explain.contains("-- stages (batch, 2 stages)"), "{explain}");
    assert!(
        explain.contains("stage 1/2: 1 tasks, reads sources, writes hash [k@0] into 2 partitions"),
        "{explain}"
    );
    assert!(
        explain.contains("stage 2/2: 2 tasks, reads stage 1, final"),
        "{explain}"
    );
    assert!(explain.contains("ShuffleReadExec: stage=1"), "{explain}");

    // Task 0 of stage 1 fails on its first attempt, then succeeds.
    let (ok, stdout, stderr) = run(
        dir.path(),
        &["--parallelism", "2"],
        &[("MELTWATER_FAIL_TASK", "1/0x1")],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "stage 1, partition 0: attempt 1 of 3 failed, retrying: IO error: injected failure"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("wrote lake.db.totals: 7 rows"), "{stdout}");

    // Every attempt of the final stage's task 1 fails: the job fails, naming it, and
    // the table keeps its one snapshot.
    let (ok, stdout, stderr) = run(
        dir.path(),
        &["--parallelism", "2", "--max-attempts", "2"],
        &[("MELTWATER_FAIL_TASK", "2/1x9")],
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(
            "job.sql:6:1: stage 2, partition 1 failed after 2 attempt(s): IO error: injected failure"
        ),
        "{stderr}"
    );
    let out = meltwater(dir.path(), &["catalog", "snapshots", "lake.db.totals"]);
    let snapshots = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        snapshots.lines().filter(|l| l.contains("append")).count(),
        1,
        "{snapshots}"
    );
    assert!(
        shuffle_runs(dir.path()).is_empty(),
        "shuffle files left behind"
    );

    // --keep-shuffle keeps them, and says where.
    let (ok, stdout, stderr) = run(dir.path(), &["--keep-shuffle"], &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(shuffle_runs(dir.path()).len(), 1);
    assert!(stdout.contains("kept shuffle files in "), "{stdout}");
}
