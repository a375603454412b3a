//! Exactly-once commits to a real Iceberg REST catalog (SeaweedFS's `weed mini`, see
//! `meltwater_integration::seaweedfs`) when the catalog's answer is lost or the job dies
//! around a commit (docs/design/iceberg-commits.md §3.3):
//!
//! - the CLI talks to the catalog through `meltwater_integration::fault_proxy`, which
//!   forwards a chosen commit and answers 503 (or drops the connection) instead of the
//!   catalog's 200, or answers 503 without forwarding it. A batch append and an upsert
//!   whose commit landed unseen must be found by the reload (no second commit, one
//!   snapshot, the rows once); a commit refused unforwarded must be sent again once;
//! - a stream job from a bounded `datagen` is aborted after a checkpoint's commit and
//!   after a checkpoint completed but before its commit (`MELTWATER_ABORT_AFTER_COMMIT`,
//!   `MELTWATER_ABORT_BEFORE_COMMIT`), with lost answers on a checkpoint commit and on the
//!   restart's commit of the pending checkpoint, and restarted: the REST tables hold
//!   every row exactly once.
//!
//! Rows are read back with pyiceberg and DuckDB. `MELTWATER_TEST_NO_REST=1` skips it
//! where no REST server can run.

use std::collections::BTreeMap;
use std::path::Path;

use meltwater_integration::fault_proxy::{Fault, FaultProxy, SeenCommit};
use meltwater_integration::seaweedfs::{assert_rows, run_batch, SeaweedFs};
use meltwater_integration::{meltwater_aborted, meltwater_ok};
use serde_json::Value;

/// A commit the proxy saw: the fault it applied and the catalog's status.
fn seen(table: &str, fault: Option<Fault>, upstream_status: Option<u16>) -> SeenCommit {
    SeenCommit {
        table: table.to_string(),
        fault,
        upstream_status,
    }
}

/// The line of `out` saying that the commit to `lake.{table}` was found in the table
/// after the answer to attempt `attempt` was lost.
fn lost_answer_line<'a>(out: &'a str, table: &str, attempt: u32) -> &'a str {
    let said = format!(
        "(the answer to attempt {attempt} was lost; the reload found the commit in the table, not sent again)"
    );
    let prefix = format!("wrote lake.{table}: ");
    out.lines()
        .find(|l| l.starts_with(&prefix) && l.ends_with(&said))
        .unwrap_or_else(|| panic!("no line {prefix}… {said}:\n{out}"))
}

/// The `meltwater.run-id` of each snapshot of `table`, oldest first.
fn run_ids(server: &SeaweedFs, table: &str) -> Vec<String> {
    server
        .snapshots("lake", table)
        .iter()
        .map(|s| {
            s["summary"]["meltwater.run-id"]
                .as_str()
                .unwrap_or_else(|| panic!("a snapshot of {table} without a run id: {s}"))
                .to_string()
        })
        .collect()
}

#[test]
fn rest_commits_land_exactly_once_across_lost_answers_and_crashes() {
    let Some(server) = SeaweedFs::start("the Iceberg REST fault tests") else {
        return;
    };
    let proxy = FaultProxy::start(&server.catalog_uri);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("rest.toml"),
        server.catalog_toml_at("lake", &proxy.uri),
    )
    .unwrap();

    batch_append(&server, &proxy, d);
    batch_upsert(&server, &proxy, d);
    stream_aborted_around_commits(&server, &proxy, d);
    assert_eq!(proxy.pending_faults(), []);
}

/// A batch append whose commit landed but whose answer was lost, then one whose first
/// commit was refused unforwarded.
fn batch_append(server: &SeaweedFs, proxy: &FaultProxy, d: &Path) {
    const T: &str = "faults.items";
    run_batch(
        d,
        "items.sql",
        "CREATE TABLE IF NOT EXISTS lake.faults.items (id BIGINT, name STRING);\n\
         INSERT INTO lake.faults.items VALUES (1, 'a');\n",
    );
    assert_eq!(proxy.take_commits(T), [seen(T, None, Some(200))]);

    // Applied, answered 503: the reload finds the run's marker and sends nothing more.
    proxy.fail_commit(T, 0, Fault::LoseAnswer);
    let out = run_batch(
        d,
        "lost.sql",
        "INSERT INTO lake.faults.items VALUES (2, 'b'), (3, 'c');\n",
    );
    let line = lost_answer_line(&out, T, 1);
    assert!(line.contains(": 2 rows, "), "{line}");
    assert_eq!(
        proxy.take_commits(T),
        [seen(T, Some(Fault::LoseAnswer), Some(200))]
    );
    let ids = run_ids(server, T);
    assert_eq!(ids.len(), 2, "one snapshot per run: {ids:?}");
    assert_ne!(ids[0], ids[1]);
    let mut rows = vec![
        r#"{"id":1,"name":"a"}"#,
        r#"{"id":2,"name":"b"}"#,
        r#"{"id":3,"name":"c"}"#,
    ];
    assert_rows(server, T, &["pyiceberg", "duckdb"], &rows);

    // Answered 503 without reaching the catalog: the reload finds no marker and the
    // commit is sent again, once.
    proxy.fail_commit(T, 0, Fault::RefuseUnforwarded);
    let out = run_batch(
        d,
        "refused.sql",
        "INSERT INTO lake.faults.items VALUES (4, 'd');\n",
    );
    assert!(
        out.contains("wrote lake.faults.items: 1 row")
            && out.contains("(on attempt 2: 1 answer lost, the commit had not landed)"),
        "{out}"
    );
    assert_eq!(
        proxy.take_commits(T),
        [
            seen(T, Some(Fault::RefuseUnforwarded), None),
            seen(T, None, Some(200))
        ]
    );
    assert_eq!(run_ids(server, T).len(), 3);
    rows.push(r#"{"id":4,"name":"d"}"#);
    assert_rows(server, T, &["pyiceberg", "duckdb"], &rows);
}

/// An upsert (a row delta with equality deletes, swapped in by Meltwater's own commit
/// request): the first attempt refused unforwarded, the second applied with the
/// connection dropped before the answer. Applying it twice would leave the same rows
/// (the second copy's deletes hide the first's) but two snapshots, so both are checked.
fn batch_upsert(server: &SeaweedFs, proxy: &FaultProxy, d: &Path) {
    const T: &str = "faults.kv";
    run_batch(
        d,
        "kv.sql",
        "CREATE TABLE IF NOT EXISTS lake.faults.kv (k BIGINT, v STRING, PRIMARY KEY (k) NOT ENFORCED)\n\
           WITH ('write.upsert' = 'true');\n\
         INSERT INTO lake.faults.kv VALUES (1, 'one'), (2, 'two');\n",
    );
    assert_eq!(proxy.take_commits(T), [seen(T, None, Some(200))]);

    proxy.fail_commit(T, 0, Fault::RefuseUnforwarded);
    proxy.fail_commit(T, 0, Fault::DropAfterForward);
    let out = run_batch(
        d,
        "kv_upsert.sql",
        "INSERT INTO lake.faults.kv VALUES (2, 'TWO'), (3, 'three');\n",
    );
    let line = lost_answer_line(&out, T, 2);
    assert!(line.contains(": 2 rows, "), "{line}");
    assert_eq!(
        proxy.take_commits(T),
        [
            seen(T, Some(Fault::RefuseUnforwarded), None),
            seen(T, Some(Fault::DropAfterForward), Some(200))
        ]
    );
    assert_eq!(run_ids(server, T).len(), 2);
    assert_rows(
        server,
        T,
        &["duckdb"],
        &[
            r#"{"k":1,"v":"one"}"#,
            r#"{"k":2,"v":"TWO"}"#,
            r#"{"k":3,"v":"three"}"#,
        ],
    );
}

const STREAM_ROWS: u64 = 4_000;

/// The stream job: `STREAM_ROWS` generated rows appended to `lake.crash.raw` and
/// counted per key into the upserted `lake.crash.totals`, a checkpoint every 300 ms.
fn stream_job() -> String {
    format!(
        r#"
SET 'pipeline.name' = 'restcrash';
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '300 ms';
CREATE TABLE gen (id BIGINT, k INT) WITH (
  'connector' = 'datagen', 'number-of-rows' = '{STREAM_ROWS}', 'rows-per-second' = '1000',
  'seed' = '3',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{STREAM_ROWS}',
  'fields.k.min' = '0', 'fields.k.max' = '9'
);
CREATE TABLE IF NOT EXISTS lake.crash.raw (id BIGINT, k INT);
CREATE TABLE IF NOT EXISTS lake.crash.totals (
  k INT, n BIGINT, max_id BIGINT, PRIMARY KEY (k) NOT ENFORCED);
INSERT INTO lake.crash.raw SELECT id, k FROM gen;
INSERT INTO lake.crash.totals SELECT k, COUNT(*), MAX(id) FROM gen GROUP BY k;
"#
    )
}

/// The stream job's command line.
const STREAM_RUN: [&str; 6] = [
    "run",
    "stream.sql",
    "--mode",
    "stream",
    "--catalog",
    "rest.toml",
];

/// Each checkpoint id among the snapshots of `table` (job `restcrash`) once.
fn assert_checkpoints_once(server: &SeaweedFs, table: &str) {
    let mut seen = BTreeMap::new();
    for s in server.snapshots("lake", table) {
        assert_eq!(s["summary"]["meltwater.job-id"], "restcrash", "{s}");
        let id = s["summary"]["meltwater.checkpoint-id"]
            .as_str()
            .unwrap_or_else(|| panic!("a snapshot of {table} without a checkpoint id: {s}"))
            .to_string();
        assert!(
            seen.insert(id.clone(), ()).is_none(),
            "{table}: checkpoint {id} committed twice"
        );
    }
}

/// The stream job aborted after checkpoint 2's commit, then (restored) after checkpoint
/// 4 completed but before its commit, with checkpoint 3's upsert commit answered 503
/// after it landed; the last run commits checkpoint 4 on restore (the connection dropped
/// after it landed) and runs to the end.
fn stream_aborted_around_commits(server: &SeaweedFs, proxy: &FaultProxy, d: &Path) {
    std::fs::write(d.join("stream.sql"), stream_job()).unwrap();
    meltwater_aborted(
        d,
        &STREAM_RUN,
        ("MELTWATER_ABORT_AFTER_COMMIT", "2"),
        "aborting after checkpoint 2 committed",
    );
    // The restored run commits nothing for checkpoint 2 (recorded in the table): its
    // first commit to the totals is checkpoint 3's.
    proxy.take_commits("crash.totals");
    proxy.fail_commit("crash.totals", 0, Fault::LoseAnswer);
    meltwater_aborted(
        d,
        &STREAM_RUN,
        ("MELTWATER_ABORT_BEFORE_COMMIT", "4"),
        "aborting after checkpoint 4 before its commit",
    );
    let totals = proxy.take_commits("crash.totals");
    assert_eq!(
        totals.first(),
        Some(&seen("crash.totals", Some(Fault::LoseAnswer), Some(200))),
        "{totals:?}"
    );
    // The lost answer was found committed: the next commit (checkpoint 4's, never
    // sent: the run aborted first) did not follow a second copy of checkpoint 3.
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_checkpoints_once(server, "crash.totals");

    // The restart commits checkpoint 4's files first; that answer is lost too.
    proxy.take_commits("crash.raw");
    proxy.fail_commit("crash.raw", 0, Fault::DropAfterForward);
    let (out, _) = meltwater_ok(d, &STREAM_RUN);
    assert!(out.contains("restored from checkpoint 4"), "{out}");
    lost_answer_line(&out, "crash.raw", 1);
    let raw = proxy.take_commits("crash.raw");
    assert_eq!(
        raw.first(),
        Some(&seen("crash.raw", Some(Fault::DropAfterForward), Some(200))),
        "{raw:?}"
    );
    assert!(
        raw[1..]
            .iter()
            .all(|c| *c == seen("crash.raw", None, Some(200))),
        "{raw:?}"
    );
    assert_checkpoints_once(server, "crash.raw");
    assert_checkpoints_once(server, "crash.totals");

    // Every generated id once, as both readers read it.
    let mut expected_totals: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut first: Option<Vec<String>> = None;
    for reader in ["pyiceberg", "duckdb"] {
        let lines = server.read("lake", "crash.raw", reader);
        let ids: Vec<i64> = lines
            .iter()
            .map(|l| {
                let row: Value = serde_json::from_str(l).unwrap();
                row["id"].as_i64().unwrap()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=STREAM_ROWS as i64).collect::<Vec<_>>(),
            "crash.raw as {reader} reads it: each id once"
        );
        match &first {
            Some(f) => assert_eq!(&lines, f, "pyiceberg and DuckDB read crash.raw alike"),
            None => first = Some(lines),
        }
    }
    for l in first.unwrap() {
        let row: Value = serde_json::from_str(&l).unwrap();
        let (id, k) = (row["id"].as_i64().unwrap(), row["k"].as_i64().unwrap());
        let e = expected_totals.entry(k).or_default();
        e.0 += 1;
        e.1 = e.1.max(id);
    }
    // The upserted counts (equality deletes: DuckDB) are those of the rows.
    let lines = server.read("lake", "crash.totals", "duckdb");
    assert_eq!(lines.len(), 10, "crash.totals: one row per key: {lines:?}");
    let totals: BTreeMap<i64, (i64, i64)> = lines
        .iter()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            (
                row["k"].as_i64().unwrap(),
                (row["n"].as_i64().unwrap(), row["max_id"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(expected_totals.len(), 10);
    assert_eq!(totals, expected_totals, "crash.totals per key");
}
