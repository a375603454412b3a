//! The plan codec of the connectors: how a connector table and this crate's execution
//! plan nodes travel to another process (a Ballista scheduler plans a job's logical plan,
//! its executors run physical plan fragments), so that the node decoded there does what
//! the original does.
//!
//! # Format
//! Every buffer is one JSON object `{"format": "meltwater-connectors", "version": 1,
//! "body": ...}`; a buffer of another format or a version this build does not know is an
//! error saying so. Arrow schemas are embedded as the hex text of their Arrow IPC
//! flatbuffer encoding (types, nullability and metadata exactly).
//!
//! - A **table definition** ([`encode_table_def`]): the body is the DDL's name, schema,
//!   `WITH` options, primary key and metadata columns; the receiver builds the table with
//!   [`crate::create_connector_table`], which validates it again.
//! - An **execution plan node** ([`encode_exec`]): the body is tagged by `node`, without
//!   the node's children (the caller encodes those and hands them back to
//!   [`decode_exec`], in order):
//!   - `file_scan` ([`FileScanExec`]): table name, schema, projection, format and its
//!     options, error policy, limit and the files of each partition with their sizes, as
//!     listed when the scan was planned (a decoded scan never lists the path again). Its
//!     object store is the local filesystem, as the table's.
//!   - `data_gen` ([`DataGenExec`]): the table definition (the generator is rebuilt from
//!     it, values being a pure function of the options and row numbers), projection,
//!     partition count and limit.
//!   - `kafka_scan` ([`KafkaScanExec`]): the table definition, projection, partition
//!     count and each split with the offset range resolved when the scan was planned (a
//!     decoded scan never asks the brokers for offsets again; it reads the same records
//!     with the same format and error policy, dead-letter topic included).
//!   - `kafka_sink` (a `DataSinkExec` writing a [`KafkaSink`]): the table definition.
//!   - `sink_table` (a `DataSinkExec` writing a print or blackhole table): the table name,
//!     schema, connector and the print writer's line prefix and stream.
//!
//! What cannot cross a process boundary is rebuilt: a decoded node counts into fresh
//! [`crate::SourceMetrics`] (the client's counters stay the client's), and opens its own
//! Kafka clients and object store. The filesystem connector has no sink.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::ipc::convert::{fb_to_schema, IpcSchemaEncoder};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use serde::{Deserialize, Serialize};

use crate::datagen::{DataGenExec, DataGenTable};
use crate::filesystem::{FileFormat, FileScanExec, FileScanOptions, SourceFile};
use crate::format::{CsvOptions, TextFormat};
use crate::kafka::{KafkaOptions, KafkaScanExec, KafkaSink, KafkaSource, SplitRange};
use crate::print::PrintWriter;
use crate::sink_table::SinkTableWriter;
use crate::stream::Split;
use crate::{ErrorPolicy, TableDef};

/// The `format` of every buffer.
const FORMAT: &str = "meltwater-connectors";
/// The version this build writes and reads.
const VERSION: u32 = 1;

/// A connector table's definition (the DDL it was created from) as bytes.
pub fn encode_table_def(def: &TableDef) -> Result<Vec<u8>> {
    encode(&DefSpec::from(def))
}

/// The definition [`encode_table_def`] encoded.
pub fn decode_table_def(buf: &[u8]) -> Result<TableDef> {
    Ok(decode::<DefSpec>(buf)?.into())
}

/// This crate's execution plan nodes ([`FileScanExec`], [`DataGenExec`], [`KafkaScanExec`],
/// and a `DataSinkExec` writing a [`KafkaSink`] or a print or blackhole table) as bytes,
/// without their children (the caller encodes those). `Ok(None)` when `node` is not one
/// of them.
pub fn encode_exec(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Vec<u8>>> {
    let any = node.as_any();
    let spec = if let Some(scan) = any.downcast_ref::<FileScanExec>() {
        file_scan_spec(scan)?
    } else if let Some(scan) = any.downcast_ref::<DataGenExec>() {
        NodeSpec::DataGen {
            table: DefSpec::from(scan.def.as_ref()),
            projection: scan.projection.clone(),
            partitions: scan.partitions,
            limit: scan.limit,
        }
    } else if let Some(scan) = any.downcast_ref::<KafkaScanExec>() {
        kafka_scan_spec(scan)?
    } else if let Some(sink) = any.downcast_ref::<DataSinkExec>() {
        let data_sink = sink.sink().as_any();
        let spec = if let Some(kafka) = data_sink.downcast_ref::<KafkaSink>() {
            NodeSpec::KafkaSink {
                table: DefSpec::from(kafka.def.as_ref()),
            }
        } else if let Some(writer) = data_sink.downcast_ref::<SinkTableWriter>() {
            NodeSpec::SinkTable {
                table: writer.table.clone(),
                schema: writer.schema.clone(),
                connector: writer.connector.clone(),
                print: writer.print.as_ref().map(|p| PrintSpec {
                    table: p.table.clone(),
                    prefix: p.prefix.clone(),
                    standard_error: p.standard_error,
                }),
            }
        } else {
            return Ok(None);
        };
        if sink.sort_order().is_some() {
            return Err(cannot_encode(
                spec.table_name(),
                "its sink has a required sort order, which the connector codec does not carry",
            ));
        }
        spec
    } else {
        return Ok(None);
    };
    encode(&spec).map(Some)
}

/// The node [`encode_exec`] encoded, with `inputs` as its children (as encoded, in order).
pub fn decode_exec(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
    _ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    let spec: NodeSpec = decode(buf)?;
    let expected = match spec {
        NodeSpec::KafkaSink { .. } | NodeSpec::SinkTable { .. } => 1,
        _ => 0,
    };
    if inputs.len() != expected {
        return Err(malformed(format!(
            "the {} node of table '{}' takes {expected} input(s), {} given",
            spec.kind(),
            spec.table_name(),
            inputs.len()
        )));
    }
    let node: Arc<dyn ExecutionPlan> = match spec {
        NodeSpec::FileScan {
            table,
            schema,
            projection,
            format,
            error_policy,
            limit,
            file_groups,
        } => {
            let groups = file_groups
                .into_iter()
                .map(|group| {
                    group
                        .into_iter()
                        .map(|f| {
                            let location = StorePath::parse(&f.location).map_err(|e| {
                                malformed(format!(
                                    "table '{table}': file location '{}': {e}",
                                    f.location
                                ))
                            })?;
                            Ok(SourceFile {
                                path: f.path,
                                location,
                                size: f.size,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?;
            let options = FileScanOptions {
                table,
                schema,
                projection,
                format: format.into(),
                policy: error_policy.into(),
                limit,
            };
            Arc::new(FileScanExec::try_new(
                options,
                groups,
                Arc::new(LocalFileSystem::new()),
                Arc::default(),
            )?)
        }
        NodeSpec::DataGen {
            table,
            projection,
            partitions,
            limit,
        } => {
            let def = TableDef::from(table);
            let name = def.name.clone();
            let generator = DataGenTable::try_new(def)?;
            let scan =
                DataGenExec::try_new(&generator, projection, partitions, limit, Arc::default())?;
            check_partitions(&name, partitions, scan.partitions)?;
            Arc::new(scan)
        }
        NodeSpec::KafkaScan {
            table,
            projection,
            partitions,
            splits,
        } => {
            let def = TableDef::from(table);
            let options = KafkaOptions::parse(&def)?;
            let ranges = splits
                .iter()
                .map(|s| {
                    (
                        s.id.clone(),
                        SplitRange {
                            start: s.start,
                            stop: s.stop,
                        },
                    )
                })
                .collect();
            let source = KafkaSource::with_ranges(options, Arc::default(), ranges);
            let splits = splits.into_iter().map(|s| Split { id: s.id }).collect();
            let scan = KafkaScanExec::new(Arc::new(source), splits, projection, partitions);
            check_partitions(&def.name, partitions, scan.partitions)?;
            Arc::new(scan)
        }
        NodeSpec::KafkaSink { table } => {
            let def = TableDef::from(table);
            let options = KafkaOptions::parse(&def)?;
            KafkaSink::try_new(&def, &options)?.into_exec(inputs[0].clone())
        }
        NodeSpec::SinkTable {
            table,
            schema,
            connector,
            print,
        } => {
            let writer = SinkTableWriter {
                table,
                schema,
                connector,
                print: print.map(|p| PrintWriter {
                    table: p.table,
                    prefix: p.prefix,
                    standard_error: p.standard_error,
                }),
            };
            Arc::new(DataSinkExec::new(inputs[0].clone(), Arc::new(writer), None))
        }
    };
    Ok(node)
}

fn file_scan_spec(scan: &FileScanExec) -> Result<NodeSpec> {
    let o = scan.options();
    let file_groups = scan
        .file_groups()
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|f| FileSpec {
                    path: f.path.clone(),
                    location: f.location.as_ref().to_string(),
                    size: f.size,
                })
                .collect()
        })
        .collect();
    Ok(NodeSpec::FileScan {
        table: o.table.clone(),
        schema: o.schema.clone(),
        projection: o.projection.clone(),
        format: (&o.format).into(),
        error_policy: o.policy.into(),
        limit: o.limit,
        file_groups,
    })
}

fn kafka_scan_spec(scan: &KafkaScanExec) -> Result<NodeSpec> {
    let options = scan.source.options();
    let ranges = scan.source.resolved_ranges();
    let splits = scan
        .splits
        .iter()
        .map(|split| {
            let range = ranges.get(&split.id).ok_or_else(|| {
                cannot_encode(
                    &options.table,
                    &format!(
                        "the offsets of its partition {} were not resolved when the scan was planned",
                        split.id
                    ),
                )
            })?;
            Ok(KafkaSplitSpec {
                id: split.id.clone(),
                start: range.start,
                stop: range.stop,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeSpec::KafkaScan {
        table: DefSpec::from(options.def.as_ref()),
        projection: scan.projection.clone(),
        partitions: scan.partitions,
        splits,
    })
}

/// A decoded scan must have the partitions the original had.
fn check_partitions(table: &str, encoded: usize, decoded: usize) -> Result<()> {
    if encoded == decoded {
        Ok(())
    } else {
        Err(malformed(format!(
            "the scan of table '{table}' was encoded with {encoded} partitions but decodes to {decoded}"
        )))
    }
}

fn cannot_encode(table: &str, why: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "the plan of table '{table}' cannot be sent to another process: {why}"
    ))
}

fn malformed(message: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!(
        "a connector plan node cannot be decoded: {message}"
    ))
}

/// What every buffer holds.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: String,
    version: u32,
    body: T,
}

fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(&Envelope {
        format: FORMAT.to_string(),
        version: VERSION,
        body,
    })
    .map_err(|e| DataFusionError::Execution(format!("cannot encode a connector plan node: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Header {
        format: Option<String>,
        version: Option<u32>,
    }
    let header: Header = serde_json::from_slice(buf)
        .map_err(|e| malformed(format!("not a {FORMAT} buffer: {e}")))?;
    if header.format.as_deref() != Some(FORMAT) {
        return Err(malformed(format!(
            "not a {FORMAT} buffer (its format is {:?})",
            header.format
        )));
    }
    if header.version != Some(VERSION) {
        return Err(malformed(format!(
            "{FORMAT} version {:?}; this build reads version {VERSION}",
            header.version
        )));
    }
    let envelope: Envelope<T> = serde_json::from_slice(buf).map_err(malformed)?;
    Ok(envelope.body)
}

/// A node, without its children.
#[derive(Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case")]
enum NodeSpec {
    FileScan {
        table: String,
        #[serde(with = "ipc_schema")]
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        format: FormatSpec,
        error_policy: PolicySpec,
        limit: Option<usize>,
        file_groups: Vec<Vec<FileSpec>>,
    },
    DataGen {
        table: DefSpec,
        projection: Option<Vec<usize>>,
        partitions: usize,
        limit: Option<usize>,
    },
    KafkaScan {
        table: DefSpec,
        projection: Option<Vec<usize>>,
        partitions: usize,
        splits: Vec<KafkaSplitSpec>,
    },
    KafkaSink {
        table: DefSpec,
    },
    SinkTable {
        table: String,
        #[serde(with = "ipc_schema")]
        schema: SchemaRef,
        connector: String,
        print: Option<PrintSpec>,
    },
}

impl NodeSpec {
    fn kind(&self) -> &'static str {
        match self {
            NodeSpec::FileScan { .. } => "file_scan",
            NodeSpec::DataGen { .. } => "data_gen",
            NodeSpec::KafkaScan { .. } => "kafka_scan",
            NodeSpec::KafkaSink { .. } => "kafka_sink",
            NodeSpec::SinkTable { .. } => "sink_table",
        }
    }

    fn table_name(&self) -> &str {
        match self {
            NodeSpec::FileScan { table, .. } | NodeSpec::SinkTable { table, .. } => table,
            NodeSpec::DataGen { table, .. }
            | NodeSpec::KafkaScan { table, .. }
            | NodeSpec::KafkaSink { table } => &table.name,
        }
    }
}

/// A [`TableDef`].
#[derive(Serialize, Deserialize)]
struct DefSpec {
    name: String,
    #[serde(with = "ipc_schema")]
    schema: SchemaRef,
    options: BTreeMap<String, String>,
    primary_key: Vec<String>,
    metadata: BTreeMap<String, (String, bool)>,
}

impl From<&TableDef> for DefSpec {
    fn from(def: &TableDef) -> Self {
        Self {
            name: def.name.clone(),
            schema: def.schema.clone(),
            options: def.options.clone(),
            primary_key: def.primary_key.clone(),
            metadata: def.metadata.clone(),
        }
    }
}

impl From<DefSpec> for TableDef {
    fn from(spec: DefSpec) -> Self {
        Self {
            name: spec.name,
            schema: spec.schema,
            options: spec.options,
            primary_key: spec.primary_key,
            metadata: spec.metadata,
        }
    }
}

/// A filesystem table's [`FileFormat`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
enum FormatSpec {
    Csv {
        delimiter: u8,
        quote: u8,
        header: bool,
        null_literal: Option<String>,
    },
    Json,
    Parquet,
}

impl From<&FileFormat> for FormatSpec {
    fn from(format: &FileFormat) -> Self {
        match format {
            FileFormat::Text(TextFormat::Csv(csv)) => FormatSpec::Csv {
                delimiter: csv.delimiter,
                quote: csv.quote,
                header: csv.header,
                null_literal: csv.null_literal.clone(),
            },
            FileFormat::Text(TextFormat::Json) => FormatSpec::Json,
            FileFormat::Parquet => FormatSpec::Parquet,
        }
    }
}

impl From<FormatSpec> for FileFormat {
    fn from(spec: FormatSpec) -> Self {
        match spec {
            FormatSpec::Csv {
                delimiter,
                quote,
                header,
                null_literal,
            } => FileFormat::Text(TextFormat::Csv(CsvOptions {
                delimiter,
                quote,
                header,
                null_literal,
            })),
            FormatSpec::Json => FileFormat::Text(TextFormat::Json),
            FormatSpec::Parquet => FileFormat::Parquet,
        }
    }
}

/// An [`ErrorPolicy`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicySpec {
    Fail,
    Skip,
}

impl From<ErrorPolicy> for PolicySpec {
    fn from(policy: ErrorPolicy) -> Self {
        match policy {
            ErrorPolicy::Fail => PolicySpec::Fail,
            ErrorPolicy::Skip => PolicySpec::Skip,
        }
    }
}

impl From<PolicySpec> for ErrorPolicy {
    fn from(spec: PolicySpec) -> Self {
        match spec {
            PolicySpec::Fail => ErrorPolicy::Fail,
            PolicySpec::Skip => ErrorPolicy::Skip,
        }
    }
}

/// A [`SourceFile`].
#[derive(Serialize, Deserialize)]
struct FileSpec {
    path: PathBuf,
    /// The object-store location, as its string.
    location: String,
    size: u64,
}

/// A Kafka split and its resolved offsets.
#[derive(Serialize, Deserialize)]
struct KafkaSplitSpec {
    id: String,
    start: i64,
    stop: Option<i64>,
}

/// A [`PrintWriter`].
#[derive(Serialize, Deserialize)]
struct PrintSpec {
    table: String,
    prefix: String,
    standard_error: bool,
}

/// An Arrow schema as the hex text of its IPC flatbuffer encoding (field metadata, such
/// as Iceberg field ids, included); for `#[serde(with = "...")]` on `SchemaRef` fields.
pub mod ipc_schema {
    use std::fmt::Write as _;

    use super::*;

    pub fn serialize<S: serde::Serializer>(
        schema: &SchemaRef,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let fb = IpcSchemaEncoder::new().schema_to_fb(schema);
        let bytes = fb.finished_data();
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<SchemaRef, D::Error> {
        use serde::de::Error;
        let hex = String::deserialize(d)?;
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(D::Error::custom("a schema is an even number of hex digits"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(D::Error::custom)?;
        let schema = arrow::ipc::root_as_schema(&bytes).map_err(D::Error::custom)?;
        Ok(Arc::new(fb_to_schema(schema)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use datafusion::arrow::array::{Array, AsArray, Int32Array, RecordBatch, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::{collect_partitioned, displayable, ExecutionPlanProperties};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;
    use crate::{create_connector_table, ConnectorTable, SourceMetrics};

    fn def(name: &str, fields: Vec<Field>, options: &[(&str, &str)]) -> TableDef {
        TableDef {
            name: name.into(),
            schema: Arc::new(Schema::new(fields)),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            primary_key: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    fn ctx(partitions: usize) -> SessionContext {
        SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(3),
        )
    }

    /// The scan a job plans: the table built from its definition, scanned in a session
    /// of `partitions` target partitions.
    async fn scan(
        table: &Arc<dyn ConnectorTable>,
        partitions: usize,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    ) -> Arc<dyn ExecutionPlan> {
        table
            .scan(&ctx(partitions).state(), projection.as_ref(), &[], limit)
            .await
            .unwrap()
    }

    /// The write a job plans: `INSERT INTO` the table from `sql`'s rows.
    async fn insert(table: &Arc<dyn ConnectorTable>, sql: &str) -> Arc<dyn ExecutionPlan> {
        let ctx = ctx(2);
        let input = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        table
            .insert_into(&ctx.state(), input, InsertOp::Append)
            .await
            .unwrap()
    }

    fn encode_node(plan: &Arc<dyn ExecutionPlan>) -> Vec<u8> {
        encode_exec(plan).unwrap().expect("a connector node")
    }

    /// Decodes `buf` in a session of its own with `plan`'s children (as the caller
    /// encodes them apart), and checks the node shows as `plan` does.
    fn decode_like(buf: &[u8], plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let children: Vec<_> = plan.children().into_iter().cloned().collect();
        let decoded = decode_exec(buf, &children, &SessionContext::new().task_ctx()).unwrap();
        assert_eq!(decoded.schema(), plan.schema());
        assert_eq!(
            decoded.output_partitioning().partition_count(),
            plan.output_partitioning().partition_count()
        );
        for verbose in [false, true] {
            assert_eq!(
                displayable(decoded.as_ref()).indent(verbose).to_string(),
                displayable(plan.as_ref()).indent(verbose).to_string()
            );
        }
        // The decoded node encodes to the same bytes.
        assert_eq!(encode_node(&decoded), buf);
        decoded
    }

    fn round_trip(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        decode_like(&encode_node(plan), plan)
    }

    /// Each partition's rows, as one batch per partition.
    async fn run(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>> {
        let parts = collect_partitioned(plan.clone(), ctx(1).task_ctx()).await?;
        parts
            .iter()
            .map(|p| Ok(concat_batches(&plan.schema(), p)?))
            .collect()
    }

    /// Runs both plans; they must produce the same rows in the same partitions, or fail
    /// with the same error.
    async fn assert_same_run(
        original: &Arc<dyn ExecutionPlan>,
        decoded: &Arc<dyn ExecutionPlan>,
    ) -> Result<Vec<RecordBatch>> {
        match (run(original).await, run(decoded).await) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                Ok(a)
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                Err(a)
            }
            (a, b) => panic!("original {a:?}, decoded {b:?}"),
        }
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn text_fields() -> Vec<Field> {
        vec![
            Field::new("id", DataType::Int64, false).with_metadata(
                [("comment".to_string(), "the key".to_string())]
                    .into_iter()
                    .collect(),
            ),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]
    }

    fn write(dir: &Path, name: &str, content: &str) {
        std::fs::write(dir.join(name), content).unwrap();
    }

    #[test]
    fn table_definitions_round_trip() {
        let mut d = def(
            "orders",
            vec![
                Field::new("id", DataType::Int64, false)
                    .with_metadata([("k".to_string(), "v".to_string())].into_iter().collect()),
                Field::new(
                    "tags",
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    true,
                ),
                Field::new("part", DataType::Int32, true),
            ],
            &[("connector", "kafka"), ("topic", "orders")],
        );
        d.schema = Arc::new(
            d.schema.as_ref().clone().with_metadata(
                [("origin".to_string(), "ddl".to_string())]
                    .into_iter()
                    .collect(),
            ),
        );
        d.primary_key = vec!["id".into()];
        d.metadata.insert("part".into(), ("partition".into(), true));
        let back = decode_table_def(&encode_table_def(&d).unwrap()).unwrap();
        assert_eq!(back.name, d.name);
        assert_eq!(back.schema, d.schema);
        assert_eq!(back.options, d.options);
        assert_eq!(back.primary_key, d.primary_key);
        assert_eq!(back.metadata, d.metadata);
    }

    #[test]
    fn foreign_or_newer_buffers_are_refused() {
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        assert!(encode_exec(&empty).unwrap().is_none());
        let task = SessionContext::new().task_ctx();
        let err = decode_exec(b"\x00\x01", &[], &task)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a meltwater-connectors buffer"), "{err}");
        let err = decode_exec(br#"{"format": "other", "version": 1}"#, &[], &task)
            .unwrap_err()
            .to_string();
        assert!(err.contains("its format is Some(\"other\")"), "{err}");
        let err = decode_exec(
            br#"{"format": "meltwater-connectors", "version": 2, "body": {}}"#,
            &[],
            &task,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("meltwater-connectors version Some(2); this build reads version 1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn csv_scan_keeps_its_files_projection_and_error_policy() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.csv",
            "id;name;score\n1;alice;1.5\n2;NULL;2.5\n3;carol;NULL\n",
        );
        write(
            dir.path(),
            "b.csv",
            "id;name;score\n4;dan;4\nx;bad;5\n5;\"e;ve\";5.5\n6;fay;6\n7;gus;7\n",
        );
        write(dir.path(), "c.csv", "id;name;score\n8;hal;8\n9;ida;9\n");
        let path = dir.path().to_str().unwrap();
        let options = [
            ("connector", "filesystem"),
            ("path", path),
            ("format", "csv"),
            ("csv.header", "true"),
            ("csv.field-delimiter", ";"),
            ("csv.null-literal", "NULL"),
        ];
        let mut skipping = options.to_vec();
        skipping.push(("error.policy", "skip"));
        let table = create_connector_table(def("t", text_fields(), &skipping)).unwrap();
        let plan = scan(&table, 2, Some(vec![2, 0]), None).await;
        assert_eq!(plan.output_partitioning().partition_count(), 2);
        let buf = encode_node(&plan);
        // A file that appears after planning is not read by the decoded scan either.
        write(dir.path(), "d.csv", "id;name;score\n10;jo;10\n");
        let decoded = decode_like(&buf, &plan);
        let out = assert_same_run(&plan, &decoded).await.unwrap();
        assert_eq!(rows(&out), 9);
        assert_eq!(out[0].schema().field(1).metadata()["comment"], "the key");
        // The decoded scan counts into its own metrics, not the table's.
        let metrics = table.metrics();
        assert_eq!(SourceMetrics::get(&metrics.rows), 9);
        assert_eq!(SourceMetrics::get(&metrics.records_skipped), 1);

        // The default policy fails the same way in both.
        let failing = create_connector_table(def("t", text_fields(), &options)).unwrap();
        let plan = scan(&failing, 2, Some(vec![2, 0]), None).await;
        let decoded = round_trip(&plan);
        let err = assert_same_run(&plan, &decoded).await.unwrap_err();
        assert!(
            err.to_string().contains("b.csv line 3, column 'id'"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn json_scan_keeps_its_limit_and_partitions() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a.json", "b.json", "c.json"].iter().enumerate() {
            let lines: String = (0..4 + i)
                .map(|n| {
                    format!(
                        "{{\"id\": {}, \"name\": \"n{n}\", \"score\": {n}.5}}\n",
                        i * 10 + n
                    )
                })
                .collect();
            write(dir.path(), name, &lines);
        }
        let glob = format!("{}/*.json", dir.path().display());
        let table = create_connector_table(def(
            "j",
            text_fields(),
            &[
                ("connector", "filesystem"),
                ("path", &glob),
                ("format", "json"),
            ],
        ))
        .unwrap();
        for (partitions, projection, limit) in [(3, Some(vec![1]), Some(2)), (2, None, None)] {
            let plan = scan(&table, partitions, projection, limit).await;
            let decoded = round_trip(&plan);
            let out = assert_same_run(&plan, &decoded).await.unwrap();
            assert_eq!(out.len(), partitions);
            assert_eq!(rows(&out), if limit.is_some() { 6 } else { 15 });
        }
    }

    fn write_parquet(path: &Path, ids: std::ops::Range<i32>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    ids.clone().map(|i| format!("p{i}")),
                )),
                Arc::new(Int32Array::from_iter_values(ids)),
            ],
        )
        .unwrap();
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[tokio::test]
    async fn parquet_scan_keeps_its_projection_and_partitions() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(&dir.path().join("a.parquet"), 0..10);
        write_parquet(&dir.path().join("b.parquet"), 10..13);
        write_parquet(&dir.path().join("c.parquet"), 13..20);
        let table = create_connector_table(def(
            "p",
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
            ],
            &[
                ("connector", "filesystem"),
                ("path", &format!("file://{}", dir.path().display())),
                ("format", "parquet"),
            ],
        ))
        .unwrap();
        let plan = scan(&table, 2, Some(vec![1, 0]), None).await;
        let decoded = round_trip(&plan);
        let out = assert_same_run(&plan, &decoded).await.unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(rows(&out), 20);
        assert_eq!(out[0].schema().field(1).data_type(), &DataType::Int64);
        // A projection of no column still counts rows.
        let plan = scan(&table, 2, Some(vec![]), None).await;
        let out = assert_same_run(&plan, &round_trip(&plan)).await.unwrap();
        assert_eq!(rows(&out), 20);
    }

    #[tokio::test]
    async fn datagen_scan_generates_the_same_rows() {
        let table = create_connector_table(def(
            "gen",
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
                Field::new("price", DataType::Float64, true),
            ],
            &[
                ("connector", "datagen"),
                ("number-of-rows", "100"),
                ("seed", "11"),
                ("fields.id.kind", "sequence"),
                ("fields.id.start", "1"),
                ("fields.id.end", "1000"),
                ("fields.name.length", "6"),
                ("fields.price.min", "1"),
                ("fields.price.max", "9"),
                ("fields.price.null-rate", "0.2"),
            ],
        ))
        .unwrap();
        for (partitions, projection, limit) in [
            (3, None, None),
            (4, Some(vec![2, 0]), Some(7)),
            (1, Some(vec![1]), None),
        ] {
            let plan = scan(&table, partitions, projection, limit).await;
            let decoded = round_trip(&plan);
            let out = assert_same_run(&plan, &decoded).await.unwrap();
            assert_eq!(out.len(), partitions);
            assert_eq!(rows(&out), limit.map_or(100, |l| l * partitions));
        }
        // Only the original scans counted into the table's metrics.
        assert_eq!(SourceMetrics::get(&table.metrics().rows), 100 + 28 + 100);
    }

    #[tokio::test]
    async fn print_and_blackhole_sinks_write_the_same() {
        let sql = "SELECT * FROM (VALUES (1, 'a'), (2, NULL), (3, 'c')) AS t(id, name)";
        let fields = || {
            vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
            ]
        };
        let print = create_connector_table(def(
            "out",
            fields(),
            &[
                ("connector", "print"),
                ("print-identifier", "codec"),
                ("standard-error", "true"),
            ],
        ))
        .unwrap();
        let blackhole =
            create_connector_table(def("nowhere", fields(), &[("connector", "blackhole")]))
                .unwrap();
        for table in [print, blackhole] {
            let plan = insert(&table, sql).await;
            let decoded = round_trip(&plan);
            let out = assert_same_run(&plan, &decoded).await.unwrap();
            assert_eq!(
                out[0]
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                    .value(0),
                3
            );
            // The same lines, to the same stream.
            let writer = |p: &Arc<dyn ExecutionPlan>| {
                let sink = p.as_any().downcast_ref::<DataSinkExec>().unwrap();
                let w = sink
                    .sink()
                    .as_any()
                    .downcast_ref::<SinkTableWriter>()
                    .unwrap();
                (w.table.clone(), w.connector.clone(), w.print.clone())
            };
            let (original, copy) = (writer(&plan), writer(&decoded));
            assert_eq!(original.0, copy.0);
            assert_eq!(original.1, copy.1);
            assert_eq!(original.2.is_some(), table.connector() == "print");
            if let (Some(a), Some(b)) = (&original.2, &copy.2) {
                let input = run(&plan.children()[0].clone()).await.unwrap();
                let batch = concat_batches(&input[0].schema(), &input).unwrap();
                assert_eq!(a.format(&batch, None), b.format(&batch, None));
                assert_eq!(
                    b.format(&batch, None),
                    "codec> +I[1, a]\ncodec> +I[2, null]\ncodec> +I[3, c]\n"
                );
                assert_eq!((a.standard_error, b.standard_error), (true, true));
            }
        }
    }

    /// Sends `values` to `topic`'s `partition`.
    fn produce(servers: &str, topic: &str, partition: i32, values: &[String]) {
        let producer: BaseProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", servers)
            .create()
            .unwrap();
        for v in values {
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(partition)
                        .payload(v.as_str()),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The offset after the last record of `topic`'s `partition`.
    fn high_watermark(servers: &str, topic: &str, partition: i32) -> i64 {
        let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", servers)
            .create()
            .unwrap();
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap()
            .1
    }

    fn orders(i: usize) -> String {
        format!("{{\"id\": {i}, \"name\": \"o{i}\"}}")
    }

    fn kafka_def(name: &str, servers: &str, topic: &str, extra: &[(&str, &str)]) -> TableDef {
        let mut options = vec![
            ("connector", "kafka"),
            ("topic", topic),
            ("properties.bootstrap.servers", servers),
            ("format", "json"),
            ("scan.startup.mode", "earliest-offset"),
            ("scan.bounded.mode", "latest-offset"),
        ];
        options.extend_from_slice(extra);
        def(
            name,
            vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
            ],
            &options,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_scan_reads_the_offsets_resolved_when_planned() {
        let cluster = MockCluster::new(1).unwrap();
        let servers = cluster.bootstrap_servers();
        cluster.create_topic("orders", 2, 1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let mut p0: Vec<String> = (0..5).map(orders).collect();
        p0.insert(2, "{\"id\": \"not a number\"}".to_string());
        produce(&servers, "orders", 0, &p0);
        produce(
            &servers,
            "orders",
            1,
            &(5..9).map(orders).collect::<Vec<_>>(),
        );

        // Each round adds a record after planning, which the next round's plan reads.
        for (policy, expected) in [("skip", Some(9)), ("dead-letter", Some(10)), ("fail", None)] {
            let mut extra = vec![("error.policy", policy)];
            if policy == "dead-letter" {
                extra.push(("error.dead-letter.topic", "dlq"));
            }
            let table =
                create_connector_table(kafka_def("orders", &servers, "orders", &extra)).unwrap();
            let plan = scan(&table, 2, Some(vec![1, 0]), None).await;
            let buf = encode_node(&plan);
            // Records that arrive after planning are not read by the decoded scan.
            produce(&servers, "orders", 1, &[orders(100)]);
            let decoded = decode_like(&buf, &plan);
            match (assert_same_run(&plan, &decoded).await, expected) {
                (Ok(out), Some(n)) => assert_eq!(rows(&out), n, "{policy}"),
                (Err(e), None) => {
                    assert!(e.to_string().contains("malformed record"), "{e}")
                }
                (other, _) => panic!("{policy}: {other:?}"),
            }
            if policy == "dead-letter" {
                // Both runs sent the malformed record to the dead-letter topic.
                assert_eq!(high_watermark(&servers, "dlq", 0), 2);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_sink_writes_the_same_records() {
        let cluster = MockCluster::new(1).unwrap();
        let servers = cluster.bootstrap_servers();
        cluster.create_topic("out", 1, 1).unwrap();
        let table = create_connector_table(kafka_def("out", &servers, "out", &[])).unwrap();
        let plan = insert(
            &table,
            "SELECT * FROM (VALUES (1, 'a'), (2, NULL), (3, 'c')) AS t(id, name)",
        )
        .await;
        let decoded = round_trip(&plan);
        assert_same_run(&plan, &decoded).await.unwrap();
        // Read back as raw values: the decoded sink wrote what the original wrote.
        let raw = def(
            "raw",
            vec![Field::new("value", DataType::Utf8, true)],
            &[
                ("connector", "kafka"),
                ("topic", "out"),
                ("properties.bootstrap.servers", &servers),
                ("format", "raw"),
                ("scan.startup.mode", "earliest-offset"),
                ("scan.bounded.mode", "latest-offset"),
            ],
        );
        let reader = create_connector_table(raw).unwrap();
        let out = run(&scan(&reader, 1, None, None).await).await.unwrap();
        let values: Vec<String> = out
            .iter()
            .flat_map(|b| {
                let c = b.column(0).as_string::<i32>();
                (0..c.len())
                    .map(|i| c.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(values.len(), 6, "{values:?}");
        assert_eq!(values[..3], values[3..]);
        assert!(values[0].contains("\"id\":1"), "{values:?}");
    }
}
