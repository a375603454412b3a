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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::test_util::*;

    #[tokio::test]
    async fn assigns_windows_and_drops_null_times() {
        let batch = source(&[
            (Some("a"), Some(1), Some(23)),
            (Some("b"), Some(2), None),
            (Some("c"), Some(3), Some(-3)),
        ]);
        let mut hop = WindowAssignOperator::try_new(
            WindowKind::Hop { slide: 5, size: 10 },
            2,
            windowed_schema(),
        )
        .unwrap();
        assert_eq!(
            rows(&feed(&mut hop, batch.clone()).await),
            [
                "a,1,1970-01-01T00:00:00.023,1970-01-01T00:00:00.020,1970-01-01T00:00:00.030,1970-01-01T00:00:00.029",
                "a,1,1970-01-01T00:00:00.023,1970-01-01T00:00:00.015,1970-01-01T00:00:00.025,1970-01-01T00:00:00.024",
                "c,3,1969-12-31T23:59:59.997,1969-12-31T23:59:59.995,1970-01-01T00:00:00.005,1970-01-01T00:00:00.004",
                "c,3,1969-12-31T23:59:59.997,1969-12-31T23:59:59.990,1970-01-01T00:00:00,1969-12-31T23:59:59.999",
            ]
        );
        let mut session =
            WindowAssignOperator::try_new(WindowKind::Session { gap: 7 }, 2, windowed_schema())
                .unwrap();
        assert_eq!(
            rows(&feed(&mut session, batch).await),
            [
                "a,1,1970-01-01T00:00:00.023,1970-01-01T00:00:00.023,1970-01-01T00:00:00.030,1970-01-01T00:00:00.029",
                "c,3,1969-12-31T23:59:59.997,1969-12-31T23:59:59.997,1970-01-01T00:00:00.004,1970-01-01T00:00:00.003",
            ]
        );
        assert!(WindowAssignOperator::try_new(
            WindowKind::Session { gap: 7 },
            3,
            windowed_schema()
        )
        .is_err());
    }
}
