//! Merge-on-read `DELETE` and `UPDATE` on Iceberg tables (`write.delete.mode` /
//! `write.update.mode` = `merge-on-read`), from job files run by the CLI: the data files
//! stay, the changed rows are deleted by position-delete files (reserved field ids,
//! sorted, pointing at exactly the rows the statements changed) and an `UPDATE`'s new
//! values land in new data files, one row-delta snapshot per job. A partitioned and an
//! unpartitioned table are read back row for row by Meltwater, DuckDB and pyiceberg after
//! each job (the second job reads through the first one's deletes), and
//! `meltwater maintain compact` folds the deletes away with the same rows.

use meltwater_integration::{
    iceberg_files, iceberg_snapshots, interop_python, meltwater_ok, printed_rows, read_iceberg,
};
use serde_json::Value;

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS lake.db.events (day DATE, id BIGINT, v STRING) PARTITIONED BY (day)
  WITH ('write.delete.mode' = 'merge-on-read', 'write.update.mode' = 'merge-on-read');
CREATE TABLE IF NOT EXISTS lake.db.plain (id BIGINT, v STRING)
  WITH ('write.delete.mode' = 'merge-on-read', 'write.update.mode' = 'merge-on-read');
";

/// Two loads: every partition of `events` and `plain` get two data files.
const LOAD_1: &str = "
INSERT INTO lake.db.events VALUES (DATE '2026-03-01', 1, 'a'), (DATE '2026-03-01', 2, 'b'),
  (DATE '2026-03-02', 3, 'c'), (DATE '2026-03-02', 4, 'd'), (DATE '2026-03-03', 5, 'e');
INSERT INTO lake.db.plain VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f');
";
const LOAD_2: &str = "
INSERT INTO lake.db.events VALUES (DATE '2026-03-01', 6, 'f'), (DATE '2026-03-02', 7, 'g'),
  (DATE '2026-03-02', 8, 'h');
INSERT INTO lake.db.plain VALUES (7, 'g'), (8, 'h'), (9, 'i');
";

const DELETE: &str = "
DELETE FROM lake.db.events WHERE v IN ('b', 'g') OR id = 4;
DELETE FROM lake.db.plain WHERE id % 3 = 0;
";

/// Reads rows the first job's deletes removed (ids 3 and 4 of `events`, 3 of `plain`)
/// must not come back; moves one row to another day's partition.
const UPDATE: &str = "
UPDATE lake.db.events SET v = v || '!', id = id + 100 WHERE day = DATE '2026-03-02';
UPDATE lake.db.events SET day = DATE '2026-03-09' WHERE id = 1;
";
const UPDATE_PLAIN: &str = "
UPDATE lake.db.plain SET v = upper(v) WHERE id < 5 OR v = 'h';
";

const READ: &str = "
CREATE TABLE out_events (day DATE, id BIGINT, v STRING) WITH ('connector' = 'print');
CREATE TABLE out_plain (id BIGINT, v STRING) WITH ('connector' = 'print');
INSERT INTO out_events SELECT * FROM lake.db.events;
INSERT INTO out_plain SELECT * FROM lake.db.plain;
";

fn run(dir: &std::path::Path, file: &str, text: &str) -> String {
    std::fs::write(dir.join(file), text).unwrap();
    meltwater_ok(dir, &["run", file, "--mode", "batch"]).0
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Meltwater's own read-back of both tables: (events, plain) as printed rows.
fn meltwater_rows(dir: &std::path::Path) -> Vec<String> {
    printed_rows(&run(dir, "read.sql", READ))
}

/// The JSON rows DuckDB and pyiceberg read, checked to agree with `expected`.
fn check_readers(python: &std::path::Path, dir: &std::path::Path, table: &str, expected: &[&str]) {
    for reader in ["duckdb", "pyiceberg"] {
        assert_eq!(
            read_iceberg(python, dir, table, reader),
            strings(expected),
            "{reader} reading {table}"
        );
    }
}

/// The position-delete and data files of the current snapshot.
fn split_files(files: &[Value]) -> (Vec<&Value>, Vec<&Value>) {
    assert!(
        files.iter().all(|f| f["content"] != "equality_deletes"),
        "{files:?}"
    );
    files
        .iter()
        .partition(|f| f["content"] == "position_deletes")
}

/// Every position-delete file has the spec's reserved field ids, is sorted, and points
/// at live data files; returns the rows they delete, sorted.
fn deleted_rows(files: &[Value]) -> Vec<String> {
    let (deletes, data) = split_files(files);
    let live: Vec<&str> = data
        .iter()
        .map(|f| f["file_path"].as_str().unwrap())
        .collect();
    let mut rows = Vec::new();
    for d in deletes {
        assert_eq!(
            d["field_ids"],
            serde_json::json!([2147483546, 2147483545]),
            "{d}"
        );
        assert_eq!(d["sorted"], true, "{d}");
        let deleted = d["deleted_rows"].as_array().unwrap();
        assert_eq!(deleted.len() as u64, d["record_count"].as_u64().unwrap());
        rows.extend(deleted.iter().map(|r| r.to_string()));
        // Meltwater writes one delete file per data file it deletes from.
        let named = d["data_files"].as_array().unwrap();
        assert_eq!(named.len(), 1, "{d}");
        assert!(live.contains(&named[0].as_str().unwrap()), "{d}");
    }
    rows.sort();
    rows
}

#[test]
fn merge_on_read_delete_and_update_write_position_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "load1.sql", &format!("{SETUP}{LOAD_1}"));
    run(d, "load2.sql", LOAD_2);
    let python = interop_python("the merge-on-read read-back");

    // Job 1: deletes only.
    let report = run(d, "delete.sql", DELETE);
    assert!(report.contains("delete lake.db.events: 3 rows"), "{report}");
    assert!(report.contains("delete lake.db.plain: 3 rows"), "{report}");
    let events_1 = [
        r#"{"day":"2026-03-01","id":1,"v":"a"}"#,
        r#"{"day":"2026-03-01","id":6,"v":"f"}"#,
        r#"{"day":"2026-03-02","id":3,"v":"c"}"#,
        r#"{"day":"2026-03-02","id":8,"v":"h"}"#,
        r#"{"day":"2026-03-03","id":5,"v":"e"}"#,
    ];
    let plain_1 = [
        r#"{"id":1,"v":"a"}"#,
        r#"{"id":2,"v":"b"}"#,
        r#"{"id":4,"v":"d"}"#,
        r#"{"id":5,"v":"e"}"#,
        r#"{"id":7,"v":"g"}"#,
        r#"{"id":8,"v":"h"}"#,
    ];
    let mut expected = strings(&[
        "+I[2026-03-01, 1, a]",
        "+I[2026-03-01, 6, f]",
        "+I[2026-03-02, 3, c]",
        "+I[2026-03-02, 8, h]",
        "+I[2026-03-03, 5, e]",
        "+I[1, a]",
        "+I[2, b]",
        "+I[4, d]",
        "+I[5, e]",
        "+I[7, g]",
        "+I[8, h]",
    ]);
    expected.sort();
    assert_eq!(meltwater_rows(d), expected);

    let Some(python) = python else {
        return;
    };
    check_readers(&python, d, "db.events", &events_1);
    check_readers(&python, d, "db.plain", &plain_1);
    for (table, deleted_files) in [("db.events", 3), ("db.plain", 2)] {
        let snapshots = iceberg_snapshots(&python, d, table);
        let head = &snapshots.last().unwrap()["summary"];
        assert_eq!(snapshots.last().unwrap()["operation"], "delete", "{table}");
        // One position-delete file per data file with a deleted row; no data file
        // rewritten or removed.
        assert_eq!(
            head["added-position-delete-files"],
            deleted_files.to_string(),
            "{table}: {head}"
        );
        assert_eq!(head["added-position-deletes"], "3", "{table}: {head}");
        assert!(head.get("added-data-files").is_none(), "{table}: {head}");
        assert!(head.get("deleted-data-files").is_none(), "{table}: {head}");
    }
    let files = iceberg_files(&python, d, "db.events");
    assert_eq!(
        deleted_rows(&files),
        strings(&[
            r#"{"day":"2026-03-01","id":2,"v":"b"}"#,
            r#"{"day":"2026-03-02","id":4,"v":"d"}"#,
            r#"{"day":"2026-03-02","id":7,"v":"g"}"#,
        ])
    );
    let data_files_1 = split_files(&files).1.len();
    assert_eq!(data_files_1, 5, "{files:?}");
    let files = iceberg_files(&python, d, "db.plain");
    assert_eq!(
        deleted_rows(&files),
        strings(&[
            r#"{"id":3,"v":"c"}"#,
            r#"{"id":6,"v":"f"}"#,
            r#"{"id":9,"v":"i"}"#
        ])
    );

    // Job 2: updates, reading through job 1's deletes. The two statements on `events`
    // touch different files (day 03-02 vs. the 03-01 file holding id 1).
    let report = run(d, "update.sql", UPDATE);
    assert!(report.contains("update lake.db.events: 2 rows"), "{report}");
    assert!(report.contains("update lake.db.events: 1 row"), "{report}");
    let report = run(d, "update_plain.sql", UPDATE_PLAIN);
    assert!(report.contains("update lake.db.plain: 4 rows"), "{report}");
    let events_2 = [
        r#"{"day":"2026-03-01","id":6,"v":"f"}"#,
        r#"{"day":"2026-03-02","id":103,"v":"c!"}"#,
        r#"{"day":"2026-03-02","id":108,"v":"h!"}"#,
        r#"{"day":"2026-03-03","id":5,"v":"e"}"#,
        r#"{"day":"2026-03-09","id":1,"v":"a"}"#,
    ];
    let plain_2 = [
        r#"{"id":1,"v":"A"}"#,
        r#"{"id":2,"v":"B"}"#,
        r#"{"id":4,"v":"D"}"#,
        r#"{"id":5,"v":"e"}"#,
        r#"{"id":7,"v":"g"}"#,
        r#"{"id":8,"v":"H"}"#,
    ];
    let mut expected = strings(&[
        "+I[2026-03-01, 6, f]",
        "+I[2026-03-02, 103, c!]",
        "+I[2026-03-02, 108, h!]",
        "+I[2026-03-03, 5, e]",
        "+I[2026-03-09, 1, a]",
        "+I[1, A]",
        "+I[2, B]",
        "+I[4, D]",
        "+I[5, e]",
        "+I[7, g]",
        "+I[8, H]",
    ]);
    expected.sort();
    assert_eq!(meltwater_rows(d), expected);
    check_readers(&python, d, "db.events", &events_2);
    check_readers(&python, d, "db.plain", &plain_2);

    let snapshots = iceberg_snapshots(&python, d, "db.events");
    let head = &snapshots.last().unwrap();
    assert_eq!(head["operation"], "overwrite", "{head}");
    let summary = &head["summary"];
    // Day 03-02's two files and day 03-01's first file get deletes; the new values are
    // new files, one per file read (two in 03-02, one in 03-09).
    assert_eq!(summary["added-position-delete-files"], "3", "{summary}");
    assert_eq!(summary["added-position-deletes"], "3", "{summary}");
    assert_eq!(summary["added-data-files"], "3", "{summary}");
    assert_eq!(summary["added-records"], "3", "{summary}");
    assert!(summary.get("deleted-data-files").is_none(), "{summary}");
    let files = iceberg_files(&python, d, "db.events");
    assert_eq!(split_files(&files).1.len(), data_files_1 + 3, "{files:?}");
    assert_eq!(
        deleted_rows(&files),
        strings(&[
            r#"{"day":"2026-03-01","id":1,"v":"a"}"#,
            r#"{"day":"2026-03-01","id":2,"v":"b"}"#,
            r#"{"day":"2026-03-02","id":3,"v":"c"}"#,
            r#"{"day":"2026-03-02","id":4,"v":"d"}"#,
            r#"{"day":"2026-03-02","id":7,"v":"g"}"#,
            r#"{"day":"2026-03-02","id":8,"v":"h"}"#,
        ])
    );

    // Compaction folds the position deletes into new files holding the same rows.
    // Days 03-01 and 03-02 have several files and deletes; 03-03 and 03-09 one clean
    // file each, left alone.
    let (out, _) = meltwater_ok(d, &["maintain", "compact", "lake.db.events"]);
    assert!(
        out.contains("rewrote 3 rows in 2 partitions: 6 data files and 6 delete files removed, 2 data files added"),
        "{out}"
    );
    let (out, _) = meltwater_ok(d, &["maintain", "compact", "lake.db.plain"]);
    assert!(
        out.contains("rewrote 6 rows in 1 partition: 4 data files and 4 delete files removed, 1 data file added"),
        "{out}"
    );
    for table in ["db.events", "db.plain"] {
        let files = iceberg_files(&python, d, table);
        assert!(
            files.iter().all(|f| f["content"] == "data"),
            "{table}: {files:?}"
        );
        let snapshots = iceberg_snapshots(&python, d, table);
        assert_eq!(snapshots.last().unwrap()["operation"], "replace");
    }
    check_readers(&python, d, "db.events", &events_2);
    check_readers(&python, d, "db.plain", &plain_2);
    assert_eq!(meltwater_rows(d), expected);
}
