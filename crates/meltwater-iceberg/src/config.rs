//! Iceberg catalog definitions (the `[iceberg.<name>]` sections of a catalog file) and
//! opening them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
// The SQLite driver and tokio runtime of the catalog's sqlx `Any` pool are enabled
// through this dependency's features (see Cargo.toml).
use sqlx as _;

use crate::committer::LakeCatalog;
use crate::error::{IcebergError, Result};

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
    }
}
