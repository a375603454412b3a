//! Window assignment in stream mode: the same function as batch mode
//! ([`meltwater_plan::window::assign_windows`]).

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::plan_err;
use datafusion::error::Result;
use meltwater_plan::window::{assign_windows, WindowKind};

use crate::operator::{Operator, Output};

/// Appends `window_start`, `window_end` and `window_time` (= end - 1 ms) to each row,
/// of the time column's type. TUMBLE, HOP and CUMULATE copy a row into every window it
/// belongs to; SESSION gives each row its own window `[t, t + gap)`, which the window
/// aggregate merges per key. Rows with a NULL time are dropped (as in batch mode).
#[derive(Debug)]
pub struct WindowAssignOperator {
    kind: WindowKind,
    time_index: usize,
    output_schema: SchemaRef,
}

impl WindowAssignOperator {
    /// `output_schema`: the input's columns then the three window columns.
    pub fn try_new(kind: WindowKind, time_index: usize, output_schema: SchemaRef) -> Result<Self> {
        let n = output_schema.fields().len();
        if n < 4 || time_index >= n - 3 {
            return plan_err!(
                "window assignment: time column {time_index} is not among the {} input columns",
                n.saturating_sub(3)
            );
        }
        Ok(Self {
            kind,
            time_index,
            output_schema,
        })
    }
}

#[async_trait]
impl Operator for WindowAssignOperator {
    fn name(&self) -> String {
        format!("WindowAssign[{}]", self.kind)
    }

    async fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        out.push(assign_windows(
            &batch,
            self.kind,
            self.time_index,
            &self.output_schema,
        )?);
        Ok(())
    }
}
