//! The exactly-once Iceberg sink of the streaming runtime (DESIGN.md §5, §7): two-phase.
//!
//! 1. Each sink subtask writes its batches through an [`IcebergStreamWriter`] (the same
//!    Parquet, rolling and partition fan-out writer as the batch write). On checkpoint
//!    barrier n it calls [`IcebergStreamWriter::prepare_commit`], which closes the open
//!    files and returns them as [`PendingDataFile`]s: serializable, so they are stored
//!    with the checkpoint. Nothing is visible in the table yet.
//! 2. When checkpoint n is complete, [`commit_checkpoint`] commits all subtasks' files of
//!    the table as one fast-append snapshot whose summary carries `meltwater.job-id` and
//!    `meltwater.checkpoint-id`. A job restarted from checkpoint n commits n's files again;
//!    the commit finds its own snapshot in the table's history and does nothing.
//!
//! Files prepared for a checkpoint that never completes are orphans (never referenced
//! by a snapshot) that table maintenance removes.

use std::collections::HashMap;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use iceberg::spec::{
    deserialize_data_file_from_json, serialize_data_file_to_json, DataContentType, DataFile,
    TableMetadata,
};
use iceberg::table::Table;
use iceberg::TableIdent;
use serde::{Deserialize, Serialize};

use crate::commit::{
    commit_fast_append, commit_files, find_marked_snapshot, load_head, CommitSummary,
};
use crate::committer::LakeCatalog;
use crate::error::{IcebergContext, IcebergError, Result};
use crate::snapshot::AddedFiles;
use crate::table::IcebergTable;
use crate::upsert::UpsertWriter;
use crate::write::TaskFileWriter;
use crate::{SUMMARY_CHECKPOINT_ID, SUMMARY_JOB_ID};

/// A data file written by a sink subtask and not committed yet, in the form stored in a
/// checkpoint (JSON through serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDataFile {
    /// The table the file belongs to (`catalog.namespace.table`).
    pub table: String,
    /// The file's location (also inside `data_file`; here for reports and cleanup).
    pub file_path: String,
    pub record_count: u64,
    pub file_size_in_bytes: u64,
    /// The partition spec the file's partition values follow.
    pub partition_spec_id: i32,
    /// The table schema the file was written with (its column statistics are typed by it).
    pub schema_id: i32,
    /// The Iceberg `data_file` (path, format, partition values, counts, sizes, column
    /// statistics, split offsets) in the `iceberg` crate's JSON form
    /// (`serialize_data_file_to_json`).
    pub data_file: serde_json::Value,
}

impl PendingDataFile {
    /// Wraps a data file written for `table` (its full name) under `metadata`'s current
    /// schema and default partition spec.
    pub fn from_data_file(table: &str, file: DataFile, metadata: &TableMetadata) -> Result<Self> {
        let partition_spec_id = metadata.default_partition_spec_id();
        let schema = metadata.current_schema();
        let context = || format!("recording a data file of {table}");
        let partition_type =
            partition_type(table, metadata, partition_spec_id, schema.schema_id())?;
        let file_path = file.file_path().to_string();
        let record_count = file.record_count();
        let file_size_in_bytes = file.file_size_in_bytes();
        let json = serialize_data_file_to_json(file, &partition_type, metadata.format_version())
            .context(context)?;
        let data_file = serde_json::from_str(&json).map_err(|e| IcebergError::Table {
            table: table.to_string(),
            message: format!("recording a data file: {e}"),
        })?;
        Ok(Self {
            table: table.to_string(),
            file_path,
            record_count,
            file_size_in_bytes,
            partition_spec_id,
            schema_id: schema.schema_id(),
            data_file,
        })
    }

    /// The Iceberg data file, read back against the table's `metadata` (which must still
    /// hold the file's partition spec and schema).
    pub fn to_data_file(&self, metadata: &TableMetadata) -> Result<DataFile> {
        let partition_type = partition_type(
            &self.table,
            metadata,
            self.partition_spec_id,
            self.schema_id,
        )?;
        let schema = metadata
            .schema_by_id(self.schema_id)
            .ok_or_else(|| IcebergError::Table {
                table: self.table.clone(),
                message: format!(
                    "schema {} of the pending data file {} is no longer in the table",
                    self.schema_id, self.file_path
                ),
            })?;
        let json = self.data_file.to_string();
        deserialize_data_file_from_json(&json, self.partition_spec_id, &partition_type, schema)
            .context(|| {
                format!(
                    "reading the pending data file {} of {}",
                    self.file_path, self.table
                )
            })
    }
}

fn partition_type(
    table: &str,
    metadata: &TableMetadata,
    spec_id: i32,
    schema_id: i32,
) -> Result<iceberg::spec::StructType> {
    let missing = |what: String| IcebergError::Table {
        table: table.to_string(),
        message: format!("{what} of a pending data file is not in the table's metadata"),
    };
    let spec = metadata
        .partition_spec_by_id(spec_id)
        .ok_or_else(|| missing(format!("partition spec {spec_id}")))?;
    let schema = metadata
        .schema_by_id(schema_id)
        .ok_or_else(|| missing(format!("schema {schema_id}")))?;
    spec.partition_type(schema)
        .context(|| format!("partition type of spec {spec_id} of {table}"))
}

/// The writer of one sink subtask: writes batches into data files of one table and
/// hands them over on each checkpoint barrier ([`Self::prepare_commit`]).
///
/// File names are `<uuid>-<subtask>-<n>.parquet` with a fresh uuid per checkpoint
/// interval, so they never collide across subtasks, restarts or checkpoints.
pub struct IcebergStreamWriter {
    table_name: String,
    table: Table,
    subtask: usize,
    writer: StreamFiles,
    rows: u64,
}

/// Appends go straight to data files; upserts are buffered by key until the barrier.
#[allow(clippy::large_enum_variant)]
enum StreamFiles {
    Append(TaskFileWriter),
    Upsert(UpsertWriter),
}

impl std::fmt::Debug for IcebergStreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergStreamWriter")
            .field("table", &self.table_name)
            .field("subtask", &self.subtask)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl IcebergStreamWriter {
    /// A writer for `subtask` of a sink into `table` (its schema and partition spec as
    /// loaded when the job was planned).
    pub async fn try_new(table: &IcebergTable, subtask: usize) -> Result<Self> {
        Self::from_table(table.name(), table.table().clone(), subtask)
    }

    /// As [`Self::try_new`], from a loaded table and its full name.
    pub fn from_table(table_name: &str, table: Table, subtask: usize) -> Result<Self> {
        let writer = StreamFiles::Append(new_writer(table_name, &table, subtask)?);
        Ok(Self {
            table_name: table_name.to_string(),
            table,
            subtask,
            writer,
            rows: 0,
        })
    }

    /// A writer that upserts by the table's primary key: rows from [`Self::write`]
    /// replace the rows of their keys, and [`Self::write_changes`] can delete keys.
    /// The table must have a primary key containing its partition columns.
    pub fn upsert(table: &IcebergTable, subtask: usize) -> Result<Self> {
        let prefix = format!("{}-{subtask:05}", uuid::Uuid::new_v4());
        let writer = UpsertWriter::try_new(table.name(), table.table(), prefix)?;
        Ok(Self {
            table_name: table.name().to_string(),
            table: table.table().clone(),
            subtask,
            writer: StreamFiles::Upsert(writer),
            rows: 0,
        })
    }

    /// `catalog.namespace.table`.
    pub fn table_name(&self) -> &str {
        &self.table_name
    }

    pub fn subtask(&self) -> usize {
        self.subtask
    }

    /// Rows written since the last [`Self::prepare_commit`].
    pub fn pending_rows(&self) -> u64 {
        self.rows
    }

    /// Writes one batch with the table's columns (the table provider's schema; types
    /// differing only in representation are cast). Partitioned tables: the batch is
    /// split by the partition spec, one open file per partition value.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match &mut self.writer {
            StreamFiles::Append(w) => w.write(batch).await?,
            StreamFiles::Upsert(w) => w.write(batch, None)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes a batch of changes to an upserting writer: rows where `retract` is true
    /// delete their key, the others upsert it. An appending writer refuses deletions.
    pub async fn write_changes(
        &mut self,
        batch: &RecordBatch,
        retract: &BooleanArray,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match &mut self.writer {
            StreamFiles::Upsert(w) => w.write(batch, Some(retract))?,
            StreamFiles::Append(_) => {
                return Err(IcebergError::Table {
                    table: self.table_name.clone(),
                    message: "an appending writer cannot delete rows".into(),
                })
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the open files and returns the data files written since the last call
    /// (empty when nothing was written). Later writes go to new files.
    pub async fn prepare_commit(&mut self) -> Result<Vec<PendingDataFile>> {
        self.rows = 0;
        let files = match &mut self.writer {
            StreamFiles::Append(w) => {
                let next = new_writer(&self.table_name, &self.table, self.subtask)?;
                std::mem::replace(w, next).close().await?
            }
            StreamFiles::Upsert(w) => {
                let added = w.flush().await?;
                added.data.into_iter().chain(added.deletes).collect()
            }
        };
        let metadata = self.table.metadata();
        files
            .into_iter()
            .map(|f| PendingDataFile::from_data_file(&self.table_name, f, metadata))
            .collect()
    }
}

fn new_writer(table_name: &str, table: &Table, subtask: usize) -> Result<TaskFileWriter> {
    let prefix = format!("{}-{subtask:05}", uuid::Uuid::new_v4());
    TaskFileWriter::try_new(table_name, table, prefix)
}

/// Commits the files of checkpoint `checkpoint_id` of job `job_id` to `table` (all sink
/// subtasks' files of that table together): one fast-append snapshot whose summary
/// carries `meltwater.job-id` and `meltwater.checkpoint-id`.
///
/// Idempotent: when the table's history already has a snapshot of this job and
/// checkpoint, nothing is written and the summary says `already_committed` (with that
/// snapshot's id). No files: no snapshot (`snapshot_id` is `None`). Catalog
/// compare-and-swap conflicts are retried on the new head with backoff.
pub async fn commit_checkpoint(
    table: &IcebergTable,
    files: Vec<PendingDataFile>,
    job_id: &str,
    checkpoint_id: u64,
) -> Result<CommitSummary> {
    commit_checkpoint_to(
        table.catalog().as_ref(),
        table.table().identifier(),
        table.name(),
        files,
        job_id,
        checkpoint_id,
    )
    .await
}

/// [`commit_checkpoint`] by catalog and identifier; `table_name` is the table's full name
/// (`catalog.namespace.table`), which every file's `table` must match.
pub async fn commit_checkpoint_to(
    catalog: &LakeCatalog,
    ident: &TableIdent,
    table_name: &str,
    files: Vec<PendingDataFile>,
    job_id: &str,
    checkpoint_id: u64,
) -> Result<CommitSummary> {
    if let Some(other) = files.iter().find(|f| f.table != table_name) {
        return Err(IcebergError::Table {
            table: table_name.to_string(),
            message: format!(
                "checkpoint {checkpoint_id} lists the data file {} of another table ({})",
                other.file_path, other.table
            ),
        });
    }
    let marker = checkpoint_marker(job_id, checkpoint_id);
    if files.is_empty() {
        return commit_fast_append(
            catalog,
            ident,
            table_name,
            Vec::new(),
            marker,
            &HashMap::new(),
        )
        .await;
    }
    let table = load_head(catalog, ident, table_name).await?;
    let metadata = table.metadata();
    let recorded = recorded_checkpoint(metadata, job_id);
    if recorded.is_some_and(|r| r >= checkpoint_id) {
        // Committed before, and its snapshot may have been expired since.
        return Ok(CommitSummary {
            table: table_name.to_string(),
            snapshot_id: find_marked_snapshot(metadata, &marker),
            files: files.len(),
            rows: files.iter().map(|f| f.record_count).sum(),
            bytes: files.iter().map(|f| f.file_size_in_bytes).sum(),
            already_committed: true,
            attempts: 0,
            unknown_outcomes: 0,
        });
    }
    if let Some(snapshot_id) = find_marked_snapshot(metadata, &marker) {
        // Committed before a restart: the files may not even be readable against the
        // table's metadata any more, and need not be.
        return Ok(CommitSummary {
            table: table_name.to_string(),
            snapshot_id: Some(snapshot_id),
            files: files.len(),
            rows: files.iter().map(|f| f.record_count).sum(),
            bytes: files.iter().map(|f| f.file_size_in_bytes).sum(),
            already_committed: true,
            attempts: 0,
            unknown_outcomes: 0,
        });
    }
    let mut added = AddedFiles {
        table_properties: HashMap::from([(checkpoint_property(job_id), checkpoint_id.to_string())]),
        ..Default::default()
    };
    for f in &files {
        let file = f.to_data_file(metadata)?;
        if file.content_type() == DataContentType::Data {
            added.data.push(file);
        } else {
            added.deletes.push(file);
        }
    }
    commit_files(catalog, ident, table_name, added, marker).await
}

fn checkpoint_marker(job_id: &str, checkpoint_id: u64) -> HashMap<String, String> {
    HashMap::from([
        (SUMMARY_JOB_ID.to_string(), job_id.to_string()),
        (SUMMARY_CHECKPOINT_ID.to_string(), checkpoint_id.to_string()),
    ])
}

/// The highest checkpoint of job `job_id` committed to `table`, read from the table's
/// current metadata in the catalog (not the snapshot `table` was planned with).
pub async fn last_committed_checkpoint(table: &IcebergTable, job_id: &str) -> Result<Option<u64>> {
    let loaded = load_head(
        table.catalog().as_ref(),
        table.table().identifier(),
        table.name(),
    )
    .await?;
    Ok(last_committed_checkpoint_in(loaded.metadata(), job_id))
}

/// The table property recording the last checkpoint of job `job_id` committed to a table
/// (set in the same commit as the checkpoint's snapshot; Flink's
/// `flink.max-committed-checkpoint-id`). Unlike the snapshot markers it survives
/// snapshot expiry, so an old checkpoint is never committed again.
pub fn checkpoint_property(job_id: &str) -> String {
    format!("meltwater.checkpoint.{job_id}")
}

fn recorded_checkpoint(metadata: &TableMetadata, job_id: &str) -> Option<u64> {
    metadata
        .properties()
        .get(&checkpoint_property(job_id))
        .and_then(|v| v.parse().ok())
}

/// The highest checkpoint of job `job_id` committed to the table of `metadata`: its
/// checkpoint property, or the markers of its snapshots.
pub fn last_committed_checkpoint_in(metadata: &TableMetadata, job_id: &str) -> Option<u64> {
    let marked = metadata
        .snapshots()
        .filter_map(|s| {
            let p = &s.summary().additional_properties;
            if p.get(SUMMARY_JOB_ID).map(String::as_str) != Some(job_id) {
                return None;
            }
            p.get(SUMMARY_CHECKPOINT_ID)?.parse::<u64>().ok()
        })
        .max();
    marked.max(recorded_checkpoint(metadata, job_id))
}
