//! Building a v2 snapshot from the `iceberg` crate's public pieces
//! (docs/design/iceberg-commits.md §2): new manifests for the added data and delete
//! files, every current manifest carried over, a manifest list, the snapshot with its
//! summary (the collector's `added-*` keys, totals carried from the parent, the job's
//! markers), and the table metadata pointing `main` at it.
//!
//! Files added by one snapshot share its sequence number N. An equality delete applies
//! to data with a sequence number below its own, so the deletes of a row delta remove
//! older rows of their keys and never the rows added with them.

use std::collections::{HashMap, HashSet};

use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, ManifestContentType, ManifestEntry, ManifestFile,
    ManifestListWriter, ManifestStatus, ManifestWriter, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotRef, SnapshotSummaryCollector, Struct, Summary, TableMetadata,
    TableMetadataBuildResult,
};
use iceberg::table::Table;

use crate::error::{IcebergContext, IcebergError, Result};

/// The files one snapshot adds, and what it replaces.
#[derive(Debug, Clone, Default)]
pub struct AddedFiles {
    pub data: Vec<DataFile>,
    /// Equality (and position) delete files.
    pub deletes: Vec<DataFile>,
    /// Dynamic partition overwrite: every live data and delete file in a partition of
    /// the new data files is removed (the whole table when it is unpartitioned).
    pub replace_partitions: bool,
    /// Data or delete files removed by path (copy-on-write rewrites and compactions:
    /// replaced by `data`). Each must still be live at commit time, and no position
    /// delete naming one of them may have been committed after `read_snapshot`, else the
    /// commit fails.
    pub removed: Vec<String>,
    /// Data files the position deletes of `deletes` reference (merge-on-read `DELETE`
    /// and `UPDATE`). Each must still be live at commit time, else the commit fails;
    /// when the commit also adds data (an `UPDATE`'s new rows), no delete file that may
    /// apply to them may have been committed after `read_snapshot`.
    pub referenced: Vec<String>,
    /// Compaction: `data` holds the same rows as the removed files (operation
    /// `replace`), with this data sequence number (that of the snapshot the rows were
    /// read from, so equality deletes committed since still apply to them).
    pub rewrite_sequence_number: Option<i64>,
    /// The snapshot the job read when it planned the writes (`None`: the table was
    /// empty). An overwrite fails when a snapshot committed after it added files to a
    /// partition the overwrite replaces, instead of silently replacing them too.
    pub read_snapshot: Option<i64>,
    /// Table properties set in the same commit (a stream job's last committed
    /// checkpoint, which outlives the snapshots that carry its marker).
    pub table_properties: HashMap<String, String>,
}

impl AddedFiles {
    /// `append` when only data is added, `delete` when only deletes are, else
    /// `overwrite` (as Java's row delta and partition replacement name them).
    fn operation(&self, removed: bool) -> Operation {
        if self.rewrite_sequence_number.is_some() {
            return Operation::Replace;
        }
        match (self.data.is_empty(), self.deletes.is_empty()) {
            (true, true) if removed => Operation::Delete,
            _ if removed => Operation::Overwrite,
            (_, true) => Operation::Append,
            (true, false) => Operation::Delete,
            (false, false) => Operation::Overwrite,
        }
    }

    /// Whether the commit is more than an append of data files.
    pub fn is_row_level(&self) -> bool {
        !self.deletes.is_empty() || self.replace_partitions || !self.removed.is_empty()
    }
}

/// Ids that stay the same across the retries of one logical commit.
#[derive(Debug, Clone)]
pub(crate) struct CommitIds {
    pub snapshot_id: i64,
    /// Names the manifests of this commit.
    pub uuid: uuid::Uuid,
}

impl CommitIds {
    /// A fresh snapshot id not used by `metadata`.
    pub fn new(metadata: &TableMetadata) -> Self {
        loop {
            let id = (uuid::Uuid::new_v4().as_u128() as i64) & i64::MAX;
            if id != 0 && metadata.snapshot_by_id(id).is_none() {
                return Self {
                    snapshot_id: id,
                    uuid: uuid::Uuid::now_v7(),
                };
            }
        }
    }
}

/// The new metadata of `table` with one more snapshot on `main` adding `files`, whose
/// summary carries `properties`.
pub(crate) async fn produce(
    name: &str,
    table: &Table,
    files: &AddedFiles,
    properties: &HashMap<String, String>,
    ids: &CommitIds,
    attempt: u32,
) -> Result<TableMetadataBuildResult> {
    let metadata = table.metadata();
    let context = |what: &str| format!("committing to {name} ({what})");
    if metadata.format_version() != FormatVersion::V2 {
        return Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "row-level writes need an Iceberg v2 table; this one is {}",
                metadata.format_version()
            ),
        });
    }
    let file_io = table.file_io();
    let schema = metadata.current_schema().clone();
    let sequence_number = metadata.next_sequence_number();
    let parent = metadata.current_snapshot();
    let location = metadata.location().trim_end_matches('/');

    let mut manifests: Vec<ManifestFile> = Vec::new();
    let mut collector = SnapshotSummaryCollector::default();
    // Files are written against the default spec (a `DataFile` does not expose its
    // spec id; writers always use the default one).
    let spec = metadata.default_partition_spec().clone();
    // A manifest of this snapshot, `metadata/<name>.avro`.
    let new_manifest = |name: &str, content: ManifestContentType| -> Result<ManifestWriter> {
        let path = format!("{location}/metadata/{name}.avro");
        let output = file_io.new_output(&path).context(|| context("manifest"))?;
        let builder = ManifestWriterBuilder::new(
            output,
            Some(ids.snapshot_id),
            schema.clone(),
            spec.as_ref().clone(),
        );
        Ok(match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        })
    };
    for (n, (deletes, group)) in [(false, &files.data), (true, &files.deletes)]
        .into_iter()
        .enumerate()
    {
        if group.is_empty() {
            continue;
        }
        let content = if deletes {
            ManifestContentType::Deletes
        } else {
            ManifestContentType::Data
        };
        let mut writer = new_manifest(&format!("{}-m{n}", ids.uuid), content)?;
        for f in group.iter() {
            let is_delete = f.content_type() != DataContentType::Data;
            if is_delete != deletes {
                return Err(IcebergError::Table {
                    table: name.to_string(),
                    message: format!(
                        "{} is listed as a {} file but holds {:?}",
                        f.file_path(),
                        if deletes { "delete" } else { "data" },
                        f.content_type()
                    ),
                });
            }
            collector.add_file(f, schema.clone(), spec.clone());
            // Null sequence numbers: the entries inherit the snapshot's (a compaction
            // keeps the one its rows were read at).
            writer
                .add_file(f.clone(), files.rewrite_sequence_number.unwrap_or(-1))
                .context(|| context("manifest entry"))?;
        }
        manifests.push(
            writer
                .write_manifest_file()
                .await
                .context(|| context("manifest"))?,
        );
    }
    let mut removed = false;
    if let Some(parent) = parent {
        let list = table
            .manifest_list_reader(parent)
            .load()
            .await
            .context(|| context("reading the current manifest list"))?;
        let replaced: Option<HashSet<&Struct>> = files
            .replace_partitions
            .then(|| files.data.iter().map(|f| f.partition()).collect());
        let compaction = files.rewrite_sequence_number.is_some();
        if compaction || !files.removed.is_empty() {
            // A compaction or a copy-on-write rewrite carries over the rows it read
            // (deletes applied); a position delete committed since against a file it
            // replaces would be lost with that file. A compaction also counts those
            // naming no file.
            let rewritten: HashSet<&str> = files.removed.iter().map(String::as_str).collect();
            let scope = |f: &DataFile| {
                f.content_type() == DataContentType::PositionDeletes
                    && f.referenced_data_file()
                        .map_or(compaction, |p| rewritten.contains(p.as_str()))
            };
            let what = if compaction {
                "against a file this compaction replaces"
            } else {
                "against a file this commit rewrites"
            };
            validate_no_new_files(name, table, files.read_snapshot, &scope, what).await?;
        }
        if let Some(replaced) = &replaced {
            let scope = |f: &DataFile| spec.is_unpartitioned() || replaced.contains(f.partition());
            let what = "to a partition this overwrite replaces";
            validate_no_new_files(name, table, files.read_snapshot, &scope, what).await?;
        }
        if !files.referenced.is_empty() {
            validate_referenced(name, table, files, spec.is_unpartitioned()).await?;
        }
        let removed_paths: HashSet<&str> = files.removed.iter().map(String::as_str).collect();
        let mut found: HashSet<String> = HashSet::new();
        let in_scope = |f: &DataFile| {
            removed_paths.contains(f.file_path())
                || replaced
                    .as_ref()
                    .is_some_and(|r| spec.is_unpartitioned() || r.contains(f.partition()))
        };
        for (i, m) in list.entries().iter().enumerate() {
            if replaced.is_none() && removed_paths.is_empty() {
                manifests.push(m.clone());
                continue;
            }
            if !m.has_added_files() && !m.has_existing_files() {
                continue;
            }
            if m.partition_spec_id != spec.spec_id() {
                return Err(IcebergError::Table {
                    table: name.to_string(),
                    message: format!(
                        "overwrites and rewrites handle files of the current partition spec only, but files of partition spec {} are still live; compact them first",
                        m.partition_spec_id
                    ),
                });
            }
            let manifest = m
                .load_manifest(file_io)
                .await
                .context(|| context("reading a manifest"))?;
            let (entries, _) = manifest.into_parts();
            if !entries
                .iter()
                .any(|e| e.is_alive() && in_scope(&e.data_file))
            {
                manifests.push(m.clone());
                continue;
            }
            // Rewrite the manifest: the replaced files become DELETED entries, the
            // others stay as EXISTING ones with their ids and sequence numbers.
            let mut writer = new_manifest(&format!("{}-r{i}", ids.uuid), m.content)?;
            for e in entries.iter().filter(|e| e.is_alive()) {
                let missing = || IcebergError::Table {
                    table: name.to_string(),
                    message: format!(
                        "the manifest entry of {} has no sequence number or snapshot id",
                        e.data_file.file_path()
                    ),
                };
                let seq = e.sequence_number.ok_or_else(missing)?;
                if in_scope(&e.data_file) {
                    found.insert(e.data_file.file_path().to_string());
                    collector.remove_file(&e.data_file, schema.clone(), spec.clone());
                    writer
                        .add_delete_file(e.data_file.clone(), seq, e.file_sequence_number)
                        .context(|| context("manifest entry"))?;
                    removed = true;
                } else {
                    let snapshot = e.snapshot_id.ok_or_else(missing)?;
                    writer
                        .add_existing_file(
                            e.data_file.clone(),
                            snapshot,
                            seq,
                            e.file_sequence_number,
                        )
                        .context(|| context("manifest entry"))?;
                }
            }
            manifests.push(
                writer
                    .write_manifest_file()
                    .await
                    .context(|| context("manifest"))?,
            );
        }
        if let Some(gone) = removed_paths.iter().find(|p| !found.contains(**p)) {
            return Err(IcebergError::Table {
                table: name.to_string(),
                message: format!(
                    "conflict: {gone}, which this commit rewrites, is no longer in the table (another writer removed or compacted it); nothing was committed — run the job again"
                ),
            });
        }
    } else if let Some(first) = files.removed.first() {
        return Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "conflict: {first}, which this commit rewrites, is not in the table (it has no snapshot); nothing was committed"
            ),
        });
    }

    let list_path = format!(
        "{location}/metadata/snap-{}-{attempt}-{}.avro",
        ids.snapshot_id, ids.uuid
    );
    let list_out = file_io
        .new_output(&list_path)
        .context(|| context("manifest list"))?;
    let mut list = ManifestListWriter::v2(
        list_out
            .writer()
            .await
            .context(|| context("manifest list"))?,
        ids.snapshot_id,
        parent.map(|p| p.snapshot_id()),
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())
        .context(|| context("manifest list"))?;
    list.close().await.context(|| context("manifest list"))?;

    let mut summary = collector.build();
    add_totals(
        &mut summary,
        parent.map(|p| &p.summary().additional_properties),
    );
    for (k, v) in properties {
        summary.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let timestamp_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(metadata.last_updated_ms() + 1);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(ids.snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: files.operation(removed),
            additional_properties: summary,
        })
        .with_schema_id(schema.schema_id())
        .build();
    let built = metadata
        .clone()
        .into_builder(table.metadata_location().map(str::to_string))
        .set_branch_snapshot(snapshot, "main")
        .context(|| context("snapshot"))?
        .set_properties(files.table_properties.clone())
        .context(|| context("table properties"))?
        .build()
        .context(|| context("metadata"))?;
    Ok(built)
}

/// Fails when a snapshot committed after `read` (along the current branch) added data or
/// delete files in `scope`. Compactions (`replace` snapshots) change no rows and pass.
async fn validate_no_new_files(
    name: &str,
    table: &Table,
    read: Option<i64>,
    scope: &(dyn Fn(&DataFile) -> bool + Sync),
    what: &str,
) -> Result<()> {
    let found = find_since(name, table, read, false, &|e: &ManifestEntry| {
        e.status == ManifestStatus::Added && scope(&e.data_file)
    })
    .await?;
    match found {
        Some((snapshot, path)) => Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "conflict: snapshot {} ({}) added {path} {what} after the job read the table; nothing was committed — run the job again",
                snapshot.snapshot_id(),
                snapshot.summary().operation.as_str(),
            ),
        }),
        None => Ok(()),
    }
}

/// Merge-on-read checks: every data file the position deletes of `files` reference is
/// still live (no snapshot since the job read the table removed it: a compaction or a
/// rewrite would leave the deletes pointing at nothing and the rows alive in its
/// replacement); and when the commit adds rows (an `UPDATE`'s new values), no delete
/// file committed since may apply to the referenced files (a row deleted concurrently
/// would come back with its new values).
async fn validate_referenced(
    name: &str,
    table: &Table,
    files: &AddedFiles,
    unpartitioned: bool,
) -> Result<()> {
    let referenced: HashSet<&str> = files.referenced.iter().map(String::as_str).collect();
    let removed = find_since(
        name,
        table,
        files.read_snapshot,
        true,
        &|e: &ManifestEntry| {
            e.status == ManifestStatus::Deleted && referenced.contains(e.data_file.file_path())
        },
    )
    .await?;
    if let Some((snapshot, path)) = removed {
        return Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "conflict: snapshot {} ({}) removed {path}, whose rows this commit deletes by position, after the job read the table; nothing was committed — run the job again",
                snapshot.snapshot_id(),
                snapshot.summary().operation.as_str(),
            ),
        });
    }
    if files.data.is_empty() {
        return Ok(());
    }
    // The position deletes sit in the partitions of the files they reference.
    let partitions: HashSet<&Struct> = files.deletes.iter().map(|f| f.partition()).collect();
    let scope = |f: &DataFile| match f.content_type() {
        DataContentType::Data => false,
        DataContentType::PositionDeletes => match f.referenced_data_file() {
            Some(p) => referenced.contains(p.as_str()),
            None => unpartitioned || partitions.contains(f.partition()),
        },
        DataContentType::EqualityDeletes => unpartitioned || partitions.contains(f.partition()),
    };
    let what = "that may delete rows this update changes";
    validate_no_new_files(name, table, files.read_snapshot, &scope, what).await
}

/// The first manifest entry `hit` finds among those written by the snapshots committed
/// after `read` along the current branch (newest first), with its snapshot; `replace`
/// snapshots (compactions) are looked at only when `with_replace`. Fails when `read` is
/// no longer in the branch's history.
async fn find_since(
    name: &str,
    table: &Table,
    read: Option<i64>,
    with_replace: bool,
    hit: &(dyn Fn(&ManifestEntry) -> bool + Sync),
) -> Result<Option<(SnapshotRef, String)>> {
    let metadata = table.metadata();
    let mut current = metadata.current_snapshot().cloned();
    let context = || format!("committing to {name} (reading snapshot history)");
    while let Some(snapshot) = current {
        if Some(snapshot.snapshot_id()) == read {
            return Ok(None);
        }
        if with_replace || snapshot.summary().operation != Operation::Replace {
            let list = table
                .manifest_list_reader(&snapshot)
                .load()
                .await
                .context(context)?;
            for m in list.entries().iter().filter(|m| {
                m.added_snapshot_id == snapshot.snapshot_id()
                    && (m.has_added_files() || m.has_deleted_files())
            }) {
                let manifest = m.load_manifest(table.file_io()).await.context(context)?;
                if let Some(e) = manifest
                    .entries()
                    .iter()
                    .find(|e| e.snapshot_id == Some(snapshot.snapshot_id()) && hit(e))
                {
                    let path = e.data_file.file_path().to_string();
                    return Ok(Some((snapshot.clone(), path)));
                }
            }
        }
        current = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
    }
    match read {
        Some(id) => Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "the snapshot the job read ({id}) is no longer in the table's history (expired or rolled back); nothing was committed — run the job again"
            ),
        }),
        None => Ok(None),
    }
}

/// `total-*` = the parent's total + added − removed, omitted when the parent has no
/// parseable value (a table without snapshots starts from 0).
fn add_totals(summary: &mut HashMap<String, String>, parent: Option<&HashMap<String, String>>) {
    const TOTALS: [(&str, &str, &str); 6] = [
        ("total-data-files", "added-data-files", "deleted-data-files"),
        (
            "total-delete-files",
            "added-delete-files",
            "removed-delete-files",
        ),
        ("total-records", "added-records", "deleted-records"),
        ("total-files-size", "added-files-size", "removed-files-size"),
        (
            "total-position-deletes",
            "added-position-deletes",
            "removed-position-deletes",
        ),
        (
            "total-equality-deletes",
            "added-equality-deletes",
            "removed-equality-deletes",
        ),
    ];
    let get = |m: &HashMap<String, String>, k: &str| -> i64 {
        m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    for (total, added, removed) in TOTALS {
        let base = match parent {
            None => Some(0),
            Some(p) => p.get(total).and_then(|v| v.parse::<i64>().ok()),
        };
        if let Some(base) = base {
            let value = base + get(summary, added) - get(summary, removed);
            summary.insert(total.to_string(), value.max(0).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_the_parent() {
        let parent = HashMap::from([
            ("total-records".to_string(), "10".to_string()),
            ("total-data-files".to_string(), "2".to_string()),
        ]);
        let mut s = HashMap::from([
            ("added-records".to_string(), "5".to_string()),
            ("added-data-files".to_string(), "1".to_string()),
            ("added-equality-deletes".to_string(), "3".to_string()),
        ]);
        add_totals(&mut s, Some(&parent));
        assert_eq!(s["total-records"], "15");
        assert_eq!(s["total-data-files"], "3");
        // The parent had no equality-delete total: unknown, so omitted.
        assert!(!s.contains_key("total-equality-deletes"));
        let mut first = HashMap::from([("added-equality-deletes".to_string(), "3".to_string())]);
        add_totals(&mut first, None);
        assert_eq!(first["total-equality-deletes"], "3");
        assert_eq!(first["total-records"], "0");
    }
}
