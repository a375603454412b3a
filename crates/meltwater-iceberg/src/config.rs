//! Iceberg catalog definitions (the `[iceberg.<name>]` sections of a catalog file) and
//! opening them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::{
    RestCatalogBuilder, REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
// The SQLite driver and tokio runtime of the catalog's sqlx `Any` pool are enabled
// through this dependency's features (see Cargo.toml).
use sqlx as _;

use crate::committer::LakeCatalog;
use crate::error::{IcebergError, Result};
use crate::rest::RestCommitter;
use crate::storage::ObjectStorageFactory;

/// One Iceberg catalog a job can name as the first part of `catalog.namespace.table`.
#[derive(Debug, Clone, PartialEq)]
pub struct IcebergCatalogConfig {
    /// The name jobs use (`lake` in `lake.db.table`).
    pub name: String,
    pub kind: IcebergCatalogKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IcebergCatalogKind {
    /// The embedded catalog: a SQLite file in the JDBC catalog layout pyiceberg and Java
    /// read, and a local warehouse directory. Paths are absolute once resolved.
    Sqlite {
        path: PathBuf,
        warehouse: PathBuf,
        /// The `catalog_name` column value (pyiceberg's `SqlCatalog(name)`).
        catalog_name: String,
    },
    /// A catalog served by an Iceberg REST server; its tables' files are wherever the
    /// server puts them (S3-compatible object stores or local paths).
    Rest(RestCatalogConfig),
}

/// An Iceberg REST catalog.
#[derive(Clone, PartialEq)]
pub struct RestCatalogConfig {
    /// The server's base URI (`http://127.0.0.1:8181`; requests go to `{uri}/v1/...`).
    pub uri: String,
    /// Sent to `GET /v1/config`, which answers with the catalog's prefix and defaults.
    pub warehouse: Option<String>,
    /// Catalog and storage properties as Iceberg names them: `token` (a static bearer
    /// token), `credential` (`client_id:client_secret` for the OAuth2 client-credentials
    /// grant), `scope`, `oauth2-server-uri`, `header.<name>`, `prefix`, and the storage
    /// properties of the tables' files (`s3.endpoint`, `s3.region`, `s3.access-key-id`,
    /// `s3.secret-access-key`, `s3.session-token`, `s3.path-style-access`,
    /// `s3.allow-anonymous`). A key ending in `-env` names the environment variable that
    /// holds the value of the key without it (`token-env = "LAKE_TOKEN"`), read when
    /// the catalog is opened.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for RestCatalogConfig {
    // Property values may be secrets: only their keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCatalogConfig")
            .field("uri", &self.uri)
            .field("warehouse", &self.warehouse)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RestCatalogConfig {
    /// The properties with every `<key>-env` replaced by `<key>` = the variable's value.
    pub fn resolved_properties(&self) -> std::result::Result<HashMap<String, String>, String> {
        let mut out = HashMap::new();
        for (k, v) in &self.properties {
            match k.strip_suffix("-env") {
                Some(key) => {
                    let value = std::env::var(v).map_err(|_| {
                        format!("{k} names the environment variable {v}, which is not set")
                    })?;
                    out.insert(key.to_string(), value);
                }
                None => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(out)
    }
}

impl IcebergCatalogConfig {
    /// An embedded SQLite catalog; relative paths are taken from `base`.
    pub fn sqlite(
        name: &str,
        base: &Path,
        path: &Path,
        warehouse: &Path,
        catalog_name: Option<&str>,
    ) -> Self {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        IcebergCatalogConfig {
            name: name.to_string(),
            kind: IcebergCatalogKind::Sqlite {
                path: normalize(&abs(path)),
                warehouse: normalize(&abs(warehouse)),
                catalog_name: catalog_name.unwrap_or(name).to_string(),
            },
        }
    }
}

impl IcebergCatalogConfig {
    /// A REST catalog.
    pub fn rest(
        name: &str,
        uri: &str,
        warehouse: Option<&str>,
        properties: BTreeMap<String, String>,
    ) -> Self {
        IcebergCatalogConfig {
            name: name.to_string(),
            kind: IcebergCatalogKind::Rest(RestCatalogConfig {
                uri: uri.trim_end_matches('/').to_string(),
                warehouse: warehouse.map(str::to_string),
                properties,
            }),
        }
    }
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Opens a catalog, creating the embedded catalog's file and warehouse on first use.
pub async fn open_catalog(config: &IcebergCatalogConfig) -> Result<Arc<LakeCatalog>> {
    open(config, true).await
}

/// Opens a catalog without creating anything: an embedded catalog whose file does not
/// exist yet opens as an empty in-memory catalog (for `validate`, `explain`, listings).
pub async fn open_catalog_readonly(config: &IcebergCatalogConfig) -> Result<Arc<LakeCatalog>> {
    open(config, false).await
}

async fn open(config: &IcebergCatalogConfig, create: bool) -> Result<Arc<LakeCatalog>> {
    let err = |message: String| IcebergError::Catalog {
        catalog: config.name.clone(),
        message,
    };
    match &config.kind {
        IcebergCatalogKind::Sqlite {
            path,
            warehouse,
            catalog_name,
        } => {
            let uri = if create || path.exists() {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
                }
                std::fs::create_dir_all(warehouse).map_err(|e| {
                    err(format!(
                        "cannot create warehouse {}: {e}",
                        warehouse.display()
                    ))
                })?;
                format!("sqlite:{}?mode=rwc", path.display())
            } else {
                "sqlite::memory:".to_string()
            };
            let in_memory = uri.starts_with("sqlite::memory:");
            let props = HashMap::from([
                ("uri".to_string(), uri),
                (
                    "warehouse".to_string(),
                    format!("file://{}", warehouse.display()),
                ),
                (
                    "sql_bind_style".to_string(),
                    SqlBindStyle::QMark.to_string(),
                ),
                // SQLite allows one writer: a small pool avoids lock contention; an
                // in-memory database exists per connection, so it gets exactly one.
                (
                    "pool.max-connections".to_string(),
                    if in_memory { "1" } else { "2" }.to_string(),
                ),
            ]);
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(Arc::new(LocalFsStorageFactory))
                .load(catalog_name, props)
                .await
                .map_err(|e| {
                    err(format!(
                        "cannot open SQLite catalog {}: {e}",
                        path.display()
                    ))
                })?;
            let catalog: Arc<dyn Catalog> = Arc::new(catalog);
            let lake = if in_memory {
                LakeCatalog::read_only(&config.name, catalog)
            } else {
                LakeCatalog::sqlite(&config.name, catalog, path.clone(), catalog_name)
                    .await
                    .map_err(err)?
            };
            Ok(Arc::new(lake))
        }
        IcebergCatalogKind::Rest(rest) => {
            let props = rest.resolved_properties().map_err(err)?;
            let mut catalog_props = props.clone();
            catalog_props.insert(REST_CATALOG_PROP_URI.to_string(), rest.uri.clone());
            if let Some(w) = &rest.warehouse {
                catalog_props.insert(REST_CATALOG_PROP_WAREHOUSE.to_string(), w.clone());
            }
            let catalog = RestCatalogBuilder::default()
                .with_storage_factory(Arc::new(ObjectStorageFactory))
                .load(&config.name, catalog_props)
                .await
                .map_err(|e| err(format!("cannot open REST catalog {}: {e}", rest.uri)))?;
            let catalog: Arc<dyn Catalog> = Arc::new(catalog);
            let lake = if create {
                let committer =
                    RestCommitter::new(&rest.uri, rest.warehouse.as_deref(), props).map_err(err)?;
                LakeCatalog::rest(&config.name, catalog, committer)
            } else {
                LakeCatalog::read_only(&config.name, catalog)
            };
            Ok(Arc::new(lake))
        }
    }
}
