//! Connectors: the sources and sinks a job's `CREATE TABLE ... WITH ('connector' = ...)`
//! names. Each connector table is a DataFusion [`TableProvider`] that knows its
//! boundedness, so the batch planner can reject unbounded sources and the stream planner
//! can turn the same table into an unbounded source. Sources: `filesystem`, `datagen`;
//! sinks: `print`, `blackhole` (written through `insert_into` in batch mode, and by the
//! stream runtime's own operators in stream mode).
//!
//! Connectors sit at the bottom of the crate graph: they know nothing of job files,
//! planning or runtimes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;

/// The `ExecutionPlan` methods every leaf operator (a scan without inputs) writes the
/// same way: its name, `as_any`, the `properties` field, no children. Use inside the
/// `impl ExecutionPlan` block of a type with a `properties: Arc<PlanProperties>` field.
#[macro_export]
macro_rules! leaf_exec_methods {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }
        fn as_any(&self) -> &dyn ::std::any::Any {
            self
        }
        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }
        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }
        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::error::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            if children.is_empty() {
                Ok(self)
            } else {
                Err(::datafusion::error::DataFusionError::Internal(format!(
                    "{} is a leaf and takes no children",
                    $name
                )))
            }
        }
    };
}

pub mod blackhole;
pub mod changelog;
pub mod codec;
pub mod datagen;
pub mod error;
pub mod filesystem;
pub mod format;
pub mod kafka;
mod options;
pub use options::parse_duration_ms;
pub mod print;
pub mod sink_table;
pub mod stream;

pub use error::{ConnectorError, Result};

/// A connector table as the job file declares it.
#[derive(Debug, Clone)]
pub struct TableDef {
    /// The table name as written in the job (used in messages).
    pub name: String,
    /// Columns and types from the DDL.
    pub schema: SchemaRef,
    /// The `WITH (...)` options, keys as written (case-sensitive, like Flink).
    pub options: BTreeMap<String, String>,
    /// `PRIMARY KEY (...) NOT ENFORCED` columns, empty when none.
    pub primary_key: Vec<String>,
    /// Metadata columns (`c TYPE METADATA FROM 'key' [VIRTUAL]`): column name → key and
    /// whether it is virtual. Only connectors that know metadata accept them.
    pub metadata: BTreeMap<String, (String, bool)>,
}

impl TableDef {
    /// The option `key`, if set.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// An error when the table declares metadata columns, for connectors without any.
    pub fn reject_metadata(&self, connector: &str) -> Result<()> {
        match self.metadata.keys().next() {
            Some(c) => Err(ConnectorError::Unsupported {
                table: self.name.clone(),
                message: format!(
                    "column '{c}' is a METADATA column; the {connector} connector has no metadata columns"
                ),
            }),
            None => Ok(()),
        }
    }
}

/// Whether a source ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundedness {
    /// Reads a finite input and ends: both modes can read it.
    Bounded,
    /// Keeps producing: only stream mode can read it. The reason names the option
    /// that makes it unbounded, for planner messages.
    Unbounded { reason: &'static str },
}

/// What to do with a record that cannot be decoded (`'error.policy'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Fail the job with an error naming the file and line (or record).
    #[default]
    Fail,
    /// Drop the record and count it in [`SourceMetrics::records_skipped`].
    Skip,
}

/// Counters a source keeps while it runs; the CLI reports them at the end of a run.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub files: AtomicU64,
    pub records_skipped: AtomicU64,
    /// Malformed records sent to a dead-letter topic.
    pub records_dead_lettered: AtomicU64,
}

impl SourceMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A table provided by a connector.
pub trait ConnectorTable: TableProvider {
    /// The connector's name (`filesystem`, `datagen`, ...).
    fn connector(&self) -> &str;
    /// Whether the source ends by itself.
    fn boundedness(&self) -> Boundedness;
    /// Counters shared by every scan of this table.
    fn metrics(&self) -> Arc<SourceMetrics>;
    /// The table as a streaming source (splits with positions).
    fn stream_source(&self) -> Result<Arc<dyn stream::StreamSource>> {
        Err(ConnectorError::Unsupported {
            table: String::new(),
            message: format!(
                "the '{}' connector cannot be read in stream mode yet",
                self.connector()
            ),
        })
    }
    /// Whether `INSERT INTO` can write the table (sink connectors).
    fn writable(&self) -> bool {
        false
    }
    /// Whether the table can be read (false for sink-only connectors).
    fn readable(&self) -> bool {
        true
    }
}

/// The error of reading a sink-only table: `table 'out': a print table is a sink only; it
/// cannot be read`.
pub fn sink_only(table: &str, connector: &str) -> ConnectorError {
    ConnectorError::Unsupported {
        table: table.to_string(),
        message: format!("a {connector} table is a sink only; it cannot be read"),
    }
}

/// `'scan.watermark.idle-timeout'` (Flink's name), an option of every source table: in
/// stream mode its splits without data for this long stop holding its watermark back
/// (overrides the job's `table.exec.source.idle-timeout` for this table).
pub const WATERMARK_IDLE_TIMEOUT: &str = "scan.watermark.idle-timeout";

/// A source table's [`WATERMARK_IDLE_TIMEOUT`] in milliseconds, when set; an invalid
/// duration is an error naming the table and the option.
pub fn watermark_idle_timeout_ms(def: &TableDef, connector: &'static str) -> Result<Option<u64>> {
    options::OptionReader::new(def, connector)
        .parse_with(WATERMARK_IDLE_TIMEOUT, options::parse_duration_ms)
}

/// `'scan.late-records'`, an option of every source table: what a window aggregate over
/// the table does with a row that arrives for a window that already fired (stream mode):
/// `'drop'` (the default: dropped and counted) or `'side-output'` (written to the table
/// [`LATE_RECORDS_TABLE`] names).
pub const LATE_RECORDS: &str = "scan.late-records";

/// `'scan.late-records.table'`: the sink table late rows go to under
/// `'scan.late-records' = 'side-output'`.
pub const LATE_RECORDS_TABLE: &str = "scan.late-records.table";

/// A source table's policy for rows late for a window (see [`LATE_RECORDS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LateRecords {
    /// Dropped and counted.
    Drop,
    /// Written to the named sink table.
    SideOutput(String),
}

/// A source table's [`LATE_RECORDS`] policy; an unknown policy, a side output without a
/// table, or a table without the side output is an error naming the table and the option.
pub fn late_records(def: &TableDef, connector: &'static str) -> Result<LateRecords> {
    let reader = options::OptionReader::new(def, connector);
    let table = reader.get(LATE_RECORDS_TABLE).map(str::trim);
    match reader.get(LATE_RECORDS).map(str::trim) {
        None | Some("drop") => match table {
            None => Ok(LateRecords::Drop),
            Some(t) => Err(reader.invalid(
                LATE_RECORDS_TABLE,
                t,
                format!("it applies only with '{LATE_RECORDS}' = 'side-output'"),
            )),
        },
        Some("side-output") => match table {
            Some(t) if !t.is_empty() => Ok(LateRecords::SideOutput(t.to_string())),
            _ => Err(ConnectorError::MissingOption {
                table: def.name.clone(),
                option: LATE_RECORDS_TABLE.into(),
            }),
        },
        Some(other) => Err(reader.invalid(LATE_RECORDS, other, "expected 'drop' or 'side-output'")),
    }
}

/// Builds the provider for a `CREATE TABLE ... WITH ('connector' = ...)` definition.
///
/// Unknown connectors and unknown or invalid options are errors that name the table and
/// the option, and list the valid ones.
pub fn create_connector_table(def: TableDef) -> Result<Arc<dyn ConnectorTable>> {
    let connector = def
        .option("connector")
        .ok_or_else(|| ConnectorError::MissingOption {
            table: def.name.clone(),
            option: "connector".into(),
        })?
        .to_string();
    match connector.as_str() {
        "filesystem" => Ok(Arc::new(filesystem::FileSystemTable::try_new(def)?)),
        "datagen" => Ok(Arc::new(datagen::DataGenTable::try_new(def)?)),
        "print" => Ok(Arc::new(sink_table::SinkTable::print(def)?)),
        "blackhole" => Ok(Arc::new(sink_table::SinkTable::blackhole(def)?)),
        "kafka" => Ok(Arc::new(kafka::KafkaTable::try_new(def)?)),
        other => Err(ConnectorError::UnknownConnector {
            table: def.name.clone(),
            connector: other.to_string(),
            known: "filesystem, datagen, print, blackhole, kafka",
        }),
    }
}
