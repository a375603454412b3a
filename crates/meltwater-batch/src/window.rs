//! Window assignment in batch mode: the physical operators for the `WindowTvf` node.
//!
//! [`WindowAssignExec`] handles TUMBLE, HOP and CUMULATE: each input row is copied into
//! every window it belongs to (one for TUMBLE, `size/slide` for HOP, up to `size/step`
//! for CUMULATE) with the window's bounds appended. It is stateless and streams.
//!
//! [`SessionWindowExec`] handles SESSION: it asks for its input hash-partitioned by the
//! partition keys and sorted by keys and time, then closes a session when the key changes
//! or the next row is more than the gap after the last one (as in Flink, where each row
//! opens a window `[t, t + gap)` and windows that touch merge). It buffers the rows of
//! the open session only.
//!
//! Rows with a NULL time belong to no window and are dropped, as in Flink.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::OrderingRequirements;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{stream, StreamExt};
use meltwater_plan::window::{
    append_windows as emit, assign_windows, timestamps_to_ms as millis, WindowKind,
};

/// TUMBLE, HOP and CUMULATE window assignment.
#[derive(Debug)]
pub struct WindowAssignExec {
    input: Arc<dyn ExecutionPlan>,
    kind: WindowKind,
    time_index: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl WindowAssignExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        kind: WindowKind,
        time_index: usize,
        schema: SchemaRef,
    ) -> Result<Self> {
        if matches!(kind, WindowKind::Session { .. }) {
            return Err(DataFusionError::Internal(
                "SESSION windows use SessionWindowExec".into(),
            ));
        }
        let partitioning = input.properties().output_partitioning().clone();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            kind,
            time_index,
            schema,
            properties,
        })
    }
}

impl WindowAssignExec {
    pub fn kind(&self) -> &WindowKind {
        &self.kind
    }
    /// The input column holding the event time.
    pub fn time_index(&self) -> usize {
        self.time_index
    }
}

impl DisplayAs for WindowAssignExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WindowAssignExec: {}", self.kind)
    }
}

impl ExecutionPlan for WindowAssignExec {
    fn name(&self) -> &str {
        "WindowAssignExec"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            children.remove(0),
            self.kind,
            self.time_index,
            self.schema.clone(),
        )?))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (kind, time_index, schema) = (self.kind, self.time_index, self.schema.clone());
        let out = input.map(move |batch| assign_windows(&batch?, kind, time_index, &schema));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

/// SESSION window assignment over input sorted by (keys, time) within hash partitions.
#[derive(Debug)]
pub struct SessionWindowExec {
    input: Arc<dyn ExecutionPlan>,
    gap: i64,
    time_index: usize,
    key_indices: Vec<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl SessionWindowExec {
    /// The session gap in milliseconds.
    pub fn gap(&self) -> i64 {
        self.gap
    }
    /// The input column holding the event time.
    pub fn time_index(&self) -> usize {
        self.time_index
    }
    /// The input columns sessions are formed per.
    pub fn key_indices(&self) -> &[usize] {
        &self.key_indices
    }

    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        gap: i64,
        time_index: usize,
        key_indices: Vec<usize>,
        schema: SchemaRef,
    ) -> Self {
        let partitioning = input.properties().output_partitioning().clone();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            input,
            gap,
            time_index,
            key_indices,
            schema,
            properties,
        }
    }

    fn column(&self, i: usize) -> Arc<dyn PhysicalExpr> {
        let name = self.input.schema().field(i).name().clone();
        Arc::new(PhysicalColumn::new(&name, i))
    }
}

impl DisplayAs for SessionWindowExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SessionWindowExec: gap={}ms, keys={:?}",
            self.gap, self.key_indices
        )
    }
}

/// The open session of a partition: its key, bounds and buffered rows.
struct OpenSession {
    /// `None` when sessions are not partitioned by key.
    key: Option<OwnedRow>,
    start: i64,
    last: i64,
    /// Rows of the session: (input batch number, batch, row indices).
    rows: Vec<(u64, RecordBatch, Vec<u32>)>,
}

struct SessionState {
    gap: i64,
    time_index: usize,
    key_indices: Vec<usize>,
    schema: SchemaRef,
    converter: RowConverter,
    open: Option<OpenSession>,
    /// Number of the batch being pushed, to group a session's rows per batch.
    batch_no: u64,
}

impl SessionState {
    fn close(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Some(s) = self.open.take() else {
            return Ok(());
        };
        let end = s.last + self.gap;
        for (_, batch, indices) in s.rows {
            let n = indices.len();
            let time_type = batch.column(self.time_index).data_type().clone();
            out.push(emit(
                &batch,
                &self.schema,
                &time_type,
                indices,
                vec![s.start; n],
                vec![end; n],
            )?);
        }
        Ok(())
    }

    fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        self.batch_no += 1;
        let rows = if self.key_indices.is_empty() {
            None
        } else {
            let keys: Vec<ArrayRef> = self
                .key_indices
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect();
            Some(self.converter.convert_columns(&keys)?)
        };
        let ts = millis(batch.column(self.time_index))?;
        for (i, t) in ts.into_iter().enumerate() {
            let Some(t) = t else { continue };
            let key = rows.as_ref().map(|r| r.row(i));
            let continues = match &self.open {
                Some(s) => s.key.as_ref().map(|k| k.row()) == key && t <= s.last + self.gap,
                None => false,
            };
            if !continues {
                self.close(&mut out)?;
                let key = key.map(|k| k.owned());
                self.open = Some(OpenSession {
                    key,
                    start: t,
                    last: t,
                    rows: Vec::new(),
                });
            }
            let s = self.open.as_mut().expect("opened above");
            s.last = s.last.max(t);
            match s.rows.last_mut() {
                Some((n, _, idx)) if *n == self.batch_no => idx.push(i as u32),
                _ => s.rows.push((self.batch_no, batch.clone(), vec![i as u32])),
            }
        }
        Ok(out)
    }
}

impl ExecutionPlan for SessionWindowExec {
    fn name(&self) -> &str {
        "SessionWindowExec"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn required_input_distribution(&self) -> Vec<Distribution> {
        if self.key_indices.is_empty() {
            vec![Distribution::SinglePartition]
        } else {
            vec![Distribution::HashPartitioned(
                self.key_indices.iter().map(|&i| self.column(i)).collect(),
            )]
        }
    }
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let mut sort: Vec<PhysicalSortExpr> = self
            .key_indices
            .iter()
            .map(|&i| PhysicalSortExpr::new_default(self.column(i)))
            .collect();
        sort.push(PhysicalSortExpr::new_default(self.column(self.time_index)));
        vec![LexOrdering::new(sort).map(|o| OrderingRequirements::new(o.into()))]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            children.remove(0),
            self.gap,
            self.time_index,
            self.key_indices.clone(),
            self.schema.clone(),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let input_schema = self.input.schema();
        let fields = self
            .key_indices
            .iter()
            .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
            .collect();
        let state = SessionState {
            gap: self.gap,
            time_index: self.time_index,
            key_indices: self.key_indices.clone(),
            schema: self.schema.clone(),
            converter: RowConverter::new(fields)?,
            open: None,
            batch_no: 0,
        };
        let schema = self.schema.clone();
        // Feed batches through the state; after the input ends, flush the open session.
        let out = stream::unfold((input, Some(state)), move |(mut input, state)| {
            let schema = schema.clone();
            async move {
                let mut state = state?;
                loop {
                    match input.next().await {
                        Some(Ok(batch)) => match state.push(batch) {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => {
                                return Some((
                                    concat_batches(&schema, &out).map_err(Into::into),
                                    (input, Some(state)),
                                ))
                            }
                            Err(e) => return Some((Err(e), (input, None))),
                        },
                        Some(Err(e)) => return Some((Err(e), (input, None))),
                        None => {
                            let mut out = Vec::new();
                            return match state.close(&mut out) {
                                Ok(()) if out.is_empty() => None,
                                Ok(()) => Some((
                                    concat_batches(&schema, &out).map_err(Into::into),
                                    (input, None),
                                )),
                                Err(e) => Some((Err(e), (input, None))),
                            };
                        }
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(kind: WindowKind, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        meltwater_plan::window::window_bounds(kind, ts, &mut out);
        out.sort();
        out
    }

    #[test]
    fn tumble_hop_and_cumulate_bounds() {
        assert_eq!(
            windows(
                WindowKind::Tumble {
                    size: 10,
                    offset: 0
                },
                23
            ),
            [(20, 30)]
        );
        assert_eq!(
            windows(
                WindowKind::Tumble {
                    size: 10,
                    offset: 0
                },
                -3
            ),
            [(-10, 0)]
        );
        assert_eq!(
            windows(
                WindowKind::Tumble {
                    size: 10,
                    offset: 5
                },
                23
            ),
            [(15, 25)]
        );
        assert_eq!(
            windows(WindowKind::Hop { slide: 5, size: 15 }, 23),
            [(10, 25), (15, 30), (20, 35)]
        );
        assert_eq!(
            windows(WindowKind::Cumulate { step: 10, size: 40 }, 23),
            [(0, 30), (0, 40)]
        );
        assert_eq!(
            windows(WindowKind::Cumulate { step: 10, size: 40 }, 40),
            [(40, 50), (40, 60), (40, 70), (40, 80)]
        );
    }
}
