//! Iceberg `FileIO` storage for tables in S3-compatible object stores, over the
//! `object_store` crate Meltwater already uses for checkpoints.
//!
//! The `iceberg` crate itself only stores files locally or in memory. A REST catalog's
//! tables live wherever its server puts them (`s3://bucket/ns/table`), so catalogs of
//! `type = "rest"` build their `FileIO` from [`ObjectStorageFactory`]. Paths are full
//! URLs: `s3://`, `s3a://` and `s3n://` go to one S3 client per bucket, configured from
//! the Iceberg storage properties (`s3.endpoint`, `s3.region`, `s3.access-key-id`,
//! `s3.secret-access-key`, `s3.session-token`, `s3.path-style-access`,
//! `s3.allow-anonymous`) the catalog file and the server (`/v1/config`, a table's load
//! `config`) give; `file:/x`, `file:///x` and bare absolute paths go to the local file
//! system.

use std::collections::HashMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory, CLIENT_REGION, S3_ACCESS_KEY_ID, S3_ALLOW_ANONYMOUS,
    S3_ENDPOINT, S3_PATH_STYLE_ACCESS, S3_REGION, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

/// Builds [`ObjectStorage`] from a `FileIO`'s properties.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::new(config.props().clone())))
    }
}

/// Files by URL: S3 buckets through `object_store`, local paths through the crate's
/// local storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorage {
    props: HashMap<String, String>,
    /// One client per bucket, made on first use (clones share them).
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

/// Where a path lives.
enum Target {
    Local,
    Object(Arc<dyn ObjectStore>, ObjectPath),
}

impl ObjectStorage {
    pub fn new(props: HashMap<String, String>) -> Self {
        Self {
            props,
            stores: Arc::default(),
        }
    }

    fn target(&self, path: &str) -> Result<Target> {
        let Some((scheme, rest)) = path.split_once("://") else {
            if path.starts_with('/') || path.starts_with("file:") {
                return Ok(Target::Local);
            }
            return Err(Error::new(
                ErrorKind::FeatureUnsupported,
                format!(
                    "cannot store '{path}': not a URL (s3://bucket/key) or an absolute local path"
                ),
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => Ok(Target::Local),
            "s3" | "s3a" | "s3n" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::new(
                        ErrorKind::DataInvalid,
                        format!("invalid S3 location '{path}': no bucket"),
                    ));
                }
                let key = ObjectPath::parse(key).map_err(|e| {
                    Error::new(ErrorKind::DataInvalid, format!("invalid S3 key in '{path}'"))
                        .with_source(e)
                })?;
                Ok(Target::Object(self.s3(bucket)?, key))
            }
            other => Err(Error::new(
                ErrorKind::FeatureUnsupported,
                format!("cannot store '{path}': the '{other}://' scheme is not supported (s3://, s3a://, file:// and local paths are)"),
            )),
        }
    }

    fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().expect("object store cache poisoned");
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let store = s3_store(bucket, &self.props)?;
        stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}

fn truthy(value: Option<&String>) -> Option<bool> {
    value.map(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "t" | "1" | "on"))
}

/// An S3 client for `bucket` from the Iceberg storage properties. Without an access
/// key (and without `s3.allow-anonymous`), credentials come from the environment as
/// for any AWS client (`AWS_ACCESS_KEY_ID`, profiles, instance metadata).
fn s3_store(bucket: &str, props: &HashMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let anonymous = truthy(props.get(S3_ALLOW_ANONYMOUS)).unwrap_or(false);
    let mut b = if anonymous {
        AmazonS3Builder::new().with_skip_signature(true)
    } else {
        AmazonS3Builder::from_env()
    };
    b = b.with_bucket_name(bucket);
    if let Some(region) = props.get(S3_REGION).or_else(|| props.get(CLIENT_REGION)) {
        b = b.with_region(region);
    }
    // Iceberg's default is virtual-hosted-style addressing (`bucket.host`); S3-compatible
    // services on a plain host name usually want `s3.path-style-access = true`.
    let path_style = truthy(props.get(S3_PATH_STYLE_ACCESS)).unwrap_or(false);
    if let Some(endpoint) = props.get(S3_ENDPOINT) {
        let endpoint = endpoint.trim_end_matches('/');
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if path_style {
            b = b.with_endpoint(endpoint);
        } else {
            // object_store takes a virtual-hosted endpoint with the bucket in it.
            let hosted = match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
                None => format!("{bucket}.{endpoint}"),
            };
            b = b
                .with_endpoint(hosted)
                .with_virtual_hosted_style_request(true);
        }
    } else if !path_style {
        b = b.with_virtual_hosted_style_request(true);
    }
    if !anonymous {
        if let Some(key) = props.get(S3_ACCESS_KEY_ID) {
            b = b.with_access_key_id(key);
        }
        if let Some(secret) = props.get(S3_SECRET_ACCESS_KEY) {
            b = b.with_secret_access_key(secret);
        }
        if let Some(token) = props.get(S3_SESSION_TOKEN) {
            b = b.with_token(token);
        }
    }
    let store = b.build().map_err(|e| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("cannot set up S3 access to bucket '{bucket}'"),
        )
        .with_source(e)
    })?;
    Ok(Arc::new(store))
}

/// An `object_store` error as the crate's: transient failures (anything but a missing
/// object, a precondition or a refused request) are retryable, as the crate's own
/// storage marks them, so a batch task reading a file can be run again.
fn storage_error(what: &str, path: &str, e: object_store::Error) -> Error {
    let (kind, retryable) = match &e {
        object_store::Error::NotFound { .. } => (ErrorKind::DataInvalid, false),
        object_store::Error::Precondition { .. }
        | object_store::Error::AlreadyExists { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. } => (ErrorKind::Unexpected, false),
        _ => (ErrorKind::Unexpected, true),
    };
    let error = Error::new(kind, format!("{what} {path}")).with_source(e);
    if retryable {
        error.with_retryable(true)
    } else {
        error
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().exists(path).await,
            Target::Object(store, key) => match store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(storage_error("looking up", path, e)),
            },
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().metadata(path).await,
            Target::Object(store, key) => {
                let meta = store
                    .head(&key)
                    .await
                    .map_err(|e| storage_error("looking up", path, e))?;
                Ok(FileMetadata { size: meta.size })
            }
        }
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().read(path).await,
            Target::Object(store, key) => {
                let got = store
                    .get(&key)
                    .await
                    .map_err(|e| storage_error("reading", path, e))?;
                got.bytes()
                    .await
                    .map_err(|e| storage_error("reading", path, e))
            }
        }
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().reader(path).await,
            Target::Object(store, key) => Ok(Box::new(ObjectRead {
                store,
                key,
                path: path.to_string(),
            })),
        }
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().write(path, bs).await,
            Target::Object(store, key) => store
                .put(&key, bs.into())
                .await
                .map(|_| ())
                .map_err(|e| storage_error("writing", path, e)),
        }
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().writer(path).await,
            Target::Object(store, key) => Ok(Box::new(ObjectWrite {
                writer: Some(BufWriter::new(store, key)),
                path: path.to_string(),
            })),
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().delete(path).await,
            Target::Object(store, key) => match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_error("deleting", path, e)),
            },
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        match self.target(path)? {
            Target::Local => LocalFsStorage::new().delete_prefix(path).await,
            Target::Object(store, key) => {
                let listed = store.list(Some(&key)).map_ok(|m| m.location).boxed();
                store
                    .delete_stream(listed)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|_| ())
                    .map_err(|e| storage_error("deleting under", path, e))
            }
        }
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of one object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    path: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| storage_error("reading", &self.path, e))
    }
}

/// A streaming upload: buffered, a multipart upload once it outgrows the buffer; the
/// object appears on `close`.
struct ObjectWrite {
    writer: Option<BufWriter>,
    path: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let writer = self.writer.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("writing {}: already closed", self.path),
            )
        })?;
        writer
            .put(bs)
            .await
            .map_err(|e| storage_error("writing", &self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        let mut writer = self.writer.take().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("closing {}: already closed", self.path),
            )
        })?;
        std::future::poll_fn(|cx| tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut writer), cx))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, format!("writing {}", self.path))
                    .with_source(e)
                    .with_retryable(true)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> ObjectStorage {
        ObjectStorage::new(HashMap::from([
            (S3_ENDPOINT.to_string(), "http://127.0.0.1:1".to_string()),
            (S3_PATH_STYLE_ACCESS.to_string(), "true".to_string()),
            (S3_ALLOW_ANONYMOUS.to_string(), "true".to_string()),
        ]))
    }

    #[test]
    fn paths_pick_the_store() {
        let s = storage();
        for local in ["/tmp/x", "file:/tmp/x", "file:///tmp/x"] {
            assert!(matches!(s.target(local).unwrap(), Target::Local), "{local}");
        }
        let Target::Object(_, key) = s.target("s3://bucket/ns/t/data/f.parquet").unwrap() else {
            panic!("an S3 path is an object")
        };
        assert_eq!(key.as_ref(), "ns/t/data/f.parquet");
        assert!(s.target("s3a://bucket/k").is_ok());
        // One client per bucket.
        s.target("s3://other/k").unwrap();
        assert_eq!(s.stores.lock().unwrap().len(), 2);
        assert!(s.target("gs://bucket/k").is_err());
        assert!(s.target("s3:///k").is_err());
        assert!(s.target("relative/path").is_err());
    }

    #[tokio::test]
    async fn local_paths_in_both_url_forms_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage();
        let plain = dir.path().join("a/b.json");
        let url = format!("file://{}", plain.display());
        let short = format!("file:{}", plain.display());
        s.write(&url, Bytes::from_static(b"{}")).await.unwrap();
        assert!(s.exists(&short).await.unwrap());
        assert_eq!(s.read(plain.to_str().unwrap()).await.unwrap(), "{}");
        assert_eq!(s.metadata(&short).await.unwrap().size, 2);
        s.delete(&url).await.unwrap();
        assert!(!s.exists(&url).await.unwrap());
    }
}
