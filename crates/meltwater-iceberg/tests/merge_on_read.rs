//! Merge-on-read `DELETE`, `UPDATE` and `MERGE` against concurrent writers, on a real embedded
//! SQLite catalog: the position deletes of a job whose data file was compacted away in
//! the meantime are refused (the rows would survive in the new file), an `UPDATE`
//! racing a delete of the same file is refused (the deleted row would come back), and two
//! racing `DELETE`s both land. A merge-on-read `MERGE` validates like an `UPDATE`.

mod common;
use common::catalog;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use iceberg::spec::{DataContentType, Transform};
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::{IcebergCatalogProvider, JobCommits, JobIdentity, LakeCatalog};

/// A session with the catalog registered as `lake`, and the commits its writes go to.
async fn session(catalog: Arc<LakeCatalog>, run: &str) -> (SessionContext, Arc<JobCommits>) {
    let commits = Arc::new(JobCommits::new(JobIdentity {
        job_id: "mor-test".into(),
        run_id: run.into(),
    }));
    let provider = IcebergCatalogProvider::try_new("lake", catalog, commits.clone())
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
    );
    ctx.register_catalog("lake", Arc::new(provider));
    (ctx, commits)
}

async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
    ctx.sql(query).await.unwrap().collect().await.unwrap()
}

/// `lake.db.t (id, grp, v)` partitioned by `grp`, merge-on-read for deletes and updates,
/// with ids 1..=6 in groups 1 and 2 (one file each).
async fn setup(catalog: &Arc<LakeCatalog>) {
    let (ctx, commits) = session(catalog.clone(), "setup").await;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("grp", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
    ]);
    let parts = [PartitionFieldDef {
        column: "grp".into(),
        transform: Transform::Identity,
    }];
    let properties = HashMap::from([
        ("write.delete.mode".to_string(), "merge-on-read".to_string()),
        ("write.update.mode".to_string(), "merge-on-read".to_string()),
    ]);
    let creation = table_creation("lake.db.t", "t", &schema, &parts, properties).unwrap();
    let provider = IcebergCatalogProvider::try_new("lake", catalog.clone(), commits.clone())
        .await
        .unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
    sql(
        &ctx,
        "INSERT INTO lake.db.t VALUES (1, 1, 10), (2, 1, 20), (3, 1, 30), (4, 2, 40), (5, 2, 50), (6, 2, 60)",
    )
    .await;
    commits.commit_all().await.unwrap();
}

/// `(id, v)` of every row, by id.
async fn rows(catalog: &Arc<LakeCatalog>) -> Vec<(i64, i64)> {
    let (ctx, _) = session(catalog.clone(), &uuid::Uuid::new_v4().to_string()).await;
    let batches = sql(&ctx, "SELECT id, v FROM lake.db.t ORDER BY id").await;
    batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let vs = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|i| (ids.value(i), vs.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ident() -> TableIdent {
    TableIdent::new(NamespaceIdent::new("db".into()), "t".into())
}

/// The content types of the current snapshot's live files: (data, position deletes).
async fn file_counts(catalog: &Arc<LakeCatalog>) -> (usize, usize) {
    let table = catalog.load_table(&ident()).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap().clone();
    let list = table.manifest_list_reader(&snapshot).load().await.unwrap();
    let (mut data, mut deletes) = (0, 0);
    for m in list.entries() {
        let manifest = m.load_manifest(table.file_io()).await.unwrap();
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            match e.data_file.content_type() {
                DataContentType::Data => data += 1,
                DataContentType::PositionDeletes => deletes += 1,
                other => panic!("unexpected {other:?} file"),
            }
        }
    }
    (data, deletes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_in_between_refuses_the_position_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;
    let (ctx, commits) = session(catalog.clone(), "delete-1").await;
    sql(&ctx, "DELETE FROM lake.db.t WHERE id = 2").await;
    // Another writer first: group 1 gets a second file, then compaction merges it with
    // the file the DELETE read.
    let (other, other_commits) = session(catalog.clone(), "append-1").await;
    sql(&other, "INSERT INTO lake.db.t VALUES (7, 1, 70)").await;
    other_commits.commit_all().await.unwrap();
    let report = meltwater_iceberg::maintain::compact(&catalog, "lake.db.t", &ident(), None)
        .await
        .unwrap();
    assert_eq!(report.data_files_removed, 2);
    let err = commits.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("whose rows this commit deletes by position, after the job read the table"),
        "{err}"
    );
    // Nothing lost, nothing deleted.
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 10),
            (2, 20),
            (3, 30),
            (4, 40),
            (5, 50),
            (6, 60),
            (7, 70)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_racing_a_delete_of_its_rows_is_refused_and_deletes_race_fine() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;

    // Two DELETEs of group 1 planned on the same snapshot: both land.
    let (ctx1, commits1) = session(catalog.clone(), "delete-1").await;
    sql(&ctx1, "DELETE FROM lake.db.t WHERE id = 1").await;
    let (ctx2, commits2) = session(catalog.clone(), "delete-2").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 3").await;
    commits2.commit_all().await.unwrap();
    commits1.commit_all().await.unwrap();
    assert_eq!(
        rows(&catalog).await,
        vec![(2, 20), (4, 40), (5, 50), (6, 60)]
    );
    assert_eq!(file_counts(&catalog).await, (2, 2));

    // An UPDATE of group 2 while another job deletes a row of the same file: the row
    // would come back with its new value, so the UPDATE fails.
    let (ctx1, commits1) = session(catalog.clone(), "update-1").await;
    sql(&ctx1, "UPDATE lake.db.t SET v = v + 1 WHERE grp = 2").await;
    let (ctx2, commits2) = session(catalog.clone(), "delete-3").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 5").await;
    commits2.commit_all().await.unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("that may delete rows this update changes"),
        "{err}"
    );
    assert_eq!(rows(&catalog).await, vec![(2, 20), (4, 40), (6, 60)]);

    // The same UPDATE planned afterwards lands: new rows, old ones deleted by position,
    // no data file removed.
    let (ctx1, commits1) = session(catalog.clone(), "update-2").await;
    sql(&ctx1, "UPDATE lake.db.t SET v = v + 1 WHERE grp = 2").await;
    commits1.commit_all().await.unwrap();
    assert_eq!(rows(&catalog).await, vec![(2, 20), (4, 41), (6, 61)]);
    assert_eq!(file_counts(&catalog).await, (3, 4));
}

/// Runs a merge-on-read `MERGE` of `source` (a `VALUES` list of `(id, grp, v)` rows) into
/// `lake.db.t` on `id`: matched rows take the source's `v`, others are inserted. The
/// query is the shape the planner builds over [`MergeTarget`] (row addresses, action,
/// routing key, new values); its files wait in the session's commits.
async fn merge(ctx: &SessionContext, source: &str) -> datafusion::error::Result<()> {
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::logical_expr::LogicalPlanBuilder;
    let provider = ctx.table_provider("lake.db.t").await?;
    let table = provider
        .as_any()
        .downcast_ref::<meltwater_iceberg::IcebergTable>()
        .unwrap();
    let target = Arc::new(table.merge_on_read_target()?);
    ctx.register_table("merge_target", target.clone())?;
    let query = ctx
        .sql(&format!(
            "SELECT t.__mw_file AS __mw_file, t.__mw_pos AS __mw_pos,
               CASE WHEN t.__mw_file IS NOT NULL THEN 'U' ELSE 'I' END AS __mw_action,
               COALESCE(t.__mw_file, CAST(random() AS VARCHAR)) AS __mw_route,
               s.id AS id, s.grp AS grp, s.v AS v
             FROM (VALUES {source}) AS s(id, grp, v) LEFT JOIN merge_target AS t ON t.id = s.id"
        ))
        .await?;
    ctx.deregister_table("merge_target")?;
    let plan = LogicalPlanBuilder::insert_into(
        query.logical_plan().clone(),
        "lake.db.t",
        provider_as_source(target),
        InsertOp::Replace,
    )?
    .build()?;
    ctx.execute_logical_plan(plan).await?.collect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_validates_like_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;

    // A MERGE updating a row of group 2's file while another job deletes another row of
    // that file: the MERGE adds rows, so it fails rather than risk bringing one back.
    let (ctx1, commits1) = session(catalog.clone(), "merge-1").await;
    merge(&ctx1, "(4, 2, 400), (9, 2, 900)").await.unwrap();
    let (ctx2, commits2) = session(catalog.clone(), "delete-1").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 5").await;
    commits2.commit_all().await.unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("that may delete rows this update changes"),
        "{err}"
    );
    assert_eq!(
        rows(&catalog).await,
        vec![(1, 10), (2, 20), (3, 30), (4, 40), (6, 60)]
    );

    // A MERGE whose file is compacted before it commits: its deletes would miss the
    // rows in the new file, so it fails.
    let (ctx1, commits1) = session(catalog.clone(), "merge-2").await;
    merge(&ctx1, "(1, 1, 100)").await.unwrap();
    let (other, other_commits) = session(catalog.clone(), "append-1").await;
    sql(&other, "INSERT INTO lake.db.t VALUES (7, 1, 70)").await;
    other_commits.commit_all().await.unwrap();
    meltwater_iceberg::maintain::compact(&catalog, "lake.db.t", &ident(), None)
        .await
        .unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("whose rows this commit deletes by position, after the job read the table"),
        "{err}"
    );

    // Two source rows for one target row fail the statement.
    let (ctx1, _) = session(catalog.clone(), "merge-3").await;
    let err = merge(&ctx1, "(1, 1, 100), (1, 1, 101)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MERGE INTO lake.db.t: a target row matches more than one source row"),
        "{err}"
    );

    // Planned on the current snapshot, the MERGE lands as a row delta: the old rows
    // deleted by position in the files that held them, no data file removed.
    let before = file_counts(&catalog).await;
    let (ctx1, commits1) = session(catalog.clone(), "merge-4").await;
    merge(&ctx1, "(1, 1, 100), (6, 2, 600), (8, 1, 80)")
        .await
        .unwrap();
    commits1.commit_all().await.unwrap();
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 100),
            (2, 20),
            (3, 30),
            (4, 40),
            (6, 600),
            (7, 70),
            (8, 80)
        ]
    );
    let after = file_counts(&catalog).await;
    assert_eq!(after.1, before.1 + 2, "{before:?} -> {after:?}");
    assert!(after.0 > before.0, "{before:?} -> {after:?}");
}
