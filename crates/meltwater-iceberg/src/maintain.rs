//! Table maintenance: compaction (`meltwater maintain compact`).
//!
//! Compaction merges, per partition, the data files of the current snapshot together
//! with the deletes that apply to them into new files holding the same rows, and
//! commits a `replace` snapshot removing the old files. The new files keep the data
//! sequence number of the snapshot their rows were read from, so equality deletes
//! committed after it (a concurrent upsert) still apply to them and compaction never
//! loses one. A partition is compacted when it has more than one data file or any
//! delete file. Delete files are removed when the whole table was compacted (every file
//! they could apply to was rewritten); with a filter they stay (they no longer apply to
//! the new files, whose rows are already clean, and an unpartitioned delete may still
//! apply to files outside the filter).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::spec::ManifestContentType;
use iceberg::{Catalog, TableIdent};

use crate::commit::{commit_files, CommitSummary};
use crate::committer::LakeCatalog;
use crate::error::{IcebergContext, Result};
use crate::scan::read_tasks;
use crate::snapshot::AddedFiles;
use crate::write::TaskFileWriter;
use crate::SUMMARY_JOB_ID;

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub partitions: usize,
    pub data_files_removed: usize,
    pub delete_files_removed: usize,
    pub data_files_added: usize,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The `replace` snapshot, `None` when there was nothing to compact.
    pub commit: Option<CommitSummary>,
}

/// Compacts `ident` (named `name`), the files matching `filter` (all when `None`).
pub async fn compact(
    catalog: &Arc<LakeCatalog>,
    name: &str,
    ident: &TableIdent,
    filter: Option<Predicate>,
) -> Result<CompactReport> {
    let mut report = CompactReport::default();
    let table = catalog
        .load_table(ident)
        .await
        .context(|| format!("loading {name}"))?;
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(report);
    };
    let whole_table = filter.is_none();
    let mut scan = table.scan().select_all();
    if let Some(f) = filter {
        scan = scan.with_filter(f);
    }
    let context = || format!("planning the compaction of {name}");
    let tasks: Vec<FileScanTask> = scan
        .build()
        .context(context)?
        .plan_files()
        .await
        .context(context)?
        .try_collect()
        .await
        .context(context)?;
    // Per partition (its tuple's text: partitions of one spec compare equal by it).
    let mut groups: BTreeMap<String, Vec<FileScanTask>> = BTreeMap::new();
    for t in tasks {
        groups
            .entry(format!("{:?}", t.partition))
            .or_default()
            .push(t);
    }
    let (compacted, kept): (Vec<_>, Vec<_>) = groups
        .into_values()
        .partition(|g| g.len() > 1 || g.iter().any(|t| !t.deletes.is_empty()));
    if compacted.is_empty() {
        return Ok(report);
    }
    report.partitions = compacted.len();
    let kept_deletes: HashSet<&str> = kept
        .iter()
        .flatten()
        .flat_map(|t| t.deletes.iter().map(|d| d.file_path.as_str()))
        .collect();
    let mut removed: Vec<String> = Vec::new();
    let mut delete_files: HashSet<String> = HashSet::new();
    let mut read = Vec::new();
    for mut t in compacted.into_iter().flatten() {
        report.bytes_before += t.file_size_in_bytes;
        removed.push(t.data_file_path.clone());
        t.predicate = None;
        read.push(t);
    }
    if whole_table {
        // Every delete file applies either to rewritten files or to nothing (a file
        // left alone has no deletes): all of them go, including those that never
        // applied to any row (an upsert's deletes for keys that were new).
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .context(context)?;
        for m in list.entries() {
            if m.content != ManifestContentType::Deletes {
                continue;
            }
            let manifest = m.load_manifest(table.file_io()).await.context(context)?;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                if !kept_deletes.contains(e.data_file.file_path()) {
                    delete_files.insert(e.data_file.file_path().to_string());
                }
            }
        }
    }
    report.data_files_removed = removed.len();
    report.delete_files_removed = delete_files.len();

    let prefix = format!("compact-{}", uuid::Uuid::now_v7().simple());
    let mut writer = TaskFileWriter::try_new(name, &table, prefix)?;
    let mut batches = read_tasks(
        table.file_io().clone(),
        read,
        8192,
        name,
        Default::default(),
    )?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        report.rows += batch.num_rows() as u64;
        writer.write(&batch).await?;
    }
    let data = writer.close().await?;
    report.data_files_added = data.len();
    report.bytes_after = data.iter().map(|f| f.file_size_in_bytes()).sum();

    let read_snapshot = snapshot.snapshot_id();
    removed.extend(delete_files);
    let files = AddedFiles {
        data,
        removed,
        read_snapshot: Some(read_snapshot),
        rewrite_sequence_number: Some(snapshot.sequence_number()),
        ..Default::default()
    };
    let properties = HashMap::from([
        (SUMMARY_JOB_ID.to_string(), "meltwater-maintain".to_string()),
        (
            "meltwater.compaction-id".to_string(),
            uuid::Uuid::now_v7().to_string(),
        ),
    ]);
    report.commit = Some(commit_files(catalog, ident, name, files, properties).await?);
    Ok(report)
}
