//! `MERGE INTO` an Iceberg table (batch mode, copy-on-write): matched rows updated or
//! deleted by the first clause that applies, unmatched source rows inserted by the first
//! `WHEN NOT MATCHED` clause that applies, in an unpartitioned and a partitioned table;
//! DuckDB and pyiceberg read the result back. Only the data files holding updated or
//! deleted rows are rewritten: the others keep their paths, a file whose rows are all
//! deleted goes without a replacement, and a `MERGE` that only inserts (or changes
//! nothing) rewrites nothing. A target row matching two source rows fails the statement
//! and commits nothing; stream mode refuses the statement, and so does a table with an
//! unknown `write.merge.mode`.

use std::collections::BTreeSet;

use meltwater_integration::{
    iceberg_files, iceberg_snapshots, interop_python, meltwater, meltwater_ok, printed_rows,
    read_iceberg,
};

fn run(dir: &std::path::Path, file: &str) -> String {
    meltwater_ok(dir, &["run", file, "--mode", "batch"]).0
}

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS lake.m.stock (sku STRING, qty BIGINT, note STRING);
CREATE TABLE IF NOT EXISTS lake.m.events (day DATE, id BIGINT, v STRING) PARTITIONED BY (day);
INSERT INTO lake.m.stock VALUES ('a', 1, 'x'), ('b', 2, 'x'), ('c', 3, 'x'), ('d', 4, 'x');
INSERT INTO lake.m.events VALUES (DATE '2026-03-01', 1, 'a'), (DATE '2026-03-02', 2, 'b'),
  (DATE '2026-03-02', 3, 'c');
";

const MERGE: &str = "
CREATE TABLE changes (sku STRING, delta BIGINT, gone BOOLEAN) WITH (
  'connector' = 'filesystem', 'path' = 'changes.csv', 'format' = 'csv', 'csv.header' = 'true');
CREATE TABLE fixes (day DATE, id BIGINT, v STRING, drop_it BOOLEAN) WITH (
  'connector' = 'filesystem', 'path' = 'fixes.csv', 'format' = 'csv', 'csv.header' = 'true');
MERGE INTO lake.m.stock t USING changes s ON t.sku = s.sku
WHEN MATCHED AND s.gone THEN DELETE
WHEN MATCHED THEN UPDATE SET qty = t.qty + s.delta, note = 'updated'
WHEN NOT MATCHED AND NOT s.gone THEN INSERT (sku, qty) VALUES (s.sku, s.delta);
MERGE INTO lake.m.events e USING (SELECT * FROM fixes WHERE id > 0) AS f ON e.id = f.id
WHEN MATCHED AND f.drop_it THEN DELETE
WHEN MATCHED THEN UPDATE SET v = f.v
WHEN NOT MATCHED THEN INSERT VALUES (f.day, f.id, f.v);
";

#[test]
fn merge_updates_deletes_and_inserts_by_the_first_clause_that_applies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("setup.sql"), SETUP).unwrap();
    std::fs::write(d.join("merge.sql"), MERGE).unwrap();
    std::fs::write(
        d.join("changes.csv"),
        "sku,delta,gone\na,10,false\nb,0,true\ne,5,false\nf,7,true\n",
    )
    .unwrap();
    std::fs::write(
        d.join("fixes.csv"),
        // Day 2026-03-01 loses its only row: its partition must end up empty.
        "day,id,v,drop_it\n2026-03-01,1,x,true\n2026-03-02,2,B,false\n2026-03-03,9,n,false\n",
    )
    .unwrap();
    run(d, "setup.sql");
    let report = run(d, "merge.sql");
    // The report counts the rows each MERGE updated, deleted and inserted.
    assert!(report.contains("merge lake.m.stock: 3 rows"), "{report}");
    assert!(report.contains("merge lake.m.events: 3 rows"), "{report}");

    std::fs::write(
        d.join("read.sql"),
        "CREATE TABLE out (sku STRING, qty BIGINT, note STRING) WITH ('connector' = 'print');\n\
         INSERT INTO out SELECT * FROM lake.m.stock;\n",
    )
    .unwrap();
    assert_eq!(
        printed_rows(&run(d, "read.sql")),
        vec![
            "+I[a, 11, updated]",
            "+I[c, 3, x]",
            "+I[d, 4, x]",
            "+I[e, 5, null]"
        ]
    );
    let Some(python) = interop_python("the MERGE read-back") else {
        return;
    };
    let stock = [
        r#"{"sku":"a","qty":11,"note":"updated"}"#,
        r#"{"sku":"c","qty":3,"note":"x"}"#,
        r#"{"sku":"d","qty":4,"note":"x"}"#,
        r#"{"sku":"e","qty":5,"note":null}"#,
    ];
    let events = [
        r#"{"day":"2026-03-02","id":2,"v":"B"}"#,
        r#"{"day":"2026-03-02","id":3,"v":"c"}"#,
        r#"{"day":"2026-03-03","id":9,"v":"n"}"#,
    ];
    for reader in ["duckdb", "pyiceberg"] {
        assert_eq!(
            read_iceberg(&python, d, "m.stock", reader),
            stock,
            "{reader}"
        );
        assert_eq!(
            read_iceberg(&python, d, "m.events", reader),
            events,
            "{reader}"
        );
    }
    let snapshots = iceberg_snapshots(&python, d, "m.stock");
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[1]["operation"], "overwrite", "{snapshots:?}");

    // Two source rows for one target row: the statement fails and commits nothing.
    std::fs::write(
        d.join("changes.csv"),
        "sku,delta,gone\na,1,false\na,2,false\n",
    )
    .unwrap();
    let out = meltwater(d, &["run", "merge.sql", "--mode", "batch"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MERGE INTO lake.m.stock: a target row matches more than one source row"),
        "{stderr}"
    );
    assert_eq!(iceberg_snapshots(&python, d, "m.stock").len(), 2);
    assert_eq!(read_iceberg(&python, d, "m.stock", "duckdb"), stock);

    let out = meltwater(d, &["run", "merge.sql", "--mode", "stream"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a batch statement"));

    // Only WHEN NOT MATCHED: an insert of the new keys.
    std::fs::write(
        d.join("insert_only.sql"),
        "MERGE INTO lake.m.stock t USING (SELECT 'a' AS sku, 99 AS qty UNION ALL SELECT 'z', 26) AS s\n\
         ON t.sku = s.sku WHEN NOT MATCHED THEN INSERT (sku, qty) VALUES (s.sku, s.qty);\n",
    )
    .unwrap();
    run(d, "insert_only.sql");
    let mut with_z = stock.to_vec();
    with_z.push(r#"{"sku":"z","qty":26,"note":null}"#);
    assert_eq!(read_iceberg(&python, d, "m.stock", "duckdb"), with_z);

    // An unknown write mode is refused, not guessed (merge-on-read MERGE is tested in
    // iceberg_merge_on_read.rs).
    std::fs::write(
        d.join("mor.sql"),
        "CREATE TABLE IF NOT EXISTS lake.m.mor (k BIGINT, v STRING) WITH ('write.merge.mode' = 'merge-on-write');
         MERGE INTO lake.m.mor t USING (SELECT 1 AS k, 'x' AS v) AS s ON t.k = s.k
         WHEN NOT MATCHED THEN INSERT VALUES (s.k, s.v);
",
    )
    .unwrap();
    let out = meltwater(d, &["run", "mor.sql", "--mode", "batch"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MERGE INTO lake.m.mor: 'write.merge.mode' = 'merge-on-write' is not a write mode; use 'copy-on-write' or 'merge-on-read'"),
        "{stderr}"
    );
}

/// Two loads of a table partitioned by day: files A = 03-01 {1, 2}, B = 03-02 {3, 4},
/// C = 03-03 {5} from the first, D = 03-01 {6}, E = 03-03 {7} from the second.
const PARTS: &str = "
CREATE TABLE IF NOT EXISTS lake.m.parts (day DATE, id BIGINT, v STRING) PARTITIONED BY (day);
INSERT INTO lake.m.parts VALUES (DATE '2026-03-01', 1, 'a'), (DATE '2026-03-01', 2, 'b'),
  (DATE '2026-03-02', 3, 'c'), (DATE '2026-03-02', 4, 'd'), (DATE '2026-03-03', 5, 'e');
";
const PARTS_2: &str = "
INSERT INTO lake.m.parts VALUES (DATE '2026-03-01', 6, 'f'), (DATE '2026-03-03', 7, 'g');
";

/// Updates id 3 (file B), deletes id 7 (all of file E), matches id 2 (file A) without a
/// clause that applies, inserts id 9.
const PARTS_MERGE: &str = "
CREATE TABLE parts_changes (day DATE, id BIGINT, v STRING, gone BOOLEAN) WITH (
  'connector' = 'filesystem', 'path' = 'parts.csv', 'format' = 'csv', 'csv.header' = 'true');
MERGE INTO lake.m.parts t USING parts_changes s ON t.id = s.id
WHEN MATCHED AND s.gone THEN DELETE
WHEN MATCHED AND s.v <> t.v THEN UPDATE SET v = s.v
WHEN NOT MATCHED THEN INSERT VALUES (s.day, s.id, s.v);
";

const PARTS_READ: &str = "
CREATE TABLE out (day DATE, id BIGINT, v STRING) WITH ('connector' = 'print');
INSERT INTO out SELECT * FROM lake.m.parts;
";

/// The data files of the current snapshot: path -> (record count, partition); fails on
/// delete files (copy-on-write writes none).
fn data_files(
    python: &std::path::Path,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, (u64, String)> {
    iceberg_files(python, dir, "m.parts")
        .iter()
        .map(|f| {
            assert_eq!(f["content"], "data", "{f}");
            (
                f["file_path"].as_str().unwrap().to_string(),
                (
                    f["record_count"].as_u64().unwrap(),
                    f["partition"]["day"].to_string(),
                ),
            )
        })
        .collect()
}

fn write_run(dir: &std::path::Path, file: &str, text: &str) -> String {
    std::fs::write(dir.join(file), text).unwrap();
    run(dir, file)
}

#[test]
fn copy_on_write_merge_rewrites_only_the_files_with_matched_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_run(d, "load1.sql", PARTS);
    write_run(d, "load2.sql", PARTS_2);
    let Some(python) = interop_python("the copy-on-write MERGE file check") else {
        return;
    };
    let before = data_files(&python, d);
    assert_eq!(before.len(), 5, "{before:?}");
    // B (03-02, two rows) is the one file of its day; C and E (03-03) both hold one row.
    let day_files = |day: &str| -> Vec<String> {
        let day = format!("\"{day}\"");
        before
            .iter()
            .filter(|(_, (_, p))| *p == day)
            .map(|(path, _)| path.clone())
            .collect()
    };
    let [file_b] = <[String; 1]>::try_from(day_files("2026-03-02")).unwrap();
    let c_and_e = day_files("2026-03-03");
    assert_eq!(c_and_e.len(), 2, "{before:?}");

    std::fs::write(
        d.join("parts.csv"),
        "day,id,v,gone\n2026-03-02,3,C,false\n2026-03-03,7,x,true\n2026-03-01,2,b,false\n2026-03-04,9,n,false\n",
    )
    .unwrap();
    let report = write_run(d, "merge.sql", PARTS_MERGE);
    assert!(report.contains("merge lake.m.parts: 3 rows"), "{report}");

    let expected = [
        r#"{"day":"2026-03-01","id":1,"v":"a"}"#,
        r#"{"day":"2026-03-01","id":2,"v":"b"}"#,
        r#"{"day":"2026-03-01","id":6,"v":"f"}"#,
        r#"{"day":"2026-03-02","id":3,"v":"C"}"#,
        r#"{"day":"2026-03-02","id":4,"v":"d"}"#,
        r#"{"day":"2026-03-03","id":5,"v":"e"}"#,
        r#"{"day":"2026-03-04","id":9,"v":"n"}"#,
    ];
    for reader in ["duckdb", "pyiceberg"] {
        assert_eq!(
            read_iceberg(&python, d, "m.parts", reader),
            expected,
            "{reader}"
        );
    }
    assert_eq!(
        printed_rows(&write_run(d, "read.sql", PARTS_READ)),
        vec![
            "+I[2026-03-01, 1, a]",
            "+I[2026-03-01, 2, b]",
            "+I[2026-03-01, 6, f]",
            "+I[2026-03-02, 3, C]",
            "+I[2026-03-02, 4, d]",
            "+I[2026-03-03, 5, e]",
            "+I[2026-03-04, 9, n]",
        ]
    );

    let after = data_files(&python, d);
    let before_paths: BTreeSet<&String> = before.keys().collect();
    let after_paths: BTreeSet<&String> = after.keys().collect();
    let removed: BTreeSet<&String> = before_paths.difference(&after_paths).copied().collect();
    let added: Vec<&(u64, String)> = after
        .iter()
        .filter(|(p, _)| !before_paths.contains(p))
        .map(|(_, f)| f)
        .collect();
    // B and one 03-03 file are gone; A, D and the other 03-03 file keep their paths (it
    // is C: the day's one row left is id 5). B's other row comes back in a new 03-02
    // file; E, whose rows were all deleted, gets no replacement; the inserted row lands
    // in a 03-04 file.
    assert_eq!(removed.len(), 2, "{before:?} -> {after:?}");
    assert!(removed.contains(&file_b), "{removed:?}");
    assert_eq!(
        removed.iter().filter(|p| c_and_e.contains(p)).count(),
        1,
        "{removed:?}"
    );
    let mut added: Vec<(u64, String)> = added.into_iter().cloned().collect();
    added.sort();
    assert_eq!(
        added,
        vec![
            (1, "\"2026-03-04\"".to_string()),
            (2, "\"2026-03-02\"".to_string())
        ],
        "{after:?}"
    );
    let snapshots = iceberg_snapshots(&python, d, "m.parts");
    assert_eq!(snapshots.len(), 3);
    assert_eq!(snapshots[2]["operation"], "overwrite", "{snapshots:?}");
    let summary = &snapshots[2]["summary"];
    assert_eq!(summary["deleted-data-files"], "2", "{summary}");
    assert_eq!(summary["added-data-files"], "2", "{summary}");

    // Only inserts (id 1 is matched, and no WHEN MATCHED clause): a fast append, every
    // file stays.
    write_run(
        d,
        "insert_only.sql",
        "MERGE INTO lake.m.parts t USING (SELECT DATE '2026-03-01' AS day, 1 AS id, 'zz' AS v
           UNION ALL SELECT DATE '2026-03-05', 10, 'j') AS s ON t.id = s.id
         WHEN NOT MATCHED THEN INSERT VALUES (s.day, s.id, s.v);\n",
    );
    let appended = data_files(&python, d);
    assert!(
        after.keys().all(|p| appended.contains_key(p)),
        "{after:?} -> {appended:?}"
    );
    assert_eq!(appended.len(), after.len() + 1);
    let snapshots = iceberg_snapshots(&python, d, "m.parts");
    assert_eq!(snapshots.len(), 4);
    assert_eq!(snapshots[3]["operation"], "append", "{snapshots:?}");

    // Nothing matched, nothing to insert: no snapshot at all.
    let report = write_run(
        d,
        "no_match.sql",
        "MERGE INTO lake.m.parts t USING (SELECT 99 AS id) AS s ON t.id = s.id
         WHEN MATCHED THEN DELETE;\n",
    );
    assert!(report.contains("merge lake.m.parts: 0 rows"), "{report}");
    assert_eq!(iceberg_snapshots(&python, d, "m.parts").len(), 4);
    assert_eq!(data_files(&python, d), appended);
    let mut with_inserts = expected.to_vec();
    with_inserts.push(r#"{"day":"2026-03-05","id":10,"v":"j"}"#);
    assert_eq!(read_iceberg(&python, d, "m.parts", "duckdb"), with_inserts);
}
