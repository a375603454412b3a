//! Checkpoint storage: `<root>/<job>/chk-<n>/` holds one Arrow IPC file per subtask of
//! each stateful operator and, written last and atomically (temporary file + rename),
//! `_manifest.json`. A checkpoint is complete exactly when its manifest exists.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use datafusion::arrow::ipc::CompressionType;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "_manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("checkpoint store {path}: {message}")]
    Io { path: String, message: String },
    #[error("checkpoint {path}: {message}")]
    Corrupt { path: String, message: String },
}

type Result<T> = std::result::Result<T, StateError>;

fn io(path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
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
    /// The checkpoint's directory (filled in when loaded, not stored).
    #[serde(skip)]
    pub dir: PathBuf,
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
    pub fn read_keyed(&self, relative: &str) -> Result<Vec<RecordBatch>> {
        let path = self.dir.join(relative);
        let file = fs::File::open(&path).map_err(|e| io(&path, e))?;
        let reader = FileReader::try_new(file, None).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        reader
            .map(|b| {
                b.map_err(|e| StateError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Loads the manifest of a checkpoint directory (`--from-checkpoint PATH`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::Corrupt {
                path: dir.display().to_string(),
                message: "not a complete checkpoint (no _manifest.json)".into(),
            },
            _ => io(&path, e),
        })?;
        let mut m: CheckpointManifest =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        m.dir = dir.to_path_buf();
        Ok(m)
    }
}

/// Where a job's checkpoints live: a local directory (`'execution.checkpointing.dir'`).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
}

impl CheckpointStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.root.join(sanitize(job_id))
    }

    pub fn checkpoint_dir(&self, job_id: &str, checkpoint_id: u64) -> PathBuf {
        self.job_dir(job_id).join(format!("chk-{checkpoint_id}"))
    }

    /// Writes one subtask's keyed state; returns (relative path, bytes, rows).
    pub fn write_keyed(
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
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let file = fs::File::create(&path).map_err(|e| io(&path, e))?;
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .map_err(|e| io(&path, e))?;
        let mut w =
            FileWriter::try_new_with_options(BufWriter::new(file), &first.schema(), options)
                .map_err(|e| io(&path, e))?;
        for b in batches {
            w.write(b).map_err(|e| io(&path, e))?;
        }
        w.finish().map_err(|e| io(&path, e))?;
        let mut inner = w.into_inner().map_err(|e| io(&path, e))?;
        std::io::Write::flush(&mut inner).map_err(|e| io(&path, e))?;
        inner.get_ref().sync_all().map_err(|e| io(&path, e))?;
        let bytes = fs::metadata(&path).map_err(|e| io(&path, e))?.len();
        Ok(Some((relative, bytes, rows)))
    }

    /// Completes a checkpoint: its manifest, written atomically.
    pub fn commit_manifest(&self, manifest: &CheckpointManifest) -> Result<PathBuf> {
        let dir = self.checkpoint_dir(&manifest.job_id, manifest.checkpoint_id);
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(manifest).map_err(|e| io(&tmp, e))?;
        {
            let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
        }
        fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(|e| io(&dir, e))?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(dir)
    }

    /// The job's complete checkpoints, oldest first.
    pub fn list(&self, job_id: &str) -> Result<Vec<CheckpointManifest>> {
        let dir = self.job_dir(job_id);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let p = entry.path();
            if checkpoint_number(&p).is_some() && p.join(MANIFEST_FILE).exists() {
                out.push(CheckpointManifest::load(&p)?);
            }
        }
        out.sort_by_key(|m| m.checkpoint_id);
        Ok(out)
    }

    /// The newest complete checkpoint.
    pub fn latest(&self, job_id: &str) -> Result<Option<CheckpointManifest>> {
        Ok(self.list(job_id)?.pop())
    }

    /// The highest checkpoint number used so far, complete or not: a restarted job
    /// numbers its next checkpoint above it, so ids never repeat.
    pub fn highest_id(&self, job_id: &str) -> u64 {
        fs::read_dir(self.job_dir(job_id))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| checkpoint_number(&e.path()))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Deletes all but the newest `retain` complete checkpoints, and incomplete ones
    /// older than the newest complete one.
    pub fn prune(&self, job_id: &str, retain: usize) -> Result<()> {
        let complete = self.list(job_id)?;
        let Some(newest) = complete.last().map(|m| m.checkpoint_id) else {
            return Ok(());
        };
        let keep_from = complete
            .iter()
            .rev()
            .nth(retain.max(1) - 1)
            .map(|m| m.checkpoint_id)
            .unwrap_or(0);
        let dir = self.job_dir(job_id);
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))?.flatten() {
            let p = entry.path();
            let Some(n) = checkpoint_number(&p) else {
                continue;
            };
            let complete_here = p.join(MANIFEST_FILE).exists();
            let drop = if complete_here {
                n < keep_from
            } else {
                n < newest
            };
            if drop {
                let _ = fs::remove_dir_all(&p);
            }
        }
        Ok(())
    }
}

fn checkpoint_number(p: &Path) -> Option<u64> {
    p.file_name()?.to_str()?.strip_prefix("chk-")?.parse().ok()
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
            dir: PathBuf::new(),
        }
    }

    #[test]
    fn manifests_make_checkpoints_complete_and_prune_keeps_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path());
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        for id in 1..=4 {
            let (rel, bytes, rows) = store
                .write_keyed("j", id, "agg#1", 0, &[b.clone()])
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
                        state: serde_json::Value::Null,
                    }],
                },
            );
            if id != 4 {
                store.commit_manifest(&m).unwrap();
            }
        }
        // chk-4 has state but no manifest: not complete.
        assert_eq!(store.latest("j").unwrap().unwrap().checkpoint_id, 3);
        assert_eq!(store.highest_id("j"), 4);
        let latest = store.latest("j").unwrap().unwrap();
        let file = latest.operators["agg#1"].subtasks[0]
            .keyed_file
            .clone()
            .unwrap();
        assert_eq!(latest.read_keyed(&file).unwrap()[0], b);
        store.prune("j", 2).unwrap();
        let ids: Vec<u64> = store
            .list("j")
            .unwrap()
            .iter()
            .map(|m| m.checkpoint_id)
            .collect();
        assert_eq!(ids, vec![2, 3]);
        // The incomplete checkpoint newer than the newest complete one stays (it may be in flight).
        assert!(store.checkpoint_dir("j", 4).exists());
        assert!(!store.checkpoint_dir("j", 1).exists());
    }
}
