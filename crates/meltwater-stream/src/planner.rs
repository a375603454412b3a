//! The stream planner: a statement's optimized logical plan → operators of the job's
//! [`StreamGraph`].
//!
//! - A scan of a connector table becomes a source (its splits read with positions).
//! - `Filter`/`Projection` become stateless steps over Arrow batches, chained.
//! - A window table function becomes a window-assign step; the aggregate above it
//!   (grouping by `window_start`, `window_end`) becomes an event-time window aggregate
//!   behind a hash exchange on the other group keys.
//! - Any other `GROUP BY` becomes an updating aggregate emitting a changelog.
//! - `INSERT INTO` an Iceberg table becomes the two-phase Iceberg sink; a query's rows
//!   go to a collecting sink, and an `ORDER BY`/`LIMIT` at its top applies to the
//!   final result.
//!
//! Operator ids are derived from the statement and the operator's position in the
//! plan, so the same job file maps state to the same operators on every run.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, WriteOp};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion::physical_plan::expressions::PhysicalSortExpr;
use meltwater_iceberg::IcebergTable;
use meltwater_plan::source::SourceTable;
use meltwater_plan::window::{WindowKind, WindowTvf};
use meltwater_plan::{PlannedJob, PlannedStatement};

use crate::aggregate::window::WindowSpec;
use crate::changelog::updating_schema;
use crate::graph::{
    NodeKind, Partitioning, SinkKind, SourceWatermark, Step, StreamGraph, StreamNode,
};

/// A statement the stream planner cannot run, with the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{loc}: {message}")]
pub struct StreamPlanError {
    pub file: String,
    pub loc: meltwater_sql::SourceLoc,
    pub message: String,
}

/// What is applied to a query's final rows: the `ORDER BY`, `LIMIT` and projection
/// above them at the top of the plan, innermost first.
#[derive(Debug, Clone)]
pub enum Finish {
    Sort {
        exprs: Vec<PhysicalSortExpr>,
        fetch: Option<usize>,
    },
    Limit {
        skip: usize,
        fetch: Option<usize>,
    },
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// A query planned for stream mode: where its rows collect, and what to do with them.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub statement: usize,
    pub rows: Arc<Mutex<Vec<RecordBatch>>>,
    /// The schema of the collected rows (without the op column).
    pub collected_schema: SchemaRef,
    pub finish: Vec<Finish>,
    /// The query's schema as the user sees it.
    pub schema: SchemaRef,
}

/// A job planned for stream mode.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub graph: StreamGraph,
    pub queries: Vec<QueryOutput>,
}

struct Builder<'a> {
    state: &'a SessionState,
    graph: StreamGraph,
    parallelism: usize,
    statement: usize,
    counter: usize,
    ttl_ms: Option<u64>,
}

/// Plans every statement of `job` (its INSERTs, then its queries) into one dataflow.
pub fn plan_stream(job: &PlannedJob, parallelism: usize) -> Result<StreamPlan, StreamPlanError> {
    let inserts: Vec<&PlannedStatement> = job.inserts.iter().collect();
    let queries: Vec<&PlannedStatement> = job.queries.iter().collect();
    plan_statements(job, &inserts, &queries, parallelism)
}

/// Plans the given statements of `job` into one dataflow.
pub fn plan_statements(
    job: &PlannedJob,
    inserts: &[&PlannedStatement],
    queries: &[&PlannedStatement],
    parallelism: usize,
) -> Result<StreamPlan, StreamPlanError> {
    let state = job.session.state();
    let ttl_ms = job
        .settings
        .get("table.exec.state.ttl")
        .and_then(|v| parse_duration_ms(v));
    let mut b = Builder {
        state: &state,
        graph: StreamGraph::default(),
        parallelism: parallelism.max(1),
        statement: 0,
        counter: 0,
        ttl_ms,
    };
    let mut outputs = Vec::new();
    let all: Vec<(usize, &PlannedStatement, bool)> = inserts
        .iter()
        .map(|s| (*s, false))
        .chain(queries.iter().map(|s| (*s, true)))
        .enumerate()
        .map(|(i, (s, q))| (i, s, q))
        .collect();
    for (i, s, is_query) in all {
        let at = |message: String| StreamPlanError {
            file: job.file.clone(),
            loc: s.loc,
            message,
        };
        b.statement = i + 1;
        b.counter = 0;
        let optimized = state.optimize(&s.plan).map_err(|e| at(e.to_string()))?;
        if is_query {
            let q = b.plan_query(&optimized, i).map_err(at)?;
            outputs.push(q);
        } else {
            b.plan(&optimized).map_err(at)?;
        }
    }
    Ok(StreamPlan {
        graph: b.graph,
        queries: outputs,
    })
}

/// `10 s`, `1min`, `500 ms`, `2h`, `1d`, or plain milliseconds.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let ms = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "min" | "mins" | "minute" | "minutes" | "m" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    };
    Some(n * ms)
}

fn physical(
    e: &Expr,
    schema: &DFSchema,
    state: &SessionState,
) -> Result<Arc<dyn PhysicalExpr>, String> {
    create_physical_expr(e, schema, state.execution_props()).map_err(|e| e.to_string())
}

impl Builder<'_> {
    fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("s{}-{kind}-{}", self.statement, self.counter)
    }

    fn add(&mut self, node: StreamNode) -> usize {
        self.graph.nodes.push(node);
        self.graph.nodes.len() - 1
    }

    fn updating(&self, i: usize) -> bool {
        self.graph.nodes[i].updating
    }

    /// Appends a stateless step after node `input`, into its calc operator if it is one.
    fn step(&mut self, input: usize, step: Step, schema: SchemaRef, label: &str) -> usize {
        let updating = self.updating(input);
        let out_schema = if updating {
            updating_schema(&schema)
        } else {
            schema
        };
        let consumers = self.graph.consumers(input);
        if consumers.is_empty() {
            if let NodeKind::Stateless(steps) = &mut self.graph.nodes[input].kind {
                steps.push(step);
                let n = &mut self.graph.nodes[input];
                n.schema = out_schema;
                n.name = format!("{}, {label}", n.name);
                return input;
            }
        }
        let id = self.next_id("calc");
        let parallelism = self.graph.nodes[input].parallelism;
        self.add(StreamNode {
            id,
            name: format!("calc: {label}"),
            kind: NodeKind::Stateless(vec![step]),
            parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            schema: out_schema,
            updating,
            state: None,
        })
    }

    fn plan_query(&mut self, plan: &LogicalPlan, statement: usize) -> Result<QueryOutput, String> {
        // Peel ORDER BY / LIMIT (and projections above them) off the top.
        let mut finish_nodes = Vec::new();
        let mut body = plan;
        loop {
            match body {
                LogicalPlan::Sort(s) => {
                    finish_nodes.push(body);
                    body = &s.input;
                }
                LogicalPlan::Limit(l) => {
                    finish_nodes.push(body);
                    body = &l.input;
                }
                LogicalPlan::Projection(p)
                    if matches!(
                        p.input.as_ref(),
                        LogicalPlan::Sort(_) | LogicalPlan::Limit(_)
                    ) =>
                {
                    finish_nodes.push(body);
                    body = &p.input;
                }
                _ => break,
            }
        }
        let mut finish = Vec::new();
        for node in finish_nodes.iter().rev() {
            match node {
                LogicalPlan::Sort(s) => {
                    let props = self.state.execution_props();
                    let exprs = datafusion::physical_expr::create_physical_sort_exprs(
                        &s.expr,
                        s.input.schema(),
                        props,
                    )
                    .map_err(|e| e.to_string())?;
                    finish.push(Finish::Sort {
                        exprs,
                        fetch: s.fetch,
                    });
                }
                LogicalPlan::Limit(l) => {
                    let skip = match l.get_skip_type().map_err(|e| e.to_string())? {
                        datafusion::logical_expr::SkipType::Literal(n) => n,
                        _ => return Err("LIMIT/OFFSET must be constants".into()),
                    };
                    let fetch = match l.get_fetch_type().map_err(|e| e.to_string())? {
                        datafusion::logical_expr::FetchType::Literal(n) => n,
                        _ => return Err("LIMIT/OFFSET must be constants".into()),
                    };
                    finish.push(Finish::Limit { skip, fetch });
                }
                LogicalPlan::Projection(p) => {
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| physical(e, p.input.schema(), self.state))
                        .collect::<Result<Vec<_>, _>>()?;
                    finish.push(Finish::Project {
                        exprs,
                        schema: Arc::new(p.schema.as_arrow().clone()),
                    });
                }
                _ => {}
            }
        }
        let input = self.plan(body)?;
        let rows = Arc::new(Mutex::new(Vec::new()));
        let id = self.next_id("collect");
        let updating = self.updating(input);
        let schema = self.graph.nodes[input].schema.clone();
        self.add(StreamNode {
            id,
            name: "sink: query result".into(),
            kind: NodeKind::Sink {
                target: "query".into(),
                kind: SinkKind::Collect(rows.clone()),
            },
            parallelism: self.graph.nodes[input].parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            schema: schema.clone(),
            updating,
            state: None,
        });
        Ok(QueryOutput {
            statement,
            rows,
            collected_schema: Arc::new(body.schema().as_arrow().clone()),
            finish,
            schema: Arc::new(plan.schema().as_arrow().clone()),
        })
    }

    /// Plans `plan` and returns the node producing its rows.
    fn plan(&mut self, plan: &LogicalPlan) -> Result<usize, String> {
        self.plan_in(plan, None)
    }

    /// Plans `plan`; `window` is set below a window aggregate, down to its window table
    /// function (through projections, filters and aliases), where a SESSION may assign
    /// windows because the aggregate above merges them.
    fn plan_in(&mut self, plan: &LogicalPlan, window: Option<&WindowTvf>) -> Result<usize, String> {
        match plan {
            LogicalPlan::Dml(dml) => {
                if !matches!(dml.op, WriteOp::Insert(_)) {
                    return Err(format!("{} is not supported in stream mode", dml.op));
                }
                if let WriteOp::Insert(datafusion::logical_expr::dml::InsertOp::Overwrite) = dml.op {
                    return Err("INSERT OVERWRITE is a batch operation; stream mode appends".into());
                }
                let input = self.plan(&dml.input)?;
                let provider = source_as_provider(&dml.target).map_err(|e| e.to_string())?;
                let Some(table) = provider.as_any().downcast_ref::<IcebergTable>() else {
                    return Err(format!(
                        "INSERT INTO {}: stream mode writes Iceberg tables only",
                        dml.table_name
                    ));
                };
                if self.updating(input) {
                    return Err(format!(
                        "INSERT INTO {}: the query produces an updating stream (an aggregate without a window updates its rows as input arrives); writing updates into an Iceberg table needs upserts, which are not supported yet — aggregate over a window (TUMBLE, HOP, CUMULATE, SESSION) to produce an append-only stream",
                        dml.table_name
                    ));
                }
                let table = Arc::new(IcebergTable::clone(table));
                let id = self.next_id("sink");
                let schema = self.graph.nodes[input].schema.clone();
                Ok(self.add(StreamNode {
                    id,
                    name: format!("sink: iceberg {}", dml.table_name),
                    kind: NodeKind::Sink {
                        target: dml.table_name.to_string(),
                        kind: SinkKind::Iceberg { table },
                    },
                    parallelism: self.graph.nodes[input].parallelism,
                    input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
                    schema,
                    updating: false,
                    state: Some("data files written since the last checkpoint".into()),
                }))
            }
            LogicalPlan::TableScan(scan) => {
                let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
                if let Some(iceberg) = provider.as_any().downcast_ref::<IcebergTable>() {
                    return self.iceberg_source(scan, iceberg);
                }
                let Some(table) = provider.as_any().downcast_ref::<SourceTable>() else {
                    return Err(format!(
                        "reading table '{}' in stream mode is not supported yet (stream mode reads connector and Iceberg tables)",
                        scan.table_name
                    ));
                };
                let source = table.inner.stream_source().map_err(|e| {
                    e.to_string().replace("table '': ", &format!("table '{}': ", table.name))
                })?;
                let full = table.def.schema.clone();
                let mut read: Vec<usize> = match &scan.projection {
                    Some(p) => p.clone(),
                    None => (0..full.fields().len()).collect(),
                };
                let mut watermark = None;
                if let Some(w) = &table.watermark {
                    let df_full = DFSchema::try_from(full.as_ref().clone()).map_err(|e| e.to_string())?;
                    let expr = self
                        .state
                        .create_logical_expr(&w.expr_sql, &df_full)
                        .map_err(|e| format!("WATERMARK FOR {} AS {}: {e}", w.column, w.expr_sql))?;
                    // Read the columns the watermark needs too.
                    for c in expr.column_refs() {
                        let i = full.index_of(&c.name).map_err(|e| e.to_string())?;
                        if !read.contains(&i) {
                            read.push(i);
                        }
                    }
                    let read_schema = Schema::new(
                        read.iter().map(|i| full.field(*i).clone()).collect::<Vec<_>>(),
                    );
                    let df_read = DFSchema::try_from(read_schema).map_err(|e| e.to_string())?;
                    watermark = Some(SourceWatermark {
                        expr: physical(&expr, &df_read, self.state)?,
                        text: format!("{} AS {}", w.column, w.expr_sql),
                    });
                }
                let name = format!(
                    "source: {} ({}){}",
                    table.name,
                    table.connector(),
                    watermark
                        .as_ref()
                        .map(|w| format!(", watermark {}", w.text))
                        .unwrap_or_default()
                );
                self.scan_source(scan, name, source, read, watermark)
            }
            LogicalPlan::Projection(p) => {
                let input = self.plan_in(&p.input, window)?;
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| physical(e, p.input.schema(), self.state))
                    .collect::<Result<Vec<_>, _>>()?;
                let schema: SchemaRef = Arc::new(p.schema.as_arrow().clone());
                Ok(self.step(
                    input,
                    Step::Project {
                        exprs,
                        schema: schema.clone(),
                    },
                    schema,
                    "project",
                ))
            }
            LogicalPlan::Filter(f) => {
                let input = self.plan_in(&f.input, window)?;
                let p = physical(&f.predicate, f.input.schema(), self.state)?;
                let schema = Arc::new(f.input.schema().as_arrow().clone());
                Ok(self.step(input, Step::Filter(p), schema, "filter"))
            }
            LogicalPlan::SubqueryAlias(a) => self.plan_in(&a.input, window),
            LogicalPlan::Extension(ext) => {
                let Some(tvf) = ext.node.as_any().downcast_ref::<WindowTvf>() else {
                    return Err(format!("{} is not supported in stream mode", ext.node.name()));
                };
                if window.is_none() && matches!(tvf.kind, WindowKind::Session { .. }) {
                    return Err("SESSION windows run in stream mode only under an aggregate grouping by window_start and window_end".into());
                }
                self.window_assign(tvf)
            }
            LogicalPlan::Aggregate(agg) => {
                let names: Vec<Option<String>> = agg
                    .group_expr
                    .iter()
                    .map(|e| match e {
                        Expr::Column(c) => Some(c.name.clone()),
                        _ => None,
                    })
                    .collect();
                let start = names.iter().position(|n| n.as_deref() == Some("window_start"));
                let end = names.iter().position(|n| n.as_deref() == Some("window_end"));
                let tvf = find_window(&agg.input);
                let input = match (start, end, tvf) {
                    // Sessions assign [t, t + gap) below an aggregate, which merges them.
                    (Some(_), Some(_), Some(tvf)) => self.plan_in(&agg.input, Some(tvf))?,
                    _ => self.plan(&agg.input)?,
                };
                let input_schema = agg.input.schema();
                let windowed = matches!((start, end, tvf), (Some(_), Some(_), Some(_)));
                if windowed && self.updating(input) {
                    return Err("a window aggregate over an updating stream is not supported; window the source rows instead".into());
                }
                let key_idx: Vec<usize> = (0..agg.group_expr.len())
                    .filter(|i| !windowed || (Some(*i) != start && Some(*i) != end))
                    .collect();
                let keys = key_idx
                    .iter()
                    .map(|i| physical(&agg.group_expr[*i], input_schema, self.state))
                    .collect::<Result<Vec<_>, _>>()?;
                let key_names: Vec<String> = key_idx
                    .iter()
                    .map(|i| agg.group_expr[*i].schema_name().to_string())
                    .collect();
                let (partitioning, parallelism) = if keys.is_empty() {
                    (Partitioning::Single, 1)
                } else {
                    (
                        Partitioning::Hash {
                            keys,
                            names: key_names.clone(),
                        },
                        self.parallelism,
                    )
                };
                let aggs: Vec<String> = agg.aggr_expr.iter().map(|e| e.schema_name().to_string()).collect();
                let schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
                if windowed {
                    let tvf = tvf.expect("windowed");
                    let id = self.next_id("window-agg");
                    Ok(self.add(StreamNode {
                        id,
                        name: format!("window aggregate {}: [{}]", tvf.kind, aggs.join(", ")),
                        kind: NodeKind::WindowAggregate {
                            aggregate: agg.clone(),
                            window: WindowSpec {
                                kind: tvf.kind,
                                window_start_group: start.expect("windowed"),
                                window_end_group: end.expect("windowed"),
                            },
                        },
                        parallelism,
                        input: Some((input, partitioning)),
                        extra_inputs: Vec::new(),
                        schema,
                        updating: false,
                        state: Some(format!(
                            "accumulators per open window and key [{}]",
                            key_names.join(", ")
                        )),
                    }))
                } else {
                    let id = self.next_id("group-agg");
                    Ok(self.add(StreamNode {
                        id,
                        name: format!("updating aggregate: [{}]", aggs.join(", ")),
                        kind: NodeKind::UpdatingAggregate {
                            aggregate: agg.clone(),
                            ttl_ms: self.ttl_ms,
                        },
                        parallelism,
                        input: Some((input, partitioning)),
                        extra_inputs: Vec::new(),
                        schema: updating_schema(&schema),
                        updating: true,
                        state: Some(format!(
                            "accumulators per key [{}]{}",
                            key_names.join(", "),
                            self.ttl_ms.map(|t| format!(", ttl {t} ms")).unwrap_or_default()
                        )),
                    }))
                }
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                let physical = futures::executor::block_on(
                    self.state.create_physical_plan(plan),
                )
                .map_err(|e| e.to_string())?;
                let source = Arc::new(crate::ops::values::ValuesSource::new(
                    physical,
                    Arc::new(datafusion::execution::TaskContext::from(self.state)),
                ));
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let n = schema.fields().len();
                let id = self.next_id("values");
                Ok(self.add(StreamNode {
                    id,
                    name: "source: constant rows".into(),
                    kind: NodeKind::Source {
                        source,
                        read_projection: None,
                        output_columns: (0..n).collect(),
                        watermark: None,
                    },
                    parallelism: 1,
                    input: None,
                    extra_inputs: Vec::new(),
                    schema,
                    updating: false,
                    state: Some("rows emitted".into()),
                }))
            }
            LogicalPlan::Sort(_) => Err("ORDER BY is supported in stream mode only at the top of a query (it applies to the final result)".into()),
            LogicalPlan::Limit(_) => Err("LIMIT is supported in stream mode only at the top of a query (it applies to the final result)".into()),
            LogicalPlan::Join(_) => Err("joins are not supported in stream mode yet".into()),
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.plan(i))
                    .collect::<Result<Vec<_>, _>>()?;
                if inputs.iter().any(|i| self.updating(*i)) {
                    return Err("UNION ALL of updating streams is not supported in stream mode yet".into());
                }
                let parallelism = self.parallelism;
                let edge = |b: &Self, i: usize| {
                    if b.graph.nodes[i].parallelism == parallelism {
                        (i, Partitioning::Forward)
                    } else {
                        (i, Partitioning::Rebalance)
                    }
                };
                let mut edges: Vec<(usize, Partitioning)> = inputs.iter().map(|i| edge(self, *i)).collect();
                let first = edges.remove(0);
                let id = self.next_id("union");
                Ok(self.add(StreamNode {
                    id,
                    name: format!("union all of {} inputs", inputs.len()),
                    kind: NodeKind::Union,
                    parallelism,
                    input: Some(first),
                    extra_inputs: edges,
                    schema: Arc::new(u.schema.as_arrow().clone()),
                    updating: false,
                    state: None,
                }))
            }
            other => Err(format!(
                "{} is not supported in stream mode yet",
                other.display().to_string().split(':').next().unwrap_or("this operation")
            )),
        }
    }

    /// An Iceberg table read in stream mode: the snapshot current at planning, file by
    /// file (a bounded source; following new snapshots comes later).
    fn iceberg_source(
        &mut self,
        scan: &datafusion::logical_expr::TableScan,
        table: &IcebergTable,
    ) -> Result<usize, String> {
        let full = datafusion::catalog::TableProvider::schema(table);
        let read: Vec<usize> = match &scan.projection {
            Some(p) => p.clone(),
            None => (0..full.fields().len()).collect(),
        };
        self.scan_source(
            scan,
            format!("source: {} (iceberg snapshot)", table.name()),
            table.stream_source(),
            read,
            None,
        )
    }

    /// Adds a source reading `scan`'s table: columns `read` (the scan's projection, then
    /// any the watermark needs), emitting the scan's columns; then the filters pushed
    /// into the scan, applied after it.
    fn scan_source(
        &mut self,
        scan: &datafusion::logical_expr::TableScan,
        name: String,
        source: Arc<dyn meltwater_connectors::stream::StreamSource>,
        read: Vec<usize>,
        watermark: Option<SourceWatermark>,
    ) -> Result<usize, String> {
        let id = self.next_id("source");
        let mut node = self.add(StreamNode {
            id,
            name,
            kind: NodeKind::Source {
                source,
                read_projection: Some(read),
                output_columns: (0..scan.projected_schema.fields().len()).collect(),
                watermark,
            },
            parallelism: self.parallelism,
            input: None,
            extra_inputs: Vec::new(),
            schema: Arc::new(scan.projected_schema.as_arrow().clone()),
            updating: false,
            state: Some("split positions".into()),
        });
        if let Some(pred) = scan.filters.iter().cloned().reduce(|a, b| a.and(b)) {
            let p = physical(&pred, &scan.projected_schema, self.state)?;
            let schema = self.graph.nodes[node].schema.clone();
            node = self.step(node, Step::Filter(p), schema, "filter");
        }
        Ok(node)
    }

    fn window_assign(&mut self, tvf: &WindowTvf) -> Result<usize, String> {
        let input = self.plan(&tvf.input)?;
        if self.updating(input) {
            return Err("window functions over an updating stream are not supported".into());
        }
        let time_index = tvf
            .input
            .schema()
            .index_of_column(&tvf.time_column)
            .map_err(|e| e.to_string())?;
        let schema: SchemaRef = Arc::new(
            datafusion::logical_expr::UserDefinedLogicalNodeCore::schema(tvf)
                .as_arrow()
                .clone(),
        );
        let id = self.next_id("window-assign");
        let parallelism = self.graph.nodes[input].parallelism;
        Ok(self.add(StreamNode {
            id,
            name: format!("assign windows {} on {}", tvf.kind, tvf.time_column.name),
            kind: NodeKind::WindowAssign {
                kind: tvf.kind,
                time_index,
            },
            parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            schema,
            updating: false,
            state: None,
        }))
    }
}

/// The window TVF under an aggregate, through projections, filters and aliases.
fn find_window(plan: &LogicalPlan) -> Option<&WindowTvf> {
    match plan {
        LogicalPlan::Extension(ext) => ext.node.as_any().downcast_ref::<WindowTvf>(),
        LogicalPlan::Projection(p) => find_window(&p.input),
        LogicalPlan::Filter(f) => find_window(&f.input),
        LogicalPlan::SubqueryAlias(a) => find_window(&a.input),
        _ => None,
    }
}
