//! Where checkpoints are stored: a local directory or a prefix in an object store
//! (`s3://bucket/prefix`, `memory://name/prefix`), named directly or through a **storage
//! profile** of the catalog file (`profile:<name>[/<sub/path>]`).
//!
//! A profile (`[storage.<name>]` in `catalogs/*.toml`) gives a URL and the options needed to
//! reach it: an S3 endpoint and region, the names of the environment variables holding the
//! credentials (never the credentials themselves), and whether plain HTTP is allowed. A URL
//! given directly (`s3://bucket/chk/...`) uses the options of the profile whose URL it starts
//! with, if any, else the standard `AWS_*` environment variables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::store::StateError;

/// The prefix of a location naming a storage profile: `profile:<name>[/<sub/path>]`.
pub const PROFILE_PREFIX: &str = "profile:";

/// A named object-store location and the options to reach it (`[storage.<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageProfile {
    /// `s3://bucket/prefix`, `file:///abs/dir`, a local directory, or `memory://name/prefix`.
    pub url: String,
    /// S3: the endpoint of an S3-compatible service (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// S3: the region (default: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// S3: the environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// S3: the environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// S3: the environment variable holding a session token.
    pub session_token_env: Option<String>,
    /// Allow `http://` endpoints (local test services).
    #[serde(default)]
    pub allow_http: bool,
    /// S3: address buckets as `bucket.endpoint` instead of `endpoint/bucket`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

/// Storage profiles by name.
pub type StorageProfiles = BTreeMap<String, StorageProfile>;

/// A directory-like location: a local directory, or a prefix in an object store.
#[derive(Clone)]
pub struct StorageLocation {
    store: Arc<dyn ObjectStore>,
    /// The location within `store`.
    prefix: ObjectPath,
    /// As users write it: a local path as given, or a URL (no trailing slash).
    display: String,
    /// A local directory's absolute path: writes go through the file system, so they can
    /// be fsynced and the manifest renamed into place.
    local: Option<PathBuf>,
}

impl std::fmt::Debug for StorageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageLocation")
            .field("location", &self.display)
            .field("store", &self.store.to_string())
            .finish()
    }
}

impl std::fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl PartialEq for StorageLocation {
    fn eq(&self, other: &Self) -> bool {
        self.display == other.display
            && self.prefix == other.prefix
            && self.store.to_string() == other.store.to_string()
    }
}

fn config_error(location: &str, message: impl std::fmt::Display) -> StateError {
    StateError::Io {
        path: location.to_string(),
        message: message.to_string(),
    }
}

impl StorageLocation {
    /// Opens `spec`: `profile:<name>[/<sub/path>]`, an `s3://`/`s3a://`, `file://` or
    /// `memory://` URL, or a local path (relative to the working directory).
    pub fn open(spec: &str, profiles: &StorageProfiles) -> Result<Self, StateError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(config_error(spec, "empty location"));
        }
        if let Some(rest) = spec.strip_prefix(PROFILE_PREFIX) {
            let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
            let profile = profiles.get(name).ok_or_else(|| {
                config_error(
                    spec,
                    if profiles.is_empty() {
                        format!("no storage profile '{name}': the catalog file defines none ([storage.<name>] tables)")
                    } else {
                        format!(
                            "no storage profile '{name}'; profiles: {}",
                            profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    },
                )
            })?;
            let url = join_url(&profile.url, sub);
            return Self::open_with(&url, Some((name, profile)));
        }
        let profile = matching_profile(spec, profiles);
        Self::open_with(spec, profile)
    }

    /// A local directory.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self, StateError> {
        let dir = dir.as_ref();
        let display = dir.display().to_string();
        let absolute = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| config_error(&display, e))?
                .join(dir)
        };
        let absolute = normalize(&absolute);
        let prefix =
            ObjectPath::from_absolute_path(&absolute).map_err(|e| config_error(&display, e))?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            prefix,
            display,
            local: Some(absolute),
        })
    }

    fn open_with(spec: &str, profile: Option<(&str, &StorageProfile)>) -> Result<Self, StateError> {
        let Some((scheme, _)) = spec.split_once("://") else {
            return Self::local(spec);
        };
        let url =
            url::Url::parse(spec).map_err(|e| config_error(spec, format!("not a URL: {e}")))?;
        let path = || ObjectPath::from_url_path(url.path()).map_err(|e| config_error(spec, e));
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // `file:///abs/dir`; `file://rel/dir` (a host part) is taken as the relative
                // path `rel/dir`, as before URLs were supported.
                let dir = url
                    .to_file_path()
                    .unwrap_or_else(|()| PathBuf::from(&spec["file://".len()..]));
                let mut loc = Self::local(&dir)?;
                loc.display = spec.trim_end_matches('/').to_string();
                Ok(loc)
            }
            "memory" => Ok(Self {
                store: memory_store(url.host_str().unwrap_or("")),
                prefix: path()?,
                display: spec.trim_end_matches('/').to_string(),
                local: None,
            }),
            "s3" | "s3a" => {
                let store = s3_store(spec, profile)?;
                Ok(Self {
                    store,
                    prefix: path()?,
                    display: spec.trim_end_matches('/').to_string(),
                    local: None,
                })
            }
            other => Err(config_error(
                spec,
                format!("unsupported storage URL scheme '{other}://' (supported: a local path, file://, s3://, memory://, or profile:<name>)"),
            )),
        }
    }

    /// The location `relative` (`a/b`) below this one.
    pub fn join(&self, relative: &str) -> Self {
        let mut prefix = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.clone().join(part);
        }
        let display = if self.local.is_some() && !self.display.contains("://") {
            Path::new(&self.display)
                .join(relative)
                .display()
                .to_string()
        } else {
            join_url(&self.display, relative)
        };
        Self {
            store: self.store.clone(),
            prefix,
            display,
            local: self.local.as_ref().map(|l| l.join(relative)),
        }
    }

    /// The local directory, for locations on the local file system.
    pub fn local_path(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }

    /// The object `relative` below this location.
    pub(crate) fn object(&self, relative: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }
}

/// `base` + `/` + `sub`, without doubled or trailing slashes.
fn join_url(base: &str, sub: &str) -> String {
    let sub = sub.trim_matches('/');
    let base = base.trim_end_matches('/');
    if sub.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{sub}")
    }
}

/// The profile whose URL `spec` starts with (on a path-segment boundary), the longest if
/// several do.
fn matching_profile<'a>(
    spec: &str,
    profiles: &'a StorageProfiles,
) -> Option<(&'a str, &'a StorageProfile)> {
    let spec = spec.trim_end_matches('/');
    profiles
        .iter()
        .filter(|(_, p)| p.url.contains("://"))
        .filter(|(_, p)| {
            let base = p.url.trim_end_matches('/');
            spec == base
                || spec
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(_, p)| p.url.trim_end_matches('/').len())
        .map(|(n, p)| (n.as_str(), p))
}

/// `memory://<name>/...`: one in-memory store per name for the life of the process, so a
/// job and a later `--from-checkpoint` in the same process see the same objects.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .expect("memory store registry");
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

fn s3_store(
    spec: &str,
    profile: Option<(&str, &StorageProfile)>,
) -> Result<Arc<dyn ObjectStore>, StateError> {
    let mut b = AmazonS3Builder::from_env().with_url(spec);
    if let Some((name, p)) = profile {
        let env = |key: &str, var: &str| {
            std::env::var(var).map_err(|_| {
                config_error(
                    spec,
                    format!("storage profile '{name}': {key} names the environment variable {var}, which is not set"),
                )
            })
        };
        if let Some(e) = &p.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &p.region {
            b = b.with_region(r);
        }
        if let Some(v) = &p.access_key_id_env {
            b = b.with_access_key_id(env("access-key-id-env", v)?);
        }
        if let Some(v) = &p.secret_access_key_env {
            b = b.with_secret_access_key(env("secret-access-key-env", v)?);
        }
        if let Some(v) = &p.session_token_env {
            b = b.with_token(env("session-token-env", v)?);
        }
        if p.allow_http {
            b = b.with_allow_http(true);
        }
        if p.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(true);
        }
    }
    let store = b.build().map_err(|e| config_error(spec, e))?;
    Ok(Arc::new(store))
}

/// `a/./b/../c` → `a/c`, without touching the file system (the directory may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> StorageProfiles {
        let mut p = StorageProfiles::new();
        p.insert(
            "chk".into(),
            StorageProfile {
                url: "s3://bucket/meltwater".into(),
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                ..Default::default()
            },
        );
        p.insert(
            "scratch".into(),
            StorageProfile {
                url: "memory://scratch/base".into(),
                ..Default::default()
            },
        );
        p
    }

    #[test]
    fn profile_references_and_urls_resolve() {
        let p = profiles();
        let loc = StorageLocation::open("profile:chk/team/a", &p).unwrap();
        assert_eq!(loc.to_string(), "s3://bucket/meltwater/team/a");
        assert_eq!(loc.prefix().as_ref(), "meltwater/team/a");
        assert!(loc.local_path().is_none());
        let loc = StorageLocation::open("profile:scratch", &p).unwrap();
        assert_eq!(loc.to_string(), "memory://scratch/base");
        assert_eq!(
            loc.join("job/chk-3").to_string(),
            "memory://scratch/base/job/chk-3"
        );
        assert_eq!(loc.join("job/chk-3").prefix().as_ref(), "base/job/chk-3");

        // A URL inside a profile's URL takes that profile's options; others take none.
        assert_eq!(
            matching_profile("s3://bucket/meltwater/j/chk-1", &p).map(|(n, _)| n),
            Some("chk")
        );
        assert_eq!(matching_profile("s3://bucket/meltwater2", &p), None);
        assert_eq!(matching_profile("s3://other/x", &p), None);

        let e = StorageLocation::open("profile:nope", &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no storage profile 'nope'; profiles: chk, scratch"),
            "{e}"
        );
        let e = StorageLocation::open("profile:x", &StorageProfiles::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("defines none"), "{e}");
        let e = StorageLocation::open("gs://b/x", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported storage URL scheme 'gs://'"), "{e}");
    }

    #[test]
    fn local_paths_and_file_urls_are_local_directories() {
        let loc =
            StorageLocation::open("data/./chk/../checkpoints", &StorageProfiles::new()).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(loc.local_path().unwrap(), cwd.join("data/checkpoints"));
        assert_eq!(loc.to_string(), "data/./chk/../checkpoints");
        assert_eq!(
            loc.join("j/chk-1").to_string(),
            Path::new("data/./chk/../checkpoints/j/chk-1")
                .display()
                .to_string()
        );
        let loc = StorageLocation::open("file:///tmp/mw/chk/", &StorageProfiles::new()).unwrap();
        assert_eq!(loc.local_path().unwrap(), Path::new("/tmp/mw/chk"));
        assert_eq!(loc.to_string(), "file:///tmp/mw/chk");
        assert_eq!(loc.join("j").to_string(), "file:///tmp/mw/chk/j");
        assert_eq!(
            loc.join("j").local_path().unwrap(),
            Path::new("/tmp/mw/chk/j")
        );
        let loc = StorageLocation::open("file://data/chk", &StorageProfiles::new()).unwrap();
        assert_eq!(loc.local_path().unwrap(), cwd.join("data/chk"));
    }

    #[test]
    fn profile_credentials_come_from_named_environment_variables() {
        let mut p = profiles();
        p.get_mut("chk").unwrap().access_key_id_env =
            Some("MELTWATER_TEST_UNSET_KEY_VARIABLE".into());
        let e = StorageLocation::open("profile:chk", &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("access-key-id-env names the environment variable MELTWATER_TEST_UNSET_KEY_VARIABLE, which is not set"),
            "{e}"
        );
    }
}
