//! The two-phase streaming sink: subtask writers prepare files on a checkpoint, the
//! files travel through JSON (the checkpoint manifest), and the checkpoint commit is
//! idempotent per (job id, checkpoint id). Real SQLite catalog on local disk.

mod common;
use common::{catalog, load};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::physical_plan::displayable;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg::spec::Transform;
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::stream::last_committed_checkpoint_in;
use meltwater_iceberg::LakeCatalog;
use meltwater_iceberg::{
    commit_checkpoint, last_committed_checkpoint, IcebergCatalogProvider, IcebergStreamWriter,
    IcebergTable, PendingDataFile, SUMMARY_CHECKPOINT_ID, SUMMARY_JOB_ID,
};

const JOB: &str = "stream-job";

async fn provider(catalog: Arc<LakeCatalog>) -> IcebergCatalogProvider {
    common::provider(catalog, JOB).await
}

/// Creates `lake.db.<name>` and returns it as the sink's plan would see it.
async fn create(
    catalog: Arc<LakeCatalog>,
    name: &str,
    columns: Schema,
    parts: &[PartitionFieldDef],
) -> Arc<IcebergTable> {
    let provider = provider(catalog).await;
    let creation = table_creation(
        &format!("lake.db.{name}"),
        name,
        &columns,
        parts,
        HashMap::new(),
    )
    .unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
    provider.load("db", name).await.unwrap().unwrap()
}

fn events_columns() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ])
}

fn events(table: &IcebergTable, ids: std::ops::Range<i64>) -> RecordBatch {
    use datafusion::datasource::TableProvider;
    let names: Vec<String> = ids.clone().map(|i| format!("e{i}")).collect();
    RecordBatch::try_new(
        table.schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from_iter_values(names)),
        ],
    )
    .unwrap()
}

/// Rows of `lake.db.<table>` as a fresh session reads them (`predicate` optional).
async fn count(catalog: Arc<LakeCatalog>, table: &str, predicate: &str) -> i64 {
    let provider = provider(catalog).await;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_catalog("lake", Arc::new(provider));
    let query = format!("SELECT count(*) FROM lake.db.{table} {predicate}");
    let rows = ctx.sql(&query).await.unwrap().collect().await.unwrap();
    rows[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// What the checkpoint manifest does with the pending files: JSON and back.
fn through_json(files: &[PendingDataFile]) -> Vec<PendingDataFile> {
    let json = serde_json::to_string(files).unwrap();
    let back: Vec<PendingDataFile> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, files);
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subtasks_commit_a_checkpoint_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "events", events_columns(), &[]).await;

    let mut w0 = IcebergStreamWriter::try_new(&table, 0).await.unwrap();
    let mut w1 = IcebergStreamWriter::try_new(&table, 1).await.unwrap();
    w0.write(&events(&table, 0..10)).await.unwrap();
    w1.write(&events(&table, 10..15)).await.unwrap();
    w0.write(&events(&table, 15..20)).await.unwrap();
    assert_eq!(w0.pending_rows(), 15);

    // Barrier 1: both subtasks prepare; the files go into the checkpoint.
    let mut files = w0.prepare_commit().await.unwrap();
    files.extend(w1.prepare_commit().await.unwrap());
    assert_eq!(files.len(), 2, "one file per subtask");
    assert_eq!(files.iter().map(|f| f.record_count).sum::<u64>(), 20);
    assert!(files.iter().all(|f| f.table == "lake.db.events"));
    assert!(
        files[0].file_path.contains("-00000-"),
        "{}",
        files[0].file_path
    );
    assert!(
        files[1].file_path.contains("-00001-"),
        "{}",
        files[1].file_path
    );
    let manifest = through_json(&files);

    // Nothing visible before the checkpoint commit.
    assert_eq!(count(catalog.clone(), "events", "").await, 0);
    assert_eq!(last_committed_checkpoint(&table, JOB).await.unwrap(), None);

    let first = commit_checkpoint(&table, manifest.clone(), JOB, 1)
        .await
        .unwrap();
    assert!(!first.already_committed);
    assert_eq!((first.files, first.rows), (2, 20));
    let snapshot = first.snapshot_id.unwrap();
    assert_eq!(count(catalog.clone(), "events", "").await, 20);
    let loaded = load(&catalog, "events").await;
    let current = loaded.metadata().current_snapshot().unwrap();
    assert_eq!(current.snapshot_id(), snapshot);
    let props = &current.summary().additional_properties;
    assert_eq!(props.get(SUMMARY_JOB_ID).map(String::as_str), Some(JOB));
    assert_eq!(
        props.get(SUMMARY_CHECKPOINT_ID).map(String::as_str),
        Some("1")
    );

    // Restarted from checkpoint 1, the job commits its files again: skipped.
    let again = commit_checkpoint(&table, manifest, JOB, 1).await.unwrap();
    assert!(again.already_committed);
    assert_eq!(again.snapshot_id, Some(snapshot));
    assert_eq!(
        load(&catalog, "events")
            .await
            .metadata()
            .snapshots()
            .count(),
        1
    );
    assert_eq!(count(catalog.clone(), "events", "").await, 20);

    // Barrier 2: new files (new names), a new snapshot.
    w1.write(&events(&table, 20..23)).await.unwrap();
    let mut files2 = w0.prepare_commit().await.unwrap();
    assert!(files2.is_empty(), "subtask 0 wrote nothing since barrier 1");
    files2.extend(w1.prepare_commit().await.unwrap());
    assert_eq!(files2.len(), 1);
    let paths: HashSet<_> = files.iter().chain(&files2).map(|f| &f.file_path).collect();
    assert_eq!(paths.len(), 3, "file names never repeat");
    let second = commit_checkpoint(&table, through_json(&files2), JOB, 2)
        .await
        .unwrap();
    assert!(!second.already_committed);
    assert_ne!(second.snapshot_id, Some(snapshot));
    assert_eq!(count(catalog.clone(), "events", "").await, 23);
    assert_eq!(
        load(&catalog, "events")
            .await
            .metadata()
            .snapshots()
            .count(),
        2
    );
    assert_eq!(
        last_committed_checkpoint(&table, JOB).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        last_committed_checkpoint(&table, "another-job")
            .await
            .unwrap(),
        None
    );

    // Another job's checkpoint 2 is its own commit.
    w0.write(&events(&table, 100..101)).await.unwrap();
    let other = commit_checkpoint(&table, w0.prepare_commit().await.unwrap(), "another-job", 2)
        .await
        .unwrap();
    assert!(!other.already_committed);
    assert_eq!(count(catalog.clone(), "events", "").await, 24);
    let metadata = load(&catalog, "events").await;
    assert_eq!(
        last_committed_checkpoint_in(metadata.metadata(), JOB),
        Some(2)
    );
    assert_eq!(
        last_committed_checkpoint_in(metadata.metadata(), "another-job"),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_uncommitted_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let table = create(catalog.clone(), "events", events_columns(), &[]).await;
    let mut w = IcebergStreamWriter::try_new(&table, 3).await.unwrap();

    // Nothing written: nothing prepared, and the commit makes no snapshot.
    let files = w.prepare_commit().await.unwrap();
    assert!(files.is_empty());
    let summary = commit_checkpoint(&table, files, JOB, 1).await.unwrap();
    assert_eq!(summary.snapshot_id, None);
    assert!(!summary.already_committed);
    assert!(load(&catalog, "events")
        .await
        .metadata()
        .current_snapshot()
        .is_none());

    // Checkpoint 2 is prepared but never completes (the job fails before the
    // coordinator's commit); the job restarts from checkpoint 1 and replays.
    w.write(&events(&table, 0..5)).await.unwrap();
    let lost = w.prepare_commit().await.unwrap();
    assert_eq!(lost.len(), 1);
    let mut w = IcebergStreamWriter::try_new(&table, 3).await.unwrap();
    w.write(&events(&table, 0..5)).await.unwrap();
    w.write(&events(&table, 5..7)).await.unwrap();
    let files = w.prepare_commit().await.unwrap();
    assert_ne!(files[0].file_path, lost[0].file_path);
    commit_checkpoint(&table, files, JOB, 2).await.unwrap();
    assert_eq!(count(catalog.clone(), "events", "").await, 7);
    let loaded = load(&catalog, "events").await;
    let scan = loaded.scan().build().unwrap();
    let tasks: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(scan.plan_files().await.unwrap())
            .await
            .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_ne!(tasks[0].data_file_path(), lost[0].file_path);

    // Files of one table cannot be committed to another.
    let other = create(catalog.clone(), "other", events_columns(), &[]).await;
    w.write(&events(&table, 0..1)).await.unwrap();
    let files = w.prepare_commit().await.unwrap();
    let e = commit_checkpoint(&other, files, JOB, 3).await.unwrap_err();
    assert!(e.to_string().contains("another table"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_writes_one_file_per_partition_value_per_subtask() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let columns = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]);
    let parts = [
        PartitionFieldDef {
            column: "category".into(),
            transform: Transform::Identity,
        },
        PartitionFieldDef {
            column: "ts".into(),
            transform: Transform::Day,
        },
    ];
    let table = create(catalog.clone(), "orders", columns, &parts).await;
    let day = 86_400_000_000i64;
    let t0 = 1_700_000_000_000_000i64; // 2023-11-14
    let batch = |ids: Vec<i64>, cats: Vec<Option<&str>>, ts: Vec<Option<i64>>| {
        use datafusion::datasource::TableProvider;
        RecordBatch::try_new(
            table.schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(cats)),
                Arc::new(TimestampMicrosecondArray::from(ts)),
            ],
        )
        .unwrap()
    };

    let mut w0 = IcebergStreamWriter::try_new(&table, 0).await.unwrap();
    let mut w1 = IcebergStreamWriter::try_new(&table, 1).await.unwrap();
    // Subtask 0: (a, d0) x2, (a, d1), (b, d0), (null, null) over two batches → 4 values.
    w0.write(&batch(
        vec![1, 2, 3],
        vec![Some("a"), Some("a"), Some("b")],
        vec![Some(t0), Some(t0 + 10), Some(t0)],
    ))
    .await
    .unwrap();
    w0.write(&batch(
        vec![4, 5],
        vec![Some("a"), None],
        vec![Some(t0 + day), None],
    ))
    .await
    .unwrap();
    // Subtask 1: (a, d0), (b, d2) → 2 values.
    w1.write(&batch(
        vec![6, 7],
        vec![Some("a"), Some("b")],
        vec![Some(t0 + 5), Some(t0 + 2 * day)],
    ))
    .await
    .unwrap();
    let f0 = w0.prepare_commit().await.unwrap();
    let f1 = w1.prepare_commit().await.unwrap();
    assert_eq!(f0.len(), 4, "one file per partition value of subtask 0");
    assert_eq!(f1.len(), 2, "one file per partition value of subtask 1");

    // Partition values survive the JSON round trip.
    let loaded = load(&catalog, "orders").await;
    let metadata = loaded.metadata();
    let mut partitions = HashSet::new();
    for f in through_json(&f0) {
        let data_file = f.to_data_file(metadata).unwrap();
        assert_eq!(data_file.record_count(), f.record_count);
        assert_eq!(data_file.file_path(), f.file_path);
        assert!(
            data_file.lower_bounds().contains_key(&1),
            "column statistics survive: {:?}",
            f.data_file
        );
        partitions.insert(format!("{:?}", data_file.partition()));
    }
    assert_eq!(partitions.len(), 4);

    let mut files = through_json(&f0);
    files.extend(through_json(&f1));
    let summary = commit_checkpoint(&table, files, JOB, 1).await.unwrap();
    assert_eq!((summary.files, summary.rows), (6, 7));
    assert_eq!(count(catalog.clone(), "orders", "").await, 7);
    assert_eq!(
        count(catalog.clone(), "orders", "WHERE category = 'a'").await,
        4
    );
    assert_eq!(
        count(catalog.clone(), "orders", "WHERE category IS NULL").await,
        1
    );
    assert_eq!(
        count(
            catalog.clone(),
            "orders",
            &format!("WHERE ts >= to_timestamp_micros({})", t0 + day)
        )
        .await,
        2
    );

    // Pruning on the committed partition values: 'a' on day 0 is two files (one per
    // subtask).
    let provider = provider(catalog.clone()).await;
    let ctx = SessionContext::new();
    ctx.register_catalog("lake", Arc::new(provider));
    let plan = ctx
        .sql(&format!(
            "SELECT id FROM lake.db.orders WHERE category = 'a' AND ts < to_timestamp_micros({})",
            t0 + day / 2
        ))
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    assert!(text.contains("files=2"), "{text}");
}
