//! Iceberg tables and plan nodes across process boundaries (DESIGN.md §6): what a
//! cluster's scheduler needs to plan a job's statements against the snapshot the job's
//! client loaded, and what its executors need to run the scans and writes it planned.
//!
//! The wire form is JSON, one object per table or node, tagged by `kind`:
//! - **table**: name, identifier, metadata location and the whole table metadata (the
//!   scheduler plans against the client's snapshot without reaching the catalog), the
//!   time-travel pin, and the job identity writes name their files with;
//! - **scan**: the file scan tasks of each partition, as the scheduler planned them
//!   (the crate's own serde form, plus each task's partition value, partition spec and
//!   name mapping, which that form leaves out), and the read and output schemas (Arrow
//!   IPC schemas);
//! - **write**: the table and whether it is an `INSERT OVERWRITE`;
//! - **rewrite** (`DELETE`, `UPDATE`): the table, the candidate files' tasks, the WHERE
//!   condition and the new values (DataFusion physical expressions in their protobuf
//!   form), copy-on-write or merge-on-read;
//! - **merge target** (the table a `MERGE` reads with row addresses and writes), **merge
//!   scan** (its file groups, table schema and projection) and **merge write** (the
//!   target and the tasks of the files the scan read, which a copy-on-write rewrite
//!   reads again and a position delete takes its partition from).
//!
//! Files are read and written through the local file system, so every process of the
//! cluster must see the warehouse at the same path (one machine, or a shared mount).
//!
//! **Writes on a cluster** are two-phase like everywhere else: the scheduler's and
//! executors' copies of a table are *detached* ([`JobCommits::detached`],
//! [`LakeCatalog::detached`]), so each write task outputs one row naming the files it
//! wrote ([`written_files_schema`]) instead of registering them. The job's client
//! registers those rows with [`register_written_files`] into its own [`JobCommits`] and
//! commits once, after the last statement, as in the embedded runtime. A task attempt
//! that failed or was retried leaves no row, so its files are never committed.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
use datafusion_proto::protobuf::PhysicalExprNode;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::spec::{Literal, NameMapping, PartitionSpec, Struct, TableMetadata, Type};
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::commit::{JobCommits, JobIdentity};
use crate::committer::LakeCatalog;
use crate::merge::{IcebergMergeExec, MergeScanExec, MergeTarget};
use crate::rewrite::{IcebergRewriteExec, RowChange, RowLevelMode};
use crate::scan::IcebergScanExec;
use crate::snapshot::AddedFiles;
use crate::stream::PendingDataFile;
use crate::table::IcebergTable;
use crate::write::IcebergWriteExec;

/// An Iceberg table or plan node on the wire.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Table(TableWire),
    Scan(ScanWire),
    Write(WriteWire),
    Rewrite(RewriteWire),
    MergeTarget(MergeTargetWire),
    MergeScan(MergeScanWire),
    MergeWrite(MergeWriteWire),
}

#[derive(Serialize, Deserialize)]
struct TableWire {
    /// `catalog.namespace.table`, as the job names it.
    name: String,
    catalog: String,
    namespace: Vec<String>,
    table: String,
    metadata_location: Option<String>,
    metadata: serde_json::Value,
    /// Time travel: the snapshot read.
    snapshot: Option<i64>,
    job_id: String,
    run_id: String,
}

#[derive(Serialize, Deserialize)]
struct ScanWire {
    table: String,
    groups: Vec<Vec<TaskWire>>,
    #[serde(with = "meltwater_connectors::codec::ipc_schema")]
    read_schema: SchemaRef,
    #[serde(with = "meltwater_connectors::codec::ipc_schema")]
    schema: SchemaRef,
}

#[derive(Serialize, Deserialize)]
struct TaskWire {
    /// The task in the crate's serde form (without the three fields below).
    task: serde_json::Value,
    /// The partition value, in Iceberg's JSON single-value form of the spec's
    /// partition type.
    partition: Option<serde_json::Value>,
    spec: Option<PartitionSpec>,
    name_mapping: Option<NameMapping>,
}

#[derive(Serialize, Deserialize)]
struct RewriteWire {
    table: TableWire,
    tasks: Vec<TaskWire>,
    #[serde(with = "meltwater_connectors::codec::ipc_schema")]
    schema: SchemaRef,
    /// The WHERE condition, a DataFusion physical expression in its protobuf form.
    predicate: Vec<u8>,
    /// `UPDATE`: the new value of every column (same form); `DELETE`: none.
    update: Option<Vec<Vec<u8>>>,
    merge_on_read: bool,
}

#[derive(Serialize, Deserialize)]
struct WriteWire {
    table: TableWire,
    overwrite: bool,
}

#[derive(Serialize, Deserialize)]
struct MergeTargetWire {
    table: TableWire,
    merge_on_read: bool,
}

#[derive(Serialize, Deserialize)]
struct MergeScanWire {
    table: TableWire,
    groups: Vec<Vec<TaskWire>>,
    #[serde(with = "meltwater_connectors::codec::ipc_schema")]
    table_schema: SchemaRef,
    projection: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct MergeWriteWire {
    target: MergeTargetWire,
    /// The tasks of the files the target scan read.
    scanned: Vec<TaskWire>,
}

/// What one write task of a detached write produced, as carried in its output row.
#[derive(Serialize, Deserialize)]
struct WrittenWire {
    data: Vec<PendingDataFile>,
    deletes: Vec<PendingDataFile>,
    replace_partitions: bool,
    removed: Vec<String>,
    #[serde(default)]
    referenced: Vec<String>,
    rewrite_sequence_number: Option<i64>,
    read_snapshot: Option<i64>,
    table_properties: HashMap<String, String>,
}

fn codec_error(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("Iceberg plan codec: {what}: {e}"))
}

/// The FileIO of a cluster process for files under `location`: only local paths reach
/// every process the same way.
fn file_io_for(table: &str, location: &str) -> Result<FileIO> {
    if location.starts_with('/') || location.starts_with("file:") {
        Ok(FileIO::new_with_fs())
    } else {
        Err(DataFusionError::Plan(format!(
            "table {table} is stored at {location}; on a cluster only tables in a local warehouse (a path every scheduler and executor sees) can be read or written yet"
        )))
    }
}

fn table_wire(
    name: &str,
    table: &Table,
    snapshot: Option<i64>,
    identity: &JobIdentity,
) -> Result<TableWire> {
    let ident = table.identifier();
    let metadata = serde_json::to_value(table.metadata()).map_err(|e| codec_error(name, e))?;
    Ok(TableWire {
        name: name.to_string(),
        catalog: name.split('.').next().unwrap_or_default().to_string(),
        namespace: ident.namespace().clone().inner(),
        table: ident.name().to_string(),
        metadata_location: table.metadata_location().map(str::to_string),
        metadata,
        snapshot,
        job_id: identity.job_id.clone(),
        run_id: identity.run_id.clone(),
    })
}

/// The table, detached: planning and writing work, committing is the client's.
fn table_from_wire(wire: TableWire) -> Result<(Table, Arc<LakeCatalog>, Arc<JobCommits>)> {
    let metadata: TableMetadata =
        serde_json::from_value(wire.metadata).map_err(|e| codec_error(&wire.name, e))?;
    let file_io = file_io_for(&wire.name, metadata.location())?;
    let namespace =
        NamespaceIdent::from_vec(wire.namespace).map_err(|e| codec_error(&wire.name, e))?;
    let runtime = iceberg::Runtime::try_current().map_err(|e| codec_error(&wire.name, e))?;
    let mut builder = Table::builder()
        .runtime(runtime)
        .metadata(Arc::new(metadata))
        .identifier(TableIdent::new(namespace, wire.table))
        .file_io(file_io);
    if let Some(location) = wire.metadata_location {
        builder = builder.metadata_location(location);
    }
    let table = builder.build().map_err(|e| codec_error(&wire.name, e))?;
    let identity = JobIdentity {
        job_id: wire.job_id,
        run_id: wire.run_id,
    };
    Ok((
        table,
        Arc::new(LakeCatalog::detached(&wire.catalog)),
        Arc::new(JobCommits::detached(identity)),
    ))
}

/// An Iceberg table provider as bytes.
pub fn encode_table(table: &IcebergTable) -> Result<Vec<u8>> {
    // A time-travel copy is named `t (snapshot n)`; the decoded one pins n again.
    let name = table.name().split(" (snapshot ").next().unwrap_or_default();
    let wire = table_wire(
        name,
        table.table(),
        table.pinned_snapshot(),
        table.commits().identity(),
    )?;
    serde_json::to_vec(&Wire::Table(wire)).map_err(|e| codec_error("table", e))
}

/// The target of a `MERGE` as bytes.
pub fn encode_merge_target(target: &MergeTarget) -> Result<Vec<u8>> {
    let wire = merge_target_wire(target)?;
    serde_json::to_vec(&Wire::MergeTarget(wire)).map_err(|e| codec_error("merge target", e))
}

fn merge_target_wire(target: &MergeTarget) -> Result<MergeTargetWire> {
    Ok(MergeTargetWire {
        table: table_wire(&target.name, &target.table, None, target.commits.identity())?,
        merge_on_read: target.mode == RowLevelMode::MergeOnRead,
    })
}

/// The target of a `MERGE`, detached.
fn merge_target_from_wire(wire: MergeTargetWire) -> Result<MergeTarget> {
    let name = wire.table.name.clone();
    let (table, catalog, commits) = table_from_wire(wire.table)?;
    let schema = crate::schema::arrow_schema(table.metadata().current_schema())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mode = if wire.merge_on_read {
        RowLevelMode::MergeOnRead
    } else {
        RowLevelMode::CopyOnWrite
    };
    Ok(MergeTarget::new(
        name, table, catalog, commits, schema, mode,
    ))
}

/// The table provider [`encode_table`] or [`encode_merge_target`] encoded, detached
/// (see the module documentation).
pub fn decode_provider(buf: &[u8]) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let wire = match decode(buf)? {
        Wire::Table(wire) => wire,
        Wire::MergeTarget(wire) => return Ok(Arc::new(merge_target_from_wire(wire)?)),
        _ => {
            return Err(codec_error(
                "table",
                "the bytes hold a plan node, not a table",
            ))
        }
    };
    let name = wire.name.clone();
    let snapshot = wire.snapshot;
    let (table, catalog, commits) = table_from_wire(wire)?;
    let table = IcebergTable::try_new(name, catalog, table, commits)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(match snapshot {
        Some(id) => table
            .at_snapshot(id)
            .map_err(|e| DataFusionError::External(Box::new(e)))?,
        None => table,
    }))
}

fn decode(buf: &[u8]) -> Result<Wire> {
    serde_json::from_slice(buf).map_err(|e| codec_error("decoding", e))
}

fn task_to_wire(table: &str, task: &FileScanTask) -> Result<TaskWire> {
    let partition = match (&task.partition, &task.partition_spec) {
        (Some(value), Some(spec)) => {
            let partition_type = spec
                .partition_type(&task.schema)
                .map_err(|e| codec_error(table, e))?;
            Some(
                Literal::Struct(value.clone())
                    .try_into_json(&Type::Struct(partition_type))
                    .map_err(|e| codec_error(table, e))?,
            )
        }
        _ => None,
    };
    let mut bare = task.clone();
    bare.partition = None;
    bare.partition_spec = None;
    bare.name_mapping = None;
    Ok(TaskWire {
        task: serde_json::to_value(&bare).map_err(|e| codec_error(table, e))?,
        partition,
        spec: task.partition_spec.as_deref().cloned(),
        name_mapping: task.name_mapping.as_deref().cloned(),
    })
}

fn task_from_wire(table: &str, wire: TaskWire) -> Result<FileScanTask> {
    let mut task: FileScanTask =
        serde_json::from_value(wire.task).map_err(|e| codec_error(table, e))?;
    if let (Some(value), Some(spec)) = (wire.partition, &wire.spec) {
        let partition_type = spec
            .partition_type(&task.schema)
            .map_err(|e| codec_error(table, e))?;
        task.partition = match Literal::try_from_json(value, &Type::Struct(partition_type))
            .map_err(|e| codec_error(table, e))?
        {
            Some(Literal::Struct(s)) => Some(s),
            Some(_) => return Err(codec_error(table, "a partition value that is not a struct")),
            None => Some(Struct::empty()),
        };
    }
    task.partition_spec = wire.spec.map(Arc::new);
    task.name_mapping = wire.name_mapping.map(Arc::new);
    Ok(task)
}

/// This crate's plan nodes as bytes, without their children; `None` for other nodes.
pub fn encode_exec(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Vec<u8>>> {
    let any = node.as_any();
    let wire = if let Some(scan) = any.downcast_ref::<IcebergScanExec>() {
        let groups = scan
            .groups
            .iter()
            .map(|g| g.iter().map(|t| task_to_wire(&scan.table, t)).collect())
            .collect::<Result<Vec<Vec<_>>>>()?;
        Wire::Scan(ScanWire {
            table: scan.table.clone(),
            groups,
            read_schema: scan.read_schema.clone(),
            schema: scan.schema.clone(),
        })
    } else if let Some(write) = any.downcast_ref::<IcebergWriteExec>() {
        Wire::Write(WriteWire {
            table: table_wire(
                &write.table_name,
                &write.table,
                None,
                write.commits.identity(),
            )?,
            overwrite: write.overwrite,
        })
    } else if let Some(scan) = any.downcast_ref::<MergeScanExec>() {
        // A scan commits nothing: the identity is not needed on the other side.
        let identity = JobIdentity {
            job_id: String::new(),
            run_id: String::new(),
        };
        Wire::MergeScan(MergeScanWire {
            table: table_wire(&scan.table_name, &scan.table, None, &identity)?,
            groups: scan
                .groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|t| task_to_wire(&scan.table_name, t))
                        .collect()
                })
                .collect::<Result<Vec<Vec<_>>>>()?,
            table_schema: scan.table_schema.clone(),
            projection: scan.projection.clone(),
        })
    } else if let Some(merge) = any.downcast_ref::<IcebergMergeExec>() {
        let mut scanned: Vec<&FileScanTask> = merge.scanned.values().collect();
        scanned.sort_by(|a, b| a.data_file_path.cmp(&b.data_file_path));
        Wire::MergeWrite(MergeWriteWire {
            target: merge_target_wire(&merge.target)?,
            scanned: scanned
                .into_iter()
                .map(|t| task_to_wire(&merge.target.name, t))
                .collect::<Result<_>>()?,
        })
    } else if let Some(rewrite) = any.downcast_ref::<IcebergRewriteExec>() {
        let update = match &rewrite.change {
            RowChange::Delete => None,
            RowChange::Update(values) => Some(
                values
                    .iter()
                    .map(expr_to_bytes)
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        Wire::Rewrite(RewriteWire {
            table: table_wire(
                &rewrite.table_name,
                &rewrite.table,
                None,
                rewrite.commits.identity(),
            )?,
            tasks: rewrite
                .tasks
                .iter()
                .map(|t| task_to_wire(&rewrite.table_name, t))
                .collect::<Result<_>>()?,
            schema: rewrite.schema.clone(),
            predicate: expr_to_bytes(&rewrite.predicate)?,
            update,
            merge_on_read: rewrite.mode == RowLevelMode::MergeOnRead,
        })
    } else {
        return Ok(None);
    };
    serde_json::to_vec(&wire)
        .map(Some)
        .map_err(|e| codec_error("plan node", e))
}

/// A physical expression in DataFusion's protobuf form (built-in functions only).
fn expr_to_bytes(expr: &Arc<dyn PhysicalExpr>) -> Result<Vec<u8>> {
    let node = serialize_physical_expr(expr, &DefaultPhysicalExtensionCodec {})?;
    Ok(node.encode_to_vec())
}

fn expr_from_bytes(
    bytes: &[u8],
    ctx: &TaskContext,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    let node = PhysicalExprNode::decode(bytes).map_err(|e| codec_error("expression", e))?;
    parse_physical_expr(&node, ctx, schema, &DefaultPhysicalExtensionCodec {})
}

/// The node [`encode_exec`] encoded, over `inputs`; `ctx` resolves the functions its
/// expressions call.
pub fn decode_exec(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
    ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    match decode(buf)? {
        Wire::Rewrite(rewrite) => {
            let name = rewrite.table.name.clone();
            let tasks = rewrite
                .tasks
                .into_iter()
                .map(|t| task_from_wire(&name, t))
                .collect::<Result<Vec<_>>>()?;
            let predicate = expr_from_bytes(&rewrite.predicate, ctx, &rewrite.schema)?;
            let change = match rewrite.update {
                None => RowChange::Delete,
                Some(values) => RowChange::Update(
                    values
                        .iter()
                        .map(|v| expr_from_bytes(v, ctx, &rewrite.schema))
                        .collect::<Result<_>>()?,
                ),
            };
            let mode = if rewrite.merge_on_read {
                RowLevelMode::MergeOnRead
            } else {
                RowLevelMode::CopyOnWrite
            };
            let (table, catalog, commits) = table_from_wire(rewrite.table)?;
            Ok(Arc::new(IcebergRewriteExec::new(
                name,
                table,
                catalog,
                commits,
                tasks,
                rewrite.schema,
                predicate,
                change,
                mode,
            )))
        }
        Wire::Table(_) | Wire::MergeTarget(_) => Err(codec_error(
            "plan node",
            "the bytes hold a table, not a plan node",
        )),
        Wire::MergeScan(scan) => {
            let name = scan.table.name.clone();
            let groups = scan
                .groups
                .into_iter()
                .map(|g| g.into_iter().map(|t| task_from_wire(&name, t)).collect())
                .collect::<Result<Vec<Vec<_>>>>()?;
            let (table, _, _) = table_from_wire(scan.table)?;
            Ok(Arc::new(MergeScanExec::from_groups(
                name,
                table,
                groups,
                scan.table_schema,
                scan.projection,
            )?))
        }
        Wire::MergeWrite(merge) => {
            let [input] = inputs else {
                return Err(codec_error("merge write", "a write takes one input"));
            };
            let target = merge_target_from_wire(merge.target)?;
            let scanned = merge
                .scanned
                .into_iter()
                .map(|t| {
                    let task = task_from_wire(&target.name, t)?;
                    Ok((task.data_file_path.clone(), task))
                })
                .collect::<Result<HashMap<_, _>>>()?;
            Ok(Arc::new(IcebergMergeExec::try_new(
                target,
                input.clone(),
                Arc::new(scanned),
            )?))
        }
        Wire::Scan(scan) => {
            let groups = scan
                .groups
                .into_iter()
                .map(|g| {
                    g.into_iter()
                        .map(|t| task_from_wire(&scan.table, t))
                        .collect()
                })
                .collect::<Result<Vec<Vec<_>>>>()?;
            let location = groups
                .iter()
                .flatten()
                .map(|t| t.data_file_path.clone())
                .next()
                .unwrap_or_else(|| "/".to_string());
            let file_io = file_io_for(&scan.table, &location)?;
            Ok(Arc::new(IcebergScanExec::from_groups(
                scan.table,
                file_io,
                groups,
                scan.read_schema,
                scan.schema,
            )))
        }
        Wire::Write(write) => {
            let [input] = inputs else {
                return Err(codec_error("write", "a write takes one input"));
            };
            let name = write.table.name.clone();
            let (table, catalog, commits) = table_from_wire(write.table)?;
            let exec = IcebergWriteExec::new(input.clone(), name, table, catalog, commits);
            Ok(Arc::new(if write.overwrite {
                exec.with_overwrite()
            } else {
                exec
            }))
        }
    }
}

/// Fault injection for tests: with `MELTWATER_FAIL_CLUSTER_WRITE=DIR:TABLE`, the first
/// detached write task into `TABLE` to finish in any process of the cluster (they share
/// `DIR`, where it leaves a marker) fails after writing its files; every later one
/// succeeds.
pub(crate) fn injected_write_failure(table: &str, partition: usize) -> Result<()> {
    let Ok(spec) = std::env::var("MELTWATER_FAIL_CLUSTER_WRITE") else {
        return Ok(());
    };
    let Some((dir, target)) = spec.rsplit_once(':') else {
        return Ok(());
    };
    if target != table {
        return Ok(());
    }
    let marker = std::path::Path::new(&dir).join("failed-write");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => Err(DataFusionError::Execution(format!(
            "injected failure of the write of partition {partition} of {table}"
        ))),
        Err(_) => Ok(()),
    }
}

/// The output of a detached write task: the rows it wrote (`count`), the table and the
/// files (`files`, JSON; null when there is nothing to commit), one row per task.
pub fn written_files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("files", DataType::Utf8, true),
    ]))
}

/// The output row of a detached write task that wrote `files` into `table`.
pub(crate) fn written_files_batch(
    name: &str,
    table: &Table,
    rows: u64,
    files: Option<AddedFiles>,
) -> Result<RecordBatch> {
    // None: nothing to commit (a rewrite whose candidate file held no matching row).
    let json = files
        .map(|files| written_json(name, table, files))
        .transpose()?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![rows])),
        Arc::new(StringArray::from(vec![name.to_string()])),
        Arc::new(StringArray::from(vec![json])),
    ];
    Ok(RecordBatch::try_new(written_files_schema(), columns)?)
}

/// What a write task wrote, as the JSON of its output row.
fn written_json(name: &str, table: &Table, files: AddedFiles) -> Result<String> {
    let metadata = table.metadata();
    let pending = |files: Vec<iceberg::spec::DataFile>| {
        files
            .into_iter()
            .map(|f| PendingDataFile::from_data_file(name, f, metadata))
            .collect::<crate::Result<Vec<_>>>()
            .map_err(|e| DataFusionError::External(Box::new(e)))
    };
    let wire = WrittenWire {
        data: pending(files.data)?,
        deletes: pending(files.deletes)?,
        replace_partitions: files.replace_partitions,
        removed: files.removed,
        referenced: files.referenced,
        rewrite_sequence_number: files.rewrite_sequence_number,
        read_snapshot: files.read_snapshot,
        table_properties: files.table_properties,
    };
    serde_json::to_string(&wire).map_err(|e| codec_error(name, e))
}

/// Registers the files that detached write tasks reported in `batches` (their output
/// rows, as the cluster returned them) with `table`'s job, to be committed with the
/// run; returns the rows they wrote. Batches without a `files` column are not a
/// detached write's output and are refused.
pub fn register_written_files(table: &IcebergTable, batches: &[RecordBatch]) -> Result<u64> {
    let metadata = table.table().metadata();
    let mut rows = 0;
    for batch in batches {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                codec_error(
                    table.name(),
                    format!("the write's output has no '{name}' column"),
                )
            })
        };
        let counts = column("count")?;
        let counts = counts
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| codec_error(table.name(), "'count' is not UInt64"))?;
        let files = column("files")?;
        let files = files
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| codec_error(table.name(), "'files' is not a string"))?;
        for i in 0..batch.num_rows() {
            rows += counts.value(i);
            if files.is_null(i) {
                continue;
            }
            let wire: WrittenWire =
                serde_json::from_str(files.value(i)).map_err(|e| codec_error(table.name(), e))?;
            let data_files = |pending: Vec<PendingDataFile>| {
                pending
                    .iter()
                    .map(|p| p.to_data_file(metadata))
                    .collect::<crate::Result<Vec<_>>>()
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            };
            let added = AddedFiles {
                data: data_files(wire.data)?,
                deletes: data_files(wire.deletes)?,
                replace_partitions: wire.replace_partitions,
                removed: wire.removed,
                referenced: wire.referenced,
                rewrite_sequence_number: wire.rewrite_sequence_number,
                read_snapshot: wire.read_snapshot,
                table_properties: wire.table_properties,
            };
            table.commits().add_files(
                table.name(),
                table.catalog().clone(),
                table.table().identifier().clone(),
                added,
            );
        }
    }
    Ok(rows)
}
