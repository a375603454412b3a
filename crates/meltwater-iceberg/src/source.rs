//! `IcebergSource`: an Iceberg table's snapshot (as loaded when the job was planned) read
//! in stream mode. Each data file of the snapshot is one split, identified by its path;
//! a split's position counts the rows of that file emitted so far (after deletes).
//! The split set is fixed: incremental reading of later appends is not done yet.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use futures::stream::BoxStream;
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use meltwater_connectors::stream::{Split, SplitPosition, SplitReader, StreamSource};
use meltwater_connectors::{ConnectorError, Result};

use crate::scan::conform;

/// An Iceberg table's current snapshot as a bounded stream source.
#[derive(Debug, Clone)]
pub struct IcebergSource {
    name: String,
    table: Table,
    /// The provider schema (`IcebergTable::schema()`).
    schema: SchemaRef,
}

impl IcebergSource {
    pub fn new(name: String, table: Table, schema: SchemaRef) -> Self {
        Self {
            name,
            table,
            schema,
        }
    }

    fn io_error(&self, path: &str, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Io {
            table: self.name.clone(),
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// The file scan tasks of the loaded snapshot reading `columns`.
    async fn plan(&self, columns: Vec<String>, context: &str) -> Result<Vec<FileScanTask>> {
        let Some(snapshot) = self.table.metadata().current_snapshot() else {
            return Ok(Vec::new());
        };
        let scan = self
            .table
            .scan()
            .snapshot_id(snapshot.snapshot_id())
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

    fn projected(&self, projection: Option<&[usize]>) -> Result<SchemaRef> {
        match projection {
            None => Ok(self.schema.clone()),
            Some(p) => Ok(Arc::new(self.schema.project(p)?)),
        }
    }
}

#[async_trait]
impl StreamSource for IcebergSource {
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        self.projected(projection)
            .unwrap_or_else(|_| Arc::new(Schema::empty()))
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        let mut ids: Vec<String> = self
            .plan(
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
                "",
            )
            .await?
            .into_iter()
            .map(|t| t.data_file_path)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids.into_iter().map(|id| Split { id }).collect())
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        None
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
        let tasks: Vec<FileScanTask> = self
            .plan(columns, &split.id)
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
