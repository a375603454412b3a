//! Helpers shared by this crate's integration tests.

#![allow(dead_code)]

pub mod row_level;

use std::path::Path;
use std::sync::Arc;

use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::{
    open_catalog, IcebergCatalogConfig, IcebergCatalogProvider, JobCommits, JobIdentity,
    LakeCatalog,
};

/// The embedded catalog `lake` in `dir` (`catalog.db`, `warehouse/`).
pub async fn catalog(dir: &Path) -> Arc<LakeCatalog> {
    let config = IcebergCatalogConfig::sqlite(
        "lake",
        dir,
        Path::new("catalog.db"),
        Path::new("warehouse"),
        None,
    );
    open_catalog(&config).await.unwrap()
}

/// `catalog` as a job `job` (with a fresh run id) sees it.
pub async fn provider(catalog: Arc<LakeCatalog>, job: &str) -> IcebergCatalogProvider {
    let commits = Arc::new(JobCommits::new(JobIdentity {
        job_id: job.into(),
        run_id: uuid::Uuid::new_v4().to_string(),
    }));
    IcebergCatalogProvider::try_new("lake", catalog, commits)
        .await
        .unwrap()
}

/// The current metadata of `lake.db.<table>`.
pub async fn load(catalog: &Arc<LakeCatalog>, table: &str) -> iceberg::table::Table {
    catalog
        .load_table(&TableIdent::new(
            NamespaceIdent::new("db".into()),
            table.into(),
        ))
        .await
        .unwrap()
}
