//! The `filesystem` connector: tables over CSV, JSON-lines or Parquet files, with Flink's
//! option names.
//!
//! ```sql
//! CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
//! WITH ('connector' = 'filesystem', 'path' = 'data/bids/**/*.csv', 'format' = 'csv');
//! ```
//!
//! # Options
//! | option | meaning |
//! |---|---|
//! | `path` (required) | a file, a directory (every file below it, recursively, skipping names starting with `.` or `_`), or a glob (`data/*.csv`, `data/**/*.json`); a relative path is relative to the working directory; `file:///abs` and `file:/abs` URLs are accepted |
//! | `format` (required) | `csv`, `json` (one object per line) or `parquet` |
//! | `error.policy` | `fail` (default) or `skip` malformed records (text formats) |
//! | `source.monitor-interval` | makes the table unbounded (a streaming source watching for new files); a scan reads the files present |
//! | `csv.field-delimiter` | one character, default `,` (`\t` for tab) |
//! | `csv.quote-character` | one character, default `"` |
//! | `csv.header` | `true`: the first line of each file is a header and is skipped (default `false`) |
//! | `csv.null-literal` | a field equal to it is null (default: an empty field is null in non-string columns) |
//! | `json.timestamp-format.standard` | `SQL` or `ISO-8601`; accepted for Flink compatibility, both spellings are always read |
//!
//! # Scan
//! Files are listed when a scan is planned (so files that appear after `CREATE TABLE`
//! are read), in path order, and spread over `target_partitions` partitions by size:
//! each file, largest first, goes to the partition with the fewest bytes so far; within
//! a partition files are read in path order. A partition reads one file at a time.
//!
//! - CSV / JSON: the file is read in ranged requests of [`READ_BLOCK_BYTES`] through the
//!   object store and decoded record by record ([`crate::format`]); memory per partition
//!   is one block, one record and one batch of builders.
//! - Parquet: the parquet crate's async reader with a column projection; each column is
//!   cast to its DDL type, and a DDL column the file lacks is an error naming the file.
//!
//! Every scan adds the rows it produces, the bytes it reads (the file size for Parquet)
//! and the files it opens to the table's [`SourceMetrics`].
//!
//! # Stream mode
//! [`ConnectorTable::stream_source`] reads the table one file (split) at a time from a
//! record position, and with `'source.monitor-interval'` lists the path again at that
//! interval; see [`FileSystemSource`].

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::{can_cast_types, cast_with_options, CastOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness as PlanBoundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::format::{self, CsvOptions, RecordDecoder, RecordFramer, TextFormat};
use crate::options::{parse_duration_ms, OptionReader};
use crate::stream::StreamSource;
use crate::{
    Boundedness, ConnectorError, ConnectorTable, ErrorPolicy, Result, SourceMetrics, TableDef,
};

mod source;
pub use source::FileSystemSource;

/// Size of one ranged read of a CSV or JSON file.
pub const READ_BLOCK_BYTES: u64 = 1 << 20;

const CONNECTOR: &str = "filesystem";
const COMMON_OPTIONS: &[&str] = &[
    "connector",
    "path",
    "format",
    "error.policy",
    "source.monitor-interval",
    crate::WATERMARK_IDLE_TIMEOUT,
    crate::LATE_RECORDS,
    crate::LATE_RECORDS_TABLE,
];
const CSV_OPTIONS: &[&str] = &[
    "csv.field-delimiter",
    "csv.quote-character",
    "csv.header",
    "csv.null-literal",
];
const JSON_OPTIONS: &[&str] = &["json.timestamp-format.standard"];

/// The file format of a filesystem table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    /// CSV or JSON lines, decoded record by record.
    Text(TextFormat),
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// `csv`, `json` or `parquet`.
    pub fn name(&self) -> &'static str {
        match self {
            FileFormat::Text(t) => t.name(),
            FileFormat::Parquet => "parquet",
        }
    }
}

/// Where a table's files are, as resolved from `'path'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLocation {
    /// An absolute path to a file or a directory.
    Path(PathBuf),
    /// A glob over absolute paths; `base` is its deepest directory without wildcards.
    Glob { base: PathBuf, pattern: String },
}

/// One file a scan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Absolute filesystem path (used in messages).
    pub path: PathBuf,
    /// The object-store location of the file.
    pub location: StorePath,
    /// Size in bytes when listed; a scan reads at most this many bytes.
    pub size: u64,
}

/// A table over files; see the [module documentation](self).
#[derive(Debug)]
pub struct FileSystemTable {
    name: String,
    schema: SchemaRef,
    path: String,
    location: FileLocation,
    format: FileFormat,
    policy: ErrorPolicy,
    monitor_interval_ms: Option<u64>,
    store: Arc<LocalFileSystem>,
    metrics: Arc<SourceMetrics>,
}

impl FileSystemTable {
    /// Validates the options of `def` and resolves its path (without touching the disk:
    /// files are listed when a scan is planned).
    pub fn try_new(def: TableDef) -> Result<Self> {
        def.reject_metadata(CONNECTOR)?;
        let options = OptionReader::new(&def, CONNECTOR);
        let format_name = options.required("format")?;
        let format_specific: &[&str] = match format_name {
            "csv" => CSV_OPTIONS,
            "json" => JSON_OPTIONS,
            "parquet" => &[],
            other => {
                return Err(options.invalid("format", other, "expected 'csv', 'json' or 'parquet'"))
            }
        };
        for key in def.options.keys() {
            if !COMMON_OPTIONS.contains(&key.as_str()) && !format_specific.contains(&key.as_str()) {
                let valid = COMMON_OPTIONS
                    .iter()
                    .chain(format_specific)
                    .map(|o| format!("'{o}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(options.unknown(key, valid));
            }
        }

        let path = options.required("path")?.to_string();
        let location =
            resolve_location(&path).map_err(|reason| options.invalid("path", &path, reason))?;

        let format = match format_name {
            "csv" => FileFormat::Text(TextFormat::Csv(csv_options(&options)?)),
            "json" => {
                options.parse_with("json.timestamp-format.standard", |v| {
                    if v.eq_ignore_ascii_case("SQL") || v.eq_ignore_ascii_case("ISO-8601") {
                        Ok(())
                    } else {
                        Err("expected 'SQL' or 'ISO-8601'".to_string())
                    }
                })?;
                FileFormat::Text(TextFormat::Json)
            }
            _ => FileFormat::Parquet,
        };
        if let FileFormat::Text(text) = &format {
            format::check_schema(&def.name, &def.schema, text)?;
        }

        let policy = options
            .parse_with("error.policy", |v| {
                if v.eq_ignore_ascii_case("fail") {
                    Ok(ErrorPolicy::Fail)
                } else if v.eq_ignore_ascii_case("skip") {
                    Ok(ErrorPolicy::Skip)
                } else {
                    Err("expected 'fail' or 'skip'".to_string())
                }
            })?
            .unwrap_or_default();
        let monitor_interval_ms =
            options.parse_with("source.monitor-interval", parse_duration_ms)?;
        crate::watermark_idle_timeout_ms(&def, CONNECTOR)?;

        Ok(Self {
            name: def.name,
            schema: def.schema,
            path,
            location,
            format,
            policy,
            monitor_interval_ms,
            store: Arc::new(LocalFileSystem::new()),
            metrics: Arc::default(),
        })
    }

    /// The table's file format.
    pub fn format(&self) -> &FileFormat {
        &self.format
    }

    /// Where the files are.
    pub fn location(&self) -> &FileLocation {
        &self.location
    }

    /// What to do with malformed records.
    pub fn error_policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// `'source.monitor-interval'` in milliseconds, when set.
    pub fn monitor_interval_ms(&self) -> Option<u64> {
        self.monitor_interval_ms
    }

    /// The files the table holds now, in path order.
    ///
    /// A path that does not exist, or a glob that matches nothing, is an error; an
    /// existing directory without files is an empty table.
    pub async fn list_files(&self) -> Result<Vec<SourceFile>> {
        let not_found = |detail: &str| ConnectorError::FileNotFound {
            table: self.name.clone(),
            path: self.path.clone(),
            detail: detail.to_string(),
        };
        let io = |path: &FsPath, message: String| ConnectorError::Io {
            table: self.name.clone(),
            path: path.display().to_string(),
            message,
        };
        match &self.location {
            FileLocation::Path(path) => {
                let meta = match tokio::fs::metadata(path).await {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let resolved = path.display().to_string();
                        return Err(not_found(&if resolved == self.path {
                            "does not exist".to_string()
                        } else {
                            format!("does not exist (resolved to {resolved})")
                        }));
                    }
                    Err(e) => return Err(io(path, e.to_string())),
                };
                if meta.is_dir() {
                    self.list_dir(path, |_| true).await
                } else {
                    let location =
                        StorePath::from_absolute_path(path).map_err(|e| io(path, e.to_string()))?;
                    Ok(vec![SourceFile {
                        path: path.clone(),
                        location,
                        size: meta.len(),
                    }])
                }
            }
            FileLocation::Glob { base, pattern } => {
                let glob = glob::Pattern::new(pattern)
                    .map_err(|e| io(base, format!("invalid glob: {e}")))?;
                let options = glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: true,
                };
                let is_dir = tokio::fs::metadata(base).await.is_ok_and(|m| m.is_dir());
                let files = if is_dir {
                    self.list_dir(base, |p| glob.matches_path_with(p, options))
                        .await?
                } else {
                    Vec::new()
                };
                if files.is_empty() {
                    return Err(not_found("matches no files"));
                }
                Ok(files)
            }
        }
    }

    /// Files below `dir` (recursively) that pass `keep`, skipping hidden entries.
    async fn list_dir(
        &self,
        dir: &FsPath,
        keep: impl Fn(&FsPath) -> bool,
    ) -> Result<Vec<SourceFile>> {
        let io = |message: String| ConnectorError::Io {
            table: self.name.clone(),
            path: dir.display().to_string(),
            message,
        };
        let prefix = StorePath::from_absolute_path(dir).map_err(|e| io(e.to_string()))?;
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut files = Vec::with_capacity(metas.len());
        for meta in metas {
            let path = self
                .store
                .path_to_filesystem(&meta.location)
                .map_err(|e| io(e.to_string()))?;
            let hidden = path.strip_prefix(dir).is_ok_and(|relative| {
                relative.components().any(|c| {
                    c.as_os_str()
                        .to_str()
                        .is_some_and(|name| name.starts_with('.') || name.starts_with('_'))
                })
            });
            if !hidden && keep(&path) {
                files.push(SourceFile {
                    path,
                    location: meta.location,
                    size: meta.size,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

pub(crate) fn csv_options(options: &OptionReader<'_>) -> Result<CsvOptions> {
    let single_byte = |v: &str| -> std::result::Result<u8, String> {
        match v {
            "\\t" => Ok(b'\t'),
            _ if v.len() == 1 && v.is_ascii() => Ok(v.as_bytes()[0]),
            _ => Err("expected a single ASCII character ('\\t' for tab)".into()),
        }
    };
    let defaults = CsvOptions::default();
    let csv = CsvOptions {
        delimiter: options
            .parse_with("csv.field-delimiter", single_byte)?
            .unwrap_or(defaults.delimiter),
        quote: options
            .parse_with("csv.quote-character", single_byte)?
            .unwrap_or(defaults.quote),
        header: options.parse_bool("csv.header")?.unwrap_or(defaults.header),
        null_literal: options.get("csv.null-literal").map(str::to_string),
    };
    if csv.delimiter == csv.quote {
        let value = options.get("csv.quote-character").unwrap_or("\"");
        return Err(options.invalid(
            "csv.quote-character",
            value,
            "the quote character must differ from the field delimiter",
        ));
    }
    Ok(csv)
}

/// Resolves `'path'` to an absolute path or glob.
fn resolve_location(raw: &str) -> std::result::Result<FileLocation, String> {
    let path = if raw.starts_with("file:") {
        let url = url::Url::parse(raw).map_err(|e| format!("invalid file URL: {e}"))?;
        url.to_file_path()
            .map_err(|()| "a file URL must name an absolute local path".to_string())?
    } else if has_url_scheme(raw) {
        return Err("only local paths and file: URLs are supported".into());
    } else if raw.trim().is_empty() {
        return Err("the path is empty".into());
    } else {
        let path = PathBuf::from(raw);
        if path.is_absolute() {
            path
        } else {
            std::env::current_dir()
                .map_err(|e| format!("cannot resolve a relative path: {e}"))?
                .join(path)
        }
    };
    let path = normalize(&path);
    let is_glob = |s: &str| s.contains(['*', '?', '[']);
    let mut base = PathBuf::new();
    let mut components = path.components();
    for component in components.by_ref() {
        let text = component.as_os_str().to_string_lossy();
        if is_glob(&text) {
            let mut pattern = glob::Pattern::escape(&base.to_string_lossy());
            if !pattern.ends_with('/') {
                pattern.push('/');
            }
            pattern.push_str(&text);
            for rest in components {
                pattern.push('/');
                pattern.push_str(&rest.as_os_str().to_string_lossy());
            }
            glob::Pattern::new(&pattern).map_err(|e| format!("invalid glob: {e}"))?;
            return Ok(FileLocation::Glob { base, pattern });
        }
        base.push(component);
    }
    Ok(FileLocation::Path(path))
}

fn has_url_scheme(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Removes `.` and resolves `..` lexically.
fn normalize(path: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Spreads files over at most `partitions` groups, balancing bytes: largest file first,
/// each to the lightest group; each group is then put back in path order.
pub fn group_files(mut files: Vec<SourceFile>, partitions: usize) -> Vec<Vec<SourceFile>> {
    let groups_len = partitions.max(1).min(files.len()).max(1);
    let mut groups: Vec<(u64, Vec<SourceFile>)> = vec![(0, Vec::new()); groups_len];
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    for file in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += file.size;
        lightest.1.push(file);
    }
    groups
        .into_iter()
        .map(|(_, mut group)| {
            group.sort_by(|a, b| a.path.cmp(&b.path));
            group
        })
        .collect()
}

#[async_trait]
impl TableProvider for FileSystemTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.list_files().await?;
        let file_groups = group_files(files, state.config().target_partitions());
        Ok(Arc::new(FileScanExec::try_new(
            FileScanOptions {
                table: self.name.clone(),
                schema: self.schema.clone(),
                projection: projection.cloned(),
                format: self.format.clone(),
                policy: self.policy,
                limit,
            },
            file_groups,
            self.store.clone(),
            self.metrics.clone(),
        )?))
    }
}

impl ConnectorTable for FileSystemTable {
    fn connector(&self) -> &str {
        CONNECTOR
    }

    fn boundedness(&self) -> Boundedness {
        if self.monitor_interval_ms.is_some() {
            Boundedness::Unbounded {
                reason: "'source.monitor-interval' is set",
            }
        } else {
            Boundedness::Bounded
        }
    }

    fn metrics(&self) -> Arc<SourceMetrics> {
        self.metrics.clone()
    }

    /// One split per file; see [`FileSystemSource`].
    fn stream_source(&self) -> Result<Arc<dyn StreamSource>> {
        Ok(Arc::new(FileSystemSource::new(Self {
            name: self.name.clone(),
            schema: self.schema.clone(),
            path: self.path.clone(),
            location: self.location.clone(),
            format: self.format.clone(),
            policy: self.policy,
            monitor_interval_ms: self.monitor_interval_ms,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        })))
    }
}

/// What a [`FileScanExec`] reads, apart from the files.
#[derive(Debug, Clone)]
pub struct FileScanOptions {
    /// Table name, for messages.
    pub table: String,
    /// The DDL schema.
    pub schema: SchemaRef,
    /// Output columns (indices into `schema`), all when `None`.
    pub projection: Option<Vec<usize>>,
    pub format: FileFormat,
    pub policy: ErrorPolicy,
    /// Most rows each partition produces.
    pub limit: Option<usize>,
}

/// Scans groups of files, one output partition per group; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct FileScanExec {
    config: FileScanOptions,
    projected_schema: SchemaRef,
    file_groups: Vec<Vec<SourceFile>>,
    store: Arc<dyn ObjectStore>,
    metrics: Arc<SourceMetrics>,
    properties: Arc<PlanProperties>,
}

impl FileScanExec {
    /// A scan of `file_groups` (one partition each; no groups is one empty partition).
    pub fn try_new(
        config: FileScanOptions,
        file_groups: Vec<Vec<SourceFile>>,
        store: Arc<dyn ObjectStore>,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Self> {
        let projected_schema = match &config.projection {
            Some(p) => Arc::new(config.schema.project(p)?),
            None => config.schema.clone(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected_schema.clone()),
            Partitioning::UnknownPartitioning(file_groups.len().max(1)),
            EmissionType::Incremental,
            PlanBoundedness::Bounded,
        ));
        Ok(Self {
            config,
            projected_schema,
            file_groups,
            store,
            metrics,
            properties,
        })
    }

    /// The files of each partition.
    pub fn file_groups(&self) -> &[Vec<SourceFile>] {
        &self.file_groups
    }

    /// What the scan reads.
    pub fn options(&self) -> &FileScanOptions {
        &self.config
    }
}

impl DisplayAs for FileScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: usize = self.file_groups.iter().map(Vec::len).sum();
        write!(
            f,
            "FileScanExec: table={}, format={}, files={}, partitions={}",
            self.config.table,
            self.config.format.name(),
            files,
            self.file_groups.len().max(1)
        )?;
        if let Some(limit) = self.config.limit {
            write!(f, ", limit={limit}")?;
        }
        if matches!(t, DisplayFormatType::Verbose) {
            for (i, group) in self.file_groups.iter().enumerate() {
                let paths: Vec<_> = group.iter().map(|f| f.path.display().to_string()).collect();
                write!(f, ", [{i}: {}]", paths.join(" "))?;
            }
        }
        Ok(())
    }
}

impl ExecutionPlan for FileScanExec {
    crate::leaf_exec_methods!("FileScanExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let partitions = self.file_groups.len().max(1);
        if partition >= partitions {
            return Err(DataFusionError::Internal(format!(
                "FileScanExec has {partitions} partitions, asked for partition {partition}"
            )));
        }
        let files = self.file_groups.get(partition).cloned().unwrap_or_default();
        let batch_size = context.session_config().batch_size().max(1);
        let decoder = match &self.config.format {
            FileFormat::Text(text) => Some(RecordDecoder::new(
                &self.config.table,
                &self.config.schema,
                self.config.projection.as_deref(),
                text.clone(),
                self.config.policy,
                batch_size,
            )?),
            FileFormat::Parquet => None,
        };
        let reader = PartitionReader {
            config: self.config.clone(),
            projected_schema: self.projected_schema.clone(),
            files: files.into(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            batch_size,
            remaining: self.config.limit,
            decoder,
            skipped_reported: 0,
            skip_records: 0,
            current: None,
            done: false,
        };
        let stream = futures::stream::unfold(reader, |mut reader| async move {
            if reader.done {
                return None;
            }
            match reader.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), reader)),
                Ok(None) => None,
                Err(e) => {
                    reader.done = true;
                    Some((Err(DataFusionError::from(e)), reader))
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.projected_schema.clone(),
            stream,
        )))
    }
}

/// A file being read.
enum OpenFile {
    Text {
        file: SourceFile,
        /// The path as shown in messages.
        display: String,
        framer: RecordFramer,
        /// Next byte offset to fetch.
        offset: u64,
        block: Buffer,
        block_pos: usize,
    },
    Parquet {
        display: String,
        /// Boxed: the reader state is large.
        stream: Box<ParquetRecordBatchStream<ParquetObjectReader>>,
    },
    /// A parquet file of which no column is projected: only its row count matters.
    RowCount { rows_left: usize },
}

/// The state of one output partition.
struct PartitionReader {
    config: FileScanOptions,
    projected_schema: SchemaRef,
    files: VecDeque<SourceFile>,
    store: Arc<dyn ObjectStore>,
    metrics: Arc<SourceMetrics>,
    batch_size: usize,
    remaining: Option<usize>,
    /// The text decoder, kept across the partition's files so batches can span them.
    decoder: Option<RecordDecoder>,
    skipped_reported: u64,
    /// Records of the next file opened to leave out (a stream split resuming at a
    /// position); reset to 0 once that file is open.
    skip_records: u64,
    current: Option<OpenFile>,
    done: bool,
}

impl PartitionReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            if self.decoder.as_ref().is_some_and(RecordDecoder::is_full) {
                return self.flush_decoder();
            }
            match &mut self.current {
                None => match self.files.pop_front() {
                    Some(file) => {
                        SourceMetrics::add(&self.metrics.files, 1);
                        let context = OpenContext {
                            config: &self.config,
                            projected_schema: &self.projected_schema,
                            store: &self.store,
                            metrics: &self.metrics,
                            batch_size: self.batch_size,
                            remaining: self.remaining,
                        };
                        let skip = std::mem::take(&mut self.skip_records);
                        if let Some(decoder) = self.decoder.as_mut() {
                            decoder.ignore_records(skip);
                        }
                        self.current = Some(context.open(file, skip).await?);
                    }
                    None => return self.flush_decoder(),
                },
                Some(OpenFile::Text {
                    file,
                    display,
                    framer,
                    offset,
                    block,
                    block_pos,
                }) => {
                    let Some(decoder) = self.decoder.as_mut() else {
                        return Err(ConnectorError::Io {
                            table: self.config.table.clone(),
                            path: display.clone(),
                            message: "internal error: text file without a decoder".into(),
                        });
                    };
                    if *block_pos < block.len() {
                        *block_pos +=
                            framer.decode(&block.as_slice()[*block_pos..], decoder, display)?;
                    } else if *offset < file.size {
                        let end = (*offset + READ_BLOCK_BYTES).min(file.size);
                        let bytes = self
                            .store
                            .get_range(&file.location, *offset..end)
                            .await
                            .map_err(|e| ConnectorError::Io {
                                table: self.config.table.clone(),
                                path: display.clone(),
                                message: e.to_string(),
                            })?;
                        SourceMetrics::add(&self.metrics.bytes, bytes.len() as u64);
                        // A file truncated since listing ends where its data ends.
                        *offset = if bytes.is_empty() {
                            file.size
                        } else {
                            *offset + bytes.len() as u64
                        };
                        *block = Buffer::from(bytes);
                        *block_pos = 0;
                    } else {
                        framer.finish(decoder, display)?;
                        self.current = None;
                    }
                    self.report_skipped();
                }
                Some(OpenFile::Parquet { display, stream }) => match stream.next().await {
                    Some(Ok(batch)) => {
                        let display = display.clone();
                        let batch = self.conform(batch, &display)?;
                        return Ok(self.emit(batch));
                    }
                    Some(Err(e)) => {
                        return Err(ConnectorError::Io {
                            table: self.config.table.clone(),
                            path: display.clone(),
                            message: e.to_string(),
                        })
                    }
                    None => self.current = None,
                },
                Some(OpenFile::RowCount { rows_left }) => {
                    if *rows_left == 0 {
                        self.current = None;
                    } else {
                        let rows = (*rows_left).min(self.batch_size);
                        *rows_left -= rows;
                        let batch = RecordBatch::try_new_with_options(
                            self.projected_schema.clone(),
                            vec![],
                            &RecordBatchOptions::new().with_row_count(Some(rows)),
                        )?;
                        return Ok(self.emit(batch));
                    }
                }
            }
        }
    }

    /// Casts a parquet batch's columns to the DDL types, in output order.
    fn conform(&self, batch: RecordBatch, display: &str) -> Result<RecordBatch> {
        let mismatch = |message: String| ConnectorError::SchemaMismatch {
            table: self.config.table.clone(),
            path: display.to_string(),
            message,
        };
        let cast_options = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projected_schema.fields().len());
        for field in self.projected_schema.fields() {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| mismatch(format!("column '{}' was not read", field.name())))?;
            let column = if column.data_type() == field.data_type() {
                column.clone()
            } else {
                cast_with_options(column, field.data_type(), &cast_options)
                    .map_err(|e| mismatch(format!("column '{}': {e}", field.name())))?
            };
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(mismatch(format!(
                    "column '{}' is NOT NULL but the file holds nulls",
                    field.name()
                )));
            }
            columns.push(column);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            self.projected_schema.clone(),
            columns,
            &options,
        )?)
    }

    fn flush_decoder(&mut self) -> Result<Option<RecordBatch>> {
        let batch = match self.decoder.as_mut() {
            Some(decoder) => decoder.flush()?,
            None => None,
        };
        Ok(batch.and_then(|b| self.emit(b)))
    }

    /// Applies the limit and counts the rows.
    fn emit(&mut self, batch: RecordBatch) -> Option<RecordBatch> {
        let batch = match self.remaining.as_mut() {
            Some(remaining) => {
                let rows = batch.num_rows().min(*remaining);
                *remaining -= rows;
                batch.slice(0, rows)
            }
            None => batch,
        };
        SourceMetrics::add(&self.metrics.rows, batch.num_rows() as u64);
        (batch.num_rows() > 0 || self.projected_schema.fields().is_empty()).then_some(batch)
    }

    fn report_skipped(&mut self) {
        if let Some(decoder) = &self.decoder {
            let skipped = decoder.records_skipped();
            SourceMetrics::add(
                &self.metrics.records_skipped,
                skipped - self.skipped_reported,
            );
            self.skipped_reported = skipped;
        }
    }
}

/// What opening a file needs; borrowed from a [`PartitionReader`] field by field, as the
/// reader itself (holding a parquet stream) is not `Sync`.
struct OpenContext<'a> {
    config: &'a FileScanOptions,
    projected_schema: &'a SchemaRef,
    store: &'a Arc<dyn ObjectStore>,
    metrics: &'a SourceMetrics,
    batch_size: usize,
    remaining: Option<usize>,
}

impl OpenContext<'_> {
    /// Opens `file`; a parquet file starts at row `skip` (text files are framed from
    /// their start, their decoder ignores the records to skip).
    async fn open(&self, file: SourceFile, skip: u64) -> Result<OpenFile> {
        let display = file.path.display().to_string();
        match &self.config.format {
            FileFormat::Text(format) => Ok(OpenFile::Text {
                framer: RecordFramer::new(format),
                display,
                file,
                offset: 0,
                block: Buffer::from_vec(Vec::<u8>::new()),
                block_pos: 0,
            }),
            FileFormat::Parquet => {
                let skip = usize::try_from(skip).unwrap_or(usize::MAX);
                self.open_parquet(file, display, skip).await
            }
        }
    }

    async fn open_parquet(
        &self,
        file: SourceFile,
        display: String,
        skip: usize,
    ) -> Result<OpenFile> {
        let mismatch = |message: String| ConnectorError::SchemaMismatch {
            table: self.config.table.clone(),
            path: display.clone(),
            message,
        };
        let io = |message: String| ConnectorError::Io {
            table: self.config.table.clone(),
            path: display.clone(),
            message,
        };
        SourceMetrics::add(&self.metrics.bytes, file.size);
        let reader = ParquetObjectReader::new(self.store.clone(), file.location.clone())
            .with_file_size(file.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| io(e.to_string()))?;
        if self.projected_schema.fields().is_empty() {
            let rows = builder.metadata().file_metadata().num_rows();
            return Ok(OpenFile::RowCount {
                rows_left: usize::try_from(rows).unwrap_or(0).saturating_sub(skip),
            });
        }
        let file_schema = builder.schema().clone();
        let mut roots = Vec::with_capacity(self.projected_schema.fields().len());
        for field in self.projected_schema.fields() {
            let Some((index, file_field)) = file_schema.column_with_name(field.name()) else {
                let names: Vec<&str> = file_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                return Err(mismatch(format!(
                    "it has no column '{}' (its columns: {})",
                    field.name(),
                    names.join(", ")
                )));
            };
            if !can_cast_types(file_field.data_type(), field.data_type()) {
                return Err(mismatch(format!(
                    "column '{}' has type {} in the file, which cannot be cast to {}",
                    field.name(),
                    file_field.data_type(),
                    field.data_type()
                )));
            }
            roots.push(index);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut builder = builder
            .with_projection(mask)
            .with_batch_size(self.batch_size);
        if skip > 0 {
            builder = builder.with_offset(skip);
        }
        if let Some(limit) = self.remaining {
            builder = builder.with_limit(limit);
        }
        let stream = builder.build().map_err(|e| io(e.to_string()))?;
        Ok(OpenFile::Parquet {
            display,
            stream: Box::new(stream),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{
        AsArray, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn def(schema: SchemaRef, options: &[(&str, &str)]) -> TableDef {
        let mut map = BTreeMap::new();
        map.insert("connector".to_string(), "filesystem".to_string());
        for (k, v) in options {
            map.insert(k.to_string(), v.to_string());
        }
        TableDef {
            name: "t".into(),
            schema,
            options: map,
            primary_key: vec![],
            metadata: Default::default(),
        }
    }

    fn table(options: &[(&str, &str)]) -> Result<FileSystemTable> {
        FileSystemTable::try_new(def(schema(), options))
    }

    fn write(dir: &FsPath, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    fn ctx(target_partitions: usize) -> SessionContext {
        SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(target_partitions)
                .with_batch_size(2),
        )
    }

    async fn query_ids(table: FileSystemTable, partitions: usize, sql: &str) -> DfResult<Vec<i64>> {
        let ctx = ctx(partitions);
        ctx.register_table("t", Arc::new(table))?;
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect())
    }

    #[test]
    fn watermark_idle_timeout_is_a_duration() {
        let ok = table(&[
            ("path", "/tmp"),
            ("format", "csv"),
            ("scan.watermark.idle-timeout", "5 s"),
        ]);
        assert!(ok.is_ok());
        let err = table(&[
            ("path", "/tmp"),
            ("format", "csv"),
            ("scan.watermark.idle-timeout", "soon"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid value 'soon' for option 'scan.watermark.idle-timeout'"),
            "{err}"
        );
    }

    #[test]
    fn options_are_validated() {
        let err =
            table(&[("path", "/tmp"), ("format", "csv"), ("csv.delimiter", ";")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table 't': unknown option 'csv.delimiter' for connector 'filesystem' (valid options: \
             'connector', 'path', 'format', 'error.policy', 'source.monitor-interval', \
             'scan.watermark.idle-timeout', 'scan.late-records', 'scan.late-records.table', \
             'csv.field-delimiter', 'csv.quote-character', 'csv.header', 'csv.null-literal')"
        );
        let err =
            table(&[("path", "/tmp"), ("format", "json"), ("csv.header", "true")]).unwrap_err();
        assert!(
            matches!(err, ConnectorError::UnknownOption { ref option, .. } if option == "csv.header")
        );
        let err = table(&[("path", "/tmp")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table 't': missing required option 'format'"
        );
        let err = table(&[("format", "csv")]).unwrap_err();
        assert_eq!(err.to_string(), "table 't': missing required option 'path'");
        let err = table(&[("path", "/tmp"), ("format", "avro")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table 't': invalid value 'avro' for option 'format': expected 'csv', 'json' or 'parquet'"
        );
        let err = table(&[
            ("path", "/tmp"),
            ("format", "csv"),
            ("error.policy", "ignore"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("'error.policy'"), "{err}");
        let err = table(&[
            ("path", "/tmp"),
            ("format", "csv"),
            ("csv.field-delimiter", ";;"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("single ASCII character"), "{err}");
        let err = table(&[("path", "s3://bucket/x"), ("format", "csv")]).unwrap_err();
        assert!(err.to_string().contains("only local paths"), "{err}");

        let t = table(&[
            ("path", "/tmp"),
            ("format", "csv"),
            ("csv.field-delimiter", "\\t"),
            ("csv.header", "true"),
            ("error.policy", "skip"),
        ])
        .unwrap();
        assert_eq!(
            t.format(),
            &FileFormat::Text(TextFormat::Csv(CsvOptions {
                delimiter: b'\t',
                header: true,
                ..CsvOptions::default()
            }))
        );
        assert_eq!(t.error_policy(), ErrorPolicy::Skip);
        assert_eq!(t.boundedness(), Boundedness::Bounded);

        let t = table(&[
            ("path", "/tmp"),
            ("format", "json"),
            ("json.timestamp-format.standard", "ISO-8601"),
            ("source.monitor-interval", "10 s"),
        ])
        .unwrap();
        assert_eq!(t.monitor_interval_ms(), Some(10_000));
        assert_eq!(
            t.boundedness(),
            Boundedness::Unbounded {
                reason: "'source.monitor-interval' is set"
            }
        );
    }

    #[test]
    fn paths_resolve_to_absolute_paths_and_globs() {
        assert_eq!(
            resolve_location("file:///data/x.csv"),
            Ok(FileLocation::Path("/data/x.csv".into()))
        );
        assert_eq!(
            resolve_location("file:/data/./y/../x.csv"),
            Ok(FileLocation::Path("/data/x.csv".into()))
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            resolve_location("data/x.csv"),
            Ok(FileLocation::Path(cwd.join("data/x.csv")))
        );
        assert_eq!(
            resolve_location("/data/**/*.json"),
            Ok(FileLocation::Glob {
                base: "/data".into(),
                pattern: "/data/**/*.json".into()
            })
        );
        assert_eq!(
            resolve_location("file:///d[1]/*.csv"),
            Ok(FileLocation::Glob {
                base: "/".into(),
                pattern: "/d[1]/*.csv".into()
            })
        );
    }

    #[test]
    fn files_are_grouped_by_size() {
        let file = |name: &str, size| SourceFile {
            path: name.into(),
            location: StorePath::from(name),
            size,
        };
        let groups = group_files(
            vec![
                file("a", 10),
                file("b", 60),
                file("c", 30),
                file("d", 30),
                file("e", 5),
            ],
            2,
        );
        let names: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|f| f.path.display().to_string()).collect())
            .collect();
        // b (60) | c (30), d (30) | a (10) to the first of the equal groups | e (5).
        assert_eq!(names, [vec!["a", "b"], vec!["c", "d", "e"]]);
        assert_eq!(group_files(vec![file("a", 1)], 8).len(), 1);
        assert_eq!(group_files(vec![], 8), vec![Vec::<SourceFile>::new()]);
    }

    #[tokio::test]
    async fn directory_listing_is_recursive_sorted_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.csv", "2,b\n");
        write(dir.path(), "a.csv", "1,a\n");
        write(dir.path(), "sub/c.csv", "3,c\n");
        write(dir.path(), ".hidden.csv", "99,x\n");
        write(dir.path(), "_SUCCESS", "");
        write(dir.path(), "_temporary/d.csv", "98,y\n");
        write(dir.path(), ".git/e.csv", "97,z\n");
        let t = table(&[("path", dir.path().to_str().unwrap()), ("format", "csv")]).unwrap();
        let files = t.list_files().await.unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.csv", "b.csv", "sub/c.csv"]);
        assert_eq!(files[0].size, 4);

        let ids = query_ids(t, 2, "select id from t order by id")
            .await
            .unwrap();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[tokio::test]
    async fn glob_listing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x/1.json", "{\"id\": 1}\n");
        write(dir.path(), "x/y/2.json", "{\"id\": 2}\n");
        write(dir.path(), "x/y/3.csv", "3,c\n");
        write(dir.path(), "x/y/.4.json", "{\"id\": 4}\n");
        let root = dir.path().to_str().unwrap();

        let t = table(&[("path", &format!("{root}/x/**/*.json")), ("format", "json")]).unwrap();
        let names: Vec<_> = t
            .list_files()
            .await
            .unwrap()
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["x/1.json", "x/y/2.json"]);

        let t = table(&[
            ("path", &format!("file://{root}/x/*.json")),
            ("format", "json"),
        ])
        .unwrap();
        assert_eq!(t.list_files().await.unwrap().len(), 1);

        let t = table(&[
            ("path", &format!("{root}/x/*.parquet")),
            ("format", "parquet"),
        ])
        .unwrap();
        let err = t.list_files().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("table 't': path '{root}/x/*.parquet' matches no files")
        );
    }

    #[tokio::test]
    async fn relative_paths_name_their_resolution() {
        let t = table(&[("path", "no/such/dir"), ("format", "csv")]).unwrap();
        let resolved = std::env::current_dir().unwrap().join("no/such/dir");
        assert_eq!(
            t.list_files().await.unwrap_err().to_string(),
            format!(
                "table 't': path 'no/such/dir' does not exist (resolved to {})",
                resolved.display()
            )
        );
    }

    #[tokio::test]
    async fn missing_path_is_an_error_at_scan_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.csv");
        let t = table(&[("path", path.to_str().unwrap()), ("format", "csv")]).unwrap();
        let ctx = ctx(1);
        ctx.register_table("t", Arc::new(t)).unwrap();
        let err = ctx
            .sql("select * from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        let p = path.display();
        assert_eq!(
            err.to_string(),
            format!("External error: table 't': path '{p}' does not exist")
        );
        // The file may appear after the table was created.
        write(dir.path(), "later.csv", "5,e\n");
        let batches = ctx
            .sql("select id from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
    }

    #[tokio::test]
    async fn csv_scan_with_projection_limit_partitions_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..4 {
            let rows: String = (0..5)
                .map(|r| format!("{},name{}\n", f * 5 + r, r))
                .collect();
            write(dir.path(), &format!("part-{f}.csv"), &rows);
        }
        let t = table(&[("path", dir.path().to_str().unwrap()), ("format", "csv")]).unwrap();
        let metrics = t.metrics();
        let ctx = ctx(3);
        ctx.register_table("t", Arc::new(t)).unwrap();

        let plan = ctx
            .sql("select name from t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(
            text.contains("FileScanExec: table=t, format=csv, files=4, partitions=3"),
            "{text}"
        );

        let batches = ctx
            .sql("select name, id from t order by id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let names: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                a.iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(names.len(), 20);
        assert_eq!(names[..3], ["name0", "name1", "name2"]);
        assert_eq!(SourceMetrics::get(&metrics.rows), 20);
        assert_eq!(SourceMetrics::get(&metrics.files), 4);
        let bytes: u64 = (0..4)
            .map(|f| {
                std::fs::metadata(dir.path().join(format!("part-{f}.csv")))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(SourceMetrics::get(&metrics.bytes), bytes);

        let batches = ctx
            .sql("select count(*) from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            20
        );

        let batches = ctx
            .sql("select id from t limit 3")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }

    #[tokio::test]
    async fn malformed_records_fail_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.csv", "id,name\n1,a\nx,b\n3,c\n4\n");
        let p = path.to_str().unwrap();

        let t = table(&[("path", p), ("format", "csv"), ("csv.header", "true")]).unwrap();
        let err = query_ids(t, 1, "select id from t").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("External error: table 't': malformed record at {p} line 3, column 'id': cannot parse 'x' as BIGINT")
        );

        let t = table(&[
            ("path", p),
            ("format", "csv"),
            ("csv.header", "true"),
            ("error.policy", "skip"),
        ])
        .unwrap();
        let metrics = t.metrics();
        let ids = query_ids(t, 1, "select id from t").await.unwrap();
        assert_eq!(ids, [1, 3]);
        assert_eq!(SourceMetrics::get(&metrics.records_skipped), 2);
        assert_eq!(SourceMetrics::get(&metrics.rows), 2);
    }

    #[tokio::test]
    async fn json_lines_spanning_read_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // Lines long enough that several cross the 1 MiB block boundary.
        let long = "x".repeat(300_000);
        let content: String = (0..10)
            .map(|i| format!("{{\"id\": {i}, \"name\": \"{long}\"}}\n"))
            .collect();
        write(dir.path(), "big.json", &content);
        let t = table(&[("path", dir.path().to_str().unwrap()), ("format", "json")]).unwrap();
        let ctx = ctx(1);
        ctx.register_table("t", Arc::new(t)).unwrap();
        let batches = ctx
            .sql("select id, length(name) from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        for b in &batches {
            let lengths = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
            assert!(lengths.iter().all(|l| l == Some(300_000)));
        }
    }

    fn write_parquet(path: &FsPath) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("unused", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(
                    vec![Some(1_000_000), None, Some(3_000_500)],
                )),
                Arc::new(datafusion::arrow::array::Float64Array::from(vec![
                    0.5, 1.5, 2.5,
                ])),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[tokio::test]
    async fn parquet_round_trip_casts_to_ddl_types() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(&dir.path().join("data.parquet"));
        let ddl = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let t = FileSystemTable::try_new(def(
            ddl,
            &[
                ("path", dir.path().to_str().unwrap()),
                ("format", "parquet"),
            ],
        ))
        .unwrap();
        let metrics = t.metrics();
        let ctx = ctx(2);
        ctx.register_table("t", Arc::new(t)).unwrap();
        let batches = ctx
            .sql("select id, name, ts from t order by id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batch =
            datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        assert_eq!(batch.schema().field(0).data_type(), &DataType::Int64);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), [1, 2, 3]);
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("c")]
        );
        let ts = batch
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(
            ts.iter().collect::<Vec<_>>(),
            [Some(1_000), None, Some(3_000)]
        );
        assert_eq!(SourceMetrics::get(&metrics.rows), 3);

        let batches = ctx
            .sql("select count(*) from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 3);
    }

    #[tokio::test]
    async fn parquet_missing_column_names_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        write_parquet(&path);
        let ddl = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Int64, true),
        ]));
        let t = FileSystemTable::try_new(def(
            ddl,
            &[("path", path.to_str().unwrap()), ("format", "parquet")],
        ))
        .unwrap();
        let err = query_ids(t, 1, "select id, price from t")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "External error: table 't': file '{}' does not match the table schema: \
                 it has no column 'price' (its columns: name, id, ts, unused)",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn empty_directory_is_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(&[("path", dir.path().to_str().unwrap()), ("format", "json")]).unwrap();
        let ids = query_ids(t, 4, "select id from t").await.unwrap();
        assert!(ids.is_empty());
    }

    #[test]
    fn not_null_columns_survive_the_schema() {
        let t = table(&[("path", "/tmp"), ("format", "csv")]).unwrap();
        assert!(!t.schema().field(0).is_nullable());
        assert!(t.schema().field(1).is_nullable());
        assert_eq!(t.connector(), "filesystem");
    }
}
