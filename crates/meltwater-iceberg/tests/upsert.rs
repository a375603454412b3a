//! Upserts through the streaming writer: row deltas committed per checkpoint, read back
//! by Meltwater's scan (the crate's reader applies the equality deletes).
//!
//! - deletes of a checkpoint remove older rows of their keys, not the rows added with
//!   them; a key deleted and re-added within one checkpoint keeps its last row;
//! - the snapshot summary's totals follow its parent;
//! - a checkpoint committed twice (a restart) is applied once;
//! - two writers racing on one table both land: every commit is in the history;
//! - tables without a key, or partitioned outside their key, are refused.

mod common;
use common::{catalog, load};

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg::spec::{Operation, Transform};
use iceberg::{NamespaceIdent, TableIdent};
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::upsert::PRIMARY_KEY_PROPERTY;
use meltwater_iceberg::{
    commit_checkpoint, IcebergCatalogProvider, IcebergStreamWriter, IcebergTable, LakeCatalog,
};

async fn provider(catalog: Arc<LakeCatalog>) -> IcebergCatalogProvider {
    common::provider(catalog, "upsert-test").await
}

fn columns() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ])
}

async fn create(
    catalog: Arc<LakeCatalog>,
    name: &str,
    key: Option<&str>,
    parts: &[PartitionFieldDef],
) -> Arc<IcebergTable> {
    let provider = provider(catalog).await;
    let mut props = HashMap::new();
    if let Some(k) = key {
        props.insert(PRIMARY_KEY_PROPERTY.to_string(), k.to_string());
    }
    let creation =
        table_creation(&format!("lake.db.{name}"), name, &columns(), parts, props).unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
    provider.load("db", name).await.unwrap().unwrap()
}

fn rows(table: &IcebergTable, rows: &[(i64, &str, i64)]) -> RecordBatch {
    use datafusion::datasource::TableProvider;
    RecordBatch::try_new(
        table.schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

/// `id:name:n` of every row, sorted.
async fn contents(catalog: Arc<LakeCatalog>, table: &str) -> Vec<String> {
    let provider = provider(catalog).await;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_catalog("lake", Arc::new(provider));
    let batches = ctx
        .sql(&format!(
            "SELECT id, name, n FROM lake.db.{table} ORDER BY id"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let names = b.column(1).as_string::<i32>();
        let ns = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push(format!(
                "{}:{}:{}",
                ids.value(i),
                names.value(i),
                ns.value(i)
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_upsert_and_delete_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "t", Some("id"), &[]).await;
    let metadata = load(&catalog, "t").await;
    let key: Vec<i32> = metadata
        .metadata()
        .current_schema()
        .identifier_field_ids()
        .collect();
    assert_eq!(key, vec![1], "the key is the schema's identifier field");

    let mut w = IcebergStreamWriter::upsert(&table, 0).unwrap();
    w.write(&rows(&table, &[(1, "a", 1), (2, "b", 1), (3, "c", 1)]))
        .await
        .unwrap();
    // Within one checkpoint the last change per key wins: 2 is replaced, 3 deleted
    // and 4 inserted then deleted (never written).
    w.write(&rows(&table, &[(2, "b", 2), (4, "d", 1)]))
        .await
        .unwrap();
    let retract = BooleanArray::from(vec![true, true]);
    w.write_changes(&rows(&table, &[(3, "c", 1), (4, "d", 1)]), &retract)
        .await
        .unwrap();
    let files = w.prepare_commit().await.unwrap();
    let summary = commit_checkpoint(&table, files, "job", 1).await.unwrap();
    assert_eq!(summary.rows, 2);
    assert_eq!(contents(catalog.clone(), "t").await, vec!["1:a:1", "2:b:2"]);

    // Checkpoint 2 deletes 1, updates 2, re-inserts 3.
    w.write_changes(
        &rows(&table, &[(1, "a", 1), (2, "b", 3), (3, "c", 9)]),
        &BooleanArray::from(vec![true, false, false]),
    )
    .await
    .unwrap();
    let files = w.prepare_commit().await.unwrap();
    let replay = files.clone();
    commit_checkpoint(&table, files, "job", 2).await.unwrap();
    let expected = vec!["2:b:3", "3:c:9"];
    assert_eq!(contents(catalog.clone(), "t").await, expected);

    // A restart commits checkpoint 2 again: recognised, nothing changes.
    let again = commit_checkpoint(&table, replay, "job", 2).await.unwrap();
    assert!(again.already_committed);
    assert_eq!(contents(catalog.clone(), "t").await, expected);

    let loaded = load(&catalog, "t").await;
    let snapshots: Vec<_> = loaded.metadata().snapshots().collect();
    assert_eq!(snapshots.len(), 2);
    let head = loaded.metadata().current_snapshot().unwrap();
    assert_eq!(head.sequence_number(), 2);
    assert_eq!(head.summary().operation, Operation::Overwrite);
    let p = &head.summary().additional_properties;
    // Checkpoint 1: 2 rows + 4 keys deleted; checkpoint 2: 2 rows + 3 keys deleted.
    assert_eq!(p["total-records"], "4");
    assert_eq!(p["total-equality-deletes"], "7");
    assert_eq!(p["added-equality-deletes"], "3");
    assert_eq!(p["meltwater.checkpoint-id"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_upserts_stay_in_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let part = [PartitionFieldDef {
        column: "name".into(),
        transform: Transform::Identity,
    }];
    let table = create(catalog.clone(), "p", Some("id,name"), &part).await;
    let mut w = IcebergStreamWriter::upsert(&table, 0).unwrap();
    w.write(&rows(&table, &[(1, "x", 1), (1, "y", 1), (2, "x", 1)]))
        .await
        .unwrap();
    commit_checkpoint(&table, w.prepare_commit().await.unwrap(), "job", 1)
        .await
        .unwrap();
    w.write(&rows(&table, &[(1, "y", 5)])).await.unwrap();
    commit_checkpoint(&table, w.prepare_commit().await.unwrap(), "job", 2)
        .await
        .unwrap();
    assert_eq!(
        contents(catalog.clone(), "p").await,
        vec!["1:x:1", "1:y:5", "2:x:1"]
    );

    // Partitioned by a column outside the key: refused, with the reason.
    let bad = create(catalog.clone(), "bad", Some("id"), &part).await;
    let err = IcebergStreamWriter::upsert(&bad, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("partitioned by 'name', which is not part of its primary key (id)"),
        "{err}"
    );
    let none = create(catalog.clone(), "nokey", None, &[]).await;
    let err = IcebergStreamWriter::upsert(&none, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("upserts need a primary key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "race", Some("id"), &[]).await;
    let mut tasks = Vec::new();
    for writer in 0..2i64 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = IcebergStreamWriter::upsert(&table, writer as usize).unwrap();
            for c in 1..=10u64 {
                // Each writer owns its keys: writer 0 even ids, writer 1 odd ones.
                let id = writer + 2 * c as i64;
                w.write(&rows(&table, &[(id, "r", c as i64)]))
                    .await
                    .unwrap();
                let files = w.prepare_commit().await.unwrap();
                commit_checkpoint(&table, files, &format!("job{writer}"), c)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = load(&catalog, "race").await;
    assert_eq!(loaded.metadata().snapshots().count(), 20);
    let mut seqs: Vec<i64> = loaded
        .metadata()
        .snapshots()
        .map(|s| s.sequence_number())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(contents(catalog.clone(), "race").await.len(), 20);
}

/// Compaction merges the data files and the equality deletes into files with the same
/// rows, keeping the data sequence number of the snapshot it read (so equality deletes
/// committed later still apply), and drops the delete files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_rows_and_the_read_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "c", Some("id"), &[]).await;
    let mut w = IcebergStreamWriter::upsert(&table, 0).unwrap();
    for (c, rows_) in [
        (1, vec![(1, "a", 1), (2, "b", 1)]),
        (2, vec![(2, "b", 2), (3, "c", 1)]),
    ] {
        w.write(&rows(&table, &rows_)).await.unwrap();
        commit_checkpoint(&table, w.prepare_commit().await.unwrap(), "job", c)
            .await
            .unwrap();
    }
    let before = contents(catalog.clone(), "c").await;
    assert_eq!(before, vec!["1:a:1", "2:b:2", "3:c:1"]);
    let ident = TableIdent::new(NamespaceIdent::new("db".into()), "c".into());
    let report = meltwater_iceberg::maintain::compact(&catalog, "lake.db.c", &ident, None)
        .await
        .unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.data_files_removed, 2);
    assert_eq!(report.delete_files_removed, 2);
    assert_eq!(report.data_files_added, 1);
    assert_eq!(contents(catalog.clone(), "c").await, before);

    let loaded = load(&catalog, "c").await;
    let head = loaded.metadata().current_snapshot().unwrap();
    assert_eq!(head.summary().operation, Operation::Replace);
    assert_eq!(head.sequence_number(), 3);
    let p = &head.summary().additional_properties;
    assert_eq!(p["total-delete-files"], "0");
    assert_eq!(p["total-data-files"], "1");
    assert_eq!(p["total-records"], "3");
    // The merged file carries the data sequence number of snapshot 2, which it read.
    let list = loaded.manifest_list_reader(head).load().await.unwrap();
    let mut live = Vec::new();
    for m in list.entries() {
        for e in m.load_manifest(loaded.file_io()).await.unwrap().entries() {
            if e.is_alive() {
                live.push((e.content_type(), e.sequence_number));
            }
        }
    }
    assert_eq!(live, vec![(iceberg::spec::DataContentType::Data, Some(2))]);

    // Later upserts apply on top of the compacted file.
    w.write(&rows(&table, &[(1, "a", 7)])).await.unwrap();
    commit_checkpoint(&table, w.prepare_commit().await.unwrap(), "job", 3)
        .await
        .unwrap();
    assert_eq!(
        contents(catalog.clone(), "c").await,
        vec!["1:a:7", "2:b:2", "3:c:1"]
    );
}

/// Expiry removes old snapshots and the files only they used, leaves the rows alone, and
/// a checkpoint whose snapshot was expired is still recognised as committed (the table
/// property records it), so a restarted job never commits it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_unused_files_and_keeps_checkpoints_committed() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "e", Some("id"), &[]).await;
    let mut w = IcebergStreamWriter::upsert(&table, 0).unwrap();
    let mut replay = Vec::new();
    for c in 1..=3u64 {
        w.write(&rows(&table, &[(1, "a", c as i64), (c as i64 + 1, "b", 1)]))
            .await
            .unwrap();
        let files = w.prepare_commit().await.unwrap();
        if c == 2 {
            replay = files.clone();
        }
        commit_checkpoint(&table, files, "job", c).await.unwrap();
    }
    let ident = TableIdent::new(NamespaceIdent::new("db".into()), "e".into());
    meltwater_iceberg::maintain::compact(&catalog, "lake.db.e", &ident, None)
        .await
        .unwrap();
    let expected = vec!["1:a:3", "2:b:1", "3:b:1", "4:b:1"];
    assert_eq!(contents(catalog.clone(), "e").await, expected);
    let data_dir = dir.path().join("warehouse/db/e/data");
    let parquet = |d: &std::path::Path| std::fs::read_dir(d).unwrap().count();
    assert_eq!(
        parquet(&data_dir),
        7,
        "3 data + 3 delete files + the compacted one"
    );

    let future = chrono::Utc::now().timestamp_millis() + 60_000;
    let report = meltwater_iceberg::maintain::expire(&catalog, "lake.db.e", &ident, future, 1)
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, 3);
    assert_eq!(report.snapshots_kept, 1);
    assert_eq!(parquet(&data_dir), 1, "only the compacted file is left");
    // 6 data/delete files, 3 manifest lists, and the manifests only they used.
    assert!(report.files_deleted >= 9, "{report:?}");
    assert_eq!(contents(catalog.clone(), "e").await, expected);

    // Checkpoint 2's snapshot is gone; replaying its commit must still be a no-op.
    let again = commit_checkpoint(&table, replay, "job", 2).await.unwrap();
    assert!(again.already_committed);
    assert_eq!(contents(catalog.clone(), "e").await, expected);
    let loaded = load(&catalog, "e").await;
    assert_eq!(loaded.metadata().snapshots().count(), 1);
    assert_eq!(
        meltwater_iceberg::stream::last_committed_checkpoint_in(loaded.metadata(), "job"),
        Some(3)
    );
}

/// An upsert file keeps the order in which each key's last row was written, through the
/// writer's compaction of superseded rows: input clustered by key stays clustered (the
/// file's bounds keep pruning), whatever the order of the writer's key map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_files_keep_the_order_rows_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "ordered", Some("id"), &[]).await;
    let mut w = IcebergStreamWriter::upsert(&table, 0).unwrap();
    // Three rounds over the same 50,000 keys: the buffered rows pass the compaction
    // threshold (64 Ki rows and twice the keys), so superseded rows are dropped midway.
    const KEYS: i64 = 50_000;
    for round in 1..=3 {
        let round_rows: Vec<(i64, &str, i64)> = (0..KEYS).map(|id| (id, "x", round)).collect();
        w.write(&rows(&table, &round_rows)).await.unwrap();
    }
    // Two keys written again, out of order: they move to the end, 10 before 5.
    w.write(&rows(&table, &[(10, "y", 4), (5, "y", 4)]))
        .await
        .unwrap();
    let files = w.prepare_commit().await.unwrap();
    commit_checkpoint(&table, files, "job", 1).await.unwrap();

    // One data file, read in file order by one partition.
    let provider = provider(catalog.clone()).await;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_catalog("lake", Arc::new(provider));
    let batches = ctx
        .sql("SELECT id, n FROM lake.db.ordered")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut got = Vec::new();
    for b in &batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let ns = b.column(1).as_primitive::<Int64Type>();
        got.extend((0..b.num_rows()).map(|i| (ids.value(i), ns.value(i))));
    }
    let mut expected: Vec<(i64, i64)> = (0..KEYS)
        .filter(|id| *id != 5 && *id != 10)
        .map(|id| (id, 3))
        .collect();
    expected.extend([(10, 4), (5, 4)]);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "first rows {:?}", &got[..10]);
}
