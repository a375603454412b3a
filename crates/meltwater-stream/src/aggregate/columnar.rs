//! Vectorized state of a window aggregate over aligned windows: per open window, the
//! keys interned by a DataFusion [`GroupValues`] (group index = key) and one
//! [`GroupsAccumulator`] per aggregate, holding every key's state in columns, as batch
//! mode's hash aggregate does.
//!
//! [`super::window::WindowAggregateOperator`] uses it when every aggregate supports a
//! `GroupsAccumulator` and the windows do not merge (it assigns windows, counts late
//! rows, fires windows and shapes the output and checkpoints the same way on both
//! paths); otherwise it keeps one `Accumulator` per (window, key).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::internal_err;
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use meltwater_state::spill::{read_ipc_file, write_ipc_file};

use super::window::WindowKey;
use super::GroupedRows;

/// One window's groups: its keys interned to group indices `0..len`.
enum Groups {
    Keys(Box<dyn GroupValues>),
    /// No key columns: a single group (index 0) once any row arrived.
    Global {
        len: usize,
    },
}

impl Groups {
    fn new(key_schema: &SchemaRef) -> Result<Self> {
        if key_schema.fields().is_empty() {
            Ok(Groups::Global { len: 0 })
        } else {
            Ok(Groups::Keys(new_group_values(
                Arc::clone(key_schema),
                &GroupOrdering::None,
            )?))
        }
    }

    /// Sets `indices` to the group index of each of the `rows` rows of `keys`.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize, indices: &mut Vec<usize>) -> Result<()> {
        indices.clear();
        match self {
            Groups::Keys(values) => values.intern(keys, indices),
            Groups::Global { len } => {
                indices.resize(rows, 0);
                if rows > 0 {
                    *len = 1;
                }
                Ok(())
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Groups::Keys(values) => values.len(),
            Groups::Global { len } => *len,
        }
    }

    /// The key columns in group-index order (none without keys), and the number of
    /// groups. Leaves no groups behind.
    fn drain(&mut self) -> Result<(Vec<ArrayRef>, usize)> {
        let len = self.len();
        match self {
            Groups::Keys(values) => Ok((values.emit(EmitTo::All)?, len)),
            Groups::Global { len: l } => {
                *l = 0;
                Ok((vec![], len))
            }
        }
    }
}

/// One open window's state.
pub(crate) struct ColumnarWindow {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

/// A window's final rows: the key columns, each aggregate's values (group order), and
/// the number of rows.
pub(crate) struct WindowResult {
    pub keys: Vec<ArrayRef>,
    pub values: Vec<ArrayRef>,
    pub rows: usize,
}

impl ColumnarWindow {
    /// Evaluates every aggregate for every key, consuming the window.
    pub(crate) fn finish(mut self) -> Result<WindowResult> {
        let (keys, rows) = self.groups.drain()?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<Result<Vec<_>>>()?;
        Ok(WindowResult { keys, values, rows })
    }
}

/// A window's checkpoint: its key columns and every aggregate's state columns
/// (concatenated in aggregate order), `rows` rows.
pub(crate) struct WindowState {
    pub window: WindowKey,
    pub keys: Vec<ArrayRef>,
    pub states: Vec<ArrayRef>,
    pub rows: usize,
}

/// The open windows of a vectorized window aggregate.
pub(crate) struct ColumnarWindows {
    aggr_exprs: Vec<Arc<AggregateFunctionExpr>>,
    /// The key columns (every field nullable).
    key_schema: SchemaRef,
    /// Per aggregate: the types of its state fields.
    state_types: Vec<Vec<DataType>>,
    /// Open windows by (end, start).
    pub(crate) windows: BTreeMap<WindowKey, ColumnarWindow>,
    /// Scratch: the group index of each row of the window being updated.
    indices: Vec<usize>,
    /// Set with a memory budget: where windows' state goes when over it.
    spill: Option<Spill>,
}

/// State moved out of memory: per window, files of (keys, state) rows, merged back
/// when the window fires or a checkpoint is taken.
struct Spill {
    budget: usize,
    dir: PathBuf,
    files: BTreeMap<WindowKey, Vec<PathBuf>>,
    next: u64,
    bytes: u64,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ColumnarWindows {
    /// The vectorized state for `aggr_exprs` over keys of `key_types`, or `None` when an
    /// aggregate has no `GroupsAccumulator` or its state fields differ in number from
    /// its `Accumulator`'s (`state_lens`, the checkpoint layout).
    pub(crate) fn try_new(
        aggr_exprs: &[Arc<AggregateFunctionExpr>],
        key_types: Vec<DataType>,
        state_lens: &[usize],
    ) -> Result<Option<Self>> {
        if !aggr_exprs.iter().all(|a| a.groups_accumulator_supported()) {
            return Ok(None);
        }
        let mut state_types = Vec::with_capacity(aggr_exprs.len());
        for (a, &n) in aggr_exprs.iter().zip(state_lens) {
            let fields = a.state_fields()?;
            if fields.len() != n {
                return Ok(None);
            }
            state_types.push(fields.iter().map(|f| f.data_type().clone()).collect());
        }
        let key_schema = Arc::new(Schema::new(
            key_types
                .into_iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("k{i}"), t, true))
                .collect::<Vec<_>>(),
        ));
        Ok(Some(Self {
            aggr_exprs: aggr_exprs.to_vec(),
            key_schema,
            state_types,
            windows: BTreeMap::new(),
            indices: Vec::new(),
            spill: None,
        }))
    }

    /// Keeps the open windows' state within `budget` bytes (as the accumulators and key
    /// tables report their sizes): when over it, the windows that fire last move to
    /// Arrow IPC files under `dir` (created; removed with the operator) until half the
    /// budget is used, and new rows for them start fresh state in memory.
    pub(crate) fn with_memory_budget(mut self, budget: usize, dir: PathBuf) -> Self {
        self.spill = Some(Spill {
            budget: budget.max(1),
            dir,
            files: BTreeMap::new(),
            next: 0,
            bytes: 0,
        });
        self
    }

    /// Bytes written to spill files so far.
    pub(crate) fn spilled_bytes(&self) -> u64 {
        self.spill.as_ref().map(|s| s.bytes).unwrap_or(0)
    }

    /// The memory the open windows' state takes, as its parts report it.
    pub(crate) fn memory_size(&self) -> usize {
        self.windows
            .values()
            .map(|w| {
                let groups = match &w.groups {
                    Groups::Keys(values) => values.size(),
                    Groups::Global { .. } => 0,
                };
                groups + w.accumulators.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum()
    }

    /// Spills the windows that fire last while over the budget.
    fn spill_if_over_budget(&mut self) -> Result<()> {
        let Some(budget) = self.spill.as_ref().map(|s| s.budget) else {
            return Ok(());
        };
        let mut size = self.memory_size();
        if size <= budget {
            return Ok(());
        }
        while size > budget / 2 {
            let Some((window, mut state)) = self.windows.pop_last() else {
                break;
            };
            let (keys, states, rows) = drain(&mut state)?;
            if rows > 0 {
                self.write_spill(window, &keys, &states)?;
            }
            size = self.memory_size();
        }
        Ok(())
    }

    fn write_spill(
        &mut self,
        window: WindowKey,
        keys: &[ArrayRef],
        states: &[ArrayRef],
    ) -> Result<()> {
        let spill = self.spill.as_mut().expect("spilling needs a budget");
        std::fs::create_dir_all(&spill.dir)?;
        let columns: Vec<ArrayRef> = keys.iter().chain(states).cloned().collect();
        let fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let path = spill.dir.join(format!("spill-{}.arrow", spill.next));
        spill.next += 1;
        spill.bytes += write_ipc_file(&path, &[batch])?;
        spill.files.entry(window).or_default().push(path);
        Ok(())
    }

    /// A spill file's key columns and flattened state columns.
    fn read_spill(&self, path: &std::path::Path) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, usize)> {
        let batches = read_ipc_file(path, None)?;
        let Some(first) = batches.first() else {
            return internal_err!("window aggregate: spill file {} is empty", path.display());
        };
        let batch = concat_batches(&first.schema(), &batches)?;
        let k = self.key_schema.fields().len();
        let columns = batch.columns();
        Ok((
            columns[..k].to_vec(),
            columns[k..].to_vec(),
            batch.num_rows(),
        ))
    }

    /// Merges (keys, flattened state) rows into `window`.
    fn merge_into(
        &mut self,
        window: &mut ColumnarWindow,
        keys: &[ArrayRef],
        states: &[ArrayRef],
        rows: usize,
    ) -> Result<()> {
        window.groups.intern(keys, rows, &mut self.indices)?;
        let total = window.groups.len();
        let mut c = 0;
        for (acc, types) in window.accumulators.iter_mut().zip(&self.state_types) {
            let values = &states[c..c + types.len()];
            c += types.len();
            acc.merge_batch(values, &self.indices, None, total)?;
        }
        Ok(())
    }

    /// Removes the windows that fire at `watermark` and returns them, in firing order,
    /// with their spilled state merged back.
    pub(crate) fn take_fired(
        &mut self,
        watermark: crate::message::EventTime,
    ) -> Result<BTreeMap<WindowKey, ColumnarWindow>> {
        let mut fired = super::window::take_fired(&mut self.windows, watermark);
        let spilled = match self.spill.as_mut() {
            Some(spill) => super::window::take_fired(&mut spill.files, watermark),
            None => BTreeMap::new(),
        };
        for (window, paths) in spilled {
            let mut state = match fired.remove(&window) {
                Some(state) => state,
                None => Self::new_window(&self.aggr_exprs, &self.key_schema)?,
            };
            for path in &paths {
                let (keys, states, rows) = self.read_spill(path)?;
                self.merge_into(&mut state, &keys, &states, rows)?;
                let _ = std::fs::remove_file(path);
            }
            fired.insert(window, state);
        }
        Ok(fired)
    }

    fn new_window(
        aggr_exprs: &[Arc<AggregateFunctionExpr>],
        key_schema: &SchemaRef,
    ) -> Result<ColumnarWindow> {
        Ok(ColumnarWindow {
            groups: Groups::new(key_schema)?,
            accumulators: aggr_exprs
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<Result<_>>()?,
        })
    }

    /// Feeds rows grouped by window (group `g` of `rows` is window `windows[g]`, with
    /// its key columns and aggregate inputs): input rows (`update_batch`, honouring
    /// FILTER masks), or with `merge` state rows as [`ColumnarWindows::checkpoint`]
    /// writes them (`merge_batch`).
    pub(crate) fn update(
        &mut self,
        windows: &[WindowKey],
        rows: &GroupedRows,
        merge: bool,
    ) -> Result<()> {
        for (g, window) in windows.iter().enumerate() {
            let (_, len) = rows.range(g);
            if len == 0 {
                continue;
            }
            let state = match self.windows.entry(*window) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(Self::new_window(&self.aggr_exprs, &self.key_schema)?),
            };
            state.groups.intern(&rows.keys(g), len, &mut self.indices)?;
            let total = state.groups.len();
            for (i, acc) in state.accumulators.iter_mut().enumerate() {
                let values = rows.args(i, g);
                let filter = rows.filter(i, g);
                if merge {
                    acc.merge_batch(&values, &self.indices, filter.as_ref(), total)?;
                } else {
                    acc.update_batch(&values, &self.indices, filter.as_ref(), total)?;
                }
            }
        }
        self.spill_if_over_budget()
    }

    /// Every open window's keys and state, in window order. Taking state drains a
    /// `GroupsAccumulator`, so each window is rebuilt from what was taken.
    pub(crate) fn checkpoint(&mut self) -> Result<Vec<WindowState>> {
        let mut out = Vec::with_capacity(self.windows.len());
        let windows: Vec<WindowKey> = self.windows.keys().copied().collect();
        for window in windows {
            let mut state = self.windows.remove(&window).expect("listed above");
            let (keys, states, rows) = drain(&mut state)?;
            let mut fresh = Self::new_window(&self.aggr_exprs, &self.key_schema)?;
            self.merge_into(&mut fresh, &keys, &states, rows)?;
            let total = fresh.groups.len();
            if total != rows {
                return internal_err!(
                    "window aggregate: {rows} keys of window {window:?} interned as {total} groups"
                );
            }
            self.windows.insert(window, fresh);
            out.push(WindowState {
                window,
                keys,
                states,
                rows,
            });
        }
        // Spilled parts of windows: more rows of the same windows (restore merges them).
        let spilled: Vec<(WindowKey, PathBuf)> = match &self.spill {
            Some(spill) => spill
                .files
                .iter()
                .flat_map(|(w, paths)| paths.iter().map(move |p| (*w, p.clone())))
                .collect(),
            None => Vec::new(),
        };
        for (window, path) in spilled {
            let (keys, states, rows) = self.read_spill(&path)?;
            out.push(WindowState {
                window,
                keys,
                states,
                rows,
            });
        }
        Ok(out)
    }

    /// Merges restored state rows: `ids[row]` is the row's index into `windows`;
    /// `keys` the key columns, `states` the state columns (as in
    /// [`ColumnarWindows::checkpoint`]).
    pub(crate) fn restore(
        &mut self,
        windows: &[WindowKey],
        ids: &[usize],
        keys: &[ArrayRef],
        states: &[ArrayRef],
    ) -> Result<()> {
        let keys = keys
            .iter()
            .zip(self.key_schema.fields())
            .map(|(k, f)| cast_to(k, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let width: usize = self.state_types.iter().map(|t| t.len()).sum();
        if states.len() != width {
            return internal_err!(
                "window aggregate: a checkpoint with {} state columns, expected {width}",
                states.len()
            );
        }
        let mut per_aggregate = Vec::with_capacity(self.state_types.len());
        let mut c = 0;
        for types in &self.state_types {
            let mut arrays = Vec::with_capacity(types.len());
            for t in types {
                arrays.push(cast_to(&states[c], t)?);
                c += 1;
            }
            per_aggregate.push(arrays);
        }
        let filters = vec![None; per_aggregate.len()];
        let grouped = GroupedRows::with_keys(&per_aggregate, &filters, &keys, ids, windows.len())?;
        self.update(windows, &grouped, true)
    }
}

fn cast_to(array: &ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    if array.data_type() == data_type {
        Ok(Arc::clone(array))
    } else {
        Ok(cast(array, data_type)?)
    }
}

/// Empties a window: its key columns, its state columns (every aggregate's, flattened in
/// aggregate order) and its number of groups.
fn drain(window: &mut ColumnarWindow) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, usize)> {
    let (keys, rows) = window.groups.drain()?;
    let mut states = Vec::new();
    for acc in window.accumulators.iter_mut() {
        states.extend(acc.state(EmitTo::All)?);
    }
    Ok((keys, states, rows))
}
