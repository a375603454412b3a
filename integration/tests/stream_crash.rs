//! Crash and restart: a stream job from a bounded `datagen` into two Iceberg tables (the
//! rows as they are, and a TUMBLE count per key) is killed with SIGKILL at random moments
//! several times and restarted each time; it resumes from its last complete checkpoint,
//! the last time at parallelism 3 instead of 2.
//! At the end both tables must hold every row exactly once: checked with DuckDB and
//! pyiceberg against the rows the generator defines (the batch run of the same job).
//!
//! `MELTWATER_CRASH_KILLS` sets the number of kills (default 3).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::{interop_python, meltwater, meltwater_bin, read_iceberg};
use serde_json::Value;

const ROWS: u64 = 40_000;

fn job(rows: u64, mode_suffix: &str) -> String {
    format!(
        r#"
SET 'pipeline.name' = 'crash{mode_suffix}';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '300 ms';

CREATE TABLE gen (
  id BIGINT,
  k INT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' HOUR
) WITH (
  'connector' = 'datagen',
  'number-of-rows' = '{rows}',
  'rows-per-second' = '8000',
  'seed' = '7',
  'fields.id.kind' = 'sequence',
  'fields.id.start' = '1',
  'fields.id.end' = '{rows}',
  'fields.k.min' = '0',
  'fields.k.max' = '9',
  'fields.ts.max-past' = '1 h'
);

CREATE TABLE IF NOT EXISTS lake.crash.raw{mode_suffix} (id BIGINT, k INT, ts TIMESTAMP(6));
CREATE TABLE IF NOT EXISTS lake.crash.counts{mode_suffix} (window_start TIMESTAMP(6), k INT, n BIGINT);

INSERT INTO lake.crash.raw{mode_suffix} SELECT id, k, ts FROM gen;

INSERT INTO lake.crash.counts{mode_suffix}
SELECT window_start, k, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '10' MINUTE))
GROUP BY window_start, window_end, k;
"#
    )
}

fn rows_of(python: &Path, dir: &Path, table: &str, reader: &str) -> Vec<Value> {
    read_iceberg(python, dir, table, reader)
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

/// A small deterministic PRNG for kill times (no dependency; the seed is printed).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn killed_stream_job_resumes_and_commits_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), job(ROWS, "")).unwrap();
    std::fs::write(dir.path().join("batch.sql"), job(ROWS, "_batch")).unwrap();
    let kills: usize = std::env::var("MELTWATER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: {kills} kills, seed {seed}");
    let mut killed = 0;
    let mut attempts = 0;
    while killed < kills && attempts < kills * 3 {
        attempts += 1;
        let mut child = Command::new(meltwater_bin())
            .current_dir(dir.path())
            .args(["run", "job.sql", "--mode", "stream"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meltwater");
        let wait = Duration::from_millis(700 + next(&mut seed) % 1500);
        let started = Instant::now();
        let mut exited = false;
        while started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if exited {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        killed += 1;
        eprintln!("killed run {killed} after {wait:?}");
    }
    assert!(
        killed >= 1,
        "the job finished before it could be killed once"
    );
    // The last run goes to the end, at another parallelism: keyed state is redistributed
    // by key group and splits by id.
    let out = meltwater(
        dir.path(),
        &["run", "job.sql", "--mode", "stream", "--parallelism", "3"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "final run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");

    // The batch run of the same job gives the reference rows.
    let out = meltwater(dir.path(), &["run", "batch.sql", "--mode", "batch"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let Some(python) = interop_python("the crash test's read-back") else {
        return;
    };
    for reader in ["duckdb", "pyiceberg"] {
        let raw = rows_of(&python, dir.path(), "crash.raw", reader);
        assert_eq!(raw.len() as u64, ROWS, "{reader}: raw row count");
        let mut ids: Vec<u64> = raw.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as u64, ROWS, "{reader}: duplicate ids in raw");
        assert_eq!(
            raw,
            rows_of(&python, dir.path(), "crash.raw_batch", reader),
            "{reader}: stream rows differ from batch rows"
        );
        let counts = rows_of(&python, dir.path(), "crash.counts", reader);
        let total: u64 = counts.iter().map(|r| r["n"].as_u64().unwrap()).sum();
        assert_eq!(total, ROWS, "{reader}: sum of window counts");
        let mut keys = BTreeMap::new();
        for r in &counts {
            let key = (r["window_start"].to_string(), r["k"].to_string());
            assert!(
                keys.insert(key, ()).is_none(),
                "{reader}: a window was emitted twice: {r}"
            );
        }
        assert_eq!(
            counts,
            rows_of(&python, dir.path(), "crash.counts_batch", reader),
            "{reader}: stream windows differ from batch windows"
        );
    }
}
