//! Committing table metadata Meltwater built itself (docs/design/iceberg-commits.md §3).
//!
//! The `iceberg` crate commits only the updates its own transactions produce
//! (`TableCommit::build` is crate-private), so row deltas and overwrites are committed
//! here, per catalog kind. [`LakeCatalog`] is the catalog every job uses: the crate's
//! catalog for listing, loading and creating, plus [`LakeCatalog::swap_metadata`].
//!
//! The embedded SQLite catalog commits by compare-and-swap on the `metadata_location`
//! column, the same predicate pyiceberg's and the crate's SQL catalogs use, so all
//! writers of one catalog file exclude each other: 0 rows changed means another writer
//! moved the table first (a conflict, retried by the caller on the new head).
//!
//! A REST catalog commits on its server ([`crate::rest`]): the updates go with
//! requirements on the table's uuid and on the snapshot `main` pointed at, and the
//! server applies them atomically or answers 409. The crate's own transactions (fast
//! appends, snapshot expiry) reach the server through this catalog's `update_table`,
//! so every commit of a REST table goes through the same request and outcome mapping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::io::FileIOBuilder;
use iceberg::spec::{TableMetadata, TableMetadataBuildResult, MAIN_BRANCH};
use iceberg::table::Table;
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, Result as IcebergResult, TableCommit,
    TableCreation, TableIdent, TableRequirement,
};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::rest::{RestCommitter, RestOutcome};
use crate::storage::ObjectStorageFactory;

/// What one attempt to swap a table's metadata did.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The table now points at the new metadata.
    Committed,
    /// Another writer moved the table since it was loaded; nothing was applied.
    Conflict,
    /// The catalog may or may not have applied the commit (reload and look for it).
    Unknown(String),
    /// Nothing was applied and retrying will not help.
    Failed(String),
}

/// Why a commit through the crate's transactions failed when the catalog may have
/// applied it (the source of the error `update_table` returns): the caller reloads and
/// looks for its marker instead of giving up or re-applying blindly.
#[derive(Debug)]
pub(crate) struct CommitStateUnknown;

impl std::fmt::Display for CommitStateUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the commit state is unknown")
    }
}

impl std::error::Error for CommitStateUnknown {}

/// Whether `e` says the catalog may or may not have applied a commit.
pub(crate) fn is_commit_state_unknown(e: &iceberg::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<CommitStateUnknown>())
}

/// A job's handle on one Iceberg catalog.
pub struct LakeCatalog {
    name: String,
    /// `None` in a cluster executor's copy, which writes files but never commits.
    inner: Option<Arc<dyn Catalog>>,
    committer: Option<Committer>,
}

enum Committer {
    Sqlite(SqliteCommitter),
    Rest(Box<RestCommitter>),
}

impl std::fmt::Debug for LakeCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeCatalog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct SqliteCommitter {
    pool: SqlitePool,
    catalog_name: String,
}

impl LakeCatalog {
    /// A catalog whose commits go through `inner`'s own transactions only (in-memory
    /// and read-only catalogs): [`Self::swap_metadata`] fails.
    pub fn read_only(name: &str, inner: Arc<dyn Catalog>) -> Self {
        Self {
            name: name.to_string(),
            inner: Some(inner),
            committer: None,
        }
    }

    /// The catalog as seen by a process that only writes data files for a job whose
    /// client commits them (a cluster's scheduler and executors): every catalog call
    /// fails, saying so.
    pub fn detached(name: &str) -> Self {
        Self {
            name: name.to_string(),
            inner: None,
            committer: None,
        }
    }

    fn inner(&self) -> IcebergResult<&Arc<dyn Catalog>> {
        self.inner.as_ref().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!(
                    "catalog {} is not reachable from this process: cluster executors write data files, the job's client commits them",
                    self.name
                ),
            )
        })
    }

    /// The embedded catalog stored in the SQLite file `path`, under `catalog_name`.
    pub(crate) async fn sqlite(
        name: &str,
        inner: Arc<dyn Catalog>,
        path: PathBuf,
        catalog_name: &str,
    ) -> Result<Self, String> {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Self {
            name: name.to_string(),
            inner: Some(inner),
            committer: Some(Committer::Sqlite(SqliteCommitter {
                pool,
                catalog_name: catalog_name.to_string(),
            })),
        })
    }

    /// A REST catalog: `inner` (the crate's REST client) lists, loads and creates,
    /// `committer` commits.
    pub(crate) fn rest(name: &str, inner: Arc<dyn Catalog>, committer: RestCommitter) -> Self {
        Self {
            name: name.to_string(),
            inner: Some(inner),
            committer: Some(Committer::Rest(Box::new(committer))),
        }
    }

    /// The name jobs use for this catalog.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Points `base`'s table at `built.metadata` if the catalog still points at
    /// `base`'s metadata (SQLite: writes the next metadata file, then compare-and-swaps;
    /// on anything but `Committed` or `Unknown` the new file is removed again), or if
    /// `base`'s uuid and `main` snapshot still hold on the server (REST: sends
    /// `built.changes`).
    pub async fn swap_metadata(
        &self,
        base: &Table,
        built: &TableMetadataBuildResult,
    ) -> CommitOutcome {
        match &self.committer {
            None => CommitOutcome::Failed(format!(
                "catalog {} is open read-only; it cannot commit",
                self.name
            )),
            Some(Committer::Sqlite(committer)) => {
                swap_sqlite(committer, base, &built.metadata).await
            }
            Some(Committer::Rest(committer)) => {
                let metadata = base.metadata();
                let requirements = vec![
                    TableRequirement::UuidMatch {
                        uuid: metadata.uuid(),
                    },
                    TableRequirement::RefSnapshotIdMatch {
                        r#ref: MAIN_BRANCH.to_string(),
                        snapshot_id: metadata
                            .snapshot_for_ref(MAIN_BRANCH)
                            .map(|s| s.snapshot_id()),
                    },
                ];
                match committer
                    .commit(base.identifier(), requirements, built.changes.clone())
                    .await
                {
                    RestOutcome::Committed { .. } => CommitOutcome::Committed,
                    RestOutcome::Conflict(_) => CommitOutcome::Conflict,
                    RestOutcome::Unknown(e) => CommitOutcome::Unknown(e),
                    RestOutcome::Failed(e) => CommitOutcome::Failed(e),
                }
            }
        }
    }

    /// The crate's transactions (fast appends, snapshot expiry) on a REST catalog: the
    /// commit's own requirements and updates, sent by [`RestCommitter`].
    async fn update_rest(
        &self,
        committer: &RestCommitter,
        mut commit: TableCommit,
    ) -> IcebergResult<Table> {
        let ident = commit.identifier().clone();
        let requirements = commit.take_requirements();
        let updates = commit.take_updates();
        match committer.commit(&ident, requirements, updates).await {
            RestOutcome::Committed {
                metadata_location,
                metadata,
            } => {
                let props = committer
                    .properties()
                    .await
                    .map_err(|e| iceberg::Error::new(ErrorKind::Unexpected, e))?;
                let file_io = FileIOBuilder::new(Arc::new(ObjectStorageFactory))
                    .with_props(props)
                    .build();
                Table::builder()
                    .identifier(ident)
                    .file_io(file_io)
                    .metadata(Arc::<TableMetadata>::from(metadata))
                    .metadata_location(metadata_location)
                    .runtime(iceberg::Runtime::try_current()?)
                    .build()
            }
            // Not marked retryable: the crate's transaction would rebase and send again
            // by itself; Meltwater's loop does it after looking for its marker.
            RestOutcome::Conflict(e) => {
                Err(iceberg::Error::new(ErrorKind::CatalogCommitConflicts, e))
            }
            RestOutcome::Unknown(e) => {
                Err(iceberg::Error::new(ErrorKind::Unexpected, e).with_source(CommitStateUnknown))
            }
            RestOutcome::Failed(e) => Err(iceberg::Error::new(ErrorKind::Unexpected, e)),
        }
    }
}

async fn swap_sqlite(
    committer: &SqliteCommitter,
    base: &Table,
    metadata: &TableMetadata,
) -> CommitOutcome {
    let Some(current) = base.metadata_location() else {
        return CommitOutcome::Failed("the table has no metadata location".into());
    };
    let location = next_metadata_location(current, metadata);
    if let Err(e) = write_metadata(base, metadata, &location).await {
        return CommitOutcome::Failed(format!("writing {location}: {e}"));
    }
    let ident = base.identifier();
    let result = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = ?1, previous_metadata_location = ?2 \
         WHERE catalog_name = ?3 AND table_namespace = ?4 AND table_name = ?5 \
           AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) \
           AND metadata_location = ?2",
    )
    .bind(&location)
    .bind(current)
    .bind(&committer.catalog_name)
    .bind(ident.namespace().join("."))
    .bind(ident.name())
    .execute(&committer.pool)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 1 => CommitOutcome::Committed,
        Ok(_) => {
            let _ = base.file_io().delete(&location).await;
            CommitOutcome::Conflict
        }
        Err(sqlx::Error::Database(e)) if e.message().contains("locked") => {
            let _ = base.file_io().delete(&location).await;
            CommitOutcome::Conflict
        }
        Err(e) => CommitOutcome::Unknown(e.to_string()),
    }
}

/// `<table>/metadata/<v+1>-<uuid>.metadata.json`, following the current file's version
/// (or the length of the metadata log when the current name has no version).
fn next_metadata_location(current: &str, metadata: &TableMetadata) -> String {
    match iceberg::MetadataLocation::from_str(current) {
        Ok(loc) => loc
            .with_next_version()
            .with_new_metadata(metadata)
            .to_string(),
        Err(_) => {
            let version = metadata.metadata_log().len() + 1;
            format!(
                "{}/metadata/{version:05}-{}.metadata.json",
                metadata.location().trim_end_matches('/'),
                uuid::Uuid::now_v7()
            )
        }
    }
}

async fn write_metadata(
    base: &Table,
    metadata: &TableMetadata,
    location: &str,
) -> Result<(), String> {
    match iceberg::MetadataLocation::from_str(location) {
        Ok(loc) => metadata
            .write_to(base.file_io(), &loc)
            .await
            .map_err(|e| e.to_string()),
        Err(_) => {
            let json = serde_json::to_vec(metadata).map_err(|e| e.to_string())?;
            let out = base
                .file_io()
                .new_output(location)
                .map_err(|e| e.to_string())?;
            out.write(json.into()).await.map_err(|e| e.to_string())
        }
    }
}

#[async_trait]
impl Catalog for LakeCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> IcebergResult<Vec<NamespaceIdent>> {
        self.inner()?.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<Namespace> {
        self.inner()?.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<Namespace> {
        self.inner()?.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> IcebergResult<bool> {
        self.inner()?.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<()> {
        self.inner()?.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<()> {
        self.inner()?.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> IcebergResult<Vec<TableIdent>> {
        self.inner()?.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> IcebergResult<Table> {
        self.inner()?.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> IcebergResult<Table> {
        self.inner()?.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner()?.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner()?.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> IcebergResult<bool> {
        self.inner()?.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> IcebergResult<()> {
        self.inner()?.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> IcebergResult<Table> {
        self.inner()?.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> IcebergResult<Table> {
        match &self.committer {
            Some(Committer::Rest(committer)) => self.update_rest(committer, commit).await,
            _ => self.inner()?.update_table(commit).await,
        }
    }
}
