//! Catalog definition files (`catalogs/*.toml`): the Iceberg catalogs a job may name.
//!
//! ```toml
//! [iceberg.lake]
//! type = "sqlite"                       # the embedded catalog
//! path = "meltwater-data/catalog.db"    # relative to the working directory
//! warehouse = "meltwater-data/warehouse"
//! catalog-name = "lake"                 # optional: the catalog_name readers open it with
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meltwater_iceberg::IcebergCatalogConfig;
use serde::Deserialize;

/// The embedded default, used when no catalog file is given and `catalogs/default.toml`
/// does not exist in the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../catalogs/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    iceberg: BTreeMap<String, IcebergEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
enum IcebergEntry {
    Sqlite {
        path: PathBuf,
        warehouse: PathBuf,
        #[serde(rename = "catalog-name")]
        catalog_name: Option<String>,
    },
}

/// The catalogs a file defines; relative paths are taken from `base` (the working
/// directory). `origin` names the file in errors.
pub fn parse_catalogs(
    text: &str,
    origin: &str,
    base: &Path,
) -> Result<Vec<IcebergCatalogConfig>, String> {
    let file: CatalogFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    Ok(file
        .iceberg
        .into_iter()
        .map(|(name, entry)| match entry {
            IcebergEntry::Sqlite {
                path,
                warehouse,
                catalog_name,
            } => IcebergCatalogConfig::sqlite(
                &name,
                base,
                &path,
                &warehouse,
                catalog_name.as_deref(),
            ),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use meltwater_iceberg::IcebergCatalogKind;

    use super::*;

    #[test]
    fn embedded_default_is_a_sqlite_catalog_under_meltwater_data() {
        let c = parse_catalogs(EMBEDDED_DEFAULT, "default", Path::new("/work/x")).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "lake");
        let IcebergCatalogKind::Sqlite {
            path,
            warehouse,
            catalog_name,
        } = &c[0].kind;
        assert_eq!(path, Path::new("/work/x/meltwater-data/catalog.db"));
        assert_eq!(warehouse, Path::new("/work/x/meltwater-data/warehouse"));
        assert_eq!(catalog_name, "lake");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let e = parse_catalogs(
            "[iceberg.x]\ntype='sqlite'\npath='a'\nwarehouse='b'\nwarehose='c'",
            "my.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.starts_with("my.toml"), "{e}");
        assert!(e.contains("warehose"), "{e}");
    }
}
