//! Upserts read back by third-party readers: a batch job upserts into a partitioned table
//! with a composite primary key twice (the second run changes some keys and adds
//! others), then a stream job upserts an updating aggregate into another table. DuckDB
//! reads both tables with their equality deletes applied and must see exactly the
//! expected rows; pyiceberg reads the snapshots (it refuses equality deletes, 0.12) and
//! must see row-delta snapshots carrying the job's markers and consistent totals. After
//! `meltwater maintain compact` the deletes are merged away and pyiceberg reads the
//! same rows too.

use meltwater_integration::{iceberg_snapshots, interop_python, meltwater, read_iceberg};

const JOB: &str = r#"
SET 'pipeline.name' = 'upserts';

CREATE TABLE src (day DATE, k STRING, v BIGINT) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);

CREATE TABLE IF NOT EXISTS lake.db.daily (
  day DATE, k STRING, v BIGINT,
  PRIMARY KEY (day, k) NOT ENFORCED
) PARTITIONED BY (day) WITH ('write.upsert' = 'true');

INSERT INTO lake.db.daily SELECT day, k, v FROM src;
"#;

const STREAM_JOB: &str = r#"
SET 'pipeline.name' = 'totals';
SET 'execution.checkpointing.interval' = '100 ms';

CREATE TABLE src (day DATE, k STRING, v BIGINT) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);

CREATE TABLE IF NOT EXISTS lake.db.totals (
  k STRING, n BIGINT, total BIGINT, PRIMARY KEY (k) NOT ENFORCED
);

INSERT INTO lake.db.totals SELECT k, COUNT(*), SUM(v) FROM src GROUP BY k;
"#;

fn run(dir: &std::path::Path, job: &str, mode: &str) {
    let out = meltwater(dir, &["run", job, "--mode", mode]);
    assert!(
        out.status.success(),
        "{job} --mode {mode} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn duckdb_reads_upserted_tables_exactly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), JOB).unwrap();
    std::fs::write(dir.path().join("stream.sql"), STREAM_JOB).unwrap();
    std::fs::write(
        dir.path().join("src.csv"),
        "day,k,v\n2026-01-01,a,1\n2026-01-01,b,2\n2026-01-02,a,3\n2026-01-02,c,4\n",
    )
    .unwrap();
    run(dir.path(), "job.sql", "batch");
    // The second run: (01-01, a) and (01-02, c) change, (01-03, d) is new.
    std::fs::write(
        dir.path().join("src.csv"),
        "day,k,v\n2026-01-01,a,10\n2026-01-02,c,40\n2026-01-03,d,5\n",
    )
    .unwrap();
    run(dir.path(), "job.sql", "batch");
    run(dir.path(), "stream.sql", "stream");

    let Some(python) = interop_python("the upsert read-back") else {
        return;
    };
    let expected_daily = [
        r#"{"day":"2026-01-01","k":"a","v":10}"#,
        r#"{"day":"2026-01-01","k":"b","v":2}"#,
        r#"{"day":"2026-01-02","k":"a","v":3}"#,
        r#"{"day":"2026-01-02","k":"c","v":40}"#,
        r#"{"day":"2026-01-03","k":"d","v":5}"#,
    ];
    assert_eq!(
        read_iceberg(&python, dir.path(), "db.daily", "duckdb"),
        expected_daily
    );
    assert_eq!(
        read_iceberg(&python, dir.path(), "db.totals", "duckdb"),
        [
            r#"{"k":"a","n":1,"total":10}"#,
            r#"{"k":"c","n":1,"total":40}"#,
            r#"{"k":"d","n":1,"total":5}"#,
        ]
    );

    let snapshots = iceberg_snapshots(&python, dir.path(), "db.daily");
    assert_eq!(snapshots.len(), 2);
    let head = &snapshots[1];
    assert_eq!(head["current"], true);
    assert_eq!(head["operation"], "overwrite");
    assert_eq!(head["sequence_number"], 2);
    assert_eq!(head["parent_snapshot_id"], snapshots[0]["snapshot_id"]);
    let summary = &head["summary"];
    assert_eq!(summary["meltwater.job-id"], "upserts");
    assert_eq!(summary["added-records"], "3");
    assert_eq!(summary["added-equality-deletes"], "3");
    // 4 rows, then 3 more (the reader subtracts the 2 replaced ones).
    assert_eq!(summary["total-records"], "7");
    assert_eq!(summary["total-equality-deletes"], "7");

    // Compaction merges the equality deletes into the data (01-03 has one file and no
    // deletes, so it stays): same rows, and now pyiceberg reads the table as well.
    let out = meltwater(dir.path(), &["maintain", "compact", "lake.db.daily"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rewrote 4 rows in 2 partitions: 4 data files and 5 delete files removed"),
        "{stdout}"
    );
    for reader in ["duckdb", "pyiceberg"] {
        assert_eq!(
            read_iceberg(&python, dir.path(), "db.daily", reader),
            expected_daily,
            "{reader} after compaction"
        );
    }
    let snapshots = iceberg_snapshots(&python, dir.path(), "db.daily");
    assert_eq!(snapshots[2]["operation"], "replace");
    assert_eq!(snapshots[2]["summary"]["total-delete-files"], "0");
}
