//! Stream mode (DESIGN.md §5): a job's logical plans as a continuous dataflow.
//!
//! The [`planner`] turns each plan into a [`graph::StreamGraph`]: sources, chains of
//! stateless operators over Arrow batches, window and updating aggregates, and sinks,
//! joined by forward and hash edges. The [`runtime`] runs one task per operator subtask
//! with bounded channels between them; watermarks and checkpoint barriers flow in band,
//! and the [`coordinator`] completes a checkpoint once every subtask acknowledged it,
//! then lets the sinks commit.

pub mod aggregate;
pub mod changelog;
pub mod graph;
pub mod job;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod planner;
pub mod runtime;
pub mod watermark;

pub use graph::StreamGraph;
pub use job::{run_plan, run_stream_job, QueryResult, StreamJobError};
pub use planner::{plan_statements, plan_stream, StreamPlan};
pub use runtime::{StopMode, StopSignal, StreamOptions, StreamReport};
