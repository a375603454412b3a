//! The dataflow a stream job runs: operators with parallelism, joined by edges that say
//! how rows move between their subtasks.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::Aggregate;
use datafusion::physical_expr::PhysicalExpr;
use meltwater_connectors::stream::StreamSource;
use meltwater_iceberg::IcebergTable;
use meltwater_plan::window::WindowKind;

use crate::aggregate::window::WindowSpec;

/// How rows travel from an operator's subtasks to the next operator's.
#[derive(Debug, Clone)]
pub enum Partitioning {
    /// Subtask i to subtask i (same parallelism); chained into one task.
    Forward,
    /// By the key's group: every row of a key reaches the subtask owning its state.
    Hash {
        keys: Vec<Arc<dyn PhysicalExpr>>,
        names: Vec<String>,
    },
    /// Every row to subtask 0 (global aggregates, single-writer sinks).
    Single,
    /// Round-robin batches, for a parallelism change without keys.
    Rebalance,
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Forward => f.write_str("FORWARD"),
            Partitioning::Hash { names, .. } => write!(f, "HASH[{}]", names.join(", ")),
            Partitioning::Single => f.write_str("SINGLE"),
            Partitioning::Rebalance => f.write_str("REBALANCE"),
        }
    }
}

/// One step of a stateless operator.
#[derive(Debug, Clone)]
pub enum Step {
    Filter(Arc<dyn PhysicalExpr>),
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// Where a sink writes.
#[derive(Clone)]
pub enum SinkKind {
    /// An Iceberg table, two-phase: files written until a barrier, committed when the
    /// checkpoint completes.
    /// `upsert`: rows upsert (and retractions delete) by the table's primary key.
    Iceberg {
        table: Arc<IcebergTable>,
        upsert: bool,
    },
    /// A query's rows, kept for the caller (the CLI prints them; tests compare them).
    Collect(Arc<Mutex<Vec<RecordBatch>>>),
    /// A `print` table: each row written to stdout (or stderr) as it arrives.
    Print {
        table: String,
        options: meltwater_connectors::print::PrintOptions,
    },
    /// A `blackhole` table: rows counted and discarded.
    Blackhole,
    /// A `kafka` table: rows produced as they arrive, acknowledged before each
    /// checkpoint completes (at least once); an updating stream upserts by the table's
    /// primary key (deletes as tombstones).
    Kafka(meltwater_connectors::kafka::KafkaSinkOptions),
}

impl fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkKind::Iceberg { table, .. } => write!(f, "Iceberg({})", table.name()),
            SinkKind::Collect(_) => f.write_str("Collect"),
            SinkKind::Print { table, .. } => write!(f, "Print({table})"),
            SinkKind::Blackhole => f.write_str("Blackhole"),
            SinkKind::Kafka(o) => write!(f, "Kafka({})", o.table),
        }
    }
}

/// The event-time definition of a source: `WATERMARK FOR col AS expr`.
#[derive(Debug, Clone)]
pub struct SourceWatermark {
    /// Evaluated on the batches the source reads (its read projection).
    pub expr: Arc<dyn PhysicalExpr>,
    pub text: String,
}

/// What an operator does.
#[derive(Debug, Clone)]
pub enum NodeKind {
    Source {
        source: Arc<dyn StreamSource>,
        /// Columns read (the scan's, plus those the watermark needs).
        read_projection: Option<Vec<usize>>,
        /// Indices into the read batch of the columns the scan emits.
        output_columns: Vec<usize>,
        watermark: Option<SourceWatermark>,
        /// The table's `'scan.watermark.idle-timeout'` (overrides the job's).
        idle_timeout_ms: Option<u64>,
    },
    Stateless(Vec<Step>),
    /// `UNION ALL`: the rows of every input, relabelled with the union's schema.
    Union,
    WindowAssign {
        kind: WindowKind,
        time_index: usize,
    },
    WindowAggregate {
        aggregate: Aggregate,
        window: WindowSpec,
        /// `state.memory-budget`: bytes of state per subtask before spilling.
        memory_budget: Option<usize>,
    },
    UpdatingAggregate {
        aggregate: Aggregate,
        ttl_ms: Option<u64>,
        /// `state.memory-budget`: bytes of state per subtask before spilling.
        memory_budget: Option<usize>,
    },
    /// A SESSION window function without an aggregate above it: each key's rows held
    /// until the watermark closes their session, then emitted with its bounds. Indices
    /// are into the input's columns; `gap` is in ms.
    SessionRows {
        gap: i64,
        time_index: usize,
        key_indices: Vec<usize>,
        /// `state.memory-budget`: bytes of buffered rows per subtask before spilling.
        memory_budget: Option<usize>,
    },
    /// A regular join: input 0 is the left side, the first extra input the right.
    Join(crate::ops::join::JoinSpec),
    Sink {
        target: String,
        kind: SinkKind,
    },
}

impl NodeKind {
    pub fn is_source(&self) -> bool {
        matches!(self, NodeKind::Source { .. })
    }
    pub fn is_stateful(&self) -> bool {
        matches!(
            self,
            NodeKind::WindowAggregate { .. }
                | NodeKind::UpdatingAggregate { .. }
                | NodeKind::SessionRows { .. }
                | NodeKind::Join(_)
        )
    }
}

/// An operator of the graph.
#[derive(Debug, Clone)]
pub struct StreamNode {
    /// Stable across runs of the same job file: state is stored under it.
    pub id: String,
    pub name: String,
    pub kind: NodeKind,
    pub parallelism: usize,
    /// The upstream operator and how rows reach this one; `None` for sources.
    pub input: Option<(usize, Partitioning)>,
    /// Further inputs of a multi-input operator (`UNION ALL`).
    pub extra_inputs: Vec<(usize, Partitioning)>,
    /// The input edge carries the input operator's side output (the rows a window
    /// aggregate finds late, under its source table's `'scan.late-records' =
    /// 'side-output'`) instead of its output.
    pub side_input: bool,
    /// The schema of the batches this operator emits (with the op column when updating).
    pub schema: SchemaRef,
    /// Whether the output is an updating stream (+I/-U/+U/-D) rather than append-only.
    pub updating: bool,
    /// The state the operator keeps, for `explain`.
    pub state: Option<String>,
}

/// A job's dataflow: the graphs of all its statements, one dataflow.
#[derive(Debug, Clone, Default)]
pub struct StreamGraph {
    pub nodes: Vec<StreamNode>,
}

impl StreamGraph {
    /// Operators that consume `index`'s output.
    pub fn consumers(&self, index: usize) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.input.as_ref().is_some_and(|(from, _)| *from == index)
                    || n.extra_inputs.iter().any(|(from, _)| *from == index)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Operators that consume `index`'s output (not its side output).
    pub fn main_consumers(&self, index: usize) -> Vec<usize> {
        self.consumers(index)
            .into_iter()
            .filter(|c| !self.nodes[*c].side_input)
            .collect()
    }

    /// The operator reading `index`'s side output (late rows), if any.
    pub fn side_consumer(&self, index: usize) -> Option<usize> {
        self.consumers(index)
            .into_iter()
            .find(|c| self.nodes[*c].side_input)
    }

    /// Whether node `index` runs in the same task as its input (forward edge from its
    /// input's output, same parallelism, and the input's output has no other consumer).
    pub fn chained_to_input(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        if !node.extra_inputs.is_empty() || node.side_input {
            return false;
        }
        match &node.input {
            Some((from, Partitioning::Forward)) => {
                self.nodes[*from].parallelism == node.parallelism
                    && self.main_consumers(*from).len() == 1
            }
            _ => false,
        }
    }

    /// Chains of operators that run as one task per subtask, each in dataflow order.
    pub fn chains(&self) -> Vec<Vec<usize>> {
        let mut chains: Vec<Vec<usize>> = Vec::new();
        for i in 0..self.nodes.len() {
            if self.chained_to_input(i) {
                let from = self.nodes[i].input.as_ref().map(|(f, _)| *f).unwrap_or(0);
                if let Some(c) = chains.iter_mut().find(|c| c.last() == Some(&from)) {
                    c.push(i);
                    continue;
                }
            }
            chains.push(vec![i]);
        }
        chains
    }
}

impl fmt::Display for StreamGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, chain) in self.chains().iter().enumerate() {
            let p = self.nodes[chain[0]].parallelism;
            writeln!(f, "task {} (parallelism {p}):", c + 1)?;
            for &i in chain {
                let n = &self.nodes[i];
                let edge = match &n.input {
                    None => String::new(),
                    Some((from, part)) if self.chained_to_input(i) => {
                        format!(" <- {} {part} (chained)", self.nodes[*from].id)
                    }
                    Some((from, part)) => {
                        let port = if n.side_input { " late rows" } else { "" };
                        let mut e = format!(" <- {}{port} {part}", self.nodes[*from].id);
                        for (f, p) in &n.extra_inputs {
                            e.push_str(&format!(", {} {p}", self.nodes[*f].id));
                        }
                        e
                    }
                };
                writeln!(f, "  [{}] {}{edge}", n.id, n.name,)?;
                writeln!(
                    f,
                    "      parallelism={} output={}{}",
                    n.parallelism,
                    if n.updating {
                        "updating"
                    } else {
                        "append-only"
                    },
                    n.state
                        .as_ref()
                        .map(|s| format!(" state={s}"))
                        .unwrap_or_default()
                )?;
            }
        }
        Ok(())
    }
}
