//! Table maintenance: compaction (`meltwater maintain compact`) and snapshot expiry
//! (`meltwater maintain expire`).
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
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::TableIdent;

use crate::commit::{commit_files, load_head, CommitSummary};
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
    let table = load_head(catalog.as_ref(), ident, name).await?;
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

/// What a snapshot expiry did.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    pub snapshots_expired: usize,
    pub snapshots_kept: usize,
    /// Manifest lists, manifests, data and delete files only expired snapshots used.
    pub files_deleted: usize,
    pub bytes_deleted: u64,
}

/// Expires the snapshots of `ident` older than `older_than_ms` (epoch ms), keeping at
/// least the `retain_last` newest of `main` (the crate's expiry, which follows Java's
/// `RemoveSnapshots`), then deletes the files that only the expired snapshots
/// referenced. Files of retained snapshots and files no snapshot ever referenced (an
/// in-flight commit's) are left alone.
pub async fn expire(
    catalog: &Arc<LakeCatalog>,
    name: &str,
    ident: &TableIdent,
    older_than_ms: i64,
    retain_last: usize,
) -> Result<ExpireReport> {
    let mut report = ExpireReport::default();
    let before = load_head(catalog.as_ref(), ident, name).await?;
    let context = || format!("expiring snapshots of {name}");
    let tx = Transaction::new(&before);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(older_than_ms)
        .retain_last(retain_last.max(1))
        .apply(tx)
        .context(context)?;
    let after = tx.commit(catalog.as_ref()).await.context(context)?;
    let kept: HashSet<i64> = after
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    report.snapshots_kept = kept.len();
    let expired: Vec<_> = before
        .metadata()
        .snapshots()
        .filter(|s| !kept.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    report.snapshots_expired = expired.len();
    if expired.is_empty() {
        return Ok(report);
    }
    let mut live = HashMap::new();
    let mut seen = HashSet::new();
    for s in after.metadata().snapshots() {
        reachable(&after, s, &mut live, &mut seen, name).await?;
    }
    let mut dead = HashMap::new();
    let mut seen = HashSet::new();
    for s in &expired {
        reachable(&before, s, &mut dead, &mut seen, name).await?;
    }
    for (path, size) in dead {
        if live.contains_key(&path) {
            continue;
        }
        before
            .file_io()
            .delete(&path)
            .await
            .context(|| format!("deleting {path}"))?;
        report.files_deleted += 1;
        report.bytes_deleted += size;
    }
    Ok(report)
}

/// Adds to `out` the manifest list of `snapshot`, its manifests and the files live in
/// them (with their sizes; 0 for metadata files). `seen` skips manifests already read.
async fn reachable(
    table: &iceberg::table::Table,
    snapshot: &iceberg::spec::SnapshotRef,
    out: &mut HashMap<String, u64>,
    seen: &mut HashSet<String>,
    name: &str,
) -> Result<()> {
    let context = || format!("reading the snapshots of {name}");
    out.insert(snapshot.manifest_list().to_string(), 0);
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .context(context)?;
    for m in list.entries() {
        out.insert(m.manifest_path.clone(), m.manifest_length as u64);
        if !seen.insert(m.manifest_path.clone()) {
            continue;
        }
        let manifest = m.load_manifest(table.file_io()).await.context(context)?;
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            out.insert(
                e.data_file.file_path().to_string(),
                e.data_file.file_size_in_bytes(),
            );
        }
    }
    Ok(())
}
