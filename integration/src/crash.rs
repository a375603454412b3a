//! The crash-and-restart scenario shared by the crash tests (`tests/stream_crash.rs`, local
//! checkpoints; `tests/stream_crash_s3.rs`, checkpoints in an S3-compatible store): a stream
//! job from a bounded `datagen` into three Iceberg tables (the rows as they are, a TUMBLE
//! count per key, and an updating count per key upserted by primary key), killed with
//! SIGKILL at random moments, restarted, and checked to hold every row exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{meltwater_bin, read_iceberg};

/// The job: `rows` generated rows into `lake.crash.raw{suffix}`,
/// `lake.crash.counts{suffix}` and `lake.crash.totals{suffix}` (upserts: in stream mode
/// each checkpoint replaces the changed keys' rows), job id `crash{suffix}`,
/// checkpoints every 300 ms.
/// `settings` is inserted after the job's own `SET` statements.
pub fn crash_job(rows: u64, suffix: &str, settings: &str) -> String {
    format!(
        r#"
SET 'pipeline.name' = 'crash{suffix}';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '300 ms';
{settings}

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

CREATE TABLE IF NOT EXISTS lake.crash.raw{suffix} (id BIGINT, k INT, ts TIMESTAMP(6));
CREATE TABLE IF NOT EXISTS lake.crash.counts{suffix} (window_start TIMESTAMP(6), k INT, n BIGINT);
CREATE TABLE IF NOT EXISTS lake.crash.totals{suffix} (
  k INT, n BIGINT, max_id BIGINT, PRIMARY KEY (k) NOT ENFORCED
);

INSERT INTO lake.crash.raw{suffix} SELECT id, k, ts FROM gen;

INSERT INTO lake.crash.counts{suffix}
SELECT window_start, k, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '10' MINUTE))
GROUP BY window_start, window_end, k;

INSERT INTO lake.crash.totals{suffix} SELECT k, COUNT(*), MAX(id) FROM gen GROUP BY k;
"#
    )
}

/// A small deterministic PRNG for kill times (no dependency; the seed is printed).
pub fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A seed from the clock (never 0).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos() as u64
        | 1
}

/// Starts `meltwater ARGS` in `dir` (with `env` added) and kills it with SIGKILL after a
/// random 0.7 to 2.2 s, up to `kills` times (a run that ends by itself stops the loop).
/// Returns how many runs were killed.
pub fn kill_repeatedly(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    kills: usize,
    seed: &mut u64,
) -> usize {
    let mut killed = 0;
    let mut attempts = 0;
    while killed < kills && attempts < kills * 3 {
        attempts += 1;
        let mut child = Command::new(meltwater_bin())
            .current_dir(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meltwater");
        let wait = Duration::from_millis(700 + next_random(seed) % 1500);
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
    killed
}

fn rows_of(python: &Path, dir: &Path, table: &str, reader: &str) -> Vec<Value> {
    read_iceberg(python, dir, table, reader)
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

/// Checks with DuckDB and pyiceberg that `crash.raw{suffix}` holds each of the `rows` ids
/// exactly once and `crash.counts{suffix}` each window once, both equal to the batch run's
/// tables `crash.raw_batch` and `crash.counts_batch`; and with DuckDB (pyiceberg does not
/// read equality deletes) that the upserted `crash.totals{suffix}` holds one row per key,
/// equal to the batch run's `crash.totals_batch`.
pub fn assert_exactly_once(python: &Path, dir: &Path, suffix: &str, rows: u64) {
    let totals_table = format!("crash.totals{suffix}");
    let totals = rows_of(python, dir, &totals_table, "duckdb");
    let n: u64 = totals.iter().map(|r| r["n"].as_u64().unwrap()).sum();
    assert_eq!(
        n, rows,
        "duckdb: sum of the upserted counts in {totals_table}"
    );
    assert_eq!(
        totals.len(),
        10,
        "duckdb: one row per key in {totals_table}"
    );
    assert_eq!(
        totals,
        rows_of(python, dir, "crash.totals_batch", "duckdb"),
        "duckdb: upserted stream totals differ from batch totals"
    );
    let raw_table = format!("crash.raw{suffix}");
    let counts_table = format!("crash.counts{suffix}");
    for reader in ["duckdb", "pyiceberg"] {
        let raw = rows_of(python, dir, &raw_table, reader);
        assert_eq!(raw.len() as u64, rows, "{reader}: {raw_table} row count");
        let mut ids: Vec<u64> = raw.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len() as u64,
            rows,
            "{reader}: duplicate ids in {raw_table}"
        );
        assert_eq!(
            raw,
            rows_of(python, dir, "crash.raw_batch", reader),
            "{reader}: stream rows differ from batch rows"
        );
        let counts = rows_of(python, dir, &counts_table, reader);
        let total: u64 = counts.iter().map(|r| r["n"].as_u64().unwrap()).sum();
        assert_eq!(total, rows, "{reader}: sum of window counts");
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
            rows_of(python, dir, "crash.counts_batch", reader),
            "{reader}: stream windows differ from batch windows"
        );
    }
}
