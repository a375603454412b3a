//! Upserts into tables with a primary key (docs/design/iceberg-commits.md §4.2).
//!
//! A table's primary key is its schema's identifier fields (what Flink, Spark and
//! pyiceberg read), declared with `PRIMARY KEY (...) NOT ENFORCED`. An [`UpsertWriter`]
//! keeps the last change of every key it saw since its last flush; a flush writes an
//! equality-delete row for every such key and a data row for every key whose last
//! change was not a deletion, and the two sets of files are committed as one row delta.
//! The deletes get the snapshot's sequence number, so they remove the rows of older
//! snapshots and never the rows committed with them. Compacting by key first means a
//! row inserted and deleted between two flushes is never written, so position deletes
//! are not needed.
//!
//! Equality deletes are written in the partition of the rows they delete, so every
//! partition source column must be part of the key (Flink's rule): the key then
//! determines the partition, and an upsert can never leave the old row behind in
//! another partition.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use iceberg::arrow::{arrow_schema_to_schema, schema_to_arrow_schema};
use iceberg::spec::{DataFileFormat, TableMetadata};
use iceberg::table::Table;
use iceberg::writer::base_writer::equality_delete_writer::{
    EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig,
};
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;

use crate::error::{IcebergContext, IcebergError, Result};
use crate::snapshot::AddedFiles;
use crate::write::{with_schema, PartitionedWriter, TaskFileWriter};

/// The table property older Meltwater versions (and tables whose schema has no
/// identifier fields) name the primary key in, comma-separated.
pub const PRIMARY_KEY_PROPERTY: &str = "meltwater.primary-key";

/// The primary key columns of a table: its current schema's identifier fields, else
/// the [`PRIMARY_KEY_PROPERTY`] property; empty when it has none.
pub fn primary_key(metadata: &TableMetadata) -> Vec<String> {
    let schema = metadata.current_schema();
    let ids: Vec<i32> = schema.identifier_field_ids().collect();
    if !ids.is_empty() {
        return ids
            .iter()
            .filter_map(|id| schema.name_by_field_id(*id).map(str::to_string))
            .collect();
    }
    metadata
        .properties()
        .get(PRIMARY_KEY_PROPERTY)
        .map(|v| {
            v.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `INSERT` into the table upserts (`'write.upsert' = 'true'`, or Flink's
/// `'write.upsert.enabled'`).
pub fn upsert_enabled(metadata: &TableMetadata) -> bool {
    let p = metadata.properties();
    ["write.upsert", "write.upsert.enabled"]
        .iter()
        .any(|k| p.get(*k).is_some_and(|v| v.eq_ignore_ascii_case("true")))
}

/// Checks that `table` (named `name`) can take upserts and returns its key columns.
pub fn upsert_key(name: &str, metadata: &TableMetadata) -> Result<Vec<String>> {
    let err = |message: String| IcebergError::Table {
        table: name.to_string(),
        message,
    };
    let key = primary_key(metadata);
    if key.is_empty() {
        return Err(err(
            "upserts need a primary key; declare one with PRIMARY KEY (...) NOT ENFORCED".into(),
        ));
    }
    if metadata.format_version() != iceberg::spec::FormatVersion::V2 {
        return Err(err(format!(
            "upserts need an Iceberg v2 table; this one is {}",
            metadata.format_version()
        )));
    }
    let schema = metadata.current_schema();
    for column in &key {
        let field = schema.field_by_name(column).ok_or_else(|| {
            err(format!(
                "the primary key names '{column}', which the table does not have"
            ))
        })?;
        let ok = match field.field_type.as_primitive_type() {
            Some(p) => !matches!(
                p,
                iceberg::spec::PrimitiveType::Float | iceberg::spec::PrimitiveType::Double
            ),
            None => false,
        };
        if !ok {
            return Err(err(format!(
                "primary key column '{column}' is {}; keys must be primitive and not floating point",
                field.field_type
            )));
        }
    }
    for field in metadata.default_partition_spec().fields() {
        let source = schema
            .name_by_field_id(field.source_id)
            .unwrap_or("?")
            .to_string();
        if !key.contains(&source) {
            return Err(err(format!(
                "the table is partitioned by '{source}', which is not part of its primary key ({}); \
                 upserts need every partition column in the key, or an update could leave the old row in another partition",
                key.join(", ")
            )));
        }
    }
    Ok(key)
}

/// Where a key's last change is: a row of one of the buffered batches, and whether it
/// is live (upserted) or deleted.
#[derive(Debug, Clone, Copy)]
struct Slot {
    batch: u32,
    row: u32,
    live: bool,
}

/// Buffers upserts and deletes by primary key and writes them as data and
/// equality-delete files on [`Self::flush`].
pub struct UpsertWriter {
    table_name: String,
    table: Table,
    prefix: String,
    flushes: u64,
    file_schema: SchemaRef,
    key_indices: Vec<usize>,
    equality_ids: Vec<i32>,
    converter: RowConverter,
    batches: Vec<RecordBatch>,
    retained_rows: usize,
    latest: HashMap<OwnedRow, Slot>,
}

impl std::fmt::Debug for UpsertWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpsertWriter")
            .field("table", &self.table_name)
            .field("keys", &self.latest.len())
            .finish_non_exhaustive()
    }
}

/// Keys buffered without a flush are compacted (their superseded rows dropped) once
/// the buffered rows exceed this and twice the keys.
const COMPACT_ROWS: usize = 64 * 1024;

impl UpsertWriter {
    /// A writer for `table` (named `table_name`); `prefix` makes its file names unique.
    pub fn try_new(table_name: &str, table: &Table, prefix: String) -> Result<Self> {
        let metadata = table.metadata();
        let key = upsert_key(table_name, metadata)?;
        let schema = metadata.current_schema();
        let file_schema: SchemaRef = Arc::new(
            schema_to_arrow_schema(schema).context(|| format!("writing {table_name} (schema)"))?,
        );
        let mut key_indices = Vec::new();
        let mut equality_ids = Vec::new();
        let mut sort_fields = Vec::new();
        for column in &key {
            let i = file_schema
                .index_of(column)
                .map_err(|e| IcebergError::Table {
                    table: table_name.to_string(),
                    message: e.to_string(),
                })?;
            key_indices.push(i);
            equality_ids.push(
                schema
                    .field_by_name(column)
                    .expect("checked by upsert_key")
                    .id,
            );
            sort_fields.push(SortField::new(file_schema.field(i).data_type().clone()));
        }
        let converter = RowConverter::new(sort_fields)?;
        Ok(Self {
            table_name: table_name.to_string(),
            table: table.clone(),
            prefix,
            flushes: 0,
            file_schema,
            key_indices,
            equality_ids,
            converter,
            batches: Vec::new(),
            retained_rows: 0,
            latest: HashMap::new(),
        })
    }

    /// Keys with a change not yet flushed.
    pub fn buffered_keys(&self) -> usize {
        self.latest.len()
    }

    /// Buffers a batch with the table's columns. Each row upserts its key, or deletes
    /// it where `retract` is true; a later row of the same key replaces an earlier one.
    pub fn write(&mut self, batch: &RecordBatch, retract: Option<&BooleanArray>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = with_schema(batch, &self.file_schema)?;
        let keys: Vec<_> = self
            .key_indices
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        for (k, i) in keys.iter().zip(&self.key_indices) {
            if k.null_count() > 0 {
                let row = (0..k.len()).find(|r| k.is_null(*r)).unwrap_or(0);
                return Err(IcebergError::Table {
                    table: self.table_name.clone(),
                    message: format!(
                        "primary key column '{}' is NULL in row {row} of a batch written to it",
                        self.file_schema.field(*i).name()
                    ),
                });
            }
        }
        let rows = self.converter.convert_columns(&keys)?;
        let b = self.batches.len() as u32;
        for r in 0..batch.num_rows() {
            let live = retract.is_none_or(|m| !(m.is_valid(r) && m.value(r)));
            let slot = Slot {
                batch: b,
                row: r as u32,
                live,
            };
            self.latest.insert(rows.row(r).owned(), slot);
        }
        self.retained_rows += batch.num_rows();
        self.batches.push(batch);
        if self.retained_rows > COMPACT_ROWS && self.retained_rows > 2 * self.latest.len() {
            let all = self.gather()?;
            self.retained_rows = all.num_rows();
            self.batches = vec![all];
        }
        Ok(())
    }

    /// One batch holding the last row of every buffered key, in the order those rows
    /// were written (not the key map's order: input clustered by key, as ids or event
    /// times usually are, stays clustered in the files, so their column bounds keep
    /// pruning scans and deletes); the slots point into it.
    fn gather(&mut self) -> Result<RecordBatch> {
        // Each retained row's position in the result, or `SKIP` for superseded rows.
        const SKIP: u32 = u32::MAX;
        let mut position: Vec<Vec<u32>> = self
            .batches
            .iter()
            .map(|b| vec![SKIP; b.num_rows()])
            .collect();
        for slot in self.latest.values() {
            position[slot.batch as usize][slot.row as usize] = 0;
        }
        let mut indices = Vec::with_capacity(self.latest.len());
        for (b, rows) in position.iter_mut().enumerate() {
            for (r, p) in rows.iter_mut().enumerate() {
                if *p != SKIP {
                    *p = indices.len() as u32;
                    indices.push((b, r));
                }
            }
        }
        for slot in self.latest.values_mut() {
            slot.row = position[slot.batch as usize][slot.row as usize];
            slot.batch = 0;
        }
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        Ok(interleave_record_batch(&refs, &indices)?)
    }

    /// Writes the buffered changes: an equality delete for every key, and the last row
    /// of every key not deleted. Returns the files to commit together.
    pub async fn flush(&mut self) -> Result<AddedFiles> {
        if self.latest.is_empty() {
            self.batches.clear();
            self.retained_rows = 0;
            return Ok(AddedFiles::default());
        }
        let all = self.gather()?;
        let live = BooleanArray::from_iter(
            {
                let mut v = vec![false; all.num_rows()];
                for slot in self.latest.values() {
                    v[slot.row as usize] = slot.live;
                }
                v
            }
            .into_iter()
            .map(Some),
        );
        self.latest.clear();
        self.batches.clear();
        self.retained_rows = 0;
        let n = self.flushes;
        self.flushes += 1;

        let data = filter_record_batch(&all, &live)?;
        let mut files = AddedFiles::default();
        if data.num_rows() > 0 {
            let mut writer = TaskFileWriter::try_new(
                &self.table_name,
                &self.table,
                format!("{}-{n}", self.prefix),
            )?;
            writer.write(&data).await?;
            files.data = writer.close().await?;
        }
        let mut deletes = self.delete_writer(n)?;
        let name = format!("{} (equality deletes)", self.table_name);
        deletes.write(&name, all).await?;
        files.deletes = deletes.close(&name).await?;
        Ok(files)
    }

    fn delete_writer(
        &self,
        n: u64,
    ) -> Result<
        PartitionedWriter<
            EqualityDeleteFileWriterBuilder<
                ParquetWriterBuilder,
                DefaultLocationGenerator,
                DefaultFileNameGenerator,
            >,
        >,
    > {
        let name = &self.table_name;
        let target = |what: &str| format!("writing {name} ({what})");
        let metadata = self.table.metadata();
        let schema = metadata.current_schema().clone();
        let config = EqualityDeleteWriterConfig::new(self.equality_ids.clone(), schema)
            .context(|| target("equality delete columns"))?;
        let delete_schema = arrow_schema_to_schema(config.projected_arrow_schema_ref())
            .context(|| target("equality delete schema"))?;
        let props = metadata
            .table_properties()
            .context(|| target("table properties"))?;
        let parquet = ParquetWriterBuilder::from_table_properties(&props, Arc::new(delete_schema));
        let location =
            DefaultLocationGenerator::new(metadata).context(|| target("data location"))?;
        let names = DefaultFileNameGenerator::new(
            format!("{}-{n}-eq-del", self.prefix),
            None,
            DataFileFormat::Parquet,
        );
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            props.write_target_file_size_bytes,
            self.table.file_io().clone(),
            location,
            names,
        );
        let builder = EqualityDeleteFileWriterBuilder::new(rolling, config);
        PartitionedWriter::try_new(name, &self.table, builder)
    }
}

/// Key types the planner can check before a table exists (floating point and nested
/// types cannot be equality-delete keys).
pub fn is_valid_key_type(t: &DataType) -> bool {
    !(t.is_floating() || t.is_nested())
}
