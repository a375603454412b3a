//! An Iceberg catalog as a DataFusion catalog: namespaces are schemas, tables load when
//! a query names them.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::error::Result as DfResult;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableCreation, TableIdent};

use crate::commit::JobCommits;
use crate::committer::LakeCatalog;
use crate::error::{IcebergContext, IcebergError, Result};
use crate::table::IcebergTable;

/// An Iceberg catalog registered in a job's session under its name (`lake`).
#[derive(Debug, Clone)]
pub struct IcebergCatalogProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    catalog: Arc<LakeCatalog>,
    commits: Arc<JobCommits>,
    /// Namespaces and their tables as listed when the job started and as it created them
    /// (for the synchronous listing DataFusion asks for).
    listing: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Tables loaded by this job, so every statement of a run sees the same snapshot.
    loaded: Mutex<HashMap<(String, String), Arc<IcebergTable>>>,
}

impl IcebergCatalogProvider {
    pub async fn try_new(
        name: &str,
        catalog: Arc<LakeCatalog>,
        commits: Arc<JobCommits>,
    ) -> Result<Self> {
        let mut listing = BTreeMap::new();
        let namespaces = catalog
            .list_namespaces(None)
            .await
            .context(|| format!("listing namespaces of {name}"))?;
        for ns in namespaces {
            let tables = catalog
                .list_tables(&ns)
                .await
                .context(|| format!("listing tables of {name}"))?;
            listing.insert(
                ns.to_url_string(),
                tables.into_iter().map(|t| t.name().to_string()).collect(),
            );
        }
        let inner = Inner {
            name: name.to_string(),
            catalog,
            commits,
            listing: Mutex::new(listing),
            loaded: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn catalog(&self) -> &Arc<LakeCatalog> {
        &self.inner.catalog
    }

    /// Creates `namespace` unless it exists.
    pub async fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let inner = &self.inner;
        let ns = NamespaceIdent::new(namespace.to_string());
        let exists = inner
            .catalog
            .namespace_exists(&ns)
            .await
            .context(|| format!("looking up {}.{namespace}", inner.name))?;
        if !exists {
            match inner.catalog.create_namespace(&ns, HashMap::new()).await {
                Ok(_) => {}
                // Created meanwhile by another job: fine.
                Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .context(|| format!("creating namespace {}.{namespace}", inner.name))
                }
            }
        }
        inner
            .listing
            .lock()
            .expect("listing poisoned")
            .entry(namespace.to_string())
            .or_default();
        Ok(())
    }

    /// Creates a table (and its namespace) unless it exists; returns whether it created it.
    pub async fn create_table(
        &self,
        namespace: &str,
        creation: TableCreation,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.ensure_namespace(namespace).await?;
        let inner = &self.inner;
        let ns = NamespaceIdent::new(namespace.to_string());
        let table = creation.name.clone();
        let full = format!("{}.{namespace}.{table}", inner.name);
        let ident = TableIdent::new(ns.clone(), table.clone());
        if inner
            .catalog
            .table_exists(&ident)
            .await
            .context(|| format!("looking up {full}"))?
        {
            if if_not_exists {
                return Ok(false);
            }
            return Err(IcebergError::Table {
                table: full,
                message: "already exists; use CREATE TABLE IF NOT EXISTS".into(),
            });
        }
        inner
            .catalog
            .create_table(&ns, creation)
            .await
            .context(|| format!("creating {full}"))?;
        inner
            .listing
            .lock()
            .expect("listing poisoned")
            .entry(namespace.to_string())
            .or_default()
            .insert(table);
        Ok(true)
    }

    /// Declares a table that does not exist yet, for planning without changing the
    /// catalog (`validate`, `explain`): lookups of it get the table as `creation` would
    /// make it, with in-memory metadata and no files; writing to it is never committed.
    pub fn declare(&self, namespace: &str, creation: TableCreation) -> Result<()> {
        let table = creation.name.clone();
        let full = format!("{}.{namespace}.{table}", self.inner.name);
        let location = format!("memory://declared/{namespace}/{table}");
        let creation = TableCreation {
            location: Some(location.clone()),
            ..creation
        };
        let metadata = iceberg::spec::TableMetadataBuilder::from_table_creation(creation)
            .and_then(|b| b.build())
            .context(|| format!("declaring {full}"))?
            .metadata;
        let loaded = iceberg::table::Table::builder()
            .metadata(metadata)
            .identifier(TableIdent::new(
                NamespaceIdent::new(namespace.to_string()),
                table.clone(),
            ))
            .file_io(iceberg::io::FileIO::new_with_memory())
            .metadata_location(format!("{location}/metadata/v0.metadata.json"))
            .readonly(true)
            .runtime(iceberg::Runtime::try_current().context(|| format!("declaring {full}"))?)
            .build()
            .context(|| format!("declaring {full}"))?;
        let provider = IcebergTable::try_new(
            full,
            self.inner.catalog.clone(),
            loaded,
            self.inner.commits.clone(),
        )?;
        let key = (namespace.to_string(), table);
        self.inner
            .loaded
            .lock()
            .expect("tables poisoned")
            .insert(key, Arc::new(provider));
        Ok(())
    }

    /// Loads a table (once per job run).
    pub async fn load(&self, namespace: &str, table: &str) -> Result<Option<Arc<IcebergTable>>> {
        self.inner.load(namespace, table).await
    }
}

/// A time-travel table name the job file's `FOR SYSTEM_VERSION AS OF` / `FOR SYSTEM_TIME
/// AS OF` became (see `meltwater_sql`): `table@v<snapshot id>` or `table@t<epoch ms>`.
pub fn parse_time_travel(table: &str) -> Option<(&str, TimeTravel)> {
    let (base, spec) = table.rsplit_once('@')?;
    let (kind, value) = spec.split_at_checked(1)?;
    let value: i64 = value.parse().ok()?;
    match kind {
        "v" => Some((base, TimeTravel::Snapshot(value))),
        "t" => Some((base, TimeTravel::Time(value))),
        _ => None,
    }
}

/// Which past state of a table a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeTravel {
    Snapshot(i64),
    /// Milliseconds since the epoch.
    Time(i64),
}

impl Inner {
    async fn load(&self, namespace: &str, table: &str) -> Result<Option<Arc<IcebergTable>>> {
        let key = (namespace.to_string(), table.to_string());
        if let Some(t) = self.loaded.lock().expect("tables poisoned").get(&key) {
            return Ok(Some(t.clone()));
        }
        if let Some((base, travel)) = parse_time_travel(table) {
            let Some(current) = Box::pin(self.load(namespace, base)).await? else {
                return Ok(None);
            };
            let pinned = Arc::new(match travel {
                TimeTravel::Snapshot(id) => current.at_snapshot(id)?,
                TimeTravel::Time(ms) => current.as_of_time(ms)?,
            });
            self.loaded
                .lock()
                .expect("tables poisoned")
                .insert(key, pinned.clone());
            return Ok(Some(pinned));
        }
        let ident = TableIdent::new(
            NamespaceIdent::new(namespace.to_string()),
            table.to_string(),
        );
        let full = format!("{}.{namespace}.{table}", self.name);
        let loaded = match self.catalog.load_table(&ident).await {
            Ok(t) => t,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).context(|| format!("loading {full}")),
        };
        let provider = Arc::new(IcebergTable::try_new(
            full,
            self.catalog.clone(),
            loaded,
            self.commits.clone(),
        )?);
        self.loaded
            .lock()
            .expect("tables poisoned")
            .insert(key, provider.clone());
        Ok(Some(provider))
    }
}

impl CatalogProvider for IcebergCatalogProvider {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        self.inner
            .listing
            .lock()
            .expect("listing poisoned")
            .keys()
            .cloned()
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(IcebergSchemaProvider {
            namespace: name.to_string(),
            inner: self.inner.clone(),
        }))
    }
}

#[derive(Debug)]
struct IcebergSchemaProvider {
    namespace: String,
    inner: Arc<Inner>,
}

#[async_trait]
impl SchemaProvider for IcebergSchemaProvider {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let listing = self.inner.listing.lock().expect("listing poisoned");
        listing
            .get(&self.namespace)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .inner
            .load(&self.namespace, name)
            .await?
            .map(|t| t as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        let listing = self.inner.listing.lock().expect("listing poisoned");
        listing
            .get(&self.namespace)
            .is_some_and(|t| t.contains(name))
    }
}
