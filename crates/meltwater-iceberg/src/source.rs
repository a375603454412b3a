//! `IcebergSource`: an Iceberg table read in stream mode. Each data file is one split,
//! identified by its path; a split's position counts the rows of that file emitted so far
//! (after deletes).
//!
//! - Bounded (the default): the snapshot current when the job was planned; the source
//!   ends once its files are read.
//! - Monitored (`monitor_ms` set): that snapshot, then every later **append** snapshot's
//!   new data files as they are committed (the table is reloaded from its catalog at each
//!   interval). Compaction (`replace`) snapshots add no rows and are skipped; an
//!   `overwrite` or `delete` snapshot stops the job with an error naming it, since an
//!   append-only stream cannot express it (as Flink's Iceberg source does by default).
//!   The starting snapshot is part of the checkpointed state, so a restarted job keeps
//!   reading from where it left off instead of from the snapshot current at its restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use futures::stream::BoxStream;
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataContentType, ManifestStatus, Operation};
use iceberg::table::Table;
use iceberg::Catalog;
use meltwater_connectors::stream::{Split, SplitPosition, SplitReader, StreamSource};
use meltwater_connectors::{ConnectorError, Result};

use crate::committer::LakeCatalog;
use crate::scan::conform;

/// What discovery knows: the snapshot the read started from, the newest table
/// metadata, and in which snapshot each incrementally discovered file was added.
#[derive(Debug, Default)]
struct Discovery {
    /// The snapshot read in full first (`None`: the table had none; everything is
    /// incremental). Set from the planning snapshot, or restored from a checkpoint.
    base: Option<Option<i64>>,
    /// The table as last loaded.
    table: Option<Table>,
    /// The base snapshot's data files (sorted), listed once.
    base_files: Option<Vec<String>>,
    /// The data files of the append snapshots read so far, in commit order, and the
    /// snapshot that added each.
    appended: Vec<String>,
    added_in: HashMap<String, i64>,
    /// The newest snapshot whose appends are in `appended` (`None`: none yet; the next
    /// discovery reads the snapshots after the base).
    through: Option<i64>,
}

/// An Iceberg table as a stream source; see the module docs.
#[derive(Debug, Clone)]
pub struct IcebergSource {
    name: String,
    table: Table,
    /// The provider schema (`IcebergTable::schema()`).
    schema: SchemaRef,
    /// Reloads the table for monitoring.
    catalog: Option<Arc<LakeCatalog>>,
    monitor_ms: Option<u64>,
    discovery: Arc<Mutex<Discovery>>,
    /// Read this snapshot instead of the current one (time travel).
    pinned: Option<i64>,
}

impl IcebergSource {
    /// A bounded source over `table`'s current snapshot.
    pub fn new(name: String, table: Table, schema: SchemaRef) -> Self {
        Self {
            name,
            table,
            schema,
            catalog: None,
            monitor_ms: None,
            discovery: Arc::default(),
            pinned: None,
        }
    }

    /// Reads snapshot `snapshot` (instead of the current one).
    pub fn at_snapshot(mut self, snapshot: i64) -> Self {
        self.pinned = Some(snapshot);
        self
    }

    /// Keeps reading the appends committed after the current snapshot, reloading the
    /// table from `catalog` every `interval_ms`.
    pub fn monitored(mut self, catalog: Arc<LakeCatalog>, interval_ms: u64) -> Self {
        self.catalog = Some(catalog);
        self.monitor_ms = Some(interval_ms.max(1));
        self
    }

    fn io_error(&self, path: &str, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Io {
            table: self.name.clone(),
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// The file scan tasks of `table`'s snapshot `snapshot` reading `columns`.
    async fn plan(
        &self,
        table: &Table,
        snapshot: Option<i64>,
        columns: Vec<String>,
        context: &str,
    ) -> Result<Vec<FileScanTask>> {
        let Some(snapshot) = snapshot else {
            return Ok(Vec::new());
        };
        let scan = table
            .scan()
            .snapshot_id(snapshot)
            .select(columns)
            .build()
            .map_err(|e| self.io_error(context, format!("planning the scan: {e}")))?;
        scan.plan_files()
            .await
            .map_err(|e| self.io_error(context, format!("planning the scan: {e}")))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.io_error(context, format!("planning the scan: {e}")))
    }

    fn all_columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn projected(&self, projection: Option<&[usize]>) -> Result<SchemaRef> {
        match projection {
            None => Ok(self.schema.clone()),
            Some(p) => Ok(Arc::new(self.schema.project(p)?)),
        }
    }

    /// The snapshot read in full first, fixed at the first call.
    fn base(&self) -> Option<i64> {
        let mut d = self.discovery.lock().expect("discovery lock");
        *d.base.get_or_insert_with(|| {
            self.pinned.or_else(|| {
                self.table
                    .metadata()
                    .current_snapshot()
                    .map(|s| s.snapshot_id())
            })
        })
    }

    /// The snapshots after `after` (all of them when `None`) up to the current one of `table`, oldest first.
    fn snapshots_after(
        &self,
        table: &Table,
        after: Option<i64>,
    ) -> Result<Vec<iceberg::spec::SnapshotRef>> {
        let metadata = table.metadata();
        let mut chain = Vec::new();
        let mut next = metadata.current_snapshot().cloned();
        while let Some(s) = next {
            if Some(s.snapshot_id()) == after {
                chain.reverse();
                return Ok(chain);
            }
            next = s
                .parent_snapshot_id()
                .and_then(|p| metadata.snapshot_by_id(p).cloned());
            chain.push(s);
        }
        match after {
            None => {
                chain.reverse();
                Ok(chain)
            }
            Some(b) => Err(self.io_error(
                "",
                format!(
                    "snapshot {b}, up to which this stream has read the table, is no longer an ancestor of the table's current snapshot (the table was rolled back, or the snapshot expired)"
                ),
            )),
        }
    }

    /// The data files each append snapshot after `after` added, in commit order.
    async fn appended_files(
        &self,
        table: &Table,
        after: Option<i64>,
    ) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for snapshot in self.snapshots_after(table, after)? {
            let id = snapshot.snapshot_id();
            match &snapshot.summary().operation {
                Operation::Append => {}
                Operation::Replace => continue,
                op => {
                    return Err(self.io_error(
                        "",
                        format!(
                            "snapshot {id} is an '{}' commit, not an append: the stream source reads appends only; restart the job with --fresh to read the table as it is now",
                            op.as_str()
                        ),
                    ))
                }
            }
            let context = format!("snapshot {id}");
            let list = table
                .manifest_list_reader(&snapshot)
                .load()
                .await
                .map_err(|e| self.io_error(&context, e))?;
            for manifest_file in list.entries() {
                if manifest_file.added_snapshot_id != id {
                    continue;
                }
                let manifest = manifest_file
                    .load_manifest(table.file_io())
                    .await
                    .map_err(|e| self.io_error(&manifest_file.manifest_path, e))?;
                for entry in manifest.entries() {
                    if entry.status() == ManifestStatus::Added
                        && entry.content_type() == DataContentType::Data
                        && entry.snapshot_id().is_none_or(|s| s == id)
                    {
                        out.push((entry.file_path().to_string(), id));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl StreamSource for IcebergSource {
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        self.projected(projection)
            .unwrap_or_else(|_| Arc::new(Schema::empty()))
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        let base = self.base();
        let table = match (&self.catalog, self.monitor_ms) {
            (Some(catalog), Some(_)) => catalog
                .load_table(self.table.identifier())
                .await
                .map_err(|e| self.io_error("", format!("reloading the table: {e}")))?,
            _ => self.table.clone(),
        };
        // The base snapshot's files and the appends already read are listed once; each
        // discovery reads only the snapshots committed since the last one.
        let cached = self
            .discovery
            .lock()
            .expect("discovery lock")
            .base_files
            .clone();
        let mut ids = match cached {
            Some(ids) => ids,
            None => {
                let mut ids: Vec<String> = self
                    .plan(&table, base, self.all_columns(), "")
                    .await?
                    .into_iter()
                    .map(|t| t.data_file_path)
                    .collect();
                ids.sort();
                ids.dedup();
                self.discovery.lock().expect("discovery lock").base_files = Some(ids.clone());
                ids
            }
        };
        if self.monitor_ms.is_some() {
            let from = self
                .discovery
                .lock()
                .expect("discovery lock")
                .through
                .or(base);
            let appended = self.appended_files(&table, from).await?;
            let mut d = self.discovery.lock().expect("discovery lock");
            // Another subtask sharing this source may have read them meanwhile.
            if d.through.or(base) == from {
                for (path, snapshot) in appended {
                    d.appended.push(path.clone());
                    d.added_in.insert(path, snapshot);
                }
                d.through = table
                    .metadata()
                    .current_snapshot()
                    .map(|s| s.snapshot_id())
                    .or(from);
            }
            ids.extend(d.appended.iter().cloned());
            d.table = Some(table);
        }
        Ok(ids.into_iter().map(|id| Split { id }).collect())
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        self.monitor_ms
    }

    fn enumerator_state(&self) -> serde_json::Value {
        match self.monitor_ms {
            Some(_) => serde_json::json!({ "base_snapshot": self.base() }),
            None => serde_json::Value::Null,
        }
    }

    fn restore_enumerator(&self, state: &serde_json::Value) -> Result<()> {
        if self.monitor_ms.is_none() {
            return Ok(());
        }
        if let Some(base) = state.get("base_snapshot") {
            self.discovery.lock().expect("discovery lock").base = Some(base.as_i64());
        }
        Ok(())
    }

    async fn open(
        &self,
        split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Box<dyn SplitReader>> {
        let schema = self.projected(projection)?;
        // Reading no columns still needs one to count rows (as the batch scan does).
        let read_schema: SchemaRef =
            if schema.fields().is_empty() && !self.schema.fields().is_empty() {
                Arc::new(self.schema.project(&[0])?)
            } else {
                schema.clone()
            };
        let columns = read_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // A file appended after the base snapshot is planned in the snapshot that added
        // it; the others in the base snapshot.
        let (table, snapshot) = {
            let d = self.discovery.lock().expect("discovery lock");
            match d.added_in.get(&split.id) {
                Some(s) => (
                    d.table.clone().unwrap_or_else(|| self.table.clone()),
                    Some(*s),
                ),
                None => (
                    d.table.clone().unwrap_or_else(|| self.table.clone()),
                    d.base.flatten(),
                ),
            }
        };
        let snapshot = snapshot.or_else(|| {
            // Discovery has not run in this process (cannot happen: the runtime
            // discovers before opening); read the planning snapshot.
            self.table
                .metadata()
                .current_snapshot()
                .map(|s| s.snapshot_id())
        });
        let tasks: Vec<FileScanTask> = self
            .plan(&table, snapshot, columns, &split.id)
            .await?
            .into_iter()
            .filter(|t| t.data_file_path == split.id)
            .collect();
        if tasks.is_empty() {
            return Err(self.io_error(&split.id, "not a data file of the table's snapshot"));
        }
        let runtime = iceberg::Runtime::try_current().map_err(|e| self.io_error(&split.id, e))?;
        let batch_size = batch_size.max(1);
        let reader = ArrowReaderBuilder::new(self.table.file_io().clone(), runtime)
            .with_batch_size(batch_size)
            .with_data_file_concurrency_limit(1)
            .build();
        let input = reader
            .read(stream::iter(tasks.into_iter().map(Ok)).boxed())
            .map_err(|e| self.io_error(&split.id, e))?
            .stream();
        Ok(Box::new(IcebergSplitReader {
            table: self.name.clone(),
            path: split.id.clone(),
            input: Some(input),
            read_schema,
            schema,
            to_skip: position,
            position,
            batch_size,
            pending: VecDeque::new(),
        }))
    }
}

/// Reads one data file's task, skipping the rows before the resume position.
struct IcebergSplitReader {
    table: String,
    path: String,
    /// `None` once exhausted.
    input: Option<BoxStream<'static, iceberg::Result<RecordBatch>>>,
    read_schema: SchemaRef,
    schema: SchemaRef,
    to_skip: u64,
    position: SplitPosition,
    batch_size: usize,
    /// Slices of a reader batch larger than `batch_size` still to return.
    pending: VecDeque<RecordBatch>,
}

impl IcebergSplitReader {
    fn error(&self, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Io {
            table: self.table.clone(),
            path: self.path.clone(),
            message: message.to_string(),
        }
    }
}

#[async_trait]
impl SplitReader for IcebergSplitReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                self.position += batch.num_rows() as u64;
                return Ok(Some((batch, self.position)));
            }
            let Some(input) = self.input.as_mut() else {
                return Ok(None);
            };
            let batch = match input.next().await {
                None => {
                    self.input = None;
                    return Ok(None);
                }
                Some(Err(e)) => return Err(self.error(e)),
                Some(Ok(batch)) => batch,
            };
            let rows = batch.num_rows() as u64;
            if rows <= self.to_skip {
                self.to_skip -= rows;
                continue;
            }
            let skip = self.to_skip as usize;
            self.to_skip = 0;
            let batch = batch.slice(skip, batch.num_rows() - skip);
            let batch =
                conform(&batch, &self.read_schema, &self.schema).map_err(|e| self.error(e))?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = self.batch_size.min(batch.num_rows() - offset);
                self.pending.push_back(batch.slice(offset, len));
                offset += len;
            }
        }
    }
}
