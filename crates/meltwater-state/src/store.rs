//! Checkpoint storage: `<root>/<job>/chk-<n>/` holds one Arrow IPC file per subtask of
//! each stateful operator and, written last and atomically, `_manifest.json`. A checkpoint
//! is complete exactly when its manifest exists; listing ignores `chk-<n>` directories
//! without one.
//!
//! The root is a [`StorageLocation`]: a local directory (files fsynced, the manifest
//! written to a temporary file, fsynced and renamed into place) or a prefix in an object
//! store (`s3://`, `memory://`): state files are uploaded first, then the manifest with
//! one PUT that fails if the object already exists (where the store supports it), so a
//! reader sees either no manifest or the whole one.

use std::collections::BTreeMap;
use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use datafusion::arrow::ipc::CompressionType;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::location::{StorageLocation, StorageProfiles};

pub const MANIFEST_FILE: &str = "_manifest.json";

/// Files above this size are uploaded to object stores in parts.
const MULTIPART_THRESHOLD: usize = 32 << 20;
const MULTIPART_CHUNK: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("checkpoint store {path}: {message}")]
    Io { path: String, message: String },
    #[error("checkpoint {path}: {message}")]
    Corrupt { path: String, message: String },
}

type Result<T> = std::result::Result<T, StateError>;

fn io(path: impl std::fmt::Display, e: impl std::fmt::Display) -> StateError {
    StateError::Io {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn corrupt(path: impl std::fmt::Display, e: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// What one subtask of an operator stored in a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SubtaskManifest {
    pub index: usize,
    /// Keyed state (rows tagged with their key group), relative to the checkpoint dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed_file: Option<String>,
    #[serde(default)]
    pub keyed_rows: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Operator state that is not keyed: source split positions, a sink's files
    /// waiting to be committed, ...
    #[serde(default)]
    pub state: serde_json::Value,
}

/// One operator's part of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorManifest {
    pub name: String,
    pub parallelism: usize,
    pub subtasks: Vec<SubtaskManifest>,
}

/// A complete checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointManifest {
    pub job_id: String,
    pub checkpoint_id: u64,
    /// RFC 3339, when the checkpoint was triggered.
    pub triggered_at: String,
    /// From trigger to the last acknowledgement.
    pub duration_ms: u64,
    pub key_groups: u16,
    /// By stable operator id.
    pub operators: BTreeMap<String, OperatorManifest>,
    /// The checkpoint's directory (filled in when loaded or committed, not stored).
    #[serde(skip)]
    pub dir: Option<StorageLocation>,
}

impl CheckpointManifest {
    /// Bytes of state files.
    pub fn size_bytes(&self) -> u64 {
        self.operators
            .values()
            .flat_map(|o| &o.subtasks)
            .map(|s| s.bytes)
            .sum()
    }

    /// Reads a keyed state file of this checkpoint.
    pub async fn read_keyed(&self, relative: &str) -> Result<Vec<RecordBatch>> {
        let dir = self.dir.as_ref().ok_or_else(|| {
            corrupt(
                format!("{}/chk-{}", self.job_id, self.checkpoint_id),
                "the manifest was not read from a checkpoint store",
            )
        })?;
        let shown = dir.join(relative);
        let bytes = read_object(dir, relative)
            .await?
            .ok_or_else(|| corrupt(&shown, "state file missing"))?;
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| corrupt(&shown, e))?;
        reader.map(|b| b.map_err(|e| corrupt(&shown, e))).collect()
    }

    /// Loads the manifest of a checkpoint directory.
    pub async fn load(dir: &StorageLocation) -> Result<Self> {
        Self::try_load(dir)
            .await?
            .ok_or_else(|| corrupt(dir, "not a complete checkpoint (no _manifest.json)"))
    }

    /// Loads the checkpoint `spec` names (`--from-checkpoint`): the path or URL of a
    /// `chk-<n>` directory, or `profile:<name>/<job>/chk-<n>`.
    pub async fn open(spec: &str, profiles: &StorageProfiles) -> Result<Self> {
        Self::load(&StorageLocation::open(spec, profiles)?).await
    }

    async fn try_load(dir: &StorageLocation) -> Result<Option<Self>> {
        let Some(bytes) = read_object(dir, MANIFEST_FILE).await? else {
            return Ok(None);
        };
        let mut m: CheckpointManifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(dir.join(MANIFEST_FILE), e))?;
        m.dir = Some(dir.clone());
        Ok(Some(m))
    }
}

/// Where a job's checkpoints live (`'execution.checkpointing.dir'`, `--checkpoint-dir`).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: StorageLocation,
}

impl CheckpointStore {
    pub fn new(root: StorageLocation) -> Self {
        Self { root }
    }

    /// The store at `spec`: a local path, a `file://`, `s3://` or `memory://` URL, or
    /// `profile:<name>[/<sub/path>]` naming a storage profile.
    pub fn open(spec: &str, profiles: &StorageProfiles) -> Result<Self> {
        Ok(Self::new(StorageLocation::open(spec, profiles)?))
    }

    pub fn root(&self) -> &StorageLocation {
        &self.root
    }

    pub fn job_dir(&self, job_id: &str) -> StorageLocation {
        self.root.join(&sanitize(job_id))
    }

    pub fn checkpoint_dir(&self, job_id: &str, checkpoint_id: u64) -> StorageLocation {
        self.job_dir(job_id).join(&format!("chk-{checkpoint_id}"))
    }

    /// Writes one subtask's keyed state; returns (relative path, bytes, rows).
    pub async fn write_keyed(
        &self,
        job_id: &str,
        checkpoint_id: u64,
        operator_id: &str,
        subtask: usize,
        batches: &[RecordBatch],
    ) -> Result<Option<(String, u64, u64)>> {
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(None);
        }
        let dir = self.checkpoint_dir(job_id, checkpoint_id);
        let relative = format!("{}/{subtask}.arrow", sanitize(operator_id));
        let shown = dir.join(&relative);
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .map_err(|e| io(&shown, e))?;
        let mut w = FileWriter::try_new_with_options(Vec::new(), &first.schema(), options)
            .map_err(|e| io(&shown, e))?;
        for b in batches {
            w.write(b).map_err(|e| io(&shown, e))?;
        }
        w.finish().map_err(|e| io(&shown, e))?;
        let data = w.into_inner().map_err(|e| io(&shown, e))?;
        let bytes = write_object(&dir, &relative, data).await?;
        Ok(Some((relative, bytes, rows)))
    }

    /// Completes a checkpoint: its manifest, written atomically after its state files.
    /// Returns the checkpoint's directory.
    pub async fn commit_manifest(&self, manifest: &CheckpointManifest) -> Result<StorageLocation> {
        let dir = self.checkpoint_dir(&manifest.job_id, manifest.checkpoint_id);
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| io(&dir, e))?;
        write_manifest(&dir, text).await?;
        Ok(dir)
    }

    /// The numbers of the job's `chk-<n>` directories, complete or not.
    async fn checkpoint_numbers(&self, job_id: &str) -> Result<Vec<u64>> {
        let dir = self.job_dir(job_id);
        let listed = match dir.store().list_with_delimiter(Some(dir.prefix())).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut out: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| checkpoint_number(p.filename()?))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The job's complete checkpoints, oldest first.
    pub async fn list(&self, job_id: &str) -> Result<Vec<CheckpointManifest>> {
        let mut out = Vec::new();
        for n in self.checkpoint_numbers(job_id).await? {
            if let Some(m) = CheckpointManifest::try_load(&self.checkpoint_dir(job_id, n)).await? {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.checkpoint_id);
        Ok(out)
    }

    /// The newest complete checkpoint.
    pub async fn latest(&self, job_id: &str) -> Result<Option<CheckpointManifest>> {
        Ok(self.list(job_id).await?.pop())
    }

    /// The highest checkpoint number used so far, complete or not: a restarted job
    /// numbers its next checkpoint above it, so ids never repeat.
    pub async fn highest_id(&self, job_id: &str) -> Result<u64> {
        Ok(self
            .checkpoint_numbers(job_id)
            .await?
            .last()
            .copied()
            .unwrap_or(0))
    }

    /// Deletes all but the newest `retain` complete checkpoints, and incomplete ones
    /// older than the newest complete one. A checkpoint's manifest goes first, so one
    /// deleted halfway is incomplete, never complete with files missing.
    pub async fn prune(&self, job_id: &str, retain: usize) -> Result<()> {
        let complete = self.list(job_id).await?;
        let Some(newest) = complete.last().map(|m| m.checkpoint_id) else {
            return Ok(());
        };
        let keep_from = complete
            .iter()
            .rev()
            .nth(retain.max(1) - 1)
            .map(|m| m.checkpoint_id)
            .unwrap_or(0);
        let is_complete = |n: u64| complete.iter().any(|m| m.checkpoint_id == n);
        for n in self.checkpoint_numbers(job_id).await? {
            let drop = if is_complete(n) {
                n < keep_from
            } else {
                n < newest
            };
            if drop {
                delete_dir(&self.checkpoint_dir(job_id, n)).await?;
            }
        }
        Ok(())
    }
}

/// The object `relative` below `dir`, or `None` if there is none.
async fn read_object(dir: &StorageLocation, relative: &str) -> Result<Option<bytes::Bytes>> {
    let path = dir.object(relative);
    match dir.store().get(&path).await {
        Ok(r) => Ok(Some(
            r.bytes().await.map_err(|e| io(dir.join(relative), e))?,
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(io(dir.join(relative), e)),
    }
}

/// Writes `data` to `relative` below `dir`: fsynced on a local disk; one PUT (or a
/// multipart upload when large) on object stores. Returns its size.
async fn write_object(dir: &StorageLocation, relative: &str, data: Vec<u8>) -> Result<u64> {
    let len = data.len() as u64;
    let shown = dir.join(relative);
    if let Some(local) = dir.local_path() {
        let path = local.join(relative);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&data)?;
            f.sync_all()
        })
        .await
        .map_err(|e| io(&shown, e))?
        .map_err(|e| io(&shown, e))?;
        return Ok(len);
    }
    let store = dir.store();
    let path = dir.object(relative);
    if data.len() <= MULTIPART_THRESHOLD {
        store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| io(&shown, e))?;
    } else {
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| io(&shown, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
        w.write(&data);
        w.finish().await.map_err(|e| io(&shown, e))?;
    }
    Ok(len)
}

/// Writes a checkpoint's manifest so that readers see all of it or nothing: locally a
/// temporary file, fsynced, renamed into place (then the directory fsynced); on object
/// stores a single PUT that must create the object (`PutMode::Create`, where the store
/// supports it: a second writer of the same checkpoint fails instead of replacing it).
async fn write_manifest(dir: &StorageLocation, text: Vec<u8>) -> Result<()> {
    let shown = dir.join(MANIFEST_FILE);
    if let Some(local) = dir.local_path() {
        let dir_path = local.to_path_buf();
        return tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir_path)?;
            let tmp = dir_path.join(format!("{MANIFEST_FILE}.tmp"));
            {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&text)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, dir_path.join(MANIFEST_FILE))?;
            if let Ok(d) = std::fs::File::open(&dir_path) {
                let _ = d.sync_all();
            }
            Ok(())
        })
        .await
        .map_err(|e| io(&shown, e))?
        .map_err(|e| io(&shown, e));
    }
    let store = dir.store();
    let path = dir.object(MANIFEST_FILE);
    let text = bytes::Bytes::from(text);
    let payload = PutPayload::from_bytes(text.clone());
    match store
        .put_opts(&path, payload.clone(), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => store
            .put(&path, payload)
            .await
            .map(|_| ())
            .map_err(|e| io(&shown, e)),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => {
            // A retried PUT whose first attempt succeeded finds its own manifest.
            let existing = read_object(dir, MANIFEST_FILE).await?;
            if existing.as_deref() == Some(&text[..]) {
                Ok(())
            } else {
                Err(io(
                    &shown,
                    "the checkpoint was already completed by another writer (two runs of the same job id on one checkpoint store?)",
                ))
            }
        }
        Err(e) => Err(io(&shown, e)),
    }
}

/// Deletes a checkpoint directory, its manifest first.
async fn delete_dir(dir: &StorageLocation) -> Result<()> {
    if let Some(local) = dir.local_path() {
        let path = local.to_path_buf();
        return tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let ignore_missing = |r: std::io::Result<()>| match r {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            };
            ignore_missing(std::fs::remove_file(path.join(MANIFEST_FILE)))?;
            ignore_missing(std::fs::remove_dir_all(&path))
        })
        .await
        .map_err(|e| io(dir, e))?
        .map_err(|e| io(dir, e));
    }
    let store = dir.store().clone();
    match store.delete(&dir.object(MANIFEST_FILE)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(io(dir, e)),
    }
    let locations = store
        .list(Some(dir.prefix()))
        .map_ok(|m| m.location)
        .boxed();
    let mut deleted = store.delete_stream(locations);
    while let Some(r) = deleted.next().await {
        match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io(dir, e)),
        }
    }
    Ok(())
}

fn checkpoint_number(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

/// Job and operator ids as directory names.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn manifest(id: u64) -> CheckpointManifest {
        CheckpointManifest {
            job_id: "j".into(),
            checkpoint_id: id,
            triggered_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 5,
            key_groups: 128,
            operators: BTreeMap::new(),
            dir: None,
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap()
    }

    /// Checkpoints 1..=4 with keyed state; all but 4 get a manifest.
    async fn write_four(store: &CheckpointStore) {
        let b = batch();
        for id in 1..=4 {
            let (rel, bytes, rows) = store
                .write_keyed("j", id, "agg#1", 0, std::slice::from_ref(&b))
                .await
                .unwrap()
                .unwrap();
            assert!(bytes > 0);
            assert_eq!(rows, 3);
            let mut m = manifest(id);
            m.operators.insert(
                "agg#1".into(),
                OperatorManifest {
                    name: "agg".into(),
                    parallelism: 1,
                    subtasks: vec![SubtaskManifest {
                        index: 0,
                        keyed_file: Some(rel),
                        keyed_rows: rows,
                        bytes,
                        state: serde_json::json!({"offset": id}),
                    }],
                },
            );
            if id != 4 {
                let dir = store.commit_manifest(&m).await.unwrap();
                assert_eq!(dir, store.checkpoint_dir("j", id));
            }
        }
    }

    async fn ids(store: &CheckpointStore) -> Vec<u64> {
        store
            .list("j")
            .await
            .unwrap()
            .iter()
            .map(|m| m.checkpoint_id)
            .collect()
    }

    /// The contract every backend keeps: a checkpoint is complete exactly when its
    /// manifest exists, ids count incomplete ones, prune keeps the newest.
    async fn check_store(store: &CheckpointStore, spec: &str) {
        assert!(
            store.list("j").await.unwrap().is_empty(),
            "{spec}: empty store"
        );
        assert_eq!(store.highest_id("j").await.unwrap(), 0);
        write_four(store).await;
        // chk-4 has state but no manifest: not complete.
        assert_eq!(ids(store).await, vec![1, 2, 3], "{spec}");
        assert_eq!(store.highest_id("j").await.unwrap(), 4, "{spec}");
        let latest = store.latest("j").await.unwrap().unwrap();
        assert_eq!(latest.checkpoint_id, 3);
        assert_eq!(latest.dir.as_ref().unwrap(), &store.checkpoint_dir("j", 3));
        let sub = &latest.operators["agg#1"].subtasks[0];
        assert_eq!(sub.state, serde_json::json!({"offset": 3}));
        let file = sub.keyed_file.clone().unwrap();
        assert_eq!(file, "agg_1/0.arrow");
        assert_eq!(latest.read_keyed(&file).await.unwrap(), vec![batch()]);

        // `--from-checkpoint`: the location of a chk-<n> directory, as listed.
        let shown = store.checkpoint_dir("j", 2).to_string();
        let m = CheckpointManifest::open(&shown, &StorageProfiles::new())
            .await
            .unwrap();
        assert_eq!(m.checkpoint_id, 2);
        assert_eq!(m.read_keyed(&file).await.unwrap(), vec![batch()]);
        let e = CheckpointManifest::open(
            &store.checkpoint_dir("j", 4).to_string(),
            &StorageProfiles::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a complete checkpoint"), "{e}");

        store.prune("j", 2).await.unwrap();
        assert_eq!(ids(store).await, vec![2, 3], "{spec}");
        // The incomplete checkpoint newer than the newest complete one stays (it may be
        // in flight); everything of chk-1 is gone.
        assert_eq!(store.highest_id("j").await.unwrap(), 4);
        let chk1 = store.checkpoint_dir("j", 1);
        let left: Vec<_> = chk1
            .store()
            .list(Some(chk1.prefix()))
            .try_collect()
            .await
            .unwrap();
        assert!(left.is_empty(), "{spec}: {left:?}");
        assert!(store
            .checkpoint_dir("j", 4)
            .store()
            .head(&store.checkpoint_dir("j", 4).object("agg_1/0.arrow"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn local_directory_store() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("chk").display().to_string();
        let store = CheckpointStore::open(&spec, &StorageProfiles::new()).unwrap();
        check_store(&store, &spec).await;
        let chk3 = tmp.path().join("chk/j/chk-3");
        assert!(chk3.join(MANIFEST_FILE).is_file());
        assert!(!chk3.join(format!("{MANIFEST_FILE}.tmp")).exists());
        assert!(
            !tmp.path().join("chk/j/chk-1").exists(),
            "pruned directories are removed"
        );
        assert!(tmp.path().join("chk/j/chk-4/agg_1/0.arrow").is_file());
        // A file:// URL is the same directory.
        let url = format!("file://{}", tmp.path().join("chk").display());
        let same = CheckpointStore::open(&url, &StorageProfiles::new()).unwrap();
        assert_eq!(ids(&same).await, vec![2, 3]);
        assert_eq!(
            same.checkpoint_dir("j", 3).to_string(),
            format!("{url}/j/chk-3")
        );
    }

    #[tokio::test]
    async fn memory_store() {
        let spec = "memory://store-test/checkpoints";
        let store = CheckpointStore::open(spec, &StorageProfiles::new()).unwrap();
        check_store(&store, spec).await;
        assert_eq!(
            store.checkpoint_dir("j", 3).to_string(),
            "memory://store-test/checkpoints/j/chk-3"
        );
        // Another store elsewhere in the same memory store sees nothing of these.
        let other =
            CheckpointStore::open("memory://store-test/other", &StorageProfiles::new()).unwrap();
        assert!(other.list("j").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_checkpoint_is_completed_once_on_object_stores() {
        let store =
            CheckpointStore::open("memory://complete-once/chk", &StorageProfiles::new()).unwrap();
        let m = manifest(7);
        store.commit_manifest(&m).await.unwrap();
        // The same manifest again (a retried PUT) is fine ...
        store.commit_manifest(&m).await.unwrap();
        // ... another one for the same checkpoint is not.
        let mut other = manifest(7);
        other.duration_ms = 99;
        let e = store.commit_manifest(&other).await.unwrap_err().to_string();
        assert!(e.contains("already completed by another writer"), "{e}");
        let loaded = store.latest("j").await.unwrap().unwrap();
        assert_eq!(loaded.duration_ms, 5);
    }

    #[tokio::test]
    async fn listing_ignores_checkpoint_directories_without_a_manifest() {
        let store = CheckpointStore::open("memory://partial/chk", &StorageProfiles::new()).unwrap();
        // A crash after some state files were uploaded: no manifest.
        store
            .write_keyed("j", 12, "op", 1, &[batch()])
            .await
            .unwrap()
            .unwrap();
        assert!(store.list("j").await.unwrap().is_empty());
        assert!(store.latest("j").await.unwrap().is_none());
        assert_eq!(store.highest_id("j").await.unwrap(), 12);
        // Nothing complete: prune deletes nothing.
        store.prune("j", 1).await.unwrap();
        assert_eq!(store.highest_id("j").await.unwrap(), 12);
    }

    #[tokio::test]
    async fn large_state_files_are_uploaded_in_parts() {
        let store =
            CheckpointStore::open("memory://multipart/chk", &StorageProfiles::new()).unwrap();
        // Random-ish values so LZ4 cannot shrink them below the multipart threshold.
        let n = (MULTIPART_THRESHOLD / 8) + 200_000;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let values: Vec<i64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as i64
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap();
        let (rel, bytes, _) = store
            .write_keyed("j", 1, "op", 0, std::slice::from_ref(&b))
            .await
            .unwrap()
            .unwrap();
        assert!(bytes as usize > MULTIPART_THRESHOLD, "{bytes}");
        let mut m = manifest(1);
        m.operators.insert(
            "op".into(),
            OperatorManifest {
                name: "op".into(),
                parallelism: 1,
                subtasks: vec![SubtaskManifest {
                    index: 0,
                    keyed_file: Some(rel.clone()),
                    keyed_rows: b.num_rows() as u64,
                    bytes,
                    state: serde_json::Value::Null,
                }],
            },
        );
        store.commit_manifest(&m).await.unwrap();
        let read = store
            .latest("j")
            .await
            .unwrap()
            .unwrap()
            .read_keyed(&rel)
            .await
            .unwrap();
        assert_eq!(read, vec![b]);
    }
}
