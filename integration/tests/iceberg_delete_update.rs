//! `DELETE FROM` and `UPDATE` on Iceberg tables (batch mode, copy-on-write): only the
//! files holding matching rows are rewritten, one snapshot per job; DuckDB and pyiceberg
//! read the result back row for row. Also: an upsert table (equality deletes in its
//! history) rewritten correctly, two statements rewriting one file refused, stream
//! mode refusing both statements, and a `write.delete.mode` that names no mode refused
//! (merge-on-read: `iceberg_merge_on_read.rs`).

use meltwater_integration::{iceberg_snapshots, interop_python, meltwater, read_iceberg};

const LOAD: &str = r#"
CREATE TABLE src (day DATE, k STRING, v BIGINT) WITH (
  'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE IF NOT EXISTS lake.db.daily (day DATE, k STRING, v BIGINT) PARTITIONED BY (day);
CREATE TABLE IF NOT EXISTS lake.db.keyed (
  k STRING, v BIGINT, PRIMARY KEY (k) NOT ENFORCED
) WITH ('write.upsert' = 'true');
INSERT INTO lake.db.daily SELECT day, k, v FROM src;
INSERT INTO lake.db.keyed SELECT k, v FROM src;
"#;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn run(dir: &std::path::Path, job: &str, mode: &str) -> (bool, String, String) {
    let out = meltwater(dir, &["run", job, "--mode", mode]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn delete_and_update_rewrite_only_the_matching_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "src.csv",
        "day,k,v\n2026-01-01,a,1\n2026-01-01,b,2\n2026-01-02,a,3\n2026-01-03,c,4\n",
    );
    write(d, "load.sql", LOAD);
    let (ok, out, err) = run(d, "load.sql", "batch");
    assert!(ok, "{out}\n{err}");
    // A second upsert makes `keyed` carry equality deletes the rewrite must honour.
    write(d, "src.csv", "day,k,v\n2026-01-05,a,100\n");
    let (ok, out, err) = run(d, "load.sql", "batch");
    assert!(ok, "{out}\n{err}");

    write(
        d,
        "change.sql",
        "DELETE FROM lake.db.daily WHERE k = 'a' AND v < 3;\n\
         UPDATE lake.db.daily SET v = v * 10, k = 'C' WHERE k = 'c';\n\
         DELETE FROM lake.db.daily WHERE v IS NULL;\n\
         UPDATE lake.db.keyed SET v = v + 1 WHERE k IN ('a', 'b');\n",
    );
    let (ok, out, err) = run(d, "change.sql", "batch");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("delete lake.db.daily: 1 row"), "{out}");
    assert!(out.contains("update lake.db.daily: 1 row"), "{out}");
    assert!(out.contains("delete lake.db.daily: 0 rows"), "{out}");
    assert!(out.contains("update lake.db.keyed: 2 rows"), "{out}");

    let Some(python) = interop_python("the DELETE/UPDATE read-back") else {
        return;
    };
    let daily = [
        r#"{"day":"2026-01-01","k":"b","v":2}"#,
        r#"{"day":"2026-01-02","k":"a","v":3}"#,
        r#"{"day":"2026-01-03","k":"C","v":40}"#,
        r#"{"day":"2026-01-05","k":"a","v":100}"#,
    ];
    for reader in ["duckdb", "pyiceberg"] {
        assert_eq!(
            read_iceberg(&python, d, "db.daily", reader),
            daily,
            "{reader}"
        );
    }
    assert_eq!(
        read_iceberg(&python, d, "db.keyed", "duckdb"),
        [
            r#"{"k":"a","v":101}"#,
            r#"{"k":"b","v":3}"#,
            r#"{"k":"c","v":4}"#,
        ]
    );
    let snapshots = iceberg_snapshots(&python, d, "db.daily");
    assert_eq!(snapshots.len(), 3);
    let head = &snapshots[2];
    assert_eq!(head["operation"], "overwrite");
    // Two of the four day-partition files were rewritten; 01-02 and 01-05 stayed.
    assert_eq!(head["summary"]["deleted-data-files"], "2");
    assert_eq!(head["summary"]["added-data-files"], "2");
    assert_eq!(head["summary"]["total-records"], "4");

    // Two statements rewriting one file in one job would each keep rows the other
    // changed: refused, nothing committed.
    write(
        d,
        "both.sql",
        "DELETE FROM lake.db.daily WHERE k = 'b';\nUPDATE lake.db.daily SET v = 0 WHERE day = DATE '2026-01-01';\n",
    );
    let (ok, _, err) = run(d, "both.sql", "batch");
    assert!(!ok);
    assert!(err.contains("rewrite the same file"), "{err}");
    assert_eq!(iceberg_snapshots(&python, d, "db.daily").len(), 3);
}

#[test]
fn delete_is_refused_where_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "src.csv", "day,k,v\n2026-01-01,a,1\n");
    write(d, "load.sql", LOAD);
    assert!(run(d, "load.sql", "batch").0);
    write(d, "del.sql", "DELETE FROM lake.db.daily WHERE k = 'a';\n");
    let (ok, _, err) = run(d, "del.sql", "stream");
    assert!(!ok);
    assert!(
        err.contains("DELETE lake.db.daily: a row-level delete is a batch operation"),
        "{err}"
    );

    write(
        d,
        "mor.sql",
        "CREATE TABLE IF NOT EXISTS lake.db.mor (k STRING) WITH ('write.delete.mode' = 'merge-on-write');\n\
         DELETE FROM lake.db.mor WHERE k = 'a';\n",
    );
    let (ok, _, err) = run(d, "mor.sql", "batch");
    assert!(!ok);
    assert!(
        err.contains("'write.delete.mode' = 'merge-on-write' is not a write mode; use 'copy-on-write' or 'merge-on-read'"),
        "{err}"
    );
}

/// The data files under `dir` whose path contains `part` (a partition directory).
fn data_files(dir: &std::path::Path, part: &str, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            data_files(&path, part, out);
        } else if path.to_string_lossy().contains(part)
            && path.extension().is_some_and(|e| e == "parquet")
        {
            out.push(path);
        }
    }
}

/// A `DELETE` whose condition covers whole partitions removes their files by metadata,
/// in both modes, without reading them: the files of the deleted day are overwritten
/// with bytes no reader accepts first, and the statement still succeeds.
#[test]
fn delete_by_partition_removes_whole_files_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "src.csv",
        "day,k,v\n2026-01-01,a,1\n2026-01-02,b,2\n2026-01-02,c,3\n2026-01-03,d,4\n",
    );
    write(
        d,
        "load.sql",
        "CREATE TABLE src (day DATE, k STRING, v BIGINT) WITH (\n\
           'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true');\n\
         CREATE TABLE IF NOT EXISTS lake.db.cow (day DATE, k STRING, v BIGINT) PARTITIONED BY (day);\n\
         CREATE TABLE IF NOT EXISTS lake.db.mor (day DATE, k STRING, v BIGINT) PARTITIONED BY (day)\n\
           WITH ('write.delete.mode' = 'merge-on-read');\n\
         INSERT INTO lake.db.cow SELECT * FROM src;\n\
         INSERT INTO lake.db.mor SELECT * FROM src;\n",
    );
    let (ok, out, err) = run(d, "load.sql", "batch");
    assert!(ok, "{out}\n{err}");
    let mut broken = Vec::new();
    data_files(
        &d.join("meltwater-data/warehouse"),
        "2026-01-02",
        &mut broken,
    );
    assert_eq!(broken.len(), 2, "{broken:?}");
    for f in &broken {
        std::fs::write(f, b"not parquet").unwrap();
    }
    write(
        d,
        "del.sql",
        "DELETE FROM lake.db.cow WHERE day = DATE '2026-01-02';\n\
         DELETE FROM lake.db.mor WHERE day >= DATE '2026-01-02' AND day < DATE '2026-01-03';\n",
    );
    let (ok, out, err) = run(d, "del.sql", "batch");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("delete lake.db.cow: 2 rows"), "{out}");
    assert!(out.contains("delete lake.db.mor: 2 rows"), "{out}");

    let Some(python) = interop_python("the delete-by-partition read-back") else {
        return;
    };
    let rest = [
        r#"{"day":"2026-01-01","k":"a","v":1}"#,
        r#"{"day":"2026-01-03","k":"d","v":4}"#,
    ];
    for table in ["db.cow", "db.mor"] {
        for reader in ["duckdb", "pyiceberg"] {
            assert_eq!(
                read_iceberg(&python, d, table, reader),
                rest,
                "{table} {reader}"
            );
        }
        let snapshots = iceberg_snapshots(&python, d, table);
        let head = &snapshots[snapshots.len() - 1];
        assert_eq!(head["summary"]["deleted-data-files"], "1", "{table}");
        assert_eq!(head["summary"]["deleted-records"], "2", "{table}");
        assert!(
            head["summary"].get("added-data-files").is_none(),
            "{table}: {head}"
        );
        assert!(
            head["summary"].get("added-delete-files").is_none(),
            "{table}: {head}"
        );
    }
}
