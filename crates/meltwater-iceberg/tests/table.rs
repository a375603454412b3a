//! Iceberg tables through DataFusion: create, write, commit, read back, prune, and commit
//! idempotence and races, against a real embedded SQLite catalog on local disk.

mod common;
use common::catalog;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::physical_plan::{collect, displayable};
use datafusion::prelude::SessionContext;
use iceberg::spec::Transform;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::LakeCatalog;
use meltwater_iceberg::{IcebergCatalogProvider, JobCommits, JobIdentity};

fn identity(job: &str, run: &str) -> JobIdentity {
    JobIdentity {
        job_id: job.into(),
        run_id: run.into(),
    }
}

/// A session with the catalog registered as `lake`, and the commits its writes go to.
async fn session(
    catalog: Arc<LakeCatalog>,
    run: &str,
) -> (SessionContext, IcebergCatalogProvider, Arc<JobCommits>) {
    let commits = Arc::new(JobCommits::new(identity("test-job", run)));
    let provider = IcebergCatalogProvider::try_new("lake", catalog, commits.clone())
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(3),
    );
    ctx.register_catalog("lake", Arc::new(provider.clone()));
    (ctx, provider, commits)
}

async fn create_orders(provider: &IcebergCatalogProvider) {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ]);
    let parts = [PartitionFieldDef {
        column: "category".into(),
        transform: Transform::Identity,
    }];
    let creation =
        table_creation("lake.db.orders", "orders", &schema, &parts, HashMap::new()).unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
}

async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
    ctx.sql(query).await.unwrap().collect().await.unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_commit_read_back_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (ctx, provider, commits) = session(catalog.clone(), "run-1").await;
    create_orders(&provider).await;

    sql(&ctx, "INSERT INTO lake.db.orders VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30), (4, 'a', 40), (5, NULL, 50)").await;
    // Nothing is visible before the commit.
    let table = catalog
        .load_table(&TableIdent::new(
            NamespaceIdent::new("db".into()),
            "orders".into(),
        ))
        .await
        .unwrap();
    assert!(table.metadata().current_snapshot().is_none());

    let summaries = commits.commit_all().await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].rows, 5);
    assert_eq!(
        summaries[0].files, 4,
        "one file per partition value (a, b, c, null)"
    );
    let snapshot = summaries[0].snapshot_id.unwrap();

    let table = catalog
        .load_table(&TableIdent::new(
            NamespaceIdent::new("db".into()),
            "orders".into(),
        ))
        .await
        .unwrap();
    let current = table.metadata().current_snapshot().unwrap();
    assert_eq!(current.snapshot_id(), snapshot);
    let props = &current.summary().additional_properties;
    assert_eq!(
        props.get("meltwater.job-id").map(String::as_str),
        Some("test-job")
    );
    assert_eq!(
        props.get("meltwater.run-id").map(String::as_str),
        Some("run-1")
    );

    // A new session sees the committed snapshot.
    let (ctx, _, _) = session(catalog.clone(), "reader").await;
    let rows = sql(&ctx, "SELECT id, amount FROM lake.db.orders ORDER BY id").await;
    assert_eq!(ints(&rows, 0), [1, 2, 3, 4, 5]);
    assert_eq!(ints(&rows, 1), [10, 20, 30, 40, 50]);
    let count = sql(&ctx, "SELECT count(*) FROM lake.db.orders").await;
    assert_eq!(ints(&count, 0), [5]);

    // A filter on the partition column reads one of the four files.
    let df = ctx
        .sql("SELECT id FROM lake.db.orders WHERE category = 'a'")
        .await
        .unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    assert!(text.contains("files=1"), "{text}");
    let mut ids = ints(&collect(plan, ctx.task_ctx()).await.unwrap(), 0);
    ids.sort();
    assert_eq!(ids, [1, 4]);

    // Without a filter, the four files are spread over the three partitions.
    let plan = ctx
        .sql("SELECT id FROM lake.db.orders")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    assert!(text.contains("files=4, partitions=3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_commit_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (ctx, provider, commits) = session(catalog.clone(), "run-7").await;
    create_orders(&provider).await;
    sql(&ctx, "INSERT INTO lake.db.orders VALUES (1, 'a', 10)").await;
    let first = commits.commit_all().await.unwrap();

    // The same run commits the same files again (as after a crash with an unknown outcome).
    let (ctx, _, commits_again) = session(catalog.clone(), "run-7").await;
    sql(&ctx, "INSERT INTO lake.db.orders VALUES (1, 'a', 10)").await;
    let second = commits_again.commit_all().await.unwrap();
    assert!(second[0].already_committed);
    assert_eq!(second[0].snapshot_id, first[0].snapshot_id);

    let (ctx, _, _) = session(catalog.clone(), "reader").await;
    assert_eq!(
        ints(&sql(&ctx, "SELECT count(*) FROM lake.db.orders").await, 0),
        [1]
    );
    let table = catalog
        .load_table(&TableIdent::new(
            NamespaceIdent::new("db".into()),
            "orders".into(),
        ))
        .await
        .unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (_, provider, _) = session(catalog.clone(), "setup").await;
    create_orders(&provider).await;

    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (ctx, _, commits) = session(catalog.clone(), &format!("writer-{w}")).await;
        let values: Vec<String> = (0..10)
            .map(|i| format!("({}, 'c{}', {i})", w * 100 + i, i % 3))
            .collect();
        sql(
            &ctx,
            &format!("INSERT INTO lake.db.orders VALUES {}", values.join(", ")),
        )
        .await;
        writers.push(commits);
    }
    // Commit all four at once: compare-and-swap conflicts are retried on the new head.
    let results = futures_join(writers).await;
    for r in &results {
        assert_eq!(r[0].rows, 10);
        assert!(!r[0].already_committed);
    }
    let (ctx, _, _) = session(catalog.clone(), "reader").await;
    assert_eq!(
        ints(&sql(&ctx, "SELECT count(*) FROM lake.db.orders").await, 0),
        [40]
    );
    let table = catalog
        .load_table(&TableIdent::new(
            NamespaceIdent::new("db".into()),
            "orders".into(),
        ))
        .await
        .unwrap();
    assert_eq!(table.metadata().snapshots().count(), 4);
}

async fn futures_join(writers: Vec<Arc<JobCommits>>) -> Vec<Vec<meltwater_iceberg::CommitSummary>> {
    let handles: Vec<_> = writers
        .into_iter()
        .map(|c| tokio::spawn(async move { c.commit_all().await.unwrap() }))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// An overwrite planned against one snapshot fails when another writer added rows to a
/// partition it replaces in the meantime (they would vanish silently), and succeeds
/// when the concurrent rows are in a partition it leaves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_detects_concurrent_writes_to_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (ctx, provider, commits) = session(catalog.clone(), "run-1").await;
    create_orders(&provider).await;
    sql(
        &ctx,
        "INSERT INTO lake.db.orders VALUES (1, 'a', 10), (2, 'b', 20)",
    )
    .await;
    commits.commit_all().await.unwrap();

    // Job 1 reads the table and overwrites partition 'a'; before it commits, job 2
    // appends to 'b' (untouched by the overwrite).
    let (ctx1, _, commits1) = session(catalog.clone(), "run-2").await;
    sql(&ctx1, "INSERT OVERWRITE lake.db.orders VALUES (3, 'a', 30)").await;
    let (ctx2, _, commits2) = session(catalog.clone(), "run-3").await;
    sql(&ctx2, "INSERT INTO lake.db.orders VALUES (4, 'b', 40)").await;
    commits2.commit_all().await.unwrap();
    commits1.commit_all().await.unwrap();
    let (ctx, _, _) = session(catalog.clone(), "read-1").await;
    let rows = sql(&ctx, "SELECT id FROM lake.db.orders ORDER BY id").await;
    assert_eq!(ints(&rows, 0), vec![2, 3, 4]);

    // Now job 2 appends to 'a' while job 1 overwrites 'a': job 1 must fail, and
    // job 2's row must survive.
    let (ctx1, _, commits1) = session(catalog.clone(), "run-4").await;
    sql(&ctx1, "INSERT OVERWRITE lake.db.orders VALUES (5, 'a', 50)").await;
    let (ctx2, _, commits2) = session(catalog.clone(), "run-5").await;
    sql(&ctx2, "INSERT INTO lake.db.orders VALUES (6, 'a', 60)").await;
    commits2.commit_all().await.unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("to a partition this overwrite replaces after the job read the table"),
        "{err}"
    );
    let (ctx, _, _) = session(catalog.clone(), "read-2").await;
    let rows = sql(&ctx, "SELECT id FROM lake.db.orders ORDER BY id").await;
    assert_eq!(ints(&rows, 0), vec![2, 3, 4, 6]);
}
