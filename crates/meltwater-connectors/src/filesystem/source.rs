//! [`FileSystemSource`]: a filesystem table as a streaming source, one split per file.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use object_store::path::Path as StorePath;

use super::{
    FileFormat, FileLocation, FileScanOptions, FileSystemTable, PartitionReader, SourceFile,
};
use crate::format::RecordDecoder;
use crate::stream::{Split, SplitPosition, SplitReader, StreamSource};
use crate::{ConnectorError, Result};

/// A filesystem table as a streaming source: one split per file.
///
/// - **Splits.** A split is one file; its id is the file's absolute path as
///   [`FileSystemTable::list_files`] lists it (`/data/bids/part-0.csv`). The splits are
///   the files listed when [`StreamSource::discover_splits`] is called, in path order.
///   With `'source.monitor-interval'` the runtime calls it again at that interval and
///   files that appeared meanwhile are new splits; then a glob that matches nothing is an
///   empty set of splits rather than an error (files may come later). Without it the
///   split set is fixed and the source ends once its files are read.
/// - **Positions.** The position of a split is the number of the file's *input records*
///   it has gone past: CSV records (not counting a `csv.header` line or blank lines),
///   JSON lines (not counting blank lines), Parquet rows. A malformed record dropped
///   under `'error.policy' = 'skip'` counts, so resuming at a position neither re-reads
///   an emitted row nor re-counts a skipped record before it. Text files are framed
///   from their start on resume (the records before the position are framed but not
///   parsed); Parquet files start at the row (`with_offset`).
/// - **Batches** hold at most `batch_size` rows of one file and are never empty (except
///   for a projection of no columns, whose batches carry only a row count). A split
///   ending in malformed records that were skipped returns no batch for them, so its
///   last position stops before them: after a restore they are skipped (and counted)
///   again.
/// - A file is read up to its size when the split is opened, so files should appear
///   complete (written under a hidden name, `.x` or `_x`, and renamed).
/// - Decoding, error messages (file, line, column) and metrics (rows, bytes, files,
///   skipped records) are those of the batch scan.
#[derive(Debug)]
pub struct FileSystemSource {
    table: FileSystemTable,
}

impl FileSystemSource {
    pub(super) fn new(table: FileSystemTable) -> Self {
        Self { table }
    }

    fn projected_schema(&self, projection: Option<&[usize]>) -> Result<SchemaRef> {
        Ok(match projection {
            Some(p) => Arc::new(self.table.schema.project(p)?),
            None => self.table.schema.clone(),
        })
    }

    /// Whether `path` is one of the files the table's `'path'` covers.
    fn covers(&self, path: &std::path::Path) -> bool {
        match &self.table.location {
            FileLocation::Path(p) => path == p || path.starts_with(p),
            FileLocation::Glob { pattern, .. } => glob::Pattern::new(pattern).is_ok_and(|g| {
                g.matches_path_with(
                    path,
                    glob::MatchOptions {
                        case_sensitive: true,
                        require_literal_separator: true,
                        require_literal_leading_dot: true,
                    },
                )
            }),
        }
    }
}

#[async_trait]
impl StreamSource for FileSystemSource {
    /// The table schema projected; indices out of range are left out (opening a split
    /// with such a projection is an error).
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        match projection {
            None => self.table.schema.clone(),
            Some(p) => {
                let fields = self.table.schema.fields();
                Arc::new(Schema::new_with_metadata(
                    p.iter()
                        .filter_map(|&i| fields.get(i).cloned())
                        .collect::<Vec<_>>(),
                    self.table.schema.metadata().clone(),
                ))
            }
        }
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        let files = match self.table.list_files().await {
            Ok(files) => files,
            Err(ConnectorError::FileNotFound { .. })
                if self.table.monitor_interval_ms.is_some()
                    && matches!(self.table.location, FileLocation::Glob { .. }) =>
            {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        Ok(files
            .into_iter()
            .map(|f| Split {
                id: f.path.display().to_string(),
            })
            .collect())
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        self.table.monitor_interval_ms
    }

    async fn open(
        &self,
        split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Box<dyn SplitReader>> {
        let table = &self.table;
        let path = PathBuf::from(&split.id);
        let io = |message: String| ConnectorError::Io {
            table: table.name.clone(),
            path: split.id.clone(),
            message,
        };
        if !path.is_absolute() || !self.covers(&path) {
            return Err(io(format!(
                "not a split of this table (its path is '{}')",
                table.path
            )));
        }
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| io(e.to_string()))?;
        let location = StorePath::from_absolute_path(&path).map_err(|e| io(e.to_string()))?;
        let file = SourceFile {
            path,
            location,
            size: meta.len(),
        };

        let batch_size = batch_size.max(1);
        let projected_schema = self.projected_schema(projection)?;
        let config = FileScanOptions {
            table: table.name.clone(),
            schema: table.schema.clone(),
            projection: projection.map(<[usize]>::to_vec),
            format: table.format.clone(),
            policy: table.policy,
            limit: None,
        };
        let decoder = match &table.format {
            FileFormat::Text(text) => Some(RecordDecoder::new(
                &table.name,
                &table.schema,
                projection,
                text.clone(),
                table.policy,
                batch_size,
            )?),
            FileFormat::Parquet => None,
        };
        let reader = PartitionReader {
            config,
            projected_schema,
            files: [file].into(),
            store: table.store.clone(),
            metrics: table.metrics.clone(),
            batch_size,
            remaining: None,
            decoder,
            skipped_reported: 0,
            skip_records: position,
            current: None,
            done: false,
        };
        Ok(Box::new(FileSplitReader {
            reader,
            start: position,
            rows: 0,
        }))
    }
}

/// Reads one file from a position.
struct FileSplitReader {
    reader: PartitionReader,
    /// The position the split was opened at.
    start: u64,
    /// Rows emitted since it was opened.
    rows: u64,
}

#[async_trait]
impl SplitReader for FileSplitReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>> {
        if self.reader.done {
            return Ok(None);
        }
        let batch = match self.reader.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                self.reader.done = true;
                return Ok(None);
            }
            Err(e) => {
                self.reader.done = true;
                return Err(e);
            }
        };
        self.rows += batch.num_rows() as u64;
        // A text decoder has just been flushed, so every record it was handed (counting
        // the ignored ones before the start position) is accounted for; a parquet row is
        // a record.
        let position = match &self.reader.decoder {
            Some(decoder) => decoder.records_seen(),
            None => self.start + self.rows,
        };
        Ok(Some((batch, position)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    use super::*;
    use crate::{ConnectorTable, SourceMetrics, TableDef};

    fn table(options: &[(&str, &str)]) -> FileSystemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut map = BTreeMap::new();
        map.insert("connector".to_string(), "filesystem".to_string());
        for (k, v) in options {
            map.insert(k.to_string(), v.to_string());
        }
        FileSystemTable::try_new(TableDef {
            name: "t".into(),
            schema,
            options: map,
            primary_key: vec![],
            metadata: Default::default(),
        })
        .unwrap()
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Ten records, ids 0..10, with a header line and blank lines (not records).
    fn csv_content() -> String {
        let mut s = String::from("id,name\n");
        for i in 0..10 {
            s.push_str(&format!("{i},\"n\n{i}\"\n"));
            if i == 4 {
                s.push_str("\n\n");
            }
        }
        s
    }

    fn json_content() -> String {
        let mut s = String::new();
        for i in 0..10 {
            s.push_str(&format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"));
            if i == 4 {
                s.push('\n');
            }
        }
        s
    }

    fn write_parquet(path: &Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(4))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..10).map(|i| format!("n{i}")),
                )),
                Arc::new(Int64Array::from_iter_values(0..10)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// Every batch of a split from `position`: the ids of the first column and the
    /// positions after each batch.
    async fn read(
        source: &dyn StreamSource,
        split: &Split,
        position: u64,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<(Vec<Vec<i64>>, Vec<u64>)> {
        let mut reader = source.open(split, position, projection, batch_size).await?;
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        while let Some((batch, pos)) = reader.next_batch().await? {
            assert!(batch.num_rows() <= batch_size && batch.num_rows() > 0);
            ids.push(
                batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
            );
            positions.push(pos);
        }
        // Exhausted readers stay exhausted.
        assert!(reader.next_batch().await?.is_none());
        Ok((ids, positions))
    }

    #[tokio::test]
    async fn every_format_resumes_at_a_record_position() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(dir.path(), "a.csv", &csv_content());
        let json = write(dir.path(), "a.json", &json_content());
        let parquet = dir.path().join("a.parquet");
        write_parquet(&parquet);
        for (path, options) in [
            (&csv, vec![("format", "csv"), ("csv.header", "true")]),
            (&json, vec![("format", "json")]),
            (&parquet, vec![("format", "parquet")]),
        ] {
            let p = path.to_str().unwrap();
            let mut options = options.clone();
            options.push(("path", p));
            let t = table(&options);
            let metrics = t.metrics();
            let source = t.stream_source().unwrap();
            assert_eq!(source.discovery_interval_ms(), None);
            let splits = source.discover_splits().await.unwrap();
            assert_eq!(splits, [Split { id: p.to_string() }]);
            let (ids, positions) = read(source.as_ref(), &splits[0], 0, None, 3).await.unwrap();
            let ids: Vec<i64> = ids.concat();
            assert_eq!(ids, (0..10).collect::<Vec<_>>(), "{p}");
            assert_eq!(positions.last(), Some(&10), "{p}");
            let mut last = 0;
            for &pos in &positions {
                assert!(pos > last && pos <= 10, "{p}: {positions:?}");
                last = pos;
            }
            for start in [1, 3, 4, 5, 9, 10, 12] {
                let (ids, positions) = read(source.as_ref(), &splits[0], start, None, 3)
                    .await
                    .unwrap();
                let ids: Vec<i64> = ids.concat();
                assert_eq!(
                    ids,
                    (start.min(10) as i64..10).collect::<Vec<_>>(),
                    "{p} at {start}"
                );
                if start < 10 {
                    assert_eq!(positions.last(), Some(&10), "{p} at {start}");
                    // Text batches are full; parquet ones also end at row groups (of 4).
                    let first = positions[0];
                    assert!(
                        first > start && first <= (start + 3).min(10),
                        "{p} at {start}"
                    );
                    if !p.ends_with("parquet") {
                        assert_eq!(first, (start + 3).min(10), "{p} at {start}");
                    }
                }
            }
            // A projection, and one of no column (row counts only).
            let (names, _) = read(source.as_ref(), &splits[0], 8, Some(&[0]), 100)
                .await
                .unwrap();
            assert_eq!(names, [vec![8, 9]]);
            let mut reader = source.open(&splits[0], 6, Some(&[]), 3).await.unwrap();
            let mut counts = Vec::new();
            while let Some((batch, pos)) = reader.next_batch().await.unwrap() {
                assert_eq!(batch.num_columns(), 0);
                counts.push((batch.num_rows(), pos));
            }
            assert_eq!(counts, [(3, 9), (1, 10)], "{p}");

            assert_eq!(SourceMetrics::get(&metrics.files), 10, "{p}");
            let rows = 10
                + [1, 3, 4, 5, 9, 10, 12]
                    .iter()
                    .map(|s| 10 - s.min(&10))
                    .sum::<u64>()
                + 2
                + 4;
            assert_eq!(SourceMetrics::get(&metrics.rows), rows, "{p}");
            assert!(SourceMetrics::get(&metrics.bytes) >= std::fs::metadata(path).unwrap().len());
            assert_eq!(SourceMetrics::get(&metrics.records_skipped), 0);
        }
    }

    #[tokio::test]
    async fn malformed_records_are_skipped_and_counted_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.csv", "1,a\nx,b\n3,c\n4\n5,e\n");
        let p = path.to_str().unwrap();

        let t = table(&[("path", p), ("format", "csv"), ("error.policy", "skip")]);
        let metrics = t.metrics();
        let source = t.stream_source().unwrap();
        let split = Split { id: p.to_string() };
        let (ids, positions) = read(source.as_ref(), &split, 0, None, 2).await.unwrap();
        // Skipped records count in positions: [1, x, 3] then [4, 5].
        assert_eq!(ids, [vec![1, 3], vec![5]]);
        assert_eq!(positions, [3, 5]);
        assert_eq!(SourceMetrics::get(&metrics.records_skipped), 2);
        // Resuming past the first malformed record does not count it again.
        let (ids, positions) = read(source.as_ref(), &split, 2, None, 2).await.unwrap();
        assert_eq!((ids, positions), (vec![vec![3, 5]], vec![5]));
        assert_eq!(SourceMetrics::get(&metrics.records_skipped), 3);
        assert_eq!(SourceMetrics::get(&metrics.rows), 5);

        let t = table(&[("path", p), ("format", "csv")]);
        let source = t.stream_source().unwrap();
        let err = read(source.as_ref(), &split, 0, None, 2).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("table 't': malformed record at {p} line 2, column 'id': cannot parse 'x' as BIGINT")
        );
        let err = read(source.as_ref(), &split, 2, None, 2).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("table 't': malformed record at {p} line 4: expected 2 fields, found 1")
        );
        // Positions past the bad records: they are not parsed again.
        let (ids, _) = read(source.as_ref(), &split, 4, None, 2).await.unwrap();
        assert_eq!(ids, [vec![5]]);

        // JSON: the line of the malformed record and its column.
        let path = write(dir.path(), "bad.json", "{\"id\": 1}\n\n{\"id\": \"one\"}\n");
        let p = path.to_str().unwrap();
        let source = table(&[("path", p), ("format", "json")])
            .stream_source()
            .unwrap();
        let err = read(source.as_ref(), &Split { id: p.to_string() }, 0, None, 10)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "table 't': malformed record at {p} line 3, column 'id': "
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_monitored_directory_discovers_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let a = write(dir.path(), "a.json", "{\"id\": 1}\n");
        let t = table(&[
            ("path", root),
            ("format", "json"),
            ("source.monitor-interval", "100 ms"),
        ]);
        let source = t.stream_source().unwrap();
        assert_eq!(source.discovery_interval_ms(), Some(100));
        let ids = |splits: Vec<Split>| splits.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(
            ids(source.discover_splits().await.unwrap()),
            [a.display().to_string()]
        );
        write(dir.path(), ".b.json.inprogress", "{\"id\": 2}\n");
        std::fs::rename(
            dir.path().join(".b.json.inprogress"),
            dir.path().join("b.json"),
        )
        .unwrap();
        let b = dir.path().join("b.json");
        let splits = source.discover_splits().await.unwrap();
        assert_eq!(
            ids(splits.clone()),
            [a.display().to_string(), b.display().to_string()]
        );
        let (rows, positions) = read(source.as_ref(), &splits[1], 0, None, 10)
            .await
            .unwrap();
        assert_eq!((rows, positions), (vec![vec![2]], vec![1]));

        // A monitored glob may match nothing yet; an unmonitored one may not.
        let pattern = format!("{root}/*.csv");
        let monitored = table(&[
            ("path", &pattern),
            ("format", "csv"),
            ("source.monitor-interval", "1 s"),
        ])
        .stream_source()
        .unwrap();
        assert!(monitored.discover_splits().await.unwrap().is_empty());
        write(dir.path(), "c.csv", "3,c\n");
        assert_eq!(monitored.discover_splits().await.unwrap().len(), 1);
        let fixed = table(&[
            ("path", &format!("{root}/*.parquet")),
            ("format", "parquet"),
        ])
        .stream_source()
        .unwrap();
        assert!(fixed.discover_splits().await.is_err());

        // A file outside the table's path is not one of its splits.
        let err = monitored
            .open(
                &Split {
                    id: a.display().to_string(),
                },
                0,
                None,
                10,
            )
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not a split of this table"),
            "{err}"
        );
        assert_eq!(monitored.schema(Some(&[1])).fields()[0].name(), "name");
    }
}
