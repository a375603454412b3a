//! Catalog definition files (`catalogs/*.toml`): the Iceberg catalogs a job may name, and
//! storage profiles (object-store locations with their options) checkpoints can be kept in.
//!
//! ```toml
//! [iceberg.lake]
//! type = "sqlite"                       # the embedded catalog
//! path = "meltwater-data/catalog.db"    # relative to the working directory
//! warehouse = "meltwater-data/warehouse"
//! catalog-name = "lake"                 # optional: the catalog_name readers open it with
//!
//! [storage.chk]                         # SET 'execution.checkpointing.dir' = 'profile:chk'
//! url = "s3://bucket/checkpoints"
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! access-key-id-env = "CHK_ACCESS_KEY_ID"        # names of environment variables,
//! secret-access-key-env = "CHK_SECRET_ACCESS_KEY" # never the secrets themselves
//! allow-http = true
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meltwater_iceberg::IcebergCatalogConfig;
use meltwater_state::{StorageProfile, StorageProfiles};
use serde::Deserialize;

/// The embedded default, used when no catalog file is given and `catalogs/default.toml`
/// does not exist in the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../catalogs/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    iceberg: BTreeMap<String, IcebergEntry>,
    #[serde(default)]
    storage: BTreeMap<String, StorageProfile>,
}

/// What a catalog file defines.
#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    pub iceberg: Vec<IcebergCatalogConfig>,
    /// Storage profiles by name (`[storage.<name>]`), for `profile:<name>` locations.
    pub storage: StorageProfiles,
}

/// URL schemes a storage profile may use (a URL without a scheme is a local directory).
const STORAGE_SCHEMES: [&str; 4] = ["file", "s3", "s3a", "memory"];

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

/// The catalogs and storage profiles a file defines; relative paths (also a profile's
/// `url` without a scheme) are taken from `base` (the working directory). `origin` names
/// the file in errors.
pub fn parse_catalogs(text: &str, origin: &str, base: &Path) -> Result<Catalogs, String> {
    let file: CatalogFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let mut storage = StorageProfiles::new();
    for (name, mut profile) in file.storage {
        match profile.url.split_once("://") {
            Some((scheme, _)) => {
                if !STORAGE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Err(format!(
                        "{origin}: [storage.{name}]: unsupported URL scheme '{scheme}://' in '{}' (supported: {}, or a local directory)",
                        profile.url,
                        STORAGE_SCHEMES.map(|s| format!("{s}://")).join(", ")
                    ));
                }
            }
            None if profile.url.trim().is_empty() => {
                return Err(format!("{origin}: [storage.{name}]: url is empty"));
            }
            None => profile.url = base.join(&profile.url).display().to_string(),
        }
        storage.insert(name, profile);
    }
    let iceberg = file
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
        .collect();
    Ok(Catalogs { iceberg, storage })
}

#[cfg(test)]
mod tests {
    use meltwater_iceberg::IcebergCatalogKind;

    use super::*;

    #[test]
    fn embedded_default_is_a_sqlite_catalog_under_meltwater_data() {
        let all = parse_catalogs(EMBEDDED_DEFAULT, "default", Path::new("/work/x")).unwrap();
        assert!(all.storage.is_empty(), "the default needs no service");
        let c = all.iceberg;
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

    #[test]
    fn storage_profiles_with_urls_and_environment_variable_names() {
        let text = r#"
[iceberg.lake]
type = "sqlite"
path = "a.db"
warehouse = "wh"

[storage.chk]
url = "s3://bucket/checkpoints"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
access-key-id-env = "CHK_KEY"
secret-access-key-env = "CHK_SECRET"
allow-http = true

[storage.disk]
url = "spare/checkpoints"
"#;
        let c = parse_catalogs(text, "x.toml", Path::new("/base")).unwrap();
        assert_eq!(c.iceberg.len(), 1);
        let chk = &c.storage["chk"];
        assert_eq!(chk.url, "s3://bucket/checkpoints");
        assert_eq!(chk.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(chk.region.as_deref(), Some("eu-west-1"));
        assert_eq!(chk.access_key_id_env.as_deref(), Some("CHK_KEY"));
        assert_eq!(chk.secret_access_key_env.as_deref(), Some("CHK_SECRET"));
        assert!(chk.allow_http);
        assert_eq!(c.storage["disk"].url, "/base/spare/checkpoints");

        // Secrets as literals are not a thing: unknown keys are errors.
        let e = parse_catalogs(
            "[storage.x]\nurl = 's3://b/p'\nsecret-access-key = 'hunter2'",
            "y.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("y.toml") && e.contains("secret-access-key"),
            "{e}"
        );
        let e =
            parse_catalogs("[storage.x]\nurl = 'gs://b/p'", "y.toml", Path::new("/")).unwrap_err();
        assert!(
            e.contains("[storage.x]: unsupported URL scheme 'gs://'"),
            "{e}"
        );
    }

    #[test]
    fn every_catalog_file_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalogs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let c = parse_catalogs(&text, &path.display().to_string(), Path::new("/w"))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.iceberg.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 2, "default.toml and the storage example");
    }
}
