//! `MERGE INTO` an Iceberg table (batch mode, copy-on-write of the table): matched rows
//! updated or deleted by the first clause that applies, unmatched source rows inserted by
//! the first `WHEN NOT MATCHED` clause that applies, in an unpartitioned and a partitioned
//! table; DuckDB and pyiceberg read the result back. A target row matching two source rows
//! fails the statement and commits nothing; stream mode refuses the statement, and so does
//! a table with an unknown `write.merge.mode`.

use meltwater_integration::{
    iceberg_snapshots, interop_python, meltwater, meltwater_ok, printed_rows, read_iceberg,
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
    // The report counts the rows each MERGE wrote: the tables' new rows.
    assert!(report.contains("merge lake.m.stock: 4 rows"), "{report}");
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
