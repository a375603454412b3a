//! Window table functions: `TUMBLE`, `HOP`, `CUMULATE` and `SESSION` in `FROM TABLE(...)`.
//!
//! Each becomes a [`WindowTvf`] logical node over its input table: the input's columns
//! plus `window_start`, `window_end` and `window_time` (= `window_end` - 1 ms, Flink's
//! rowtime of a window). The node is the one plan both modes consume: the batch planner
//! assigns windows row by row (sessions after sorting by key and time), the stream
//! planner turns the node and the aggregate above it into an event-time window operator.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt32Array,
};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, SchemaRef, TimeUnit};
use datafusion::common::{
    internal_err, plan_err, Column, DFSchema, DFSchemaRef, Result, ScalarValue, TableReference,
};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, TableSource, UserDefinedLogicalNodeCore,
};
use meltwater_sql::sqlparser::ast::{
    visit_expressions, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments,
    ObjectName, ObjectNamePart, Query, TableFactor,
};
use meltwater_sql::tokens::{PARTITION_KEYS, WINDOW_FUNCTIONS};

/// Which window a row falls in. Durations are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`, starting at multiples of `size` + `offset`.
    Tumble { size: i64, offset: i64 },
    /// Windows of `size` starting every `slide`: a row is in `size / slide` windows.
    Hop { slide: i64, size: i64 },
    /// Windows growing by `step` from the start of each `size` period: a row at offset `o`
    /// into its period is in the windows ending at every step boundary after `o`.
    Cumulate { step: i64, size: i64 },
    /// Per key, rows at most `gap` apart form one window, ending `gap` after its last
    /// row (Flink's merging of touching `[t, t + gap)` windows).
    Session { gap: i64 },
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowKind::Tumble { size, offset: 0 } => write!(f, "TUMBLE(size={size}ms)"),
            WindowKind::Tumble { size, offset } => {
                write!(f, "TUMBLE(size={size}ms, offset={offset}ms)")
            }
            WindowKind::Hop { slide, size } => write!(f, "HOP(slide={slide}ms, size={size}ms)"),
            WindowKind::Cumulate { step, size } => {
                write!(f, "CUMULATE(step={step}ms, size={size}ms)")
            }
            WindowKind::Session { gap } => write!(f, "SESSION(gap={gap}ms)"),
        }
    }
}

/// The window columns a window table function adds.
pub const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

/// A window table function over its input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowTvf {
    pub input: LogicalPlan,
    pub kind: WindowKind,
    /// The event-time column the windows are over.
    pub time_column: Column,
    /// `SESSION(TABLE t PARTITION BY k, ...)`: the keys sessions are formed per.
    pub partition_keys: Vec<Column>,
    schema: DFSchemaRef,
}

impl PartialOrd for WindowTvf {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.kind.partial_cmp(&other.kind) {
            Some(Ordering::Equal) => self.time_column.partial_cmp(&other.time_column),
            o => o,
        }
    }
}

impl WindowTvf {
    pub fn try_new(
        input: LogicalPlan,
        kind: WindowKind,
        time_column: Column,
        partition_keys: Vec<Column>,
    ) -> Result<Self> {
        let input_schema = input.schema();
        let time_field = input_schema.qualified_field_from_column(&time_column)?.1;
        let time_type = time_field.data_type().clone();
        if !matches!(time_type, DataType::Timestamp(..)) {
            return plan_err!(
                "the window time column '{}' has type {time_type}; window functions need a TIMESTAMP column",
                time_column.name
            );
        }
        for k in &partition_keys {
            input_schema.qualified_field_from_column(k)?;
        }
        for name in WINDOW_COLUMNS {
            if input_schema.has_column_with_unqualified_name(name) {
                return plan_err!("the input of a window function already has a column '{name}'");
            }
        }
        let mut fields: Vec<_> = input_schema
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        for name in WINDOW_COLUMNS {
            fields.push((None, Arc::new(Field::new(name, time_type.clone(), false))));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        )?);
        Ok(Self {
            input,
            kind,
            time_column,
            partition_keys,
            schema,
        })
    }

    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The node, if `plan` is one.
    pub fn from_plan(plan: &LogicalPlan) -> Option<&WindowTvf> {
        match plan {
            LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<WindowTvf>(),
            _ => None,
        }
    }
}

impl UserDefinedLogicalNodeCore for WindowTvf {
    fn name(&self) -> &str {
        "WindowTvf"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        let mut e = vec![Expr::Column(self.time_column.clone())];
        e.extend(self.partition_keys.iter().cloned().map(Expr::Column));
        e
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WindowTvf: {} on {}", self.kind, self.time_column)?;
        if !self.partition_keys.is_empty() {
            let keys: Vec<String> = self.partition_keys.iter().map(|k| k.to_string()).collect();
            write!(f, " partition by [{}]", keys.join(", "))?;
        }
        Ok(())
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let mut columns = exprs.into_iter().map(|e| match e {
            Expr::Column(c) => Ok(c),
            other => plan_err!("WindowTvf expects columns, got {other}"),
        });
        let time_column = columns
            .next()
            .unwrap_or_else(|| Ok(self.time_column.clone()))?;
        let keys = columns.collect::<Result<Vec<_>>>()?;
        WindowTvf::try_new(inputs.swap_remove(0), self.kind, time_column, keys)
    }
}

/// Plans `TABLE(TUMBLE(t, DESCRIPTOR(ts), INTERVAL ...))` (after the token rewrite in
/// `meltwater-sql`) into a [`WindowTvf`].
///
/// DataFusion resolves the tables a statement names before planning it, and a window
/// function's table argument is hidden inside an expression, so the job planner
/// resolves those tables itself ([`window_inputs`]) and hands them over with
/// [`WindowRelationPlanner::preload`]. Names that are CTEs or already-resolved tables go
/// through DataFusion's own relation planning first.
#[derive(Default)]
pub struct WindowRelationPlanner {
    tables: Mutex<HashMap<TableReference, Arc<dyn TableSource>>>,
}

impl fmt::Debug for WindowRelationPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .tables
            .lock()
            .map(|t| t.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        f.debug_struct("WindowRelationPlanner")
            .field("tables", &names)
            .finish()
    }
}

impl WindowRelationPlanner {
    /// Makes `table` resolvable as a window function's input.
    pub fn preload(&self, name: TableReference, table: Arc<dyn TableSource>) {
        self.tables
            .lock()
            .expect("window inputs poisoned")
            .insert(name, table);
    }

    fn plan_input(
        &self,
        name: ObjectName,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<LogicalPlan> {
        match context.plan(table_factor(name.clone())) {
            Ok(plan) => Ok(plan),
            Err(e) => {
                let reference = context.object_name_to_table_reference(name)?;
                let tables = self.tables.lock().expect("window inputs poisoned");
                let found = tables
                    .iter()
                    .find(|(k, _)| k.resolved_eq(&reference))
                    .map(|(k, v)| (k.clone(), v.clone()));
                drop(tables);
                match found {
                    Some((k, source)) => LogicalPlanBuilder::scan(k, source, None)?.build(),
                    None => Err(e),
                }
            }
        }
    }
}

/// The table names used as window function inputs in `query`.
pub fn window_inputs(query: &Query) -> Vec<ObjectName> {
    let mut names = Vec::new();
    let _ = visit_expressions(query, |e: &SqlExpr| {
        if let SqlExpr::Function(f) = e {
            let fname = f.name.to_string().to_uppercase();
            if WINDOW_FUNCTIONS.contains(&fname.as_str()) {
                if let FunctionArguments::List(list) = &f.args {
                    match list.args.first() {
                        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(
                            i,
                        )))) => names.push(ObjectName(vec![ObjectNamePart::Identifier(i.clone())])),
                        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(
                            SqlExpr::CompoundIdentifier(p),
                        ))) => names.push(ObjectName(
                            p.iter().cloned().map(ObjectNamePart::Identifier).collect(),
                        )),
                        _ => {}
                    }
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    names
}

impl RelationPlanner for WindowRelationPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        let TableFactor::TableFunction {
            expr: SqlExpr::Function(function),
            alias,
        } = &relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let fname = function.name.to_string().to_uppercase();
        if !WINDOW_FUNCTIONS.contains(&fname.as_str()) {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        }
        let FunctionArguments::List(list) = &function.args else {
            return plan_err!(
                "{fname} needs arguments: {fname}(TABLE t, DESCRIPTOR(time_column), ...)"
            );
        };
        let mut args: Vec<SqlExpr> = Vec::new();
        for a in &list.args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
                other => return plan_err!("{fname}: unsupported argument {other}"),
            }
        }
        let usage = usage(&fname);
        if args.is_empty() {
            return plan_err!("{fname} needs arguments: {usage}");
        }
        let table = match args.remove(0) {
            SqlExpr::Identifier(i) => ObjectName(vec![ObjectNamePart::Identifier(i)]),
            SqlExpr::CompoundIdentifier(parts) => {
                ObjectName(parts.into_iter().map(ObjectNamePart::Identifier).collect())
            }
            other => {
                return plan_err!(
                    "{fname}: the first argument must be TABLE <name>, got {other}; {usage}"
                )
            }
        };
        let mut keys_sql = Vec::new();
        if let Some(SqlExpr::Function(f)) = args.first() {
            if f.name.to_string().eq_ignore_ascii_case(PARTITION_KEYS) {
                if fname != "SESSION" {
                    return plan_err!("{fname} does not take PARTITION BY; only SESSION does");
                }
                keys_sql = function_args(f)?;
                args.remove(0);
            }
        }
        let time_sql = match args.first() {
            Some(SqlExpr::Function(f)) if f.name.to_string().eq_ignore_ascii_case("DESCRIPTOR") => {
                let mut cols = function_args(f)?;
                if cols.len() != 1 {
                    return plan_err!("{fname}: DESCRIPTOR takes one time column");
                }
                cols.remove(0)
            }
            _ => return plan_err!("{fname}: the time column comes as DESCRIPTOR(column); {usage}"),
        };
        args.remove(0);
        let input = self.plan_input(table, context)?;
        let schema = input.schema().clone();
        let mut column = |e: SqlExpr, what: &str| -> Result<Column> {
            match context.sql_to_expr(e, &schema)? {
                Expr::Column(c) => Ok(c),
                other => plan_err!("{fname}: {what} must be a column, got {other}"),
            }
        };
        let time_column = column(time_sql, "the DESCRIPTOR argument")?;
        let keys = keys_sql
            .into_iter()
            .map(|k| column(k, "a PARTITION BY key"))
            .collect::<Result<Vec<_>>>()?;
        let empty = DFSchema::empty();
        let mut durations = Vec::new();
        for a in args {
            let text = a.to_string();
            let expr = context.sql_to_expr(a, &empty)?;
            durations.push(interval_ms(&expr).map_err(|m| {
                datafusion::error::DataFusionError::Plan(format!("{fname}: {text}: {m}"))
            })?);
        }
        let kind = match (fname.as_str(), durations.as_slice()) {
            ("TUMBLE", [size]) => WindowKind::Tumble {
                size: *size,
                offset: 0,
            },
            ("TUMBLE", [size, offset]) => WindowKind::Tumble {
                size: *size,
                offset: offset.rem_euclid(*size),
            },
            ("HOP", [slide, size]) => {
                if size % slide != 0 {
                    return plan_err!("HOP: the size ({size} ms) must be a whole multiple of the slide ({slide} ms)");
                }
                WindowKind::Hop {
                    slide: *slide,
                    size: *size,
                }
            }
            ("CUMULATE", [step, size]) => {
                if size % step != 0 {
                    return plan_err!("CUMULATE: the max size ({size} ms) must be a whole multiple of the step ({step} ms)");
                }
                WindowKind::Cumulate {
                    step: *step,
                    size: *size,
                }
            }
            ("SESSION", [gap]) => WindowKind::Session { gap: *gap },
            _ => return plan_err!("{fname}: wrong number of intervals; {usage}"),
        };
        let node = WindowTvf::try_new(input, kind, time_column, keys)?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            node.into_plan(),
            alias.clone(),
        ))))
    }
}

fn usage(fname: &str) -> &'static str {
    match fname {
        "TUMBLE" => "TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset])",
        "HOP" => "HOP(TABLE t, DESCRIPTOR(ts), slide, size)",
        "CUMULATE" => "CUMULATE(TABLE t, DESCRIPTOR(ts), step, max_size)",
        _ => "SESSION(TABLE t [PARTITION BY k], DESCRIPTOR(ts), gap)",
    }
}

fn function_args(f: &meltwater_sql::sqlparser::ast::Function) -> Result<Vec<SqlExpr>> {
    let FunctionArguments::List(list) = &f.args else {
        return plan_err!("{}(...) needs arguments", f.name);
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
            other => plan_err!("unsupported argument {other} in {}", f.name),
        })
        .collect()
}

fn table_factor(name: ObjectName) -> TableFactor {
    TableFactor::Table {
        name,
        alias: None,
        args: None,
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample: None,
        index_hints: vec![],
    }
}

/// A positive fixed-length interval in milliseconds.
fn interval_ms(expr: &Expr) -> std::result::Result<i64, String> {
    let Expr::Literal(value, _) = expr else {
        return Err("expected an INTERVAL literal".into());
    };
    let ms = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return Err(
                    "windows in months or years are not supported (their length varies)".into(),
                );
            }
            v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(v)) => v.days as i64 * 86_400_000 + v.milliseconds as i64,
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return Err("windows in months or years are not supported (their length varies)".into())
        }
        _ => return Err(format!("expected an INTERVAL literal, got {value}")),
    };
    if ms <= 0 {
        return Err("the interval must be positive".into());
    }
    Ok(ms)
}

/// Milliseconds per unit of a timestamp column, as (multiply, divide) to go unit → ms.
fn unit_scale(unit: &TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (1000, 1),
        TimeUnit::Millisecond => (1, 1),
        TimeUnit::Microsecond => (1, 1000),
        TimeUnit::Nanosecond => (1, 1_000_000),
    }
}

/// A timestamp column's values in milliseconds (floored), nulls as `None`.
pub fn timestamps_to_ms(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let DataType::Timestamp(unit, _) = column.data_type() else {
        return internal_err!("window time column has type {}", column.data_type());
    };
    let (mul, div) = unit_scale(unit);
    let ints = cast(column, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok(ints
        .iter()
        .map(|v| v.map(|v| (v * mul).div_euclid(div)))
        .collect())
}

/// Window bounds in milliseconds → a timestamp array of the time column's type.
pub fn ms_to_timestamps(ms: Vec<i64>, time_type: &DataType) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, _) = time_type else {
        return internal_err!("window bounds of type {time_type}; expected a timestamp");
    };
    let (mul, div) = unit_scale(unit);
    // Built in place: no per-value Option, no cast (this runs for every windowed row).
    let values: ScalarBuffer<i64> = if (mul, div) == (1, 1) {
        ms.into()
    } else {
        ms.into_iter().map(|v| v * div / mul).collect()
    };
    let tz = match time_type {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    Ok(match unit {
        TimeUnit::Second => Arc::new(TimestampSecondArray::new(values, None).with_timezone_opt(tz)),
        TimeUnit::Millisecond => {
            Arc::new(TimestampMillisecondArray::new(values, None).with_timezone_opt(tz))
        }
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::new(values, None).with_timezone_opt(tz))
        }
        TimeUnit::Nanosecond => {
            Arc::new(TimestampNanosecondArray::new(values, None).with_timezone_opt(tz))
        }
    })
}

/// Appends window_start/window_end/window_time (= end - 1 ms) to the rows `indices` of
/// `batch`, giving a batch of `schema` (the [`WindowTvf`]'s output schema).
pub fn append_windows(
    batch: &RecordBatch,
    schema: &SchemaRef,
    time_type: &DataType,
    indices: Vec<u32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
) -> Result<RecordBatch> {
    let indices = UInt32Array::from(indices);
    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<_, _>>()?;
    columns.extend(window_columns(starts, ends, time_type)?);
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The window columns of rows in windows `[starts[i], ends[i])` (ms): `window_start`,
/// `window_end` and `window_time` (= end - 1 ms), of the time column's type.
pub fn window_columns(
    starts: Vec<i64>,
    ends: Vec<i64>,
    time_type: &DataType,
) -> Result<[ArrayRef; 3]> {
    let times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
    Ok([
        ms_to_timestamps(starts, time_type)?,
        ms_to_timestamps(ends, time_type)?,
        ms_to_timestamps(times, time_type)?,
    ])
}

/// The windows `(start, end)` in ms a row at `ts` (ms) belongs to, pushed onto `out`.
/// SESSION gives the row's own window `[ts, ts + gap)`, which merges with the touching
/// windows of the same key downstream.
pub fn window_bounds(kind: WindowKind, ts: i64, out: &mut Vec<(i64, i64)>) {
    match kind {
        WindowKind::Tumble { size, offset } => {
            let start = ts - (ts - offset).rem_euclid(size);
            out.push((start, start + size));
        }
        WindowKind::Hop { slide, size } => {
            let last = ts - ts.rem_euclid(slide);
            let mut start = last;
            while start + size > ts {
                out.push((start, start + size));
                start -= slide;
            }
        }
        WindowKind::Cumulate { step, size } => {
            let period = ts - ts.rem_euclid(size);
            let first = (ts - period) / step + 1;
            for j in first..=size / step {
                out.push((period, period + j * step));
            }
        }
        WindowKind::Session { gap } => out.push((ts, ts + gap)),
    }
}

/// Window assignment shared by batch and stream mode: copies each row of `batch` into
/// every window it belongs to ([`window_bounds`]) with the window columns appended, in
/// input row order. Rows with a NULL time belong to no window and are dropped (as in
/// Flink). `schema` is the [`WindowTvf`]'s output schema.
pub fn assign_windows(
    batch: &RecordBatch,
    kind: WindowKind,
    time_index: usize,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let time = batch.column(time_index);
    let time_type = time.data_type().clone();
    let ts = timestamps_to_ms(time)?;
    let (mut indices, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    let mut windows = Vec::new();
    for (row, t) in ts.into_iter().enumerate() {
        let Some(t) = t else { continue };
        windows.clear();
        window_bounds(kind, t, &mut windows);
        for &(s, e) in &windows {
            indices.push(row as u32);
            starts.push(s);
            ends.push(e);
        }
    }
    append_windows(batch, schema, &time_type, indices, starts, ends)
}
