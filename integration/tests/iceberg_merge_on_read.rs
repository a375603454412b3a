//! Merge-on-read `DELETE`, `UPDATE` and `MERGE` on Iceberg tables (`write.delete.mode` /
//! `write.update.mode` / `write.merge.mode` = `merge-on-read`), from job files run by the
//! CLI: the data files stay, the changed rows are deleted by position-delete files
//! (reserved field ids, sorted, pointing at exactly the rows the statements changed) and
//! new values (and a `MERGE`'s inserted rows) land in new data files, one row-delta
//! snapshot per job. A partitioned and an unpartitioned table are read back row for row
//! by Meltwater, DuckDB and pyiceberg after each job (the second job reads through the
//! first one's deletes), and `meltwater maintain compact` folds the deletes away with the
//! same rows.

use meltwater_integration::{
    iceberg_files, iceberg_snapshots, interop_python, meltwater, meltwater_ok, printed_rows,
    read_iceberg,
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

const MERGE_SETUP: &str = "
CREATE TABLE IF NOT EXISTS lake.db.mevents (day DATE, id BIGINT, v STRING) PARTITIONED BY (day)
  WITH ('write.merge.mode' = 'merge-on-read');
CREATE TABLE IF NOT EXISTS lake.db.mplain (id BIGINT, v STRING)
  WITH ('write.merge.mode' = 'merge-on-read');
";

/// Two loads: days 03-01 and 03-02 of `mevents` and `mplain` get two data files each.
const MERGE_LOAD_1: &str = "
INSERT INTO lake.db.mevents VALUES (DATE '2026-03-01', 1, 'a'), (DATE '2026-03-01', 2, 'b'),
  (DATE '2026-03-02', 3, 'c'), (DATE '2026-03-02', 4, 'd'), (DATE '2026-03-03', 5, 'e');
INSERT INTO lake.db.mplain VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f');
";
const MERGE_LOAD_2: &str = "
INSERT INTO lake.db.mevents VALUES (DATE '2026-03-01', 6, 'f'), (DATE '2026-03-02', 7, 'g'),
  (DATE '2026-03-02', 8, 'h');
INSERT INTO lake.db.mplain VALUES (7, 'g'), (8, 'h'), (9, 'i');
";

/// The source of the first `MERGE` into `mevents`: for each row, what it should do.
const FIXES_CSV: &str = "day,id,v,op
2026-03-01,2,B,update
2026-03-02,4,x,delete
2026-03-02,7,G,update
2026-03-02,8,x,keep
2026-03-04,10,j,insert
2026-03-01,11,k,skip
2026-03-03,5,E,update
";

/// Conditional clauses; the `ON` condition's `e.day <= ...` prunes day 03-03's file
/// (so id 5 finds no match there, and its `update` row inserts nothing). In the same
/// job, an unconditional upsert of `mplain` from a subquery.
const MERGE_1: &str = "
CREATE TABLE fixes (day DATE, id BIGINT, v STRING, op STRING) WITH (
  'connector' = 'filesystem', 'path' = 'fixes.csv', 'format' = 'csv', 'csv.header' = 'true');
MERGE INTO lake.db.mevents e USING fixes f
  ON e.id = f.id AND e.day = f.day AND e.day <= DATE '2026-03-02'
WHEN MATCHED AND f.op = 'delete' THEN DELETE
WHEN MATCHED AND f.op = 'update' THEN UPDATE SET v = f.v
WHEN NOT MATCHED AND f.op = 'insert' THEN INSERT VALUES (f.day, f.id, f.v);
MERGE INTO lake.db.mplain t
USING (SELECT * FROM (VALUES (1, 'A'), (3, NULL), (8, 'H'), (20, 'T')) AS x(id, v)) AS s
  ON t.id = s.id
WHEN MATCHED AND s.v IS NULL THEN DELETE
WHEN MATCHED THEN UPDATE SET v = s.v
WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v);
";

/// Through the first job's deletes: id 4 of `mevents` is gone, so its source row inserts
/// it again; ids 2 and 7 now live in the first job's new files. `mplain`: matched
/// deletes only (id 3 is gone already).
const MERGE_2: &str = "
MERGE INTO lake.db.mevents e USING (SELECT * FROM (VALUES
    (DATE '2026-03-02', 7, 'G2'), (DATE '2026-03-01', 2, 'gone'), (DATE '2026-03-02', 4, 'back')
  ) AS x(day, id, v)) AS f ON e.id = f.id
WHEN MATCHED AND f.v = 'gone' THEN DELETE
WHEN MATCHED THEN UPDATE SET v = f.v, day = DATE '2026-03-09'
WHEN NOT MATCHED THEN INSERT VALUES (f.day, f.id, f.v);
MERGE INTO lake.db.mplain t USING (SELECT * FROM (VALUES (3), (8), (20)) AS k(id)) AS s
  ON t.id = s.id
WHEN MATCHED THEN DELETE;
";

const MERGE_READ: &str = "
CREATE TABLE out_events (day DATE, id BIGINT, v STRING) WITH ('connector' = 'print');
CREATE TABLE out_plain (id BIGINT, v STRING) WITH ('connector' = 'print');
INSERT INTO out_events SELECT * FROM lake.db.mevents;
INSERT INTO out_plain SELECT * FROM lake.db.mplain;
";

/// A row of `mevents` (day, id, v) and of `mplain` (id, v).
type Event = (&'static str, i64, &'static str);
type Plain = (i64, &'static str);

fn event_json(&(day, id, v): &Event) -> String {
    format!(r#"{{"day":"{day}","id":{id},"v":"{v}"}}"#)
}

fn plain_json(&(id, v): &Plain) -> String {
    format!(r#"{{"id":{id},"v":"{v}"}}"#)
}

/// Meltwater's print sink, and (with `python`) DuckDB and pyiceberg, read exactly
/// `events` and `plain` (each in the readers' order: by day, then id).
fn check_merge_tables(
    python: Option<&std::path::Path>,
    dir: &std::path::Path,
    events: &[Event],
    plain: &[Plain],
) {
    let mut printed: Vec<String> = events
        .iter()
        .map(|(day, id, v)| format!("+I[{day}, {id}, {v}]"))
        .chain(plain.iter().map(|(id, v)| format!("+I[{id}, {v}]")))
        .collect();
    printed.sort();
    assert_eq!(printed_rows(&run(dir, "read.sql", MERGE_READ)), printed);
    let Some(python) = python else {
        return;
    };
    for (table, rows) in [
        (
            "db.mevents",
            events.iter().map(event_json).collect::<Vec<_>>(),
        ),
        ("db.mplain", plain.iter().map(plain_json).collect()),
    ] {
        for reader in ["duckdb", "pyiceberg"] {
            assert_eq!(
                read_iceberg(python, dir, table, reader),
                rows,
                "{reader} reading {table}"
            );
        }
    }
}

/// `rows` as JSON, sorted as [`deleted_rows`] returns them.
fn sorted_json<T>(rows: &[T], json: fn(&T) -> String) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(json).collect();
    out.sort();
    out
}

/// The head snapshot of `table`, checked to remove no data or delete file.
fn row_delta_head(python: &std::path::Path, dir: &std::path::Path, table: &str) -> Value {
    let snapshots = iceberg_snapshots(python, dir, table);
    let head = snapshots.last().unwrap().clone();
    let summary = &head["summary"];
    assert!(
        summary.get("deleted-data-files").is_none(),
        "{table}: {head}"
    );
    assert!(
        summary.get("removed-delete-files").is_none(),
        "{table}: {head}"
    );
    head
}

#[test]
fn merge_on_read_merge_writes_position_deletes_and_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "load1.sql", &format!("{MERGE_SETUP}{MERGE_LOAD_1}"));
    run(d, "load2.sql", MERGE_LOAD_2);
    std::fs::write(d.join("fixes.csv"), FIXES_CSV).unwrap();
    let python = interop_python("the merge-on-read MERGE read-back");

    // Only the files the ON condition's filter cannot rule out are read: days 03-01 and
    // 03-02 (two files each), not 03-03.
    std::fs::write(d.join("merge1.sql"), MERGE_1).unwrap();
    let (plan, _) = meltwater_ok(d, &["explain", "merge1.sql", "--mode", "batch"]);
    assert!(
        plan.contains("MergeScanExec: table=lake.db.mevents, files=4,"),
        "{plan}"
    );
    assert!(
        plan.contains("IcebergMergeExec: table=lake.db.mevents"),
        "{plan}"
    );

    // Job 1. Events: two updates, one delete, one insert; a matched row no clause applies
    // to (id 8) and unmatched rows no insert clause applies to stay as they are.
    let report = run(d, "merge1.sql", MERGE_1);
    assert!(report.contains("merge lake.db.mevents: 4 rows"), "{report}");
    assert!(report.contains("merge lake.db.mplain: 4 rows"), "{report}");
    let events_1: [Event; 8] = [
        ("2026-03-01", 1, "a"),
        ("2026-03-01", 2, "B"),
        ("2026-03-01", 6, "f"),
        ("2026-03-02", 3, "c"),
        ("2026-03-02", 7, "G"),
        ("2026-03-02", 8, "h"),
        ("2026-03-03", 5, "e"),
        ("2026-03-04", 10, "j"),
    ];
    let plain_1: [Plain; 9] = [
        (1, "A"),
        (2, "b"),
        (4, "d"),
        (5, "e"),
        (6, "f"),
        (7, "g"),
        (8, "H"),
        (9, "i"),
        (20, "T"),
    ];
    check_merge_tables(python.as_deref(), d, &events_1, &plain_1);
    let Some(python) = python else {
        return;
    };
    let head = row_delta_head(&python, d, "db.mevents");
    assert_eq!(head["operation"], "overwrite", "{head}");
    let summary = &head["summary"];
    // Position deletes for ids 2 (03-01, first file), 4 and 7 (03-02, one per file); new
    // files for the updated rows (03-01, 03-02) and the inserted one (03-04).
    assert_eq!(summary["added-position-delete-files"], "3", "{summary}");
    assert_eq!(summary["added-position-deletes"], "3", "{summary}");
    assert_eq!(summary["added-data-files"], "3", "{summary}");
    assert_eq!(summary["added-records"], "3", "{summary}");
    let files = iceberg_files(&python, d, "db.mevents");
    let deleted_events: [Event; 3] = [
        ("2026-03-01", 2, "b"),
        ("2026-03-02", 4, "d"),
        ("2026-03-02", 7, "g"),
    ];
    assert_eq!(
        deleted_rows(&files),
        sorted_json(&deleted_events, event_json)
    );
    assert_eq!(split_files(&files).1.len(), 5 + 3, "{files:?}");
    let head = row_delta_head(&python, d, "db.mplain");
    assert_eq!(head["operation"], "overwrite", "{head}");
    // Ids 1 and 3 in the first file, 8 in the second.
    assert_eq!(
        head["summary"]["added-position-delete-files"], "2",
        "{head}"
    );
    assert_eq!(head["summary"]["added-records"], "3", "{head}");
    assert_eq!(
        deleted_rows(&iceberg_files(&python, d, "db.mplain")),
        sorted_json(&[(1, "a"), (3, "c"), (8, "h")], plain_json)
    );

    // Job 2 reads through job 1's deletes: id 4 of `mevents` matches nothing and comes
    // back as an insert; ids 2 and 7 are found in job 1's new files.
    let report = run(d, "merge2.sql", MERGE_2);
    assert!(report.contains("merge lake.db.mevents: 3 rows"), "{report}");
    assert!(report.contains("merge lake.db.mplain: 2 rows"), "{report}");
    let events_2: [Event; 8] = [
        ("2026-03-01", 1, "a"),
        ("2026-03-01", 6, "f"),
        ("2026-03-02", 3, "c"),
        ("2026-03-02", 4, "back"),
        ("2026-03-02", 8, "h"),
        ("2026-03-03", 5, "e"),
        ("2026-03-04", 10, "j"),
        ("2026-03-09", 7, "G2"),
    ];
    let plain_2: [Plain; 7] = [
        (1, "A"),
        (2, "b"),
        (4, "d"),
        (5, "e"),
        (6, "f"),
        (7, "g"),
        (9, "i"),
    ];
    check_merge_tables(Some(&python), d, &events_2, &plain_2);
    let head = row_delta_head(&python, d, "db.mevents");
    assert_eq!(
        head["summary"]["added-position-delete-files"], "2",
        "{head}"
    );
    assert_eq!(head["summary"]["added-records"], "2", "{head}");
    let mut deleted = deleted_events.to_vec();
    deleted.extend([("2026-03-01", 2, "B"), ("2026-03-02", 7, "G")]);
    assert_eq!(
        deleted_rows(&iceberg_files(&python, d, "db.mevents")),
        sorted_json(&deleted, event_json)
    );
    // Deletes only: a `delete` snapshot.
    let head = row_delta_head(&python, d, "db.mplain");
    assert_eq!(head["operation"], "delete", "{head}");
    assert_eq!(head["summary"]["added-position-deletes"], "2", "{head}");
    assert!(head["summary"].get("added-data-files").is_none(), "{head}");

    // A target row matched by two source rows fails the statement; nothing is committed.
    let snapshots = iceberg_snapshots(&python, d, "db.mplain").len();
    std::fs::write(
        d.join("twice.sql"),
        "MERGE INTO lake.db.mplain t USING (SELECT * FROM (VALUES (1, 'x'), (1, 'y'), (50, 'z')) AS x(id, v)) AS s
           ON t.id = s.id
         WHEN MATCHED THEN UPDATE SET v = s.v
         WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v);",
    )
    .unwrap();
    let out = meltwater(d, &["run", "twice.sql", "--mode", "batch"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MERGE INTO lake.db.mplain: a target row matches more than one source row"),
        "{stderr}"
    );
    assert_eq!(iceberg_snapshots(&python, d, "db.mplain").len(), snapshots);

    // Compaction folds the position deletes into files holding the same rows.
    for table in ["db.mevents", "db.mplain"] {
        meltwater_ok(d, &["maintain", "compact", &format!("lake.{table}")]);
        let files = iceberg_files(&python, d, table);
        assert!(
            files.iter().all(|f| f["content"] == "data"),
            "{table}: {files:?}"
        );
        let snapshots = iceberg_snapshots(&python, d, table);
        assert_eq!(snapshots.last().unwrap()["operation"], "replace");
    }
    check_merge_tables(Some(&python), d, &events_2, &plain_2);
}
