//! An Iceberg table's snapshot read as a stream source: one split per data file, rows
//! identical to the batch scan, resume from a position. Real SQLite catalog on disk.

mod common;
use common::catalog;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg::spec::Transform;
use meltwater_connectors::stream::{Split, StreamSource};
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::LakeCatalog;
use meltwater_iceberg::{IcebergCatalogProvider, IcebergTable, JobCommits, JobIdentity};

async fn session(catalog: Arc<LakeCatalog>, run: &str) -> (SessionContext, Arc<JobCommits>) {
    let commits = Arc::new(JobCommits::new(JobIdentity {
        job_id: "source-test".into(),
        run_id: run.into(),
    }));
    let provider = IcebergCatalogProvider::try_new("lake", catalog, commits.clone())
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_catalog("lake", Arc::new(provider));
    (ctx, commits)
}

async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
    ctx.sql(query).await.unwrap().collect().await.unwrap()
}

async fn iceberg_table(ctx: &SessionContext) -> IcebergTable {
    let provider = ctx.table_provider("lake.db.orders").await.unwrap();
    provider
        .as_any()
        .downcast_ref::<IcebergTable>()
        .expect("an iceberg table")
        .clone()
}

fn ints(batches: &[RecordBatch], column: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Reads a split to the end, checking batch sizes and positions.
async fn read_split(
    source: &dyn StreamSource,
    split: &Split,
    position: u64,
    projection: Option<&[usize]>,
    batch_size: usize,
) -> (Vec<RecordBatch>, u64) {
    let mut reader = source
        .open(split, position, projection, batch_size)
        .await
        .unwrap();
    let mut batches = Vec::new();
    let mut at = position;
    while let Some((batch, next)) = reader.next_batch().await.unwrap() {
        assert!(batch.num_rows() >= 1 && batch.num_rows() <= batch_size);
        assert_eq!(next, at + batch.num_rows() as u64);
        assert_eq!(batch.schema(), source.schema(projection));
        at = next;
        batches.push(batch);
    }
    assert!(reader.next_batch().await.unwrap().is_none());
    (batches, at)
}

/// The rows of `batches` sorted as `ORDER BY <order>`, through DataFusion.
async fn sorted(schema: Arc<Schema>, batches: Vec<RecordBatch>, query: &str) -> RecordBatch {
    let ctx = SessionContext::new();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(schema.clone(), vec![batches]).unwrap()),
    )
    .unwrap();
    let out = sql(&ctx, query).await;
    concat_batches(&out[0].schema(), &out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_files_are_splits_read_like_the_batch_scan() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (ctx, commits) = session(catalog.clone(), "setup").await;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]);
    let parts = [PartitionFieldDef {
        column: "category".into(),
        transform: Transform::Identity,
    }];
    let creation =
        table_creation("lake.db.orders", "orders", &schema, &parts, HashMap::new()).unwrap();
    let provider = IcebergCatalogProvider::try_new("lake", catalog.clone(), commits.clone())
        .await
        .unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());

    // No snapshot yet: no splits.
    let (ctx0, _) = session(catalog.clone(), "empty").await;
    let empty = iceberg_table(&ctx0).await.stream_source(None);
    assert!(empty.discover_splits().await.unwrap().is_empty());
    assert_eq!(empty.discovery_interval_ms(), None);
    drop(ctx);

    // Two commits, three data files: a (5 rows), b (2 rows), then a again (1 row).
    let (ctx, commits) = session(catalog.clone(), "run-1").await;
    sql(
        &ctx,
        "INSERT INTO lake.db.orders VALUES \
         (1, 'a', 10, TIMESTAMP '2024-01-01 00:00:01'), (2, 'a', 20, TIMESTAMP '2024-01-01 00:00:02'), \
         (3, 'a', 30, NULL), (4, 'a', 40, TIMESTAMP '2024-01-01 00:00:04'), \
         (5, 'a', 50, TIMESTAMP '2024-01-01 00:00:05'), \
         (6, 'b', 60, TIMESTAMP '2024-01-01 00:00:06'), (7, 'b', NULL, TIMESTAMP '2024-01-01 00:00:07')",
    )
    .await;
    commits.commit_all().await.unwrap();
    let (ctx, commits) = session(catalog.clone(), "run-2").await;
    sql(
        &ctx,
        "INSERT INTO lake.db.orders VALUES (8, 'a', 80, TIMESTAMP '2024-01-01 00:00:08')",
    )
    .await;
    commits.commit_all().await.unwrap();

    let (ctx, _) = session(catalog.clone(), "reader").await;
    let table = iceberg_table(&ctx).await;
    let table_schema = datafusion::datasource::TableProvider::schema(&table);
    let source = table.stream_source(None);
    assert_eq!(source.schema(None), table_schema);
    assert_eq!(source.discovery_interval_ms(), None);
    let splits = source.discover_splits().await.unwrap();
    assert_eq!(splits.len(), 3, "{splits:?}");
    assert_eq!(
        splits,
        source.discover_splits().await.unwrap(),
        "ids are stable"
    );

    // All splits, all columns: the same rows (and schema) as the batch scan.
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for split in &splits {
        let (batches, end) = read_split(source.as_ref(), split, 0, None, 2).await;
        counts.push(end);
        all.extend(batches);
    }
    counts.sort();
    assert_eq!(counts, [1, 2, 5]);
    let streamed = sorted(table_schema.clone(), all, "SELECT * FROM t ORDER BY id").await;
    let scanned = sql(&ctx, "SELECT * FROM lake.db.orders ORDER BY id").await;
    let scanned = concat_batches(&scanned[0].schema(), &scanned).unwrap();
    assert_eq!(streamed, scanned);

    // A projection (reordered), as the batch scan projects it.
    let projection: &[usize] = &[3, 0];
    let mut all = Vec::new();
    for split in &splits {
        all.extend(
            read_split(source.as_ref(), split, 0, Some(projection), 3)
                .await
                .0,
        );
    }
    let streamed = sorted(
        source.schema(Some(projection)),
        all,
        "SELECT * FROM t ORDER BY id",
    )
    .await;
    let scanned = sql(&ctx, "SELECT ts, id FROM lake.db.orders ORDER BY id").await;
    let scanned = concat_batches(&scanned[0].schema(), &scanned).unwrap();
    assert_eq!(streamed, scanned);

    // No columns: only row counts.
    let mut rows = 0;
    for split in &splits {
        let (batches, end) = read_split(source.as_ref(), split, 0, Some(&[]), 4).await;
        assert!(batches.iter().all(|b| b.num_columns() == 0));
        let n = batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
        assert_eq!(n, end);
        rows += n;
    }
    assert_eq!(rows, 8);

    // Resuming the five-row split at 2 emits its rows from the third on, in order.
    let mut big = None;
    for split in &splits {
        let (batches, end) = read_split(source.as_ref(), split, 0, None, 2).await;
        if end == 5 {
            big = Some((split.clone(), batches));
        }
    }
    let (split, full) = big.unwrap();
    let full_ids = ints(&full, 0);
    let (rest, end) = read_split(source.as_ref(), &split, 2, None, 2).await;
    assert_eq!(end, 5);
    assert_eq!(ints(&rest, 0), full_ids[2..].to_vec());
    let full = concat_batches(&table_schema, &full).unwrap();
    let rest = concat_batches(&table_schema, &rest).unwrap();
    assert_eq!(rest, full.slice(2, 3));
    // At the end of a split, nothing is left.
    let (none, end) = read_split(source.as_ref(), &split, 5, None, 2).await;
    assert!(none.is_empty());
    assert_eq!(end, 5);

    // A split that is no data file of the snapshot is an error.
    let missing = source
        .open(
            &Split {
                id: "file:///nope.parquet".into(),
            },
            0,
            None,
            2,
        )
        .await;
    assert!(missing.is_err());
}

/// Commits `values` (rows of `(id, category, amount, ts)`) as one append.
async fn append(catalog: &Arc<LakeCatalog>, run: &str, values: &str) {
    let (ctx, commits) = session(catalog.clone(), run).await;
    sql(&ctx, &format!("INSERT INTO lake.db.orders VALUES {values}")).await;
    commits.commit_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitored_source_adds_the_files_of_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (_ctx, commits) = session(catalog.clone(), "setup").await;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]);
    let creation =
        table_creation("lake.db.orders", "orders", &schema, &[], HashMap::new()).unwrap();
    let provider = IcebergCatalogProvider::try_new("lake", catalog.clone(), commits.clone())
        .await
        .unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
    append(&catalog, "run-1", "(1, 'a', 10, NULL), (2, 'b', 20, NULL)").await;

    // Planned now: the base snapshot holds run-1's file.
    let (ctx, _) = session(catalog.clone(), "reader").await;
    let source = iceberg_table(&ctx).await.stream_source(Some(50));
    assert_eq!(source.discovery_interval_ms(), Some(50));
    let first = source.discover_splits().await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let state = source.enumerator_state();
    assert!(state["base_snapshot"].is_i64(), "{state}");

    // Two appends later, discovery lists their files too, after the base's.
    append(&catalog, "run-2", "(3, 'a', 30, NULL)").await;
    append(&catalog, "run-3", "(4, 'c', 40, NULL), (5, 'c', 50, NULL)").await;
    let all = source.discover_splits().await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0], first[0]);
    let mut ids = Vec::new();
    for split in &all[1..] {
        let (batches, end) = read_split(source.as_ref(), split, 0, None, 8).await;
        assert_eq!(
            end as usize,
            batches.iter().map(RecordBatch::num_rows).sum::<usize>()
        );
        ids.extend(ints(&batches, 0));
    }
    ids.sort();
    assert_eq!(ids, [3, 4, 5], "the appended rows, each once");

    // A source planned after run-3 but restored from the checkpointed state starts from
    // the same base: run-2's and run-3's files are still incremental splits, so the
    // positions checkpointed for them still apply.
    let (ctx, _) = session(catalog.clone(), "restarted").await;
    let restarted = iceberg_table(&ctx).await.stream_source(Some(50));
    restarted.restore_enumerator(&state).unwrap();
    assert_eq!(restarted.enumerator_state(), state);
    assert_eq!(restarted.discover_splits().await.unwrap(), all);
    // Without the state, the base is the planning snapshot: all three files at once.
    let (ctx, _) = session(catalog.clone(), "fresh").await;
    let fresh = iceberg_table(&ctx).await.stream_source(Some(50));
    let mut fresh_ids: Vec<String> = fresh
        .discover_splits()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut all_ids: Vec<String> = all.into_iter().map(|s| s.id).collect();
    fresh_ids.sort();
    all_ids.sort();
    assert_eq!(fresh_ids, all_ids);
}
