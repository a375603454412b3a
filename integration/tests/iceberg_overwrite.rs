//! `INSERT OVERWRITE` as the backfill primitive: a batch job recomputes the days from
//! `--param from=...` on and replaces exactly those partitions of a table partitioned by
//! day (dynamic partition overwrite), and the whole of an unpartitioned table. Running
//! the same backfill again leaves the same rows. DuckDB and pyiceberg read the tables
//! back; the snapshots are `overwrite`s whose summaries count what was replaced.

use meltwater_integration::{
    iceberg_snapshots as snapshots, interop_python, meltwater, read_iceberg,
};

const JOB: &str = r#"
SET 'pipeline.name' = 'backfill';
CREATE TABLE src (day DATE, k STRING, v BIGINT) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE IF NOT EXISTS lake.db.daily (day DATE, k STRING, v BIGINT) PARTITIONED BY (day);
CREATE TABLE IF NOT EXISTS lake.db.flat (k STRING, v BIGINT);
INSERT OVERWRITE lake.db.daily SELECT day, k, v FROM src WHERE day >= DATE '${from}';
INSERT OVERWRITE lake.db.flat SELECT k, v FROM src WHERE day >= DATE '${from}';
"#;

fn backfill(dir: &std::path::Path, from: &str) -> String {
    let out = meltwater(
        dir,
        &[
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--param",
            &format!("from={from}"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "backfill from {from} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn insert_overwrite_replaces_the_partitions_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), JOB).unwrap();
    std::fs::write(
        dir.path().join("src.csv"),
        "day,k,v\n2026-01-01,a,1\n2026-01-01,b,2\n2026-01-02,a,3\n2026-01-03,c,4\n",
    )
    .unwrap();
    backfill(dir.path(), "2026-01-01");
    // Corrected source data for 01-02; the backfill from 01-02 recomputes 01-02 and
    // 01-03 and must leave 01-01 alone.
    std::fs::write(
        dir.path().join("src.csv"),
        "day,k,v\n2026-01-01,a,100\n2026-01-02,a,30\n2026-01-02,z,9\n2026-01-03,c,4\n",
    )
    .unwrap();
    backfill(dir.path(), "2026-01-02");
    let Some(python) = interop_python("the overwrite read-back") else {
        return;
    };
    let daily = [
        r#"{"day":"2026-01-01","k":"a","v":1}"#,
        r#"{"day":"2026-01-01","k":"b","v":2}"#,
        r#"{"day":"2026-01-02","k":"a","v":30}"#,
        r#"{"day":"2026-01-02","k":"z","v":9}"#,
        r#"{"day":"2026-01-03","k":"c","v":4}"#,
    ];
    let flat = [
        r#"{"k":"a","v":30}"#,
        r#"{"k":"c","v":4}"#,
        r#"{"k":"z","v":9}"#,
    ];
    let check = || {
        for reader in ["duckdb", "pyiceberg"] {
            let rows = |t| read_iceberg(&python, dir.path(), t, reader);
            assert_eq!(rows("db.daily"), daily, "{reader}");
            assert_eq!(rows("db.flat"), flat, "{reader}");
        }
    };
    check();
    let s = snapshots(&python, dir.path(), "db.daily");
    assert_eq!(s.len(), 2);
    let summary = &s[1]["summary"];
    assert_eq!(s[1]["operation"], "overwrite");
    assert_eq!(summary["added-records"], "3");
    assert_eq!(summary["deleted-records"], "2");
    assert_eq!(summary["deleted-data-files"], "2");
    assert_eq!(summary["total-records"], "5");
    assert_eq!(summary["changed-partition-count"], "2");

    // The same backfill again: the same rows, one more snapshot.
    backfill(dir.path(), "2026-01-02");
    check();
    assert_eq!(snapshots(&python, dir.path(), "db.daily").len(), 3);
}

#[test]
fn stream_mode_refuses_insert_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.sql"),
        JOB.replace("${from}", "2026-01-01"),
    )
    .unwrap();
    std::fs::write(dir.path().join("src.csv"), "day,k,v\n2026-01-01,a,1\n").unwrap();
    let out = meltwater(dir.path(), &["run", "job.sql", "--mode", "stream"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INSERT OVERWRITE is a batch operation"),
        "{stderr}"
    );
}
