//! The stream planner: a statement's optimized logical plan → operators of the job's
//! [`StreamGraph`].
//!
//! - A scan of a connector table becomes a source (its splits read with positions).
//! - `Filter`/`Projection` become stateless steps over Arrow batches, chained.
//! - A window table function becomes a window-assign step; the aggregate above it
//!   (grouping by `window_start`, `window_end`) becomes an event-time window aggregate
//!   behind a hash exchange on the other group keys. A SESSION without such an
//!   aggregate becomes a keyed operator holding each session's rows until it closes.
//! - Any other `GROUP BY` becomes an updating aggregate emitting a changelog.
//! - A join becomes a regular stream join holding both inputs in keyed state, behind
//!   hash exchanges on the equi-join keys.
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
    /// `iceberg.source.monitor-interval`: Iceberg tables read in stream mode follow their
    /// appends at this interval.
    iceberg_monitor_ms: Option<u64>,
    /// `state.memory-budget`: state bytes per subtask of a stateful operator before it
    /// spills.
    memory_budget: Option<usize>,
    /// Set while planning the input of a window aggregate whose source tables send late
    /// rows to a side output: the source columns every row carries to the aggregate.
    carry: Option<Arc<LateCarry>>,
    /// The stateless operators added only to carry late-row columns: named apart
    /// (`s<statement>-late-carry-<n>`) so that the other operators' ids, and with them
    /// their state, do not depend on whether a side output is configured.
    carry_nodes: Vec<usize>,
    /// The carry operators of the current statement so far.
    carry_counter: usize,
}

/// The source columns a window aggregate's input rows carry for its late rows (under
/// `'scan.late-records' = 'side-output'`), so that a late row is the source's row.
///
/// Projection pushdown leaves the aggregate only the columns its query reads (and
/// whatever the query computes from them); the late table wants the rows as the source
/// declares them. So every operator between the source scan and the aggregate passes
/// these columns along after its own: the scan reads them, projections and filters keep
/// them, window assignment keeps them last. The aggregate's own expressions index its
/// input's leading columns and never see them; its late rows are taken whole, and the
/// late-rows projection picks the carried columns out. Only the late table's columns
/// travel (taken from each source by name and cast to the late table's types at the
/// scan), and only when a side output is configured.
#[derive(Debug)]
struct LateCarry {
    /// The source table whose option names the late table, and the option's value.
    source: String,
    target: String,
    /// The late table's columns that come from the source rows (all but the window
    /// bounds), with the late table's names and types.
    columns: Vec<datafusion::arrow::datatypes::FieldRef>,
}

/// Late-table columns that hold the bounds of the window a row was late for rather than
/// a source column.
const LATE_WINDOW_COLUMNS: [&str; 2] = ["window_start", "window_end"];

impl LateCarry {
    /// The carried columns' fields inside the pipeline: nullable, renamed so they cannot
    /// be mistaken for the query's own columns.
    fn fields(&self) -> Vec<datafusion::arrow::datatypes::Field> {
        self.columns
            .iter()
            .map(|c| {
                datafusion::arrow::datatypes::Field::new(
                    format!("__late_row.{}", c.name()),
                    c.data_type().clone(),
                    true,
                )
            })
            .collect()
    }

    /// `schema` (a plan node's columns) followed by the carried columns.
    fn extend(&self, schema: &Schema) -> SchemaRef {
        let mut fields: Vec<datafusion::arrow::datatypes::Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(self.fields());
        Arc::new(Schema::new(fields))
    }

    /// References to the carried columns of a batch whose first `leading` columns are a
    /// plan node's own.
    fn columns_after(&self, leading: usize) -> Vec<Arc<dyn PhysicalExpr>> {
        self.fields()
            .iter()
            .enumerate()
            .map(|(k, f)| {
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    f.name(),
                    leading + k,
                )) as Arc<dyn PhysicalExpr>
            })
            .collect()
    }

    /// The error for a plan node below the window that is not a source's rows.
    fn not_source_rows(&self, what: &str) -> String {
        format!(
            "'{}' = '{}' of table '{}': a late row is the row of its source table, and this window reads {what}; window the source tables' rows directly (projections, filters and UNION ALL of them) or use '{}' = 'drop'",
            meltwater_connectors::LATE_RECORDS_TABLE,
            self.target,
            self.source,
            meltwater_connectors::LATE_RECORDS
        )
    }
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
    // A job-wide setting's error: the job file, at its start (SET statements are merged).
    let setting_error = |message: String| StreamPlanError {
        file: job.file.clone(),
        loc: meltwater_sql::SourceLoc { line: 1, column: 1 },
        message,
    };
    // A setting parsed by `parse` into a positive value, `expected` naming valid values.
    let positive = |key: &str, parse: fn(&str) -> Option<u64>, expected: &str| {
        job.settings
            .get(key)
            .map(|v| {
                parse(v).filter(|n| *n > 0).ok_or_else(|| {
                    setting_error(format!("SET '{key}': expected {expected}, got '{v}'"))
                })
            })
            .transpose()
    };
    let iceberg_monitor_ms = positive(
        "iceberg.source.monitor-interval",
        parse_duration_ms,
        "a duration such as '10 s'",
    )?;
    let memory_budget = positive(
        "state.memory-budget",
        |v| parse_bytes(v).map(|b| b as u64),
        "a size such as '256 MiB' or '2 GiB'",
    )?
    .map(|b| b as usize);
    let mut b = Builder {
        state: &state,
        graph: StreamGraph::default(),
        parallelism: parallelism.max(1),
        statement: 0,
        counter: 0,
        ttl_ms,
        iceberg_monitor_ms,
        memory_budget,
        carry: None,
        carry_nodes: Vec::new(),
        carry_counter: 0,
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
        b.carry_counter = 0;
        let optimized = state.optimize(&s.plan).map_err(|e| at(e.to_string()))?;
        if is_query {
            let q = b.plan_query(&optimized, i).map_err(at)?;
            outputs.push(q);
        } else {
            b.plan(&optimized).map_err(at)?;
        }
    }
    let mut graph = b.graph;
    apply_operator_settings(&mut graph, &job.settings).map_err(setting_error)?;
    Ok(StreamPlan {
        graph,
        queries: outputs,
    })
}

/// The prefix of per-operator settings: `SET 'operator.<id>.parallelism' = '2'` and
/// `SET 'operator.<id>.uid' = 'name'`, where `<id>` is the id `explain --mode stream`
/// shows.
pub const OPERATOR_SETTING_PREFIX: &str = "operator.";

/// Applies per-operator settings to a planned graph:
///
/// - `operator.<id>.parallelism`: the operator's parallelism. Forward edges between
///   operators whose parallelism now differs become rebalancing edges (append-only
///   streams) or hash edges on all columns (updating streams, so a row's retraction
///   follows the row it retracts).
/// - `operator.<id>.uid`: the name its state is stored under instead of the id derived
///   from its plan position, so state survives a change of the job's structure.
pub fn apply_operator_settings(
    graph: &mut StreamGraph,
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let ids: Vec<String> = graph.nodes.iter().map(|n| n.id.clone()).collect();
    let planned: Vec<usize> = graph.nodes.iter().map(|n| n.parallelism).collect();
    let mut explicit = vec![false; ids.len()];
    let mut uids: Vec<(usize, String)> = Vec::new();
    for (key, value) in settings {
        let Some(rest) = key.strip_prefix(OPERATOR_SETTING_PREFIX) else {
            continue;
        };
        let Some((id, what)) = rest.rsplit_once('.') else {
            return Err(format!(
                "SET '{key}': expected 'operator.<id>.parallelism' or 'operator.<id>.uid'"
            ));
        };
        let Some(i) = ids.iter().position(|n| n == id) else {
            return Err(format!(
                "SET '{key}': the job has no operator '{id}' (its operators: {}; see `meltwater explain --mode stream`)",
                ids.join(", ")
            ));
        };
        match what {
            "parallelism" => {
                let p = value
                    .parse::<usize>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        format!("SET '{key}': must be a positive whole number, got '{value}'")
                    })?;
                let node = &graph.nodes[i];
                let single = node
                    .input
                    .iter()
                    .chain(&node.extra_inputs)
                    .any(|(_, part)| matches!(part, Partitioning::Single));
                if single && p != 1 {
                    return Err(format!(
                        "SET '{key}': {} runs with parallelism 1 (it has no keys to partition by)",
                        node.name
                    ));
                }
                graph.nodes[i].parallelism = p;
                explicit[i] = true;
            }
            "uid" => {
                if value.trim().is_empty() {
                    return Err(format!("SET '{key}': the uid is empty"));
                }
                uids.push((i, value.trim().to_string()));
            }
            other => {
                return Err(format!(
                    "SET '{key}': unknown operator setting '{other}' (valid: parallelism, uid)"
                ))
            }
        }
    }
    for (i, uid) in uids {
        if graph
            .nodes
            .iter()
            .enumerate()
            .any(|(j, n)| j != i && n.id == uid)
        {
            return Err(format!(
                "SET 'operator.{}.uid': '{uid}' names another operator too",
                ids[i]
            ));
        }
        graph.nodes[i].id = uid;
    }
    // Operators planned to run like their input (forward edge, same parallelism) follow
    // its new parallelism unless set themselves (nodes come after their inputs).
    for i in 0..graph.nodes.len() {
        if let Some((from, Partitioning::Forward)) = &graph.nodes[i].input {
            if !explicit[i] && planned[i] == planned[*from] {
                graph.nodes[i].parallelism = graph.nodes[*from].parallelism;
            }
        }
    }
    // Forward edges only join subtasks one to one.
    for i in 0..graph.nodes.len() {
        let p = graph.nodes[i].parallelism;
        let mut edges: Vec<(usize, Partitioning)> = graph.nodes[i]
            .input
            .iter()
            .chain(&graph.nodes[i].extra_inputs)
            .cloned()
            .collect();
        for (from, part) in edges.iter_mut() {
            let up = &graph.nodes[*from];
            if matches!(part, Partitioning::Forward) && up.parallelism != p {
                *part = if up.updating {
                    let data = up.schema.fields().len() - 1;
                    Partitioning::Hash {
                        keys: (0..data)
                            .map(|c| {
                                Arc::new(datafusion::physical_expr::expressions::Column::new(
                                    up.schema.field(c).name(),
                                    c,
                                )) as Arc<dyn PhysicalExpr>
                            })
                            .collect(),
                        names: vec!["all columns".into()],
                    }
                } else {
                    Partitioning::Rebalance
                };
            }
        }
        let node = &mut graph.nodes[i];
        if node.input.is_some() {
            node.input = Some(edges.remove(0));
            node.extra_inputs = edges;
        }
    }
    Ok(())
}

/// `512 KiB`, `256 MiB`, `2 GiB`, `1 GB` (powers of 1024 either way), or plain bytes.
pub fn parse_bytes(v: &str) -> Option<usize> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: usize = num.parse().ok()?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `10 s`, `1min`, `500 ms`, `2h`, `1d`, or plain milliseconds (the syntax connector
/// options use); `None` when invalid.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    meltwater_connectors::parse_duration_ms(v).ok()
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

    /// The columns of a node planned from a plan node with columns `schema`: those, then
    /// the columns late rows carry when planning under a side output.
    fn carried_schema(&self, schema: &Schema) -> SchemaRef {
        match &self.carry {
            Some(carry) => carry.extend(schema),
            None => Arc::new(schema.clone()),
        }
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
        if consumers.is_empty() && !self.carry_nodes.contains(&input) {
            if let NodeKind::Stateless(steps) = &mut self.graph.nodes[input].kind {
                steps.push(step);
                let n = &mut self.graph.nodes[input];
                n.schema = out_schema;
                n.name = format!("{}, {label}", n.name);
                return input;
            }
        }
        let id = self.next_id("calc");
        self.calc(id, input, step, out_schema, label)
    }

    /// A step of the columns late rows carry (see [`LateCarry`]): appended like
    /// [`Self::step`], but an operator of its own is a carry operator.
    fn carry_step(&mut self, input: usize, step: Step, schema: SchemaRef, label: &str) -> usize {
        let consumers = self.graph.consumers(input);
        let mergeable = consumers.is_empty()
            && !self.carry_nodes.contains(&input)
            && matches!(self.graph.nodes[input].kind, NodeKind::Stateless(_));
        if mergeable {
            return self.step(input, step, schema, label);
        }
        self.carry_counter += 1;
        let id = format!("s{}-late-carry-{}", self.statement, self.carry_counter);
        let out_schema = if self.updating(input) {
            updating_schema(&schema)
        } else {
            schema
        };
        let node = self.calc(id, input, step, out_schema, label);
        self.carry_nodes.push(node);
        node
    }

    /// A stateless operator `id` running `step` after `input`, emitting `out_schema`
    /// (with the op column when `input` is updating).
    fn calc(
        &mut self,
        id: String,
        input: usize,
        step: Step,
        out_schema: SchemaRef,
        label: &str,
    ) -> usize {
        let updating = self.updating(input);
        let parallelism = self.graph.nodes[input].parallelism;
        self.add(StreamNode {
            id,
            name: format!("calc: {label}"),
            kind: NodeKind::Stateless(vec![step]),
            parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            side_input: false,
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
            side_input: false,
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
        if let Some(carry) = &self.carry {
            let what = match plan {
                LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::Extension(_) => None,
                LogicalPlan::Aggregate(_) => Some("the rows of an aggregate"),
                LogicalPlan::Join(_) => Some("the rows of a join"),
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Some("constant rows"),
                _ => Some("rows computed from other rows"),
            };
            if let Some(what) = what {
                return Err(carry.not_source_rows(what));
            }
        }
        match plan {
            LogicalPlan::Dml(dml) => {
                match dml.op {
                    WriteOp::Insert(_) => {}
                    WriteOp::Delete | WriteOp::Update => {
                        return Err(format!(
                            "{} {}: a row-level {} is a batch operation; run the job with --mode batch",
                            dml.op.name().to_uppercase(),
                            dml.table_name,
                            dml.op.name().to_lowercase()
                        ))
                    }
                    _ => return Err(format!("{} is not supported in stream mode", dml.op)),
                }
                if let WriteOp::Insert(datafusion::logical_expr::dml::InsertOp::Overwrite) = dml.op {
                    return Err("INSERT OVERWRITE is a batch operation; stream mode appends".into());
                }
                let input = self.plan(&dml.input)?;
                let provider = source_as_provider(&dml.target).map_err(|e| e.to_string())?;
                if let Some(t) = provider.as_any().downcast_ref::<SourceTable>() {
                    return self.connector_sink(input, &dml.table_name.to_string(), t);
                }
                let Some(table) = provider.as_any().downcast_ref::<IcebergTable>() else {
                    return Err(format!(
                        "INSERT INTO {}: stream mode writes Iceberg, print and blackhole tables",
                        dml.table_name
                    ));
                };
                self.iceberg_sink(input, &dml.table_name.to_string(), table)
            }
            LogicalPlan::TableScan(scan) => {
                let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
                if let Some(iceberg) = provider.as_any().downcast_ref::<IcebergTable>() {
                    if let Some(carry) = &self.carry {
                        return Err(carry.not_source_rows(&format!(
                            "Iceberg table '{}' too, which has no late-rows policy",
                            iceberg.name()
                        )));
                    }
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
                let idle_timeout_ms = meltwater_connectors::watermark_idle_timeout_ms(
                    &table.def,
                    "source",
                )
                .map_err(|e| e.to_string())?;
                let name = match idle_timeout_ms {
                    Some(ms) => format!("{name}, idle after {ms} ms"),
                    None => name,
                };
                // Late rows carry source columns the query may not read: read them too.
                let carried_columns = match &self.carry {
                    Some(carry) => carried_source_columns(carry, &table.name, &full)?,
                    None => Vec::new(),
                };
                let carried: Vec<(usize, datafusion::arrow::datatypes::Field)> = carried_columns
                    .iter()
                    .map(|&i| {
                        let at = match read.iter().position(|r| *r == i) {
                            Some(at) => at,
                            None => {
                                read.push(i);
                                read.len() - 1
                            }
                        };
                        (at, full.field(i).clone())
                    })
                    .collect();
                let node = self.scan_source(scan, name, source, read, watermark, idle_timeout_ms, &carried)?;
                if let Some(carry) = self.carry.clone() {
                    // The carried columns with the late table's names and types: a UNION
                    // ALL of several sources then carries the same columns from each.
                    let emitted = scan.projected_schema.fields().len();
                    let mut exprs: Vec<Arc<dyn PhysicalExpr>> = (0..emitted)
                        .map(|i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                scan.projected_schema.field(i).name(),
                                i,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    for (k, column) in carry.columns.iter().enumerate() {
                        let read_type = full.field(carried_columns[k]).data_type();
                        let mut expr: Arc<dyn PhysicalExpr> =
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                column.name(),
                                emitted + k,
                            ));
                        if read_type != column.data_type() {
                            expr = Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
                                expr,
                                column.data_type().clone(),
                                None,
                            ));
                        }
                        exprs.push(expr);
                    }
                    let schema = carry.extend(scan.projected_schema.as_arrow());
                    return Ok(self.carry_step(
                        node,
                        Step::Project {
                            exprs,
                            schema: schema.clone(),
                        },
                        schema,
                        "carry late-row columns",
                    ));
                }
                Ok(node)
            }
            LogicalPlan::Projection(p) => {
                let input = self.plan_in(&p.input, window)?;
                let mut exprs = p
                    .expr
                    .iter()
                    .map(|e| physical(e, p.input.schema(), self.state))
                    .collect::<Result<Vec<_>, _>>()?;
                let schema = self.carried_schema(p.schema.as_arrow());
                if let Some(carry) = &self.carry {
                    exprs.extend(carry.columns_after(p.input.schema().fields().len()));
                }
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
                let schema = self.carried_schema(f.input.schema().as_arrow());
                Ok(self.step(input, Step::Filter(p), schema, "filter"))
            }
            LogicalPlan::SubqueryAlias(a) => self.plan_in(&a.input, window),
            LogicalPlan::Extension(ext) => {
                let Some(tvf) = ext.node.as_any().downcast_ref::<WindowTvf>() else {
                    return Err(format!("{} is not supported in stream mode", ext.node.name()));
                };
                if window.is_none() && matches!(tvf.kind, WindowKind::Session { .. }) {
                    if late_records_table(&tvf.input)?.is_some() {
                        return Err(format!(
                            "'{}' = 'side-output' applies to window aggregates; a SESSION window without an aggregate drops its late rows (use 'drop', or route them with CURRENT_WATERMARK)",
                            meltwater_connectors::LATE_RECORDS
                        ));
                    }
                    return self.session_rows(tvf);
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
                let windowed = matches!((start, end, tvf), (Some(_), Some(_), Some(_)));
                let key_idx: Vec<usize> = (0..agg.group_expr.len())
                    .filter(|i| !windowed || (Some(*i) != start && Some(*i) != end))
                    .collect();
                // A SESSION aggregate merges sessions per group key. Batch mode forms them
                // per PARTITION BY key, then groups: when those keys differ, sessions are
                // formed first (per PARTITION BY key) and the aggregate takes them as given.
                let sessions_assigned = match tvf {
                    Some(tvf) if windowed && matches!(tvf.kind, WindowKind::Session { .. }) => {
                        let mut group: Vec<String> = key_idx
                            .iter()
                            .map(|i| match &agg.group_expr[*i] {
                                Expr::Column(c) => c.name.clone(),
                                other => other.schema_name().to_string(),
                            })
                            .collect();
                        let mut part: Vec<String> =
                            tvf.partition_keys.iter().map(|c| c.name.clone()).collect();
                        group.sort();
                        part.sort();
                        group != part
                    }
                    _ => false,
                };
                // A side output for late rows: the input carries the source columns the
                // late table takes (see `LateCarry`).
                let late = match tvf {
                    Some(tvf) if windowed => match late_records_table(&tvf.input)? {
                        Some(_) if sessions_assigned => {
                            return Err(format!(
                                "'{}' = 'side-output': a SESSION window whose PARTITION BY keys differ from the GROUP BY keys forms its sessions before the aggregate, which drops late rows; group by the PARTITION BY keys or use 'drop'",
                                meltwater_connectors::LATE_RECORDS
                            ));
                        }
                        Some((source, target)) => Some(self.late_carry(source, target)?),
                        None => None,
                    },
                    _ => None,
                };
                let outer = std::mem::replace(
                    &mut self.carry,
                    late.as_ref().map(|(carry, _)| carry.clone()),
                );
                let input = match (start, end, tvf) {
                    // Sessions assign [t, t + gap) below an aggregate, which merges them.
                    (Some(_), Some(_), Some(tvf)) if !sessions_assigned => {
                        self.plan_in(&agg.input, Some(tvf))
                    }
                    _ => self.plan(&agg.input),
                };
                self.carry = outer;
                let input = input?;
                let input_schema = agg.input.schema();
                if windowed && self.updating(input) {
                    return Err("a window aggregate over an updating stream is not supported; window the source rows instead".into());
                }
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
                    let node = self.add(StreamNode {
                        id,
                        name: format!("window aggregate {}: [{}]", tvf.kind, aggs.join(", ")),
                        kind: NodeKind::WindowAggregate {
                            aggregate: agg.clone(),
                            window: WindowSpec {
                                kind: tvf.kind,
                                window_start_group: start.expect("windowed"),
                                window_end_group: end.expect("windowed"),
                                sessions_assigned,
                            },
                            memory_budget: self.memory_budget,
                        },
                        parallelism,
                        input: Some((input, partitioning)),
                        extra_inputs: Vec::new(),
                        side_input: false,
                        schema,
                        updating: false,
                        state: Some(format!(
                            "accumulators per open window and key [{}]",
                            key_names.join(", ")
                        )),
                    });
                    if let Some((carry, late_table)) = late {
                        let bounds = [start, end].map(|g| match &agg.group_expr[g.expect("windowed")] {
                            Expr::Column(c) => input_schema.index_of_column(c).map_err(|e| e.to_string()),
                            other => Err(format!("window bound {other} is not a column")),
                        });
                        let [start, end] = bounds;
                        self.late_rows_sink(node, input_schema, (start?, end?), &carry, late_table)?;
                    }
                    Ok(node)
                } else {
                    let id = self.next_id("group-agg");
                    Ok(self.add(StreamNode {
                        id,
                        name: format!("updating aggregate: [{}]", aggs.join(", ")),
                        kind: NodeKind::UpdatingAggregate {
                            aggregate: agg.clone(),
                            ttl_ms: self.ttl_ms,
                            memory_budget: self.memory_budget,
                        },
                        parallelism,
                        input: Some((input, partitioning)),
                        extra_inputs: Vec::new(),
                        side_input: false,
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
                        idle_timeout_ms: None,
                    },
                    parallelism: 1,
                    input: None,
                    extra_inputs: Vec::new(),
                    side_input: false,
                    schema,
                    updating: false,
                    state: Some("rows emitted".into()),
                }))
            }
            LogicalPlan::Sort(_) => Err("ORDER BY is supported in stream mode only at the top of a query (it applies to the final result)".into()),
            LogicalPlan::Limit(_) => Err("LIMIT is supported in stream mode only at the top of a query (it applies to the final result)".into()),
            LogicalPlan::Join(j) => self.join(j),
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
                    side_input: false,
                    schema: self.carried_schema(u.schema.as_arrow()),
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

    /// The late table `target` (`source`'s `'scan.late-records.table'`) and the source
    /// columns late rows must carry to fill it.
    fn late_carry(
        &self,
        source: String,
        target: String,
    ) -> Result<(Arc<LateCarry>, Arc<dyn datafusion::catalog::TableProvider>), String> {
        let option = meltwater_connectors::LATE_RECORDS_TABLE;
        let reference = datafusion::sql::TableReference::from(target.as_str());
        let provider = self
            .state
            .schema_for_ref(reference.clone())
            .ok()
            .and_then(|schema| {
                // Catalog tables load their metadata asynchronously (on the runtime's I/O).
                let lookup = schema.table(reference.table());
                let table = match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(|| h.block_on(lookup))
                    }
                    _ => futures::executor::block_on(lookup),
                };
                table.ok().flatten()
            })
            .ok_or_else(|| {
                format!("'{option}' = '{target}' of table '{source}': no table '{target}' in the job or its catalogs")
            })?;
        let columns = provider
            .schema()
            .fields()
            .iter()
            .filter(|f| !LATE_WINDOW_COLUMNS.contains(&f.name().as_str()))
            .cloned()
            .collect();
        let carry = LateCarry {
            source,
            target,
            columns,
        };
        Ok((Arc::new(carry), provider))
    }

    /// The side output of window aggregate `agg` (whose input has the columns of
    /// `input_schema`, `bounds` its `window_start` and `window_end`, then the columns
    /// `carry` describes): its late rows, projected onto the columns of the late table
    /// `provider`, into a sink of that table.
    fn late_rows_sink(
        &mut self,
        agg: usize,
        input_schema: &DFSchema,
        bounds: (usize, usize),
        carry: &LateCarry,
        provider: Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Result<usize, String> {
        let (source, target) = (carry.source.as_str(), carry.target.as_str());
        let option = meltwater_connectors::LATE_RECORDS_TABLE;
        let context = |e: String| format!("'{option}' = '{target}' of table '{source}': {e}");
        let carried_at = input_schema.fields().len();
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut fields = Vec::new();
        let mut carried = carry.columns.iter().enumerate();
        for column in provider.schema().fields() {
            let bound = match column.name().as_str() {
                "window_start" => Some(bounds.0),
                "window_end" => Some(bounds.1),
                _ => None,
            };
            let Some(i) = bound else {
                // A carried column (in the late table's order, of its type).
                let Some((k, _)) = carried.next() else {
                    return Err(context(format!(
                        "no carried column for '{}'",
                        column.name()
                    )));
                };
                exprs.push(Arc::new(
                    datafusion::physical_expr::expressions::Column::new(
                        column.name(),
                        carried_at + k,
                    ),
                ));
                fields.push(column.as_ref().clone().with_nullable(true));
                continue;
            };
            let field = input_schema.field(i);
            let mut expr: Arc<dyn PhysicalExpr> = Arc::new(
                datafusion::physical_expr::expressions::Column::new(column.name(), i),
            );
            // As an INSERT does: cast where the types differ (TIMESTAMP(3) to an Iceberg
            // table's microseconds).
            if field.data_type() != column.data_type() {
                if !datafusion::arrow::compute::can_cast_types(
                    field.data_type(),
                    column.data_type(),
                ) {
                    return Err(context(format!(
                        "its column '{}' has type {}, which the window bound's type {} cannot be cast to",
                        column.name(),
                        column.data_type(),
                        field.data_type()
                    )));
                }
                expr = Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
                    expr,
                    column.data_type().clone(),
                    None,
                ));
            }
            exprs.push(expr);
            fields.push(
                field
                    .as_ref()
                    .clone()
                    .with_name(column.name())
                    .with_data_type(column.data_type().clone()),
            );
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let id = self.next_id("late-rows");
        let parallelism = self.graph.nodes[agg].parallelism;
        let rows = self.add(StreamNode {
            id,
            name: format!("calc: late rows of {source}, project"),
            kind: NodeKind::Stateless(vec![Step::Project {
                exprs,
                schema: schema.clone(),
            }]),
            parallelism,
            input: Some((agg, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            side_input: true,
            schema,
            updating: false,
            state: None,
        });
        let any = provider.as_any();
        if let Some(t) = any.downcast_ref::<SourceTable>() {
            self.connector_sink(rows, target, t).map_err(context)
        } else if let Some(t) = any.downcast_ref::<IcebergTable>() {
            self.iceberg_sink(rows, target, t).map_err(context)
        } else {
            Err(context(format!("'{target}' is not a sink table")))
        }
    }

    /// `INSERT INTO` an Iceberg table: two-phase (files per checkpoint), upserting by
    /// its primary key when the input updates or the table asks for upserts.
    fn iceberg_sink(
        &mut self,
        input: usize,
        target: &str,
        table: &IcebergTable,
    ) -> Result<usize, String> {
        let updating = self.updating(input);
        let metadata = table.table().metadata();
        let upsert = updating || meltwater_iceberg::upsert::upsert_enabled(metadata);
        let key = if upsert {
            if meltwater_iceberg::upsert::primary_key(metadata).is_empty() {
                return Err(format!(
                    "INSERT INTO {}: the query produces an updating stream (an aggregate without a window, or an outer or anti join, changes rows it already emitted as input arrives), and the table has no primary key to apply the changes by — declare one with PRIMARY KEY (...) NOT ENFORCED so the sink upserts, or aggregate over a window (TUMBLE, HOP, CUMULATE, SESSION) or use an inner join to produce an append-only stream",
                    target
                ));
            }
            meltwater_iceberg::upsert::upsert_key(table.name(), metadata)
                .map_err(|e| format!("INSERT INTO {}: {e}", target))?
        } else {
            Vec::new()
        };
        let table = Arc::new(IcebergTable::clone(table));
        let id = self.next_id("sink");
        let schema = self.graph.nodes[input].schema.clone();
        // Upserts: every change of a key reaches the one subtask buffering that
        // key, in order (the input has the table's columns, by position).
        let table_columns: Vec<String> =
            datafusion::datasource::TableProvider::schema(table.as_ref())
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
        let partitioning = if upsert {
            let mut keys = Vec::new();
            for k in &key {
                let i = table_columns
                    .iter()
                    .position(|c| c == k)
                    .ok_or_else(|| format!("INSERT INTO {}: no column '{k}'", target))?;
                keys.push(
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        schema.field(i).name(),
                        i,
                    )) as Arc<dyn PhysicalExpr>,
                );
            }
            Partitioning::Hash {
                keys,
                names: key.clone(),
            }
        } else {
            Partitioning::Forward
        };
        Ok(self.add(StreamNode {
            id,
            name: if upsert {
                format!("sink: iceberg {} (upsert by {})", target, key.join(", "))
            } else {
                format!("sink: iceberg {}", target)
            },
            kind: NodeKind::Sink {
                target: target.to_string(),
                kind: SinkKind::Iceberg { table, upsert },
            },
            parallelism: self.graph.nodes[input].parallelism,
            input: Some((input, partitioning)),
            extra_inputs: Vec::new(),
            side_input: false,
            schema,
            updating: false,
            state: Some(if upsert {
                "the last change of each key since the last checkpoint, then its data and equality-delete files".into()
            } else {
                "data files written since the last checkpoint".into()
            }),
        }))
    }

    /// `INSERT INTO` a connector sink (`print`, `blackhole`): a sink on the input's
    /// subtasks, taking append-only and updating streams alike.
    fn connector_sink(
        &mut self,
        input: usize,
        target: &str,
        table: &SourceTable,
    ) -> Result<usize, String> {
        use meltwater_connectors::kafka::KafkaTable;
        use meltwater_connectors::sink_table::{SinkTable, SinkTarget};
        let node = &self.graph.nodes[input];
        let kind = if let Some(sink) = table.inner.as_any().downcast_ref::<SinkTable>() {
            match sink.target() {
                SinkTarget::Print(options) => SinkKind::Print {
                    table: target.to_string(),
                    options: options.clone(),
                },
                SinkTarget::Blackhole => SinkKind::Blackhole,
            }
        } else if let Some(kafka) = table.inner.as_any().downcast_ref::<KafkaTable>() {
            let options = kafka.sink_options().map_err(|e| e.to_string())?;
            if node.updating && kafka.primary_key().is_empty() && !options.change_events() {
                return Err(format!(
                    "INSERT INTO {target}: the query is an updating stream; a kafka table takes it as upserts by its PRIMARY KEY, and it has none (or write change events with 'format' = 'debezium-json')"
                ));
            }
            SinkKind::Kafka(options)
        } else {
            return Err(format!(
                "INSERT INTO {target}: the '{}' connector cannot be written to",
                table.connector()
            ));
        };
        let id = self.next_id("sink");
        let node = &self.graph.nodes[input];
        let (parallelism, schema, updating) =
            (node.parallelism, node.schema.clone(), node.updating);
        Ok(self.add(StreamNode {
            id,
            name: format!("sink: {} {target}", table.connector()),
            kind: NodeKind::Sink {
                target: target.to_string(),
                kind,
            },
            parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            side_input: false,
            schema,
            updating,
            state: None,
        }))
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
            match self.iceberg_monitor_ms {
                Some(ms) => format!(
                    "source: {} (iceberg snapshot, then appends every {ms} ms)",
                    table.name()
                ),
                None => format!("source: {} (iceberg snapshot)", table.name()),
            },
            table.stream_source(self.iceberg_monitor_ms),
            read,
            None,
            None,
            &[],
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
        idle_timeout_ms: Option<u64>,
        carried: &[(usize, datafusion::arrow::datatypes::Field)],
    ) -> Result<usize, String> {
        let id = self.next_id("source");
        let emitted = scan.projected_schema.fields().len();
        let mut output_columns: Vec<usize> = (0..emitted).collect();
        let mut fields: Vec<datafusion::arrow::datatypes::Field> = scan
            .projected_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        // Then the columns late rows carry, as read (`carried`: their positions in
        // `read` and fields).
        for (at, field) in carried {
            output_columns.push(*at);
            fields.push(field.clone());
        }
        let data_schema: SchemaRef = Arc::new(Schema::new(fields));
        let mut schema = data_schema.clone();
        // A changelog source (debezium-json) emits an updating stream: the read batch's
        // last column is the op column.
        let updating = source.changelog();
        if updating {
            output_columns.push(read.len());
            schema = updating_schema(&schema);
        }
        let mut node = self.add(StreamNode {
            id,
            name,
            kind: NodeKind::Source {
                source,
                read_projection: Some(read),
                output_columns,
                watermark,
                idle_timeout_ms,
            },
            parallelism: self.parallelism,
            input: None,
            extra_inputs: Vec::new(),
            side_input: false,
            schema,
            updating,
            state: Some("split positions".into()),
        });
        if let Some(pred) = scan.filters.iter().cloned().reduce(|a, b| a.and(b)) {
            let p = physical(&pred, &scan.projected_schema, self.state)?;
            node = self.step(node, Step::Filter(p), data_schema, "filter");
        }
        Ok(node)
    }

    /// A regular join: both inputs hash-partitioned by the equi-join keys (or, without
    /// keys, all rows to one subtask), kept in state and joined as rows arrive.
    fn join(&mut self, j: &datafusion::logical_expr::Join) -> Result<usize, String> {
        use datafusion::common::{JoinType, NullEquality};
        use datafusion::logical_expr::ExprSchemable;
        if matches!(j.join_type, JoinType::LeftMark | JoinType::RightMark) {
            return Err("this subquery (a mark join) is not supported in stream mode yet".into());
        }
        if j.null_aware {
            return Err("NOT IN (subquery) is not supported in stream mode yet; NOT EXISTS gives the same rows when the subquery has no NULLs".into());
        }
        let left = self.plan(&j.left)?;
        let right = self.plan(&j.right)?;
        let (ls, rs) = (j.left.schema(), j.right.schema());
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        let mut names = (Vec::new(), Vec::new());
        for (l, r) in &j.on {
            let lt = l.get_type(ls).map_err(|e| e.to_string())?;
            let rt = r.get_type(rs).map_err(|e| e.to_string())?;
            // Equal values must hash alike on both sides: compare in one type.
            let (l, r) = if lt == rt {
                (l.clone(), r.clone())
            } else {
                let t =
                    datafusion::logical_expr::type_coercion::binary::comparison_coercion(&lt, &rt)
                        .ok_or_else(|| {
                            format!("join keys {l} ({lt}) and {r} ({rt}) cannot be compared")
                        })?;
                (
                    l.clone().cast_to(&t, ls).map_err(|e| e.to_string())?,
                    r.clone().cast_to(&t, rs).map_err(|e| e.to_string())?,
                )
            };
            names.0.push(l.schema_name().to_string());
            names.1.push(r.schema_name().to_string());
            left_keys.push(physical(&l, ls, self.state)?);
            right_keys.push(physical(&r, rs, self.state)?);
        }
        let filter = match &j.filter {
            Some(f) => {
                let joined = ls.join(rs).map_err(|e| e.to_string())?;
                Some(physical(f, &joined, self.state)?)
            }
            None => None,
        };
        let (left_updating, right_updating) = (self.updating(left), self.updating(right));
        let updating =
            crate::ops::join::JoinSpec::updating(j.join_type, left_updating, right_updating);
        let output_schema: SchemaRef = Arc::new(j.schema.as_arrow().clone());
        let spec = crate::ops::join::JoinSpec {
            join_type: j.join_type,
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            filter,
            null_equals_null: j.null_equality == NullEquality::NullEqualsNull,
            left_schema: Arc::new(ls.as_arrow().clone()),
            right_schema: Arc::new(rs.as_arrow().clone()),
            left_updating,
            right_updating,
            output_schema: output_schema.clone(),
            output_updating: updating,
            ttl_ms: self.ttl_ms,
            memory_budget: self.memory_budget,
        };
        let (lp, rp, parallelism) = if left_keys.is_empty() {
            (Partitioning::Single, Partitioning::Single, 1)
        } else {
            (
                Partitioning::Hash {
                    keys: left_keys,
                    names: names.0.clone(),
                },
                Partitioning::Hash {
                    keys: right_keys,
                    names: names.1.clone(),
                },
                self.parallelism,
            )
        };
        let on = if names.0.is_empty() {
            "no equi-join keys".to_string()
        } else {
            names
                .0
                .iter()
                .zip(&names.1)
                .map(|(l, r)| format!("{l} = {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let id = self.next_id("join");
        Ok(self.add(StreamNode {
            id,
            name: format!(
                "{} join on {on}{}",
                j.join_type,
                if j.filter.is_some() {
                    " with a residual condition"
                } else {
                    ""
                }
            ),
            kind: NodeKind::Join(spec),
            parallelism,
            input: Some((left, lp)),
            extra_inputs: vec![(right, rp)],
            side_input: false,
            schema: if updating {
                updating_schema(&output_schema)
            } else {
                output_schema
            },
            updating,
            state: Some(format!(
                "rows of both inputs by key [{}] with their match counts{}",
                names.0.join(", "),
                self.ttl_ms
                    .map(|t| format!(", ttl {t} ms"))
                    .unwrap_or_default()
            )),
        }))
    }

    /// Whether node `i` or any operator upstream of it is a join.
    fn after_join(&self, i: usize) -> bool {
        let n = &self.graph.nodes[i];
        matches!(n.kind, NodeKind::Join(_))
            || n.input
                .iter()
                .chain(&n.extra_inputs)
                .any(|(from, _)| self.after_join(*from))
    }

    fn window_assign(&mut self, tvf: &WindowTvf) -> Result<usize, String> {
        let input = self.plan(&tvf.input)?;
        if self.updating(input) {
            return Err("window functions over an updating stream are not supported".into());
        }
        if self.after_join(input) {
            // A regular join emits a match whenever its second row arrives, so its rows
            // carry no watermark guarantee: windows over them would drop matches as late.
            return Err("window functions over the output of a regular join are not supported in stream mode; window each input before joining".into());
        }
        let time_index = tvf
            .input
            .schema()
            .index_of_column(&tvf.time_column)
            .map_err(|e| e.to_string())?;
        let tvf_schema: SchemaRef = Arc::new(
            datafusion::logical_expr::UserDefinedLogicalNodeCore::schema(tvf)
                .as_arrow()
                .clone(),
        );
        // The assigner appends the window columns to its input's; carried late-row
        // columns, last in the input, are moved back behind them below.
        let own = tvf.input.schema().fields().len();
        let window_fields = tvf_schema.fields().iter().skip(own);
        let schema: SchemaRef = match &self.carry {
            None => tvf_schema.clone(),
            Some(_) => Arc::new(Schema::new(
                self.graph.nodes[input]
                    .schema
                    .fields()
                    .iter()
                    .chain(window_fields)
                    .cloned()
                    .collect::<Vec<_>>(),
            )),
        };
        let id = self.next_id("window-assign");
        let parallelism = self.graph.nodes[input].parallelism;
        let node = self.add(StreamNode {
            id,
            name: format!("assign windows {} on {}", tvf.kind, tvf.time_column.name),
            kind: NodeKind::WindowAssign {
                kind: tvf.kind,
                time_index,
            },
            parallelism,
            input: Some((input, Partitioning::Forward)),
            extra_inputs: Vec::new(),
            side_input: false,
            schema,
            updating: false,
            state: None,
        });
        let Some(carry) = self.carry.clone() else {
            return Ok(node);
        };
        let carried = carry.columns.len();
        let column = |i: usize, f: &datafusion::arrow::datatypes::FieldRef| {
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                f.name(),
                i,
            )) as Arc<dyn PhysicalExpr>
        };
        let node_schema = self.graph.nodes[node].schema.clone();
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        for i in (0..own).chain(own + carried..node_schema.fields().len()) {
            exprs.push(column(i, &node_schema.fields()[i]));
        }
        exprs.extend(carry.columns_after(own));
        let schema = carry.extend(&tvf_schema);
        Ok(self.carry_step(
            node,
            Step::Project {
                exprs,
                schema: schema.clone(),
            },
            schema,
            "late-row columns last",
        ))
    }

    /// A SESSION window function without an aggregate merging its windows: a keyed
    /// operator behind a hash exchange on the PARTITION BY keys holds each session's rows
    /// until the watermark closes it.
    fn session_rows(&mut self, tvf: &WindowTvf) -> Result<usize, String> {
        let WindowKind::Session { gap } = tvf.kind else {
            return Err(format!("{} is not a session window", tvf.kind));
        };
        let input = self.plan(&tvf.input)?;
        if self.updating(input) {
            return Err("window functions over an updating stream are not supported".into());
        }
        if self.after_join(input) {
            return Err("window functions over the output of a regular join are not supported in stream mode; window each input before joining".into());
        }
        let input_schema = tvf.input.schema();
        let index = |c| input_schema.index_of_column(c).map_err(|e| e.to_string());
        let time_index = index(&tvf.time_column)?;
        let key_indices = tvf
            .partition_keys
            .iter()
            .map(index)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = tvf
            .partition_keys
            .iter()
            .map(|k| physical(&Expr::Column(k.clone()), input_schema, self.state))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = tvf.partition_keys.iter().map(|k| k.name.clone()).collect();
        let (partitioning, parallelism) = if keys.is_empty() {
            (Partitioning::Single, 1)
        } else {
            let names = names.clone();
            (Partitioning::Hash { keys, names }, self.parallelism)
        };
        let schema: SchemaRef = Arc::new(
            datafusion::logical_expr::UserDefinedLogicalNodeCore::schema(tvf)
                .as_arrow()
                .clone(),
        );
        let id = self.next_id("session-rows");
        Ok(self.add(StreamNode {
            id,
            name: format!("session windows {} on {}", tvf.kind, tvf.time_column.name),
            kind: NodeKind::SessionRows {
                gap,
                time_index,
                key_indices,
                memory_budget: self.memory_budget,
            },
            parallelism,
            input: Some((input, partitioning)),
            extra_inputs: Vec::new(),
            side_input: false,
            schema,
            updating: false,
            state: Some(format!(
                "rows of each open session per key [{}]",
                names.join(", ")
            )),
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

/// The columns of source table `table` (columns `full`) that late rows carry: for each
/// of `carry`'s columns, by name, the source column it is taken from. A late-table
/// column the source does not have, or whose type the source column's does not cast
/// to, is an error that lists the source's columns.
fn carried_source_columns(
    carry: &LateCarry,
    table: &str,
    full: &Schema,
) -> Result<Vec<usize>, String> {
    let context = |e: String| {
        format!(
            "'{}' = '{}' of table '{}': {e}",
            meltwater_connectors::LATE_RECORDS_TABLE,
            carry.target,
            carry.source
        )
    };
    let names = || {
        full.fields()
            .iter()
            .map(|f| f.name().as_str())
            .chain(LATE_WINDOW_COLUMNS)
            .collect::<Vec<_>>()
            .join(", ")
    };
    carry
        .columns
        .iter()
        .map(|column| {
            let Ok(i) = full.index_of(column.name()) else {
                return Err(context(format!(
                    "its column '{}' is not a column of the late rows, which are the rows of '{table}' and the bounds of the window they were late for ({})",
                    column.name(),
                    names()
                )));
            };
            let from = full.field(i).data_type();
            if from != column.data_type()
                && !datafusion::arrow::compute::can_cast_types(from, column.data_type())
            {
                return Err(context(format!(
                    "its column '{}' has type {}, which the type {from} of '{table}'.'{}' cannot be cast to",
                    column.name(),
                    column.data_type(),
                    column.name()
                )));
            }
            Ok(i)
        })
        .collect()
}

/// The late-rows table of the source tables a window reads (`plan`, the window table
/// function's input): `(source table, sink table)` when their `'scan.late-records'` is
/// `'side-output'`. Tables that differ in policy or table are an error. Tables read
/// through an aggregate or a join do not count: the window's rows are not theirs.
fn late_records_table(plan: &LogicalPlan) -> Result<Option<(String, String)>, String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use meltwater_connectors::LateRecords;
    let mut policies: Vec<(String, LateRecords)> = Vec::new();
    let mut error = None;
    let _ = plan.apply(|node| {
        if matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Join(_)) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                if let Some(t) = provider.as_any().downcast_ref::<SourceTable>() {
                    match meltwater_connectors::late_records(&t.def, "source") {
                        Ok(p) => policies.push((t.name.clone(), p)),
                        Err(e) => error = Some(e.to_string()),
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(e) = error {
        return Err(e);
    }
    let Some((first, policy)) = policies.first() else {
        return Ok(None);
    };
    if let Some((other, _)) = policies.iter().find(|(_, p)| p != policy) {
        return Err(format!(
            "a window reads tables '{first}' and '{other}', whose '{}' differ; give them the same",
            meltwater_connectors::LATE_RECORDS
        ));
    }
    Ok(match policy {
        LateRecords::Drop => None,
        LateRecords::SideOutput(table) => Some((first.clone(), table.clone())),
    })
}
