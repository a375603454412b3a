//! Meltwater's DataFusion extension codecs for a Ballista cluster (DESIGN.md §6).
//!
//! A job's client sends each statement's logical plan to the scheduler, which plans it
//! and sends plan fragments to executors. DataFusion's protobuf form covers its own
//! nodes; these codecs carry Meltwater's: the connector and Iceberg tables a plan scans
//! or writes, the window table function node, and the physical nodes they plan to.
//! Ballista's own nodes (shuffle writers and readers) go through Ballista's codecs.
//!
//! Every encoding starts with one tag byte naming who encoded the rest:
//! [`TAG_BALLISTA`], [`TAG_ICEBERG`], [`TAG_CONNECTOR`] or [`TAG_WINDOW`].

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Column, DataFusionError, Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::TableProvider;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use meltwater_batch::window::{SessionWindowExec, WindowAssignExec};
use meltwater_connectors::TableDef;
use meltwater_iceberg::codec as iceberg_codec;
use meltwater_iceberg::merge::MergeTarget;
use meltwater_iceberg::IcebergTable;
use meltwater_plan::source::{SourceTable, WatermarkDef};
use meltwater_plan::window::{WindowKind, WindowTvf};
use serde::{Deserialize, Serialize};

/// Ballista's own nodes, file formats and tables.
pub const TAG_BALLISTA: u8 = 0;
/// Iceberg tables, scans and writes ([`meltwater_iceberg::codec`]).
pub const TAG_ICEBERG: u8 = 1;
/// Connector tables, scans and sinks ([`meltwater_connectors::codec`]).
pub const TAG_CONNECTOR: u8 = 2;
/// The window table function node and its batch operators.
pub const TAG_WINDOW: u8 = 3;

fn split(buf: &[u8]) -> Result<(u8, &[u8])> {
    buf.split_first()
        .map(|(tag, rest)| (*tag, rest))
        .ok_or_else(|| DataFusionError::Internal("plan codec: empty encoding".into()))
}

fn tagged(tag: u8, body: Vec<u8>, buf: &mut Vec<u8>) {
    buf.push(tag);
    buf.extend(body);
}

fn json_error(e: serde_json::Error) -> DataFusionError {
    DataFusionError::Internal(format!("plan codec: {e}"))
}

/// A window kind on the wire.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum KindWire {
    Tumble { size: i64, offset: i64 },
    Hop { slide: i64, size: i64 },
    Cumulate { step: i64, size: i64 },
    Session { gap: i64 },
}

impl From<&WindowKind> for KindWire {
    fn from(k: &WindowKind) -> Self {
        match *k {
            WindowKind::Tumble { size, offset } => KindWire::Tumble { size, offset },
            WindowKind::Hop { slide, size } => KindWire::Hop { slide, size },
            WindowKind::Cumulate { step, size } => KindWire::Cumulate { step, size },
            WindowKind::Session { gap } => KindWire::Session { gap },
        }
    }
}

impl From<KindWire> for WindowKind {
    fn from(k: KindWire) -> Self {
        match k {
            KindWire::Tumble { size, offset } => WindowKind::Tumble { size, offset },
            KindWire::Hop { slide, size } => WindowKind::Hop { slide, size },
            KindWire::Cumulate { step, size } => WindowKind::Cumulate { step, size },
            KindWire::Session { gap } => WindowKind::Session { gap },
        }
    }
}

/// A column with its qualifier, as `(relation, name)`.
#[derive(Serialize, Deserialize)]
struct ColumnWire(Option<String>, String);

impl From<&Column> for ColumnWire {
    fn from(c: &Column) -> Self {
        ColumnWire(c.relation.as_ref().map(|r| r.to_string()), c.name.clone())
    }
}

impl From<ColumnWire> for Column {
    fn from(c: ColumnWire) -> Self {
        Column::new(c.0.as_deref().map(TableReference::parse_str), c.1)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case")]
enum WindowWire {
    /// The logical `WindowTvf` node.
    Tvf {
        window: KindWire,
        time_column: ColumnWire,
        partition_keys: Vec<ColumnWire>,
    },
    /// `WindowAssignExec` (TUMBLE, HOP, CUMULATE).
    Assign {
        window: KindWire,
        time_index: usize,
        #[serde(with = "meltwater_connectors::codec::ipc_schema")]
        schema: SchemaRef,
    },
    /// `SessionWindowExec`.
    Session {
        gap: i64,
        time_index: usize,
        keys: Vec<usize>,
        #[serde(with = "meltwater_connectors::codec::ipc_schema")]
        schema: SchemaRef,
    },
}

/// A connector table on the wire: its definition and watermark.
#[derive(Serialize, Deserialize)]
struct SourceWire {
    def: Vec<u8>,
    watermark: Option<(String, String)>,
}

/// The logical codec: connector and Iceberg tables, the window node, then Ballista's.
#[derive(Debug, Default)]
pub struct MeltwaterLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for MeltwaterLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        let (tag, body) = split(buf)?;
        if tag != TAG_WINDOW {
            return self.ballista.try_decode(body, inputs, ctx);
        }
        let WindowWire::Tvf {
            window,
            time_column,
            partition_keys,
        } = serde_json::from_slice(body).map_err(json_error)?
        else {
            return Err(DataFusionError::Internal(
                "plan codec: a window operator where the window node was expected".into(),
            ));
        };
        let [input] = inputs else {
            return Err(DataFusionError::Internal(
                "plan codec: the window node takes one input".into(),
            ));
        };
        let tvf = WindowTvf::try_new(
            input.clone(),
            window.into(),
            time_column.into(),
            partition_keys.into_iter().map(Column::from).collect(),
        )?;
        Ok(Extension {
            node: Arc::new(tvf),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(tvf) = node.node.as_any().downcast_ref::<WindowTvf>() {
            let wire = WindowWire::Tvf {
                window: (&tvf.kind).into(),
                time_column: (&tvf.time_column).into(),
                partition_keys: tvf.partition_keys.iter().map(ColumnWire::from).collect(),
            };
            tagged(
                TAG_WINDOW,
                serde_json::to_vec(&wire).map_err(json_error)?,
                buf,
            );
            return Ok(());
        }
        let mut body = Vec::new();
        self.ballista.try_encode(node, &mut body)?;
        tagged(TAG_BALLISTA, body, buf);
        Ok(())
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let (tag, body) = split(buf)?;
        match tag {
            TAG_ICEBERG => iceberg_codec::decode_provider(body),
            TAG_CONNECTOR => {
                let wire: SourceWire = serde_json::from_slice(body).map_err(json_error)?;
                let def = meltwater_connectors::codec::decode_table_def(&wire.def)?;
                let inner = meltwater_connectors::create_connector_table(def.clone())
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?;
                Ok(Arc::new(SourceTable {
                    name: def.name.clone(),
                    def,
                    inner,
                    watermark: wire
                        .watermark
                        .map(|(column, expr_sql)| WatermarkDef { column, expr_sql }),
                }))
            }
            _ => self
                .ballista
                .try_decode_table_provider(body, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(table) = node.as_any().downcast_ref::<IcebergTable>() {
            tagged(TAG_ICEBERG, iceberg_codec::encode_table(table)?, buf);
            return Ok(());
        }
        if let Some(target) = node.as_any().downcast_ref::<MergeTarget>() {
            tagged(
                TAG_ICEBERG,
                iceberg_codec::encode_merge_target(target)?,
                buf,
            );
            return Ok(());
        }
        if let Some(source) = node.as_any().downcast_ref::<SourceTable>() {
            let wire = SourceWire {
                def: meltwater_connectors::codec::encode_table_def(&absolute_paths(&source.def)?)?,
                watermark: source
                    .watermark
                    .as_ref()
                    .map(|w| (w.column.clone(), w.expr_sql.clone())),
            };
            tagged(
                TAG_CONNECTOR,
                serde_json::to_vec(&wire).map_err(json_error)?,
                buf,
            );
            return Ok(());
        }
        let mut body = Vec::new();
        self.ballista
            .try_encode_table_provider(table_ref, node, &mut body)
            .map_err(|e| {
                DataFusionError::NotImplemented(format!(
                    "table {table_ref} cannot be sent to a cluster: {e}"
                ))
            })?;
        tagged(TAG_BALLISTA, body, buf);
        Ok(())
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// The physical codec: Iceberg, connector and window operators, then Ballista's.
#[derive(Debug, Default)]
pub struct MeltwaterPhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for MeltwaterPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (tag, body) = split(buf)?;
        match tag {
            TAG_ICEBERG => iceberg_codec::decode_exec(body, inputs, ctx),
            TAG_CONNECTOR => meltwater_connectors::codec::decode_exec(body, inputs, ctx),
            TAG_WINDOW => decode_window_exec(body, inputs),
            _ => self.ballista.try_decode(body, inputs, ctx),
        }
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(body) = iceberg_codec::encode_exec(&node)? {
            tagged(TAG_ICEBERG, body, buf);
            return Ok(());
        }
        if let Some(body) = meltwater_connectors::codec::encode_exec(&node)? {
            tagged(TAG_CONNECTOR, body, buf);
            return Ok(());
        }
        if let Some(body) = encode_window_exec(&node)? {
            tagged(TAG_WINDOW, body, buf);
            return Ok(());
        }
        let name = node.name().to_string();
        let mut body = Vec::new();
        self.ballista.try_encode(node, &mut body).map_err(|_| {
            DataFusionError::NotImplemented(format!(
                "the operator {name} cannot be sent to a cluster's executors"
            ))
        })?;
        tagged(TAG_BALLISTA, body, buf);
        Ok(())
    }
}

/// The definition with a relative `path` option made absolute against this process's
/// working directory, which the job's paths are relative to (a cluster's processes run
/// in directories of their own).
fn absolute_paths(def: &TableDef) -> Result<TableDef> {
    let mut def = def.clone();
    if let Some(path) = def.options.get_mut("path") {
        let relative = !path.contains("://") && !std::path::Path::new(path.as_str()).is_absolute();
        if relative {
            let cwd = std::env::current_dir().map_err(|e| {
                DataFusionError::Plan(format!("cannot read the working directory: {e}"))
            })?;
            *path = cwd.join(path.as_str()).display().to_string();
        }
    }
    Ok(def)
}

fn encode_window_exec(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Vec<u8>>> {
    let any = node.as_any();
    let wire = if let Some(w) = any.downcast_ref::<WindowAssignExec>() {
        WindowWire::Assign {
            window: w.kind().into(),
            time_index: w.time_index(),
            schema: node.schema(),
        }
    } else if let Some(s) = any.downcast_ref::<SessionWindowExec>() {
        WindowWire::Session {
            gap: s.gap(),
            time_index: s.time_index(),
            keys: s.key_indices().to_vec(),
            schema: node.schema(),
        }
    } else {
        return Ok(None);
    };
    serde_json::to_vec(&wire).map(Some).map_err(json_error)
}

fn decode_window_exec(
    body: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> Result<Arc<dyn ExecutionPlan>> {
    let [input] = inputs else {
        return Err(DataFusionError::Internal(
            "plan codec: a window operator takes one input".into(),
        ));
    };
    let input = input.clone();
    Ok(match serde_json::from_slice(body).map_err(json_error)? {
        WindowWire::Assign {
            window,
            time_index,
            schema,
        } => Arc::new(WindowAssignExec::try_new(
            input,
            window.into(),
            time_index,
            schema,
        )?),
        WindowWire::Session {
            gap,
            time_index,
            keys,
            schema,
        } => Arc::new(SessionWindowExec::new(input, gap, time_index, keys, schema)),
        WindowWire::Tvf { .. } => {
            return Err(DataFusionError::Internal(
                "plan codec: the logical window node where an operator was expected".into(),
            ))
        }
    })
}
