//! The table `lake.db.t (id, grp, v)` the row-level tests race writers on, and the
//! statements they run against it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use iceberg::spec::{DataContentType, Literal, PrimitiveLiteral, Transform};
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::rewrite::RowLevelMode;
use meltwater_iceberg::schema::{table_creation, PartitionFieldDef};
use meltwater_iceberg::{IcebergCatalogProvider, JobCommits, JobIdentity, LakeCatalog};

/// A session with the catalog registered as `lake`, and the commits its writes go to.
pub async fn session(catalog: Arc<LakeCatalog>, run: &str) -> (SessionContext, Arc<JobCommits>) {
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

pub async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
    ctx.sql(query).await.unwrap().collect().await.unwrap()
}

/// `lake.db.t (id, grp, v)` partitioned by `grp`, merge-on-read for deletes and updates,
/// with ids 1..=6 in groups 1 and 2 (one file each).
pub async fn setup(catalog: &Arc<LakeCatalog>) {
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
pub async fn rows(catalog: &Arc<LakeCatalog>) -> Vec<(i64, i64)> {
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

pub fn ident() -> TableIdent {
    TableIdent::new(NamespaceIdent::new("db".into()), "t".into())
}

/// The content types of the current snapshot's live files: (data, position deletes).
pub async fn file_counts(catalog: &Arc<LakeCatalog>) -> (usize, usize) {
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

/// Runs a `MERGE` of `source` (a `VALUES` list of `(id, grp, v)` rows) into `lake.db.t`
/// on `id`, written in `mode`: a matched row is deleted when the source's `v` is
/// negative, else takes it; unmatched rows are inserted. The query is the shape the
/// planner builds over `MergeTarget` (row addresses, action, routing key, new values);
/// its files wait in the session's commits.
pub async fn merge(
    ctx: &SessionContext,
    mode: RowLevelMode,
    source: &str,
) -> datafusion::error::Result<()> {
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::logical_expr::LogicalPlanBuilder;
    let provider = ctx.table_provider("lake.db.t").await?;
    let table = provider
        .as_any()
        .downcast_ref::<meltwater_iceberg::IcebergTable>()
        .unwrap();
    let target = Arc::new(table.merge_target(mode)?);
    ctx.register_table("merge_target", target.clone())?;
    let query = ctx
        .sql(&format!(
            "SELECT t.__mw_file AS __mw_file, t.__mw_pos AS __mw_pos,
               CASE WHEN t.__mw_file IS NULL THEN 'I' WHEN s.v < 0 THEN 'D' ELSE 'U' END
                 AS __mw_action,
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

/// The live data files of the current snapshot: path -> (rows, group); fails on delete
/// files.
pub async fn data_files(catalog: &Arc<LakeCatalog>) -> BTreeMap<String, (u64, i64)> {
    let table = catalog.load_table(&ident()).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap().clone();
    let list = table.manifest_list_reader(&snapshot).load().await.unwrap();
    let mut files = BTreeMap::new();
    for m in list.entries() {
        let manifest = m.load_manifest(table.file_io()).await.unwrap();
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let f = &e.data_file;
            assert_eq!(f.content_type(), DataContentType::Data, "{}", f.file_path());
            let group = match f.partition().fields() {
                [Some(Literal::Primitive(PrimitiveLiteral::Long(g)))] => *g,
                other => panic!("partition {other:?}"),
            };
            files.insert(f.file_path().to_string(), (f.record_count(), group));
        }
    }
    files
}
