//! Stopping a stream job with SIGTERM: the job takes a checkpoint, commits it and exits 0;
//! the next run resumes from that checkpoint, so over two stopped runs every generated
//! row is in the table exactly once and no row is skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::{interop_python, meltwater_bin, read_iceberg};

const JOB: &str = r#"
SET 'pipeline.name' = 'stopping';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '1 h';
CREATE TABLE gen (id BIGINT) WITH (
  'connector' = 'datagen',
  'number-of-rows' = '1000000000',
  'rows-per-second' = '2000',
  'fields.id.kind' = 'sequence',
  'fields.id.start' = '1',
  'fields.id.end' = '1000000000'
);
CREATE TABLE IF NOT EXISTS lake.s.ids (id BIGINT);
INSERT INTO lake.s.ids SELECT id FROM gen;
"#;

fn start(dir: &Path) -> Child {
    Command::new(meltwater_bin())
        .current_dir(dir)
        .args(["run", "job.sql", "--mode", "stream"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start meltwater")
}

/// Sends SIGTERM after `after` and returns the run's stdout; the run must exit 0.
fn terminate(mut child: Child, after: Duration) -> String {
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job ended by itself"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn sigterm_checkpoints_commits_and_the_next_run_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), JOB).unwrap();

    // The checkpoint interval is an hour: only the stop takes a checkpoint.
    let first = terminate(start(dir.path()), Duration::from_millis(1500));
    assert!(
        first.contains("stopped after checkpoint 1; the next run resumes from it"),
        "{first}"
    );
    assert!(first.contains("wrote lake.s.ids:"), "{first}");

    let second = terminate(start(dir.path()), Duration::from_millis(1500));
    assert!(second.contains("restored from checkpoint 1"), "{second}");
    assert!(
        second.contains("stopped after checkpoint 2; the next run resumes from it"),
        "{second}"
    );

    let Some(python) = interop_python("the stop test's read-back") else {
        return;
    };
    let mut ids: Vec<i64> = read_iceberg(&python, dir.path(), "s.ids", "duckdb")
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let n = ids.len();
    assert!(n > 0, "the runs wrote rows");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a row was written twice");
    // Each of datagen's 4 splits emits its quarter of the ids in order from its start:
    // after two stopped runs, each quarter's ids must be a gap-free prefix of it.
    const QUARTER: i64 = 250_000_000;
    for q in 0..4 {
        let part: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| (id - 1) / QUARTER == q)
            .collect();
        let expected: Vec<i64> = (0..part.len() as i64)
            .map(|k| q * QUARTER + 1 + k)
            .collect();
        assert_eq!(part, expected, "split {q}: rows lost between the runs");
    }
}
