//! Keyed state over a memory budget, moved to local disk a key group at a time.
//!
//! An operator keeps its keyed state in memory, organised by key group, and asks a
//! [`KeyGroupSpill`] which groups were used least recently when its state grows past the
//! budget. It then writes those groups' state, in the very format of its checkpoint
//! snapshots (a [`crate::KEY_GROUP_COLUMN`] column, then the operator's own columns), as
//! one *run*: a single Arrow IPC file holding one batch per spilled part, sorted by key
//! group. A key group lives either in memory or in the runs, never in both: before the
//! operator touches a spilled group (a row of its keys arrives, or a timer of its state is
//! due) it [`KeyGroupSpill::load`]s the group back, merging it as it merges restored state.
//! A run file is deleted once every part in it was loaded back.
//!
//! Since the runs hold snapshot rows, a checkpoint is the in-memory state's snapshot plus
//! [`KeyGroupSpill::snapshot`] (the spilled parts read back as they are), and it restores
//! at any parallelism like any other snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use datafusion::arrow::ipc::CompressionType;
use datafusion::common::{internal_err, DataFusionError};
use datafusion::error::Result;

use crate::KEY_GROUP_COLUMN;

/// Writes `batches` (all of the first one's schema) to the Arrow IPC file `path`,
/// LZ4-compressed, and returns its size in bytes.
pub fn write_ipc_file(path: &Path, batches: &[RecordBatch]) -> Result<u64> {
    let Some(first) = batches.first() else {
        return internal_err!("no batch to write to {}", path.display());
    };
    let schema = first.schema();
    let options =
        IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
    let file = File::create(path)?;
    let mut writer = FileWriter::try_new_with_options(BufWriter::new(file), &schema, options)?;
    for batch in batches {
        if batch.schema() == schema {
            writer.write(batch)?;
        } else {
            writer.write(&RecordBatch::try_new(
                Arc::clone(&schema),
                batch.columns().to_vec(),
            )?)?;
        }
    }
    writer.finish()?;
    Ok(std::fs::metadata(path)?.len())
}

/// The batches of the Arrow IPC file `path` at positions `indices` (ascending), or all of
/// them when `indices` is `None`.
pub fn read_ipc_file(path: &Path, indices: Option<&[usize]>) -> Result<Vec<RecordBatch>> {
    let mut reader = FileReader::try_new(File::open(path)?, None)?;
    let Some(indices) = indices else {
        return Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?);
    };
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        reader.set_index(i)?;
        match reader.next() {
            Some(batch) => out.push(batch?),
            None => {
                return Err(DataFusionError::Execution(format!(
                    "spill file {} has no batch {i}",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// A spill file: its path and how many of its parts are still spilled.
#[derive(Debug)]
struct Run {
    path: PathBuf,
    live: usize,
}

/// Which key groups of an operator subtask are on disk, and where; see the module docs.
#[derive(Debug)]
pub struct KeyGroupSpill {
    budget: usize,
    dir: PathBuf,
    /// Spilled key groups: their parts as (run, batch index in the run), oldest first.
    parts: BTreeMap<u16, Vec<(u64, usize)>>,
    runs: HashMap<u64, Run>,
    next_run: u64,
    /// Per key group: the use counter when it was last touched (0: never).
    last_used: HashMap<u16, u64>,
    uses: u64,
    /// Bytes written to run files so far.
    bytes: u64,
}

impl Drop for KeyGroupSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl KeyGroupSpill {
    /// Spills over `budget` bytes (at least 1) to run files under `dir` (created when the
    /// first run is written, removed with this value).
    pub fn new(budget: usize, dir: PathBuf) -> Self {
        Self {
            budget: budget.max(1),
            dir,
            parts: BTreeMap::new(),
            runs: HashMap::new(),
            next_run: 0,
            last_used: HashMap::new(),
            uses: 0,
            bytes: 0,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes written to spill files so far (what an operator reports as spilled).
    pub fn spilled_bytes(&self) -> u64 {
        self.bytes
    }

    /// Marks key groups as used now (they become the last to spill).
    pub fn touch(&mut self, groups: impl IntoIterator<Item = u16>) {
        self.uses += 1;
        for g in groups {
            self.last_used.insert(g, self.uses);
        }
    }

    /// Whether key group `group` has state on disk.
    pub fn is_spilled(&self, group: u16) -> bool {
        self.parts.contains_key(&group)
    }

    /// Whether any state is on disk.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The key groups with state on disk, ascending.
    pub fn spilled_groups(&self) -> impl Iterator<Item = u16> + '_ {
        self.parts.keys().copied()
    }

    /// `resident` (key groups with state in memory) ordered to spill: least recently used
    /// first, ties by key group.
    pub fn coldest_first(&self, resident: impl IntoIterator<Item = u16>) -> Vec<u16> {
        let mut groups: Vec<(u64, u16)> = resident
            .into_iter()
            .map(|g| (self.last_used.get(&g).copied().unwrap_or(0), g))
            .collect();
        groups.sort_unstable();
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// Writes `parts` (key group, snapshot rows of that group; a group may have several)
    /// to one new run file. The operator has dropped that state from memory.
    pub fn write_run(&mut self, mut parts: Vec<(u16, RecordBatch)>) -> Result<()> {
        parts.retain(|(_, b)| b.num_rows() > 0);
        if parts.is_empty() {
            return Ok(());
        }
        parts.sort_by_key(|(g, _)| *g);
        std::fs::create_dir_all(&self.dir)?;
        let id = self.next_run;
        self.next_run += 1;
        let path = self.dir.join(format!("run-{id}.arrow"));
        let batches: Vec<RecordBatch> = parts.iter().map(|(_, b)| b.clone()).collect();
        self.bytes += write_ipc_file(&path, &batches)?;
        for (i, (group, _)) in parts.iter().enumerate() {
            self.parts.entry(*group).or_default().push((id, i));
        }
        self.runs.insert(
            id,
            Run {
                path,
                live: parts.len(),
            },
        );
        Ok(())
    }

    /// Takes key group `group`'s spilled parts back (none when it has none), deleting run
    /// files no longer needed. The batches are as a restore receives snapshot rows: without
    /// the key-group column.
    pub fn load(&mut self, group: u16) -> Result<Vec<RecordBatch>> {
        let Some(parts) = self.parts.remove(&group) else {
            return Ok(vec![]);
        };
        let mut out = Vec::with_capacity(parts.len());
        for (run, index) in parts {
            let Some(r) = self.runs.get_mut(&run) else {
                return internal_err!("spilled key group {group}: run {run} is gone");
            };
            for mut batch in read_ipc_file(&r.path, Some(&[index]))? {
                let column = batch.schema().index_of(KEY_GROUP_COLUMN)?;
                batch.remove_column(column);
                out.push(batch);
            }
            r.live -= 1;
            if r.live == 0 {
                let r = self.runs.remove(&run).expect("present");
                let _ = std::fs::remove_file(&r.path);
            }
        }
        Ok(out)
    }

    /// Marks the key groups `groups` (those of a batch's rows, repeats allowed) as used
    /// now and takes back the parts of those spilled, as [`KeyGroupSpill::load`] does.
    pub fn load_touched(&mut self, groups: &[u16]) -> Result<Vec<RecordBatch>> {
        let mut distinct = groups.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        self.touch(distinct.iter().copied());
        let mut out = Vec::new();
        for group in distinct {
            out.extend(self.load(group)?);
        }
        Ok(out)
    }

    /// Every spilled part, read back (the files stay): what a checkpoint adds to the
    /// in-memory state's snapshot.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        let mut by_run: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for parts in self.parts.values() {
            for (run, index) in parts {
                by_run.entry(*run).or_default().push(*index);
            }
        }
        let mut out = Vec::new();
        for (run, mut indices) in by_run {
            indices.sort_unstable();
            let Some(r) = self.runs.get(&run) else {
                return internal_err!("spilled state: run {run} is gone");
            };
            out.extend(read_ipc_file(&r.path, Some(&indices))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::with_key_groups;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn part(group: u16, values: &[i64]) -> (u16, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap();
        (
            group,
            with_key_groups(&batch, vec![group; values.len()]).unwrap(),
        )
    }

    /// The `v` column's values.
    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let v = b.column(b.schema().index_of("v").unwrap());
                v.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    }

    #[test]
    fn groups_round_trip_through_runs_and_files_go_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("op");
        let mut spill = KeyGroupSpill::new(0, root.clone());
        assert_eq!(spill.budget(), 1);
        spill
            .write_run(vec![part(7, &[1, 2]), part(3, &[3]), part(7, &[4])])
            .unwrap();
        spill.write_run(vec![part(3, &[5])]).unwrap();
        assert!(spill.spilled_bytes() > 0);
        assert_eq!(spill.spilled_groups().collect::<Vec<_>>(), [3, 7]);
        // The checkpoint sees every part; the files stay.
        let mut all = values(&spill.snapshot().unwrap());
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3, 4, 5]);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 2);
        // Group 3: its part of the first run, then of the second (which goes).
        assert_eq!(values(&spill.load(3).unwrap()), [3, 5]);
        assert!(!spill.is_spilled(3) && spill.is_spilled(7));
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        // Loaded parts come without the key-group column, as restored rows do.
        let seven = spill.load(7).unwrap();
        assert_eq!(values(&seven), [1, 2, 4]);
        assert_eq!(seven[0].num_columns(), 1);
        assert!(spill.is_empty());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(spill.load(7).unwrap().is_empty());
        drop(spill);
        assert!(!root.exists());
    }

    #[test]
    fn least_recently_used_groups_spill_first() {
        let mut spill = KeyGroupSpill::new(10, PathBuf::from("unused"));
        spill.touch([5, 1]);
        spill.touch([9]);
        spill.touch([1]);
        assert_eq!(spill.coldest_first([1, 5, 9, 2]), [2, 5, 9, 1]);
    }
}
