//! Position deletes for merge-on-read `DELETE` and `UPDATE`
//! (`write.delete.mode` / `write.update.mode` = `merge-on-read`).
//!
//! A data file is read with the position of every live row (Iceberg's `_pos`: the row's
//! index in the file): the crate's reader reads the whole file without its deletes, a
//! running counter numbers its rows, and the deletes that apply to it are taken out
//! here — position deletes by position, equality deletes by key
//! ([`crate::deletes`]). The positions of the rows a statement removes are then written
//! as a position-delete file (`file_path` field 2147483546, `pos` field 2147483545,
//! sorted by path and position as the spec requires) in the data file's partition,
//! naming that file as its `referenced_data_file`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema as ArrowSchema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use futures::stream::BoxStream;
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::metadata_columns::{
    RESERVED_COL_NAME_DELETE_FILE_PATH, RESERVED_COL_NAME_DELETE_FILE_POS,
    RESERVED_FIELD_ID_DELETE_FILE_PATH, RESERVED_FIELD_ID_DELETE_FILE_POS,
};
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, NestedField, PartitionKey, PrimitiveType, Schema,
    Type,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use tokio::sync::OnceCell;

use crate::deletes::{open_delete_file, take_equality_deletes, DeleteCache};
use crate::error::{IcebergContext, IcebergError};
use crate::scan::read_task;

/// The column carrying each row's position through the equality-delete filter.
const POSITION_COLUMN: &str = "__meltwater_pos";

/// The deleted positions of every data file one position-delete file names, sorted.
type PositionsByFile = Arc<HashMap<String, Vec<i64>>>;

/// Position-delete files loaded during one statement, by path.
#[derive(Debug, Default)]
pub(crate) struct PositionDeleteCache {
    files: Mutex<HashMap<String, Arc<OnceCell<PositionsByFile>>>>,
}

impl PositionDeleteCache {
    /// The positions of `data_file` deleted by the position-delete file `path`.
    async fn positions(&self, file_io: &FileIO, path: &str, data_file: &str) -> Result<Vec<i64>> {
        let cell = self
            .files
            .lock()
            .expect("position delete cache lock")
            .entry(path.to_string())
            .or_default()
            .clone();
        let by_file = cell
            .get_or_try_init(|| load_position_deletes(file_io, path))
            .await?;
        Ok(by_file.get(data_file).cloned().unwrap_or_default())
    }
}

async fn load_position_deletes(file_io: &FileIO, path: &str) -> Result<PositionsByFile> {
    let context =
        |e: String| DataFusionError::Execution(format!("reading the position deletes {path}: {e}"));
    let reader = open_delete_file(file_io, path, "position").await?;
    let mut by_file: HashMap<String, Vec<i64>> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| context(e.to_string()))?;
        let column = |name: &str, t: &DataType| -> Result<ArrayRef> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| context(format!("it has no column '{name}'")))?;
            Ok(datafusion::arrow::compute::cast(c, t)?)
        };
        let files = column(RESERVED_COL_NAME_DELETE_FILE_PATH, &DataType::Utf8)?;
        let positions = column(RESERVED_COL_NAME_DELETE_FILE_POS, &DataType::Int64)?;
        let files = files.as_string::<i32>();
        let positions = positions.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if files.is_null(i) || positions.is_null(i) {
                continue;
            }
            by_file
                .entry(files.value(i).to_string())
                .or_default()
                .push(positions.value(i));
        }
    }
    for positions in by_file.values_mut() {
        positions.sort_unstable();
        positions.dedup();
    }
    Ok(Arc::new(by_file))
}

/// The live rows of the data file of `task`, each batch with the positions of its rows
/// in the file (ascending).
pub(crate) fn read_with_positions(
    file_io: FileIO,
    mut task: FileScanTask,
    batch_size: usize,
    table: &str,
    equality: Arc<DeleteCache>,
    positional: Arc<PositionDeleteCache>,
) -> Result<BoxStream<'static, Result<(RecordBatch, Int64Array)>>> {
    let runtime =
        iceberg::Runtime::try_current().map_err(|e| DataFusionError::External(Box::new(e)))?;
    let table = table.to_string();
    // The whole file, every row in order: positions are counted, so nothing may skip
    // rows (no byte range, no predicate, no deletes in the reader).
    task.start = 0;
    task.length = 0;
    task.predicate = None;
    let opened = async move {
        let (eq_files, added) = take_equality_deletes(&mut task)?;
        let eq = equality.load(&file_io, &task, &eq_files).await?;
        let mut deleted: Vec<i64> = Vec::new();
        for d in std::mem::take(&mut task.deletes) {
            if d.file_type != DataContentType::PositionDeletes {
                return Err(DataFusionError::NotImplemented(format!(
                    "{}: a {:?} delete file ({}) applies to {}; merge-on-read handles position and equality deletes",
                    table, d.file_type, d.file_path, task.data_file_path
                )));
            }
            deleted.extend(
                positional
                    .positions(&file_io, &d.file_path, &task.data_file_path)
                    .await?,
            );
        }
        deleted.sort_unstable();
        deleted.dedup();
        let batches = read_task(file_io, runtime, task, batch_size, &table)?;
        let mut next = 0i64;
        let mut cursor = 0usize;
        Ok::<_, DataFusionError>(batches.map(move |batch| {
            let batch = batch?;
            let start = next;
            next += batch.num_rows() as i64;
            let positions = Int64Array::from_iter_values(start..next);
            // Position deletes: the sorted deleted positions within this batch's range.
            let mut keep = vec![true; batch.num_rows()];
            while cursor < deleted.len() && deleted[cursor] < next {
                if deleted[cursor] >= start {
                    keep[(deleted[cursor] - start) as usize] = false;
                }
                cursor += 1;
            }
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(positions) as ArrayRef);
            let mut fields: Vec<Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(POSITION_COLUMN, DataType::Int64, false));
            let mut batch = RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns)?;
            if keep.iter().any(|k| !k) {
                batch = filter_record_batch(&batch, &BooleanArray::from(keep))?;
            }
            if !eq.is_empty() {
                batch = eq.apply(batch)?;
            }
            let positions = batch
                .remove_column(batch.num_columns() - 1)
                .as_primitive::<Int64Type>()
                .clone();
            for name in &added {
                if let Ok(i) = batch.schema().index_of(name) {
                    batch.remove_column(i);
                }
            }
            Ok((batch, positions))
        }))
    };
    Ok(stream::once(opened).try_flatten().boxed())
}

/// The schema of position-delete files (the reserved `file_path` and `pos` fields).
fn position_delete_schema() -> crate::Result<Schema> {
    Schema::builder()
        .with_fields(vec![
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_PATH,
                RESERVED_COL_NAME_DELETE_FILE_PATH,
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_POS,
                RESERVED_COL_NAME_DELETE_FILE_POS,
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
        .context(|| "the position delete schema".to_string())
}

/// Writes position deletes of the rows at `positions` (ascending) of the data file of
/// `task`, in its partition; `prefix` makes the file names unique in the table.
pub(crate) async fn write_position_deletes(
    table_name: &str,
    table: &Table,
    task: &FileScanTask,
    positions: Vec<i64>,
    prefix: String,
) -> crate::Result<Vec<DataFile>> {
    let target = |what: &str| format!("writing {table_name} (position deletes: {what})");
    let metadata = table.metadata();
    let spec = metadata.default_partition_spec();
    if let Some(file_spec) = &task.partition_spec {
        if file_spec.spec_id() != spec.spec_id() {
            return Err(IcebergError::Table {
                table: table_name.to_string(),
                message: format!(
                    "merge-on-read deletes handle files of the current partition spec only, but {} has partition spec {}; compact the table first",
                    task.data_file_path,
                    file_spec.spec_id()
                ),
            });
        }
    }
    let schema = Arc::new(position_delete_schema()?);
    let arrow: SchemaRef = Arc::new(schema_to_arrow_schema(&schema).context(|| target("schema"))?);
    let props = metadata
        .table_properties()
        .context(|| target("table properties"))?;
    let parquet = ParquetWriterBuilder::from_table_properties(&props, schema);
    let location = DefaultLocationGenerator::new(metadata).context(|| target("location"))?;
    let names =
        DefaultFileNameGenerator::new(format!("{prefix}-pos-del"), None, DataFileFormat::Parquet);
    let mut writer = RollingFileWriterBuilder::new(
        parquet,
        props.write_target_file_size_bytes,
        table.file_io().clone(),
        location,
        names,
    )
    .build();
    let partition = task
        .partition
        .clone()
        .unwrap_or_else(iceberg::spec::Struct::empty);
    let key = (!spec.is_unpartitioned()).then(|| {
        PartitionKey::new(
            spec.as_ref().clone(),
            metadata.current_schema().clone(),
            partition.clone(),
        )
    });
    let path = task.data_file_path.as_str();
    for chunk in positions.chunks(64 * 1024) {
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    path,
                    chunk.len(),
                ))) as ArrayRef,
                Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
            ],
        )?;
        writer
            .write(&key, &batch)
            .await
            .context(|| target("writing"))?;
    }
    writer
        .close()
        .await
        .context(|| target("closing"))?
        .into_iter()
        .map(|mut f| {
            f.content(DataContentType::PositionDeletes)
                .partition(partition.clone())
                .partition_spec_id(spec.spec_id())
                .referenced_data_file(Some(path.to_string()));
            f.build().map_err(|e| IcebergError::Table {
                table: table_name.to_string(),
                message: format!("a position delete file's metadata: {e}"),
            })
        })
        .collect()
}
