//! An Iceberg table as an unbounded stream source: with `iceberg.source.monitor-interval`
//! a stream job reads the table's snapshot, then every append committed after it (here by
//! batch jobs running alongside). The job is killed with SIGKILL and restarted between
//! appends; it resumes from its checkpoint, from the snapshot it started on, so the sink
//! table ends with every source row exactly once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::{interop_python, meltwater, meltwater_bin, read_iceberg};

const FOLLOW: &str = r#"
SET 'pipeline.name' = 'follow';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '200 ms';
SET 'iceberg.source.monitor-interval' = '100 ms';
CREATE TABLE IF NOT EXISTS lake.f.dst (id BIGINT, label STRING);
INSERT INTO lake.f.dst SELECT id, upper(label) FROM lake.f.src WHERE id > 0;
"#;

/// Appends rows `ids` to the source table with a batch job.
fn append(dir: &Path, ids: std::ops::RangeInclusive<i64>) {
    let values: Vec<String> = ids.map(|i| format!("({i}, 'row{i}')")).collect();
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS lake.f.src (id BIGINT, label STRING);\n\
         INSERT INTO lake.f.src VALUES {};\n",
        values.join(", ")
    );
    std::fs::write(dir.join("append.sql"), sql).unwrap();
    let out = meltwater(dir, &["run", "append.sql", "--mode", "batch"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows committed to `table` so far (the sum of its snapshots' added rows).
fn committed_rows(dir: &Path, table: &str) -> u64 {
    let out = meltwater(dir, &["catalog", "snapshots", table]);
    if !out.status.success() {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // snapshot parent date time operation added-rows job
            cols.get(cols.len().checked_sub(2)?)?.parse::<u64>().ok()
        })
        .sum()
}

fn start(dir: &Path) -> Child {
    Command::new(meltwater_bin())
        .current_dir(dir)
        .args(["run", "follow.sql", "--mode", "stream"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start meltwater")
}

/// Waits until `table` holds `rows` rows, failing after a deadline (the job must still run).
fn wait_for(dir: &Path, child: &mut Child, table: &str, rows: u64) {
    let started = Instant::now();
    loop {
        let n = committed_rows(dir, table);
        if n == rows {
            return;
        }
        assert!(
            n < rows,
            "{table} holds {n} rows, more than the {rows} expected"
        );
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the stream job exited ({status}) before {table} held {rows} rows:\n{err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{table} holds {n} rows after 60 s, expected {rows}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stream_job_follows_iceberg_appends_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("follow.sql"), FOLLOW).unwrap();
    append(dir, 1..=3);

    let mut job = start(dir);
    wait_for(dir, &mut job, "lake.f.dst", 3);
    append(dir, 4..=5);
    wait_for(dir, &mut job, "lake.f.dst", 5);
    append(dir, 6..=6);
    job.kill().expect("SIGKILL");
    job.wait().unwrap();

    // While it is down, two more appends; the restarted job reads them after row 6,
    // without reading rows 1..5 again.
    append(dir, 7..=8);
    append(dir, 9..=9);
    let mut job = start(dir);
    wait_for(dir, &mut job, "lake.f.dst", 9);
    // Nothing more arrives: after a few more checkpoints the table still holds 9 rows.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(committed_rows(dir, "lake.f.dst"), 9);
    job.kill().expect("SIGKILL");
    job.wait().unwrap();

    let Some(python) = interop_python("the Iceberg follow test's read-back") else {
        return;
    };
    let mut ids: Vec<i64> = read_iceberg(&python, dir, "f.dst", "duckdb")
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                v["label"].as_str().unwrap(),
                format!("ROW{}", v["id"]),
                "{v}"
            );
            v["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=9).collect::<Vec<_>>());
}
