//! Event-time window aggregation: rows arrive with their window's bounds (appended by
//! [`super::WindowAssignOperator`]); the operator keeps accumulators per (window, key)
//! and emits a window's rows once the watermark passes the window's last millisecond
//! (`end - 1`, Flink's window max timestamp), then frees the window.
//!
//! Aligned windows (TUMBLE, HOP, CUMULATE, and SESSION windows formed upstream) whose
//! aggregates all have a DataFusion `GroupsAccumulator` keep their state columnar
//! ([`super::columnar`]): per open window, the keys interned to group indices and one
//! `GroupsAccumulator` per aggregate, updated once per window and input batch. Otherwise
//! (DISTINCT, aggregates without a `GroupsAccumulator`, merging SESSION windows) each
//! (window, key) keeps its own `Accumulator`s. Both paths assign windows, count late
//! rows, fire windows and write checkpoints alike (the same checkpoint format).
//!
//! SESSION: each row arrives with its own window `[t, t + gap)`; windows of one key that
//! overlap or touch merge (their accumulators merged through `state()`/`merge_batch`), and
//! a session fires once the watermark passes its (merged) end - 1, when no later row can
//! extend it any more without being late.
//!
//! Late rows (whose window has already fired when they arrive) are dropped and counted;
//! with a side output ([`WindowAggregateOperator::with_side_output`]) they also go to it,
//! as they arrived (one row per late (row, window) pair: HOP and CUMULATE copy a row into
//! several windows, and each copy is late or not on its own).
//! A SESSION row is late only if its window is late *and* touches no open session of its
//! key (Flink merges first, then checks lateness).
//!
//! With a memory budget ([`WindowAggregateOperator::with_memory_budget`]) the columnar
//! state spills the windows that fire last ([`super::columnar`]); the per-group state
//! spills by key group, as the updating aggregate does: over the budget, the key groups
//! used least recently go to a run file (meltwater-state's `KeyGroupSpill`) as their
//! checkpoint rows, each with the earliest end of its windows. A batch loads the spilled
//! key groups of its rows back before any of them is grouped (so a key's sessions merge
//! whole and a row is only late when its key has no open session to join), and a
//! watermark loads the key groups with a window it fires before firing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use datafusion::common::{internal_err, plan_err, ScalarValue};
use datafusion::error::Result;
use meltwater_plan::window::{ms_to_timestamps, timestamps_to_ms, WindowKind};

use super::columnar::{ColumnarWindow, ColumnarWindows};
use super::{
    accumulator_state, checkpoint_accumulators, evaluate, merge_accumulators, merge_state_row,
    restored_watermark, scalars_to_array, snapshot_batch, state_lens, transpose_to_columns,
    watermark_state, Accumulators, AggregateSpec, GroupedRows, KeyCodec, NO_GROUP,
};
use crate::message::{EventTime, MIN_WATERMARK};
use crate::operator::{
    Operator, OperatorCounters, OperatorSnapshot, Output, RestoredState, SubtaskInfo,
};
use meltwater_state::KeyGroupSpill;

/// Which window an aggregate is over, and where the window bounds are among its group
/// expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// Index into the spec's group expressions of `window_start`.
    pub window_start_group: usize,
    /// Index into the spec's group expressions of `window_end`.
    pub window_end_group: usize,
    /// SESSION only: the input's sessions are final (formed upstream per PARTITION BY
    /// key), so rows group by their bounds as given instead of merging per group key.
    pub sessions_assigned: bool,
}

impl WindowSpec {
    /// Whether this aggregate merges session windows itself.
    pub fn merges_sessions(&self) -> bool {
        matches!(self.kind, WindowKind::Session { .. }) && !self.sessions_assigned
    }
}

/// Window bounds in ms as (end, start): ordered by end first, the firing order.
pub(crate) type WindowKey = (i64, i64);

/// Whether a window ending at `end` (exclusive, ms) has fired once the watermark reached
/// `watermark`: its last millisecond, `end - 1`, is at or below it (Flink's rule).
pub(crate) fn window_fired(end: i64, watermark: EventTime) -> bool {
    end - 1 <= watermark
}

/// Per spilled key group, the earliest end of its windows: when the group must be back
/// in memory (its first window fires). Session buffers and per-group window aggregates
/// keep one beside their [`KeyGroupSpill`].
#[derive(Debug, Default)]
pub(crate) struct SpilledEnds(HashMap<u16, i64>);

impl std::ops::Deref for SpilledEnds {
    type Target = HashMap<u16, i64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl SpilledEnds {
    /// Key group `kg` went to disk with a window ending at `end`.
    pub(crate) fn note(&mut self, kg: u16, end: i64) {
        let e = self.0.entry(kg).or_insert(i64::MAX);
        *e = (*e).min(end);
    }

    /// The spilled key groups with a window that fires at `watermark`, in order.
    pub(crate) fn due(&self, watermark: EventTime) -> Vec<u16> {
        let mut due: Vec<u16> = self
            .0
            .iter()
            .filter(|(_, end)| window_fired(**end, watermark))
            .map(|(kg, _)| *kg)
            .collect();
        due.sort_unstable();
        due
    }

    /// `kgs` are back in memory.
    pub(crate) fn forget(&mut self, kgs: &[u16]) {
        if !self.0.is_empty() {
            for kg in kgs {
                self.0.remove(kg);
            }
        }
    }
}

/// Removes the windows that fire at `watermark` (see [`window_fired`]) from `windows`
/// and returns them, in firing order.
pub(crate) fn take_fired<V>(
    windows: &mut BTreeMap<WindowKey, V>,
    watermark: EventTime,
) -> BTreeMap<WindowKey, V> {
    // end - 1 <= watermark, i.e. end < watermark + 2.
    match watermark.checked_add(2) {
        Some(limit) => {
            let rest = windows.split_off(&(limit, i64::MIN));
            std::mem::replace(windows, rest)
        }
        None => std::mem::take(windows),
    }
}

/// Removes and returns key `key`'s value in window `window`, dropping the window once it
/// holds no key.
pub(crate) fn take_window<V>(
    windows: &mut BTreeMap<WindowKey, HashMap<Box<[u8]>, V>>,
    window: WindowKey,
    key: &[u8],
) -> Option<V> {
    let keys = windows.get_mut(&window)?;
    let value = keys.remove(key);
    if keys.is_empty() {
        windows.remove(&window);
    }
    value
}

/// One session of a key after new rows arrived: the key's existing sessions and the new
/// rows' windows that overlap or touch, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MergedSession {
    pub start: i64,
    pub end: i64,
    /// The existing sessions it absorbs, as (start, end).
    pub old: Vec<(i64, i64)>,
    /// The new rows in it (the ids handed to [`merge_sessions`]).
    pub rows: Vec<usize>,
}

impl MergedSession {
    /// Its rows are late: it touches no open session and its window already fired
    /// (Flink merges first, then checks lateness).
    pub(crate) fn is_late(&self, watermark: EventTime) -> bool {
        self.old.is_empty() && window_fired(self.end, watermark)
    }
}

/// Merges the windows `(start, end, row id)` of new rows of one key into the key's
/// `existing` sessions (as (start, end), disjoint and not touching). Returns every
/// resulting session sorted by start, including existing ones no new row touched.
pub(crate) fn merge_sessions(
    existing: &[(i64, i64)],
    rows: impl IntoIterator<Item = (i64, i64, usize)>,
) -> Vec<MergedSession> {
    // (start, end, Some(row) | None for an existing session)
    let mut intervals: Vec<(i64, i64, Option<usize>)> =
        existing.iter().map(|&(s, e)| (s, e, None)).collect();
    intervals.extend(rows.into_iter().map(|(s, e, r)| (s, e, Some(r))));
    intervals.sort_by_key(|&(s, e, _)| (s, e));
    let mut merged = Vec::new();
    let mut i = 0;
    while i < intervals.len() {
        let (start, mut end) = (intervals[i].0, intervals[i].1);
        let mut j = i + 1;
        while j < intervals.len() && intervals[j].0 <= end {
            end = end.max(intervals[j].1);
            j += 1;
        }
        let component = &intervals[i..j];
        merged.push(MergedSession {
            start,
            end,
            old: component
                .iter()
                .filter(|c| c.2.is_none())
                .map(|c| (c.0, c.1))
                .collect(),
            rows: component.iter().filter_map(|c| c.2).collect(),
        });
        i = j;
    }
    merged
}

/// A window-bound column in ms, as [`timestamps_to_ms`] computes it (without a copy for
/// millisecond timestamps).
fn bounds_ms(column: &ArrayRef) -> Result<Int64Array> {
    if let DataType::Timestamp(TimeUnit::Millisecond, _) = column.data_type() {
        return Ok(column
            .as_primitive::<TimestampMillisecondType>()
            .reinterpret_cast::<Int64Type>());
    }
    Ok(Int64Array::from(timestamps_to_ms(column)?))
}

/// Numbers the distinct windows of `rows` rows: returns each row's index into the
/// returned windows (in order of first appearance), or [`NO_GROUP`] where `window_of`
/// gives none.
pub(crate) fn number_windows(
    rows: usize,
    mut window_of: impl FnMut(usize) -> Option<WindowKey>,
) -> (Vec<usize>, Vec<WindowKey>) {
    let mut ids = Vec::with_capacity(rows);
    let mut windows: Vec<WindowKey> = Vec::new();
    let mut index: datafusion::common::HashMap<WindowKey, usize> = Default::default();
    // Rows of one window often come together (one window per batch, HOP copies).
    let mut last: Option<(WindowKey, usize)> = None;
    for row in 0..rows {
        let Some(window) = window_of(row) else {
            ids.push(NO_GROUP);
            continue;
        };
        let id = match last {
            Some((w, id)) if w == window => id,
            _ => {
                let id = *index.entry(window).or_insert_with(|| {
                    windows.push(window);
                    windows.len() - 1
                });
                last = Some((window, id));
                id
            }
        };
        ids.push(id);
    }
    (ids, windows)
}

/// Per-group path: one (window, key)'s state.
struct WindowGroup {
    accs: Accumulators,
    /// The key group of the key (tracked with a memory budget only, else 0).
    kg: u16,
    /// The memory the group takes, as last measured (with a memory budget only, else 0).
    size: usize,
}

/// A (window, key)'s memory: its key, its accumulators, and the entry around them.
fn group_size(key_len: usize, accs: &Accumulators) -> usize {
    key_len + std::mem::size_of::<WindowGroup>() + 48 + accs.iter().map(|a| a.size()).sum::<usize>()
}

/// Per-group path with a memory budget: what the groups in memory take, per key group.
#[derive(Debug, Default)]
struct Usage {
    by_group: HashMap<u16, usize>,
    total: usize,
}

impl Usage {
    /// A group of key group `kg` now takes `new` bytes instead of `old`.
    fn resize(&mut self, kg: u16, old: usize, new: usize) {
        if old == new {
            return;
        }
        let bytes = self.by_group.entry(kg).or_insert(0);
        *bytes = (*bytes + new).saturating_sub(old);
        self.total = (self.total + new).saturating_sub(old);
        if *bytes == 0 {
            self.by_group.remove(&kg);
        }
    }
}

/// Aggregates per event-time window and key; see the module docs.
pub struct WindowAggregateOperator {
    spec: AggregateSpec,
    window: WindowSpec,
    info: SubtaskInfo,
    /// Group expression indices of the key (the non-window group expressions).
    key_indices: Vec<usize>,
    keys: KeyCodec,
    state_lens: Vec<usize>,
    /// The vectorized state, when the operator runs columnar (chosen at construction);
    /// `windows` and `sessions` then stay empty.
    columnar: Option<ColumnarWindows>,
    /// Per-group path: open windows by (end, start), then key.
    windows: BTreeMap<WindowKey, HashMap<Box<[u8]>, WindowGroup>>,
    /// SESSION: each key's open sessions as (start, end), sorted, disjoint, not touching.
    sessions: HashMap<Box<[u8]>, Vec<(i64, i64)>>,
    /// Per-group path with a memory budget: the key groups on disk.
    spill: Option<KeyGroupSpill>,
    /// With `spill`: the memory the groups in memory take.
    usage: Usage,
    /// Per spilled key group: the earliest end of its windows (when it must be back).
    spilled_ends: SpilledEnds,
    watermark: EventTime,
    late_records: u64,
    /// HOP: late (row, window) pairs; each input row is in `size / slide` windows.
    late_hop_windows: u64,
    /// With a side output: the rows of the current input batch found late.
    late_rows: Option<Vec<u32>>,
}

impl std::fmt::Debug for WindowAggregateOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowAggregateOperator")
            .field("window", &self.window)
            .field("columnar", &self.columnar.is_some())
            .field("open_windows", &self.open_windows())
            .field("memory", &self.usage.total)
            .field("spilled_groups", &self.spilled_ends.len())
            .field("watermark", &self.watermark)
            .finish()
    }
}

/// Output or checkpoint rows of several windows: window bounds (ms), key columns, and
/// aggregate (output) or state (checkpoint) columns.
struct WindowRows {
    starts: Vec<i64>,
    ends: Vec<i64>,
    keys: Vec<ArrayRef>,
    values: Vec<ArrayRef>,
}

/// [`WindowRows`] gathered window by window.
#[derive(Default)]
struct Parts {
    starts: Vec<i64>,
    ends: Vec<i64>,
    /// Per key column: its pieces.
    keys: Vec<Vec<ArrayRef>>,
    /// Per aggregate (output) or state column (checkpoint): its pieces.
    values: Vec<Vec<ArrayRef>>,
}

impl Parts {
    fn push(
        &mut self,
        (end, start): WindowKey,
        rows: usize,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) {
        self.starts.extend(std::iter::repeat_n(start, rows));
        self.ends.extend(std::iter::repeat_n(end, rows));
        for (parts, column) in [(&mut self.keys, keys), (&mut self.values, values)] {
            parts.resize_with(column.len(), Vec::new);
            for (p, c) in parts.iter_mut().zip(column) {
                p.push(c);
            }
        }
    }

    /// The pieces concatenated.
    fn concat(self) -> Result<WindowRows> {
        let join = |parts: Vec<Vec<ArrayRef>>| -> Result<Vec<ArrayRef>> {
            parts
                .into_iter()
                .map(|p| {
                    if p.len() == 1 {
                        Ok(p.into_iter().next().expect("one part"))
                    } else {
                        let refs: Vec<&dyn Array> = p.iter().map(|a| a.as_ref()).collect();
                        Ok(concat(&refs)?)
                    }
                })
                .collect()
        };
        Ok(WindowRows {
            starts: self.starts,
            ends: self.ends,
            keys: join(self.keys)?,
            values: join(self.values)?,
        })
    }
}

impl WindowAggregateOperator {
    pub fn try_new(spec: AggregateSpec, window: WindowSpec, info: SubtaskInfo) -> Result<Self> {
        Self::build(spec, window, info, true)
    }

    /// Keeps the open windows' state within `budget` bytes, spilling to files under
    /// `dir` (created when needed, removed with the operator): the columnar state spills
    /// the windows that fire last (see [`super::columnar`]), the per-group state (merging
    /// sessions, DISTINCT) its least recently used key groups (see the module docs).
    pub fn with_memory_budget(mut self, budget: usize, dir: std::path::PathBuf) -> Self {
        match self.columnar.take() {
            Some(c) => self.columnar = Some(c.with_memory_budget(budget, dir)),
            None => self.spill = Some(KeyGroupSpill::new(budget, dir)),
        }
        self
    }

    /// Emits the input rows it finds late to the side output ([`Output::push_late`])
    /// besides counting them.
    pub fn with_side_output(mut self) -> Self {
        self.late_rows = Some(Vec::new());
        self
    }

    /// Notes that input row `row` is late, for the side output.
    fn note_late(&mut self, row: usize) {
        if let Some(rows) = self.late_rows.as_mut() {
            rows.push(row as u32);
        }
    }

    /// `vectorize`: run columnar when the window kind and aggregates allow it (always,
    /// but for tests forcing the per-group path).
    fn build(
        spec: AggregateSpec,
        window: WindowSpec,
        info: SubtaskInfo,
        vectorize: bool,
    ) -> Result<Self> {
        let n = spec.group_exprs.len();
        if window.window_start_group >= n
            || window.window_end_group >= n
            || window.window_start_group == window.window_end_group
        {
            return plan_err!(
                "window aggregate: window_start/window_end group indices {}/{} out of {n} group expressions",
                window.window_start_group,
                window.window_end_group
            );
        }
        if spec.is_updating_input() {
            return plan_err!(
                "a window aggregate needs an append-only input; its input is an updating stream"
            );
        }
        let types = spec.group_types()?;
        for i in [window.window_start_group, window.window_end_group] {
            if !matches!(types[i], DataType::Timestamp(..)) {
                return plan_err!(
                    "window aggregate: group expression {} ({}) has type {}, expected a timestamp",
                    i,
                    spec.group_exprs[i].1,
                    types[i]
                );
            }
        }
        let key_indices: Vec<usize> = (0..n)
            .filter(|i| *i != window.window_start_group && *i != window.window_end_group)
            .collect();
        let key_types: Vec<DataType> = key_indices.iter().map(|&i| types[i].clone()).collect();
        let keys = KeyCodec::new(key_types.clone())?;
        let mut op = Self {
            spec,
            window,
            info,
            key_indices,
            keys,
            state_lens: vec![],
            columnar: None,
            windows: BTreeMap::new(),
            sessions: HashMap::new(),
            spill: None,
            usage: Usage::default(),
            spilled_ends: SpilledEnds::default(),
            watermark: MIN_WATERMARK,
            late_records: 0,
            late_hop_windows: 0,
            late_rows: None,
        };
        op.state_lens = state_lens(&|| op.new_accumulators())?;
        if vectorize && !window.merges_sessions() {
            op.columnar = ColumnarWindows::try_new(&op.spec.aggr_exprs, key_types, &op.state_lens)?;
        }
        Ok(op)
    }

    /// Whether the state is columnar (see the module docs).
    #[cfg(test)]
    pub(crate) fn is_columnar(&self) -> bool {
        self.columnar.is_some()
    }

    fn open_windows(&self) -> usize {
        match &self.columnar {
            Some(c) => c.windows.len(),
            None => self.windows.len(),
        }
    }

    fn new_accumulators(&self) -> Result<Accumulators> {
        self.spec
            .aggr_exprs
            .iter()
            .map(|a| a.create_accumulator())
            .collect()
    }

    fn is_late(&self, end: i64) -> bool {
        window_fired(end, self.watermark)
    }

    /// Counts a late (row, window) pair of an aligned window.
    fn count_late(&mut self, start: i64, end: i64) {
        match self.window.kind {
            WindowKind::Hop { .. } => self.late_hop_windows += 1,
            // Every row is in exactly one full-size window, its last one: the row is
            // dropped entirely iff that one is late.
            WindowKind::Cumulate { size, .. } => {
                if end - start == size {
                    self.late_records += 1
                }
            }
            _ => self.late_records += 1,
        }
    }

    /// Numbers the windows of an aligned-window batch's rows (see [`number_windows`]);
    /// rows without bounds and late rows (counted) get [`NO_GROUP`].
    fn assign_aligned(
        &mut self,
        starts: &Int64Array,
        ends: &Int64Array,
    ) -> (Vec<usize>, Vec<WindowKey>) {
        number_windows(starts.len(), |row| {
            if starts.is_null(row) || ends.is_null(row) {
                return None;
            }
            let (s, e) = (starts.value(row), ends.value(row));
            if self.is_late(e) {
                self.count_late(s, e);
                self.note_late(row);
                return None;
            }
            Some((e, s))
        })
    }

    /// Per-group path: assigns each row of an aligned-window batch its (window, key)
    /// group; `kgs` are the rows' key groups (empty without a budget).
    fn group_aligned(
        &mut self,
        starts: &Int64Array,
        ends: &Int64Array,
        keys: &super::EncodedKeys,
        kgs: &[u16],
        groups: &mut Vec<(WindowKey, Box<[u8]>, u16)>,
    ) -> Vec<usize> {
        let (window_ids, windows) = self.assign_aligned(starts, ends);
        let mut local: HashMap<(usize, &[u8]), usize> = HashMap::new();
        window_ids
            .iter()
            .enumerate()
            .map(|(row, &w)| {
                if w == NO_GROUP {
                    return NO_GROUP;
                }
                let key = keys.key(row);
                *local.entry((w, key)).or_insert_with(|| {
                    groups.push((windows[w], key.into(), kgs.get(row).copied().unwrap_or(0)));
                    groups.len() - 1
                })
            })
            .collect()
    }

    /// Merges each row's session window into its key's sessions; returns each row's
    /// group (the merged session it ended up in). `kgs` are the rows' key groups (empty
    /// without a budget).
    fn group_sessions(
        &mut self,
        starts: &Int64Array,
        ends: &Int64Array,
        keys: &super::EncodedKeys,
        kgs: &[u16],
        groups: &mut Vec<(WindowKey, Box<[u8]>, u16)>,
    ) -> Result<Vec<usize>> {
        let mut ids = vec![NO_GROUP; starts.len()];
        let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for row in 0..starts.len() {
            if starts.is_valid(row) && ends.is_valid(row) {
                by_key.entry(keys.key(row)).or_default().push(row);
            }
        }
        for (key, rows) in by_key {
            let key: Box<[u8]> = key.into();
            let kg = kgs.get(rows[0]).copied().unwrap_or(0);
            let existing = self.sessions.remove(&key).unwrap_or_default();
            let components = merge_sessions(
                &existing,
                rows.iter().map(|&r| (starts.value(r), ends.value(r), r)),
            );
            let mut sessions = Vec::new();
            for m in components {
                if m.is_late(self.watermark) {
                    self.late_records += m.rows.len() as u64;
                    for &row in &m.rows {
                        self.note_late(row);
                    }
                    continue;
                }
                let MergedSession {
                    start,
                    end,
                    old,
                    rows,
                } = m;
                // The merged session's accumulators: the existing sessions' merged. (Its
                // memory stays the old sessions' until it is measured after the update.)
                let mut merged: Option<WindowGroup> = None;
                for (s, e) in old {
                    let Some(mut g) = take_window(&mut self.windows, (e, s), &key) else {
                        return internal_err!("session window [{s}, {e}) has no state");
                    };
                    match &mut merged {
                        None => merged = Some(g),
                        Some(m) => {
                            merge_accumulators(&mut m.accs, &mut g.accs)?;
                            m.size += g.size;
                        }
                    }
                }
                let merged = match merged {
                    Some(m) => m,
                    None => WindowGroup {
                        accs: self.new_accumulators()?,
                        kg,
                        size: 0,
                    },
                };
                self.windows
                    .entry((end, start))
                    .or_default()
                    .insert(key.clone(), merged);
                let id = groups.len();
                groups.push(((end, start), key.clone(), kg));
                for r in rows {
                    ids[r] = id;
                }
                sessions.push((start, end));
            }
            if !sessions.is_empty() {
                self.sessions.insert(key, sessions);
            }
        }
        Ok(ids)
    }

    /// Per-group path: output rows for `windows` (in order), keys sorted within a window.
    fn emit(
        &mut self,
        windows: BTreeMap<WindowKey, HashMap<Box<[u8]>, WindowGroup>>,
    ) -> Result<Option<RecordBatch>> {
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut values: Vec<Vec<ScalarValue>> = Vec::new();
        let is_session = self.window.merges_sessions();
        for ((end, start), groups) in windows {
            let mut groups: Vec<_> = groups.into_iter().collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, mut g) in groups {
                self.usage.resize(g.kg, g.size, 0);
                if is_session {
                    if let Some(list) = self.sessions.get_mut(&key) {
                        list.retain(|w| *w != (start, end));
                        if list.is_empty() {
                            self.sessions.remove(&key);
                        }
                    }
                }
                starts.push(start);
                ends.push(end);
                values.push(evaluate(&mut g.accs)?);
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let key_columns = self.keys.decode(&refs)?;
        let groups = self.spec.group_exprs.len();
        let schema = &self.spec.output_schema;
        let mut per_agg: Vec<Vec<ScalarValue>> = (0..self.spec.aggr_exprs.len())
            .map(|_| Vec::with_capacity(keys.len()))
            .collect();
        for row in values {
            for (a, v) in row.into_iter().enumerate() {
                per_agg[a].push(v);
            }
        }
        let aggregates = per_agg
            .into_iter()
            .enumerate()
            .map(|(a, v)| scalars_to_array(v, schema.field(groups + a).data_type()))
            .collect::<Result<Vec<_>>>()?;
        self.output_batch(starts, ends, key_columns, aggregates)
            .map(Some)
    }

    /// Columnar path: output rows for `windows` (in order), keys sorted within a window.
    fn emit_columnar(
        &self,
        windows: BTreeMap<WindowKey, ColumnarWindow>,
    ) -> Result<Option<RecordBatch>> {
        let mut parts = Parts::default();
        for (window, state) in windows {
            let result = state.finish()?;
            if result.rows == 0 {
                continue;
            }
            let (keys, values) = self.sort_by_key(result.keys, result.values, result.rows)?;
            parts.push(window, result.rows, keys, values);
        }
        if parts.starts.is_empty() {
            return Ok(None);
        }
        let WindowRows {
            starts,
            ends,
            keys,
            values,
        } = parts.concat()?;
        self.output_batch(starts, ends, keys, values).map(Some)
    }

    /// Reorders one window's rows (`keys` and `values` columns, `rows` rows) by key, in
    /// the order of the encoded keys (the per-group path's order).
    fn sort_by_key(
        &self,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        if keys.is_empty() || rows < 2 {
            return Ok((keys, values));
        }
        let encoded = self.keys.encode(&keys)?;
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order.sort_unstable_by(|&a, &b| encoded.key(a as usize).cmp(encoded.key(b as usize)));
        if order.iter().enumerate().all(|(i, &r)| r as usize == i) {
            return Ok((keys, values));
        }
        let order = UInt32Array::from(order);
        let reorder = |columns: Vec<ArrayRef>| -> Result<Vec<ArrayRef>> {
            columns
                .iter()
                .map(|c| Ok(take(c.as_ref(), &order, None)?))
                .collect()
        };
        Ok((reorder(keys)?, reorder(values)?))
    }

    /// The output batch (group columns in `GROUP BY` order, then the aggregates) of rows
    /// with window bounds `starts`/`ends` (ms), key columns `keys` (in key order) and
    /// `aggregates` columns.
    fn output_batch(
        &self,
        mut starts: Vec<i64>,
        mut ends: Vec<i64>,
        keys: Vec<ArrayRef>,
        aggregates: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let schema = self.spec.output_schema.clone();
        let mut key_columns = keys.into_iter();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for i in 0..self.spec.group_exprs.len() {
            let field_type = schema.field(i).data_type();
            if i == self.window.window_start_group {
                columns.push(ms_to_timestamps(std::mem::take(&mut starts), field_type)?);
            } else if i == self.window.window_end_group {
                columns.push(ms_to_timestamps(std::mem::take(&mut ends), field_type)?);
            } else {
                let Some(c) = key_columns.next() else {
                    return internal_err!("window aggregate: missing key column {i}");
                };
                columns.push(c);
            }
        }
        let groups = self.spec.group_exprs.len();
        for (a, v) in aggregates.into_iter().enumerate() {
            let field_type = schema.field(groups + a).data_type();
            if v.data_type() == field_type {
                columns.push(v);
            } else {
                columns.push(cast(&v, field_type)?);
            }
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// The checkpoint rows (with the key-group column) of rows with window bounds
    /// `starts`/`ends` (ms), key columns `keys` and the accumulators' state columns
    /// `states` (see [`Operator::restore`]).
    fn snapshot_of(
        &self,
        starts: Vec<i64>,
        ends: Vec<i64>,
        keys: Vec<ArrayRef>,
        states: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut names = vec!["__window_start".to_string(), "__window_end".to_string()];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(ends)),
        ];
        for (i, c) in self.key_indices.iter().zip(&keys) {
            names.push(self.spec.group_exprs[*i].1.clone());
            columns.push(c.clone());
        }
        for (a, n) in self.state_lens.iter().enumerate() {
            for f in 0..*n {
                names.push(format!("__acc{a}_{f}"));
            }
        }
        let width: usize = self.state_lens.iter().sum();
        if states.len() != width {
            return internal_err!(
                "window aggregate: {} state columns, expected {width}",
                states.len()
            );
        }
        columns.extend(states);
        snapshot_batch(&keys, self.info.key_groups, names, columns)
    }

    /// Per-group path: the checkpoint rows of `groups` (window, key, the accumulators'
    /// state values), `None` for no group.
    fn group_rows(
        &self,
        groups: Vec<(WindowKey, Box<[u8]>, Vec<ScalarValue>)>,
    ) -> Result<Option<RecordBatch>> {
        if groups.is_empty() {
            return Ok(None);
        }
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut keys: Vec<Box<[u8]>> = Vec::with_capacity(groups.len());
        let mut states: Vec<Vec<ScalarValue>> = Vec::with_capacity(groups.len());
        for ((end, start), key, values) in groups {
            starts.push(start);
            ends.push(end);
            keys.push(key);
            states.push(values);
        }
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let key_columns = self.keys.decode(&refs)?;
        let width: usize = self.state_lens.iter().sum();
        let states = transpose_to_columns(states, width)?;
        self.snapshot_of(starts, ends, key_columns, states)
            .map(Some)
    }

    /// Per-group path: merges checkpoint rows (`batch`, without the key-group column:
    /// `__window_start`, `__window_end`, the key columns, the state columns) into the
    /// state. With a budget the groups are measured, and unless `loading` (the rows are
    /// a spilled key group's, coming back) the spilled key groups of the rows are loaded
    /// first: a key's state is never split between memory and disk.
    fn restore_groups(&mut self, batch: &RecordBatch, loading: bool) -> Result<()> {
        let key_count = self.key_indices.len();
        let starts = batch.column(0).as_primitive::<Int64Type>().clone();
        let ends = batch.column(1).as_primitive::<Int64Type>().clone();
        let key_columns = &batch.columns()[2..2 + key_count];
        let states = &batch.columns()[2 + key_count..];
        let kgs = match self.spill {
            Some(_) => {
                let kgs = meltwater_state::key_groups(
                    key_columns,
                    batch.num_rows(),
                    self.info.key_groups,
                )?;
                if !loading {
                    self.load_spilled(&kgs)?;
                }
                kgs
            }
            None => vec![],
        };
        let measure = self.spill.is_some();
        let keys = self.keys.encode(key_columns)?;
        for row in 0..starts.len() {
            let window = (ends.value(row), starts.value(row));
            let key: Box<[u8]> = keys.key(row).into();
            if !self
                .windows
                .get(&window)
                .is_some_and(|w| w.contains_key(&key))
            {
                let group = WindowGroup {
                    accs: self.new_accumulators()?,
                    kg: kgs.get(row).copied().unwrap_or(0),
                    size: 0,
                };
                self.windows
                    .entry(window)
                    .or_default()
                    .insert(key.clone(), group);
                if self.window.merges_sessions() {
                    let list = self.sessions.entry(key.clone()).or_default();
                    list.push((window.1, window.0));
                    list.sort();
                }
            }
            let g = self
                .windows
                .get_mut(&window)
                .and_then(|w| w.get_mut(&key))
                .expect("inserted above");
            merge_state_row(&mut g.accs, states, row, &self.state_lens)?;
            if measure {
                let size = group_size(key.len(), &g.accs);
                self.usage.resize(g.kg, g.size, size);
                g.size = size;
            }
        }
        Ok(())
    }

    /// Per-group path: loads the spilled key groups among `kgs` back into memory (as a
    /// restore merges them), marking `kgs` as just used.
    fn load_spilled(&mut self, kgs: &[u16]) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let loaded = spill.load_touched(kgs)?;
        self.spilled_ends.forget(kgs);
        for batch in loaded {
            self.restore_groups(&batch, true)?;
        }
        Ok(())
    }

    /// Per-group path over the budget: moves the groups of the least recently used key
    /// groups to a spill file (as checkpoint rows) until half the budget is used.
    fn spill_if_over_budget(&mut self) -> Result<()> {
        let Some(spill) = self.spill.as_ref() else {
            return Ok(());
        };
        let budget = spill.budget();
        if self.usage.total <= budget {
            return Ok(());
        }
        let mut left = self.usage.total;
        let mut chosen: HashSet<u16> = HashSet::new();
        for kg in spill.coldest_first(self.usage.by_group.keys().copied()) {
            if left <= budget / 2 {
                break;
            }
            left = left.saturating_sub(self.usage.by_group.get(&kg).copied().unwrap_or(0));
            chosen.insert(kg);
        }
        // The chosen key groups' groups, by key group, in firing order.
        let mut taken: BTreeMap<u16, Vec<(WindowKey, Box<[u8]>, Accumulators)>> = BTreeMap::new();
        for (&window, keys) in self.windows.iter_mut() {
            keys.retain(|key, g| {
                if !chosen.contains(&g.kg) {
                    return true;
                }
                let accs = std::mem::take(&mut g.accs);
                taken
                    .entry(g.kg)
                    .or_default()
                    .push((window, key.clone(), accs));
                false
            });
        }
        self.windows.retain(|_, keys| !keys.is_empty());
        let mut parts = Vec::with_capacity(taken.len());
        for (kg, groups) in taken {
            let bytes = self.usage.by_group.get(&kg).copied().unwrap_or(0);
            self.usage.resize(kg, bytes, 0);
            let first_end = groups.iter().map(|((end, _), _, _)| *end).min();
            let mut rows = Vec::with_capacity(groups.len());
            for (window, key, mut accs) in groups {
                if self.window.merges_sessions() {
                    // All of a key's sessions are in its key group: they go together.
                    self.sessions.remove(&key);
                }
                rows.push((window, key, accumulator_state(&mut accs)?));
            }
            if let Some(batch) = self.group_rows(rows)? {
                parts.push((kg, batch));
            }
            if let Some(first_end) = first_end {
                self.spilled_ends.note(kg, first_end);
            }
        }
        self.spill.as_mut().expect("checked above").write_run(parts)
    }

    /// Per-group path: feeds a batch's rows. With a budget, the spilled key groups of
    /// its rows are loaded back first.
    fn process_groups(
        &mut self,
        batch: &RecordBatch,
        starts: &Int64Array,
        ends: &Int64Array,
        key_columns: &[ArrayRef],
    ) -> Result<()> {
        let kgs = match self.spill {
            Some(_) => {
                let kgs = meltwater_state::key_groups(
                    key_columns,
                    batch.num_rows(),
                    self.info.key_groups,
                )?;
                self.load_spilled(&kgs)?;
                kgs
            }
            None => vec![],
        };
        let measure = self.spill.is_some();
        let keys = self.keys.encode(key_columns)?;
        let mut groups = Vec::new();
        let ids = if self.window.merges_sessions() {
            self.group_sessions(starts, ends, &keys, &kgs, &mut groups)?
        } else {
            self.group_aligned(starts, ends, &keys, &kgs, &mut groups)
        };
        let args = self.spec.evaluate_args(batch)?;
        let filters = self.spec.evaluate_filters(batch)?;
        let grouped = GroupedRows::new(&args, &filters, &ids, groups.len())?;
        for (g, (window, key, kg)) in groups.into_iter().enumerate() {
            let key_len = key.len();
            let group = match self.windows.entry(window).or_default().entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let accs = self
                        .spec
                        .aggr_exprs
                        .iter()
                        .map(|a| a.create_accumulator())
                        .collect::<Result<Accumulators>>()?;
                    v.insert(WindowGroup { accs, kg, size: 0 })
                }
            };
            grouped.update(g, &mut group.accs, false)?;
            if measure {
                let size = group_size(key_len, &group.accs);
                self.usage.resize(group.kg, group.size, size);
                group.size = size;
            }
        }
        self.spill_if_over_budget()
    }

    /// Columnar path: feeds a batch's rows, one update per window and aggregate.
    fn process_columnar(
        &mut self,
        batch: &RecordBatch,
        starts: &Int64Array,
        ends: &Int64Array,
        key_columns: &[ArrayRef],
    ) -> Result<()> {
        let (ids, windows) = self.assign_aligned(starts, ends);
        if windows.is_empty() {
            return Ok(());
        }
        let args = self.spec.evaluate_args(batch)?;
        let filters = self.spec.evaluate_filters(batch)?;
        let grouped = GroupedRows::with_keys(&args, &filters, key_columns, &ids, windows.len())?;
        let Some(columnar) = self.columnar.as_mut() else {
            return internal_err!("window aggregate: no columnar state");
        };
        columnar.update(&windows, &grouped, false)
    }

    /// Per-group path: every (window, key)'s state (see [`checkpoint_accumulators`]), and
    /// the spilled key groups' as spilled.
    fn snapshot_groups(&mut self) -> Result<OperatorSnapshot> {
        let aggr_exprs = self.spec.aggr_exprs.clone();
        let make = || -> Result<Accumulators> {
            aggr_exprs.iter().map(|a| a.create_accumulator()).collect()
        };
        let measure = self.spill.is_some();
        let mut rows = Vec::new();
        for (&window, groups) in self.windows.iter_mut() {
            for (key, g) in groups.iter_mut() {
                let values = checkpoint_accumulators(&mut g.accs, &make, &self.state_lens)?;
                if measure {
                    // Rebuilt from its state: measured anew.
                    let size = group_size(key.len(), &g.accs);
                    self.usage.resize(g.kg, g.size, size);
                    g.size = size;
                }
                rows.push((window, key.clone(), values));
            }
        }
        let mut keyed: Vec<RecordBatch> = self.group_rows(rows)?.into_iter().collect();
        // Spilled key groups are part of the state: their rows as spilled.
        if let Some(spill) = &self.spill {
            keyed.extend(spill.snapshot()?);
        }
        Ok(OperatorSnapshot {
            keyed,
            state: serde_json::Value::Null,
        })
    }

    /// Columnar path: every open window's keys and state.
    fn snapshot_columnar(&mut self) -> Result<OperatorSnapshot> {
        let Some(columnar) = self.columnar.as_mut() else {
            return internal_err!("window aggregate: no columnar state");
        };
        let mut parts = Parts::default();
        for w in columnar.checkpoint()? {
            if w.rows > 0 {
                parts.push(w.window, w.rows, w.keys, w.states);
            }
        }
        if parts.starts.is_empty() {
            return Ok(OperatorSnapshot::default());
        }
        let WindowRows {
            starts,
            ends,
            keys,
            values: states,
        } = parts.concat()?;
        Ok(OperatorSnapshot {
            keyed: vec![self.snapshot_of(starts, ends, keys, states)?],
            state: serde_json::Value::Null,
        })
    }
}

#[async_trait]
impl Operator for WindowAggregateOperator {
    fn name(&self) -> String {
        format!("WindowAggregate[{}]", self.window.kind)
    }

    /// Keyed state batches (after the key-group column): `__window_start`,
    /// `__window_end` (ms), the key columns, then each accumulator's state fields. The
    /// watermark resumes at the lowest any old subtask had reached.
    async fn restore(&mut self, state: RestoredState) -> Result<()> {
        let key_count = self.key_indices.len();
        for batch in state.keyed {
            if batch.num_rows() == 0 {
                continue;
            }
            let Some(columnar) = self.columnar.as_mut() else {
                // Per group: over the budget, the restored subtask spills as it restores.
                self.restore_groups(&batch, false)?;
                self.spill_if_over_budget()?;
                continue;
            };
            let starts = batch.column(0).as_primitive::<Int64Type>().clone();
            let ends = batch.column(1).as_primitive::<Int64Type>().clone();
            let keys = &batch.columns()[2..2 + key_count];
            let states = &batch.columns()[2 + key_count..];
            let (ids, windows) = number_windows(batch.num_rows(), |row| {
                Some((ends.value(row), starts.value(row)))
            });
            columnar.restore(&windows, &ids, keys, states)?;
        }
        if let Some(w) = restored_watermark(&state.states) {
            self.watermark = self.watermark.max(w);
        }
        Ok(())
    }

    async fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let group_values = self.spec.evaluate_groups(&batch)?;
        let starts = bounds_ms(&group_values[self.window.window_start_group])?;
        let ends = bounds_ms(&group_values[self.window.window_end_group])?;
        let key_columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| group_values[i].clone())
            .collect();
        if self.columnar.is_some() {
            self.process_columnar(&batch, &starts, &ends, &key_columns)?;
        } else {
            self.process_groups(&batch, &starts, &ends, &key_columns)?;
        }
        if let Some(rows) = self.late_rows.as_mut().filter(|r| !r.is_empty()) {
            rows.sort_unstable();
            let indices = UInt32Array::from(std::mem::take(rows));
            out.push_late(datafusion::arrow::compute::take_record_batch(
                &batch, &indices,
            )?);
        }
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) -> Result<EventTime> {
        if watermark <= self.watermark {
            return Ok(watermark);
        }
        self.watermark = watermark;
        let batch = match self.columnar.as_mut() {
            Some(columnar) => {
                let fired = columnar.take_fired(watermark)?;
                self.emit_columnar(fired)?
            }
            None => {
                // Spilled key groups with a window that fires now come back first.
                let due = self.spilled_ends.due(watermark);
                self.load_spilled(&due)?;
                let fired = take_fired(&mut self.windows, watermark);
                let batch = self.emit(fired)?;
                self.spill_if_over_budget()?;
                batch
            }
        };
        if let Some(batch) = batch {
            out.push(batch);
        }
        Ok(watermark)
    }

    /// Keyed state as [`Operator::restore`] reads it; non-keyed state: the watermark
    /// reached, so that rows late before the checkpoint stay late after a restart
    /// (their windows fired and left the state).
    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        let mut snapshot = if self.columnar.is_some() {
            self.snapshot_columnar()?
        } else {
            self.snapshot_groups()?
        };
        snapshot.state = watermark_state(self.watermark);
        Ok(snapshot)
    }

    fn counters(&self) -> OperatorCounters {
        let per_row = match self.window.kind {
            WindowKind::Hop { slide, size } => (size / slide).max(1) as u64,
            _ => 1,
        };
        OperatorCounters {
            late_records: self.late_records + self.late_hop_windows / per_row,
            spilled_bytes: self.columnar.as_ref().map_or(0, |c| c.spilled_bytes())
                + self.spill.as_ref().map_or(0, |s| s.spilled_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::test_util::*;
    use crate::aggregate::WindowAssignOperator;

    const SQL: &str = "SELECT k, window_start, window_end, count(*) AS c, sum(v) AS s \
                       FROM t GROUP BY k, window_start, window_end";

    /// Both state paths: columnar, then per group.
    const PATHS: [bool; 2] = [true, false];

    /// An operator for `sql` (grouping by `k, window_start, window_end`) on the columnar
    /// path if `columnar` (and the window kind allows it), else on the per-group path.
    async fn operator(
        kind: WindowKind,
        sql: &str,
        index: usize,
        parallelism: usize,
        columnar: bool,
    ) -> WindowAggregateOperator {
        let spec = spec_for(windowed_schema(), sql).await;
        operator_for(
            spec,
            window_spec(kind, 1, 2, false),
            index,
            parallelism,
            columnar,
        )
    }

    fn window_spec(kind: WindowKind, start: usize, end: usize, assigned: bool) -> WindowSpec {
        WindowSpec {
            kind,
            window_start_group: start,
            window_end_group: end,
            sessions_assigned: assigned,
        }
    }

    fn operator_for(
        spec: AggregateSpec,
        window: WindowSpec,
        index: usize,
        parallelism: usize,
        columnar: bool,
    ) -> WindowAggregateOperator {
        let op = WindowAggregateOperator::build(spec, window, info(index, parallelism), columnar)
            .unwrap();
        assert_eq!(op.is_columnar(), columnar && !window.merges_sessions());
        op
    }

    async fn assign(kind: WindowKind, batch: RecordBatch) -> RecordBatch {
        let mut a = WindowAssignOperator::try_new(kind, 2, windowed_schema()).unwrap();
        let out = feed(&mut a, batch).await;
        datafusion::arrow::compute::concat_batches(&windowed_schema(), &out).unwrap()
    }

    /// Assigns and aggregates `rows`, returns what each watermark in `wms` fires.
    async fn run(
        op: &mut WindowAggregateOperator,
        kind: WindowKind,
        rows: &[(Option<&str>, Option<i64>, Option<i64>)],
    ) {
        let b = assign(kind, source(rows)).await;
        assert!(feed(op, b).await.is_empty());
    }

    const TUMBLE: WindowKind = WindowKind::Tumble {
        size: 10,
        offset: 0,
    };

    #[tokio::test]
    async fn tumble_fires_on_watermark() {
        for columnar in PATHS {
            let mut op = operator(TUMBLE, SQL, 0, 1, columnar).await;
            run(
                &mut op,
                TUMBLE,
                &[
                    (Some("a"), Some(1), Some(1)),
                    (Some("a"), Some(2), Some(9)),
                    (Some("b"), Some(5), Some(3)),
                    (Some("a"), Some(4), Some(10)),
                    (None, Some(7), Some(12)),
                    (Some("b"), None, Some(15)),
                    (Some("b"), Some(1), None),
                ],
            )
            .await;
            // Nothing before end - 1 = 9.
            assert!(watermark(&mut op, 8).await.is_empty());
            let fired = watermark(&mut op, 9).await;
            assert_eq!(
                rows(&fired),
                [
                    "a,1970-01-01T00:00:00,1970-01-01T00:00:00.010,2,3",
                    "b,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,5",
                ]
            );
            let fired = watermark(&mut op, i64::MAX).await;
            // NULL key sorts first in the row format; NULL value: COUNT(*) counts, SUM ignores.
            assert_eq!(
                rows(&fired),
                [
                    "null,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,7",
                    "a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,4",
                    "b,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,null",
                ]
            );
            assert_eq!(op.open_windows(), 0);
            assert_eq!(op.counters().late_records, 0);
        }
    }

    /// `op` kept within `budget` bytes (spilling to `dir`), or without a budget.
    fn within_budget(
        op: WindowAggregateOperator,
        budget: Option<usize>,
        dir: std::path::PathBuf,
    ) -> WindowAggregateOperator {
        match budget {
            Some(b) => op.with_memory_budget(b, dir),
            None => op,
        }
    }

    /// Late rows are found alike on both paths, also when the per-group state is on
    /// disk (a 1-byte budget spills every key group after every batch and watermark).
    #[tokio::test]
    async fn late_rows_are_dropped_and_counted() {
        let spill_dir = tempfile::tempdir().unwrap();
        let dir = spill_dir.path();
        for (columnar, budget) in [(true, None), (false, None), (false, Some(1))] {
            let make = |kind, i: usize| async move {
                within_budget(
                    operator(kind, SQL, 0, 1, columnar).await,
                    budget,
                    dir.join(format!("op-{i}")),
                )
            };
            let mut op = make(TUMBLE, 0).await;
            run(&mut op, TUMBLE, &[(Some("a"), Some(1), Some(1))]).await;
            assert_eq!(rows(&watermark(&mut op, 12).await).len(), 1);
            // 5 is in [0, 10) which fired; 13 is in [10, 20), still open.
            run(
                &mut op,
                TUMBLE,
                &[
                    (Some("a"), Some(10), Some(5)),
                    (Some("a"), Some(20), Some(13)),
                ],
            )
            .await;
            assert_eq!(op.counters().late_records, 1);
            let fired = watermark(&mut op, 19).await;
            assert_eq!(
                rows(&fired),
                ["a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,20"]
            );
            assert_eq!(op.counters().spilled_bytes > 0, budget.is_some());

            // HOP: a row fully late (all 3 windows fired) counts once.
            let hop = WindowKind::Hop { slide: 5, size: 15 };
            let mut op = make(hop, 1).await;
            watermark(&mut op, 100).await;
            run(&mut op, hop, &[(Some("a"), Some(1), Some(3))]).await;
            assert_eq!(op.counters().late_records, 1);
            // CUMULATE: a row partly late (its [0,10) fired, [0,20) open) is not counted.
            let cumulate = WindowKind::Cumulate { step: 10, size: 20 };
            let mut op = make(cumulate, 2).await;
            watermark(&mut op, 9).await;
            run(&mut op, cumulate, &[(Some("a"), Some(1), Some(3))]).await;
            assert_eq!(op.counters().late_records, 0);
            run(&mut op, cumulate, &[(Some("a"), Some(1), Some(3))]).await;
            watermark(&mut op, 30).await;
            run(&mut op, cumulate, &[(Some("a"), Some(1), Some(3))]).await;
            assert_eq!(op.counters().late_records, 1);
        }
    }

    /// A restored operator resumes at the checkpoint's watermark: a row for a window
    /// that fired before the checkpoint is late after the restart too, on both state
    /// paths; the open window restores and fires whole.
    #[tokio::test]
    async fn restored_watermark_keeps_late_rows_late() {
        for columnar in PATHS {
            let mut op = operator(TUMBLE, SQL, 0, 1, columnar).await;
            run(
                &mut op,
                TUMBLE,
                &[
                    (Some("a"), Some(1), Some(1)),
                    (Some("a"), Some(2), Some(15)),
                ],
            )
            .await;
            assert_eq!(rows(&watermark(&mut op, 12).await).len(), 1);
            let snap = snapshot(&mut op).await;
            let mut again = operator(TUMBLE, SQL, 0, 1, columnar).await;
            again.restore(restored(&snap, 0, 1)).await.unwrap();
            // [0, 10) fired before the checkpoint; [10, 20) is open.
            run(
                &mut again,
                TUMBLE,
                &[
                    (Some("a"), Some(10), Some(5)),
                    (Some("a"), Some(20), Some(13)),
                ],
            )
            .await;
            assert_eq!(again.counters().late_records, 1, "columnar: {columnar}");
            // A watermark below the restored one fires nothing.
            assert!(watermark(&mut again, 11).await.is_empty());
            assert_eq!(
                rows(&watermark(&mut again, i64::MAX).await),
                ["a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,2,22"]
            );
        }
    }

    #[tokio::test]
    async fn hop_row_in_several_windows() {
        for columnar in PATHS {
            let hop = WindowKind::Hop { slide: 5, size: 15 };
            let mut op = operator(hop, SQL, 0, 1, columnar).await;
            run(
                &mut op,
                hop,
                &[
                    (Some("a"), Some(1), Some(7)),
                    (Some("a"), Some(10), Some(12)),
                ],
            )
            .await;
            let fired = watermark(&mut op, i64::MAX).await;
            // 7 is in [-5,10), [0,15), [5,20); 12 in [0,15), [5,20), [10,25).
            let expected = [
                "a,1969-12-31T23:59:59.995,1970-01-01T00:00:00.010,1,1",
                "a,1970-01-01T00:00:00,1970-01-01T00:00:00.015,2,11",
                "a,1970-01-01T00:00:00.005,1970-01-01T00:00:00.020,2,11",
                "a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.025,1,10",
            ];
            assert_eq!(rows(&fired), expected);
        }
    }

    #[tokio::test]
    async fn cumulate_windows_fire_step_by_step() {
        for columnar in PATHS {
            let cumulate = WindowKind::Cumulate { step: 10, size: 30 };
            let mut op = operator(cumulate, SQL, 0, 1, columnar).await;
            run(
                &mut op,
                cumulate,
                &[
                    (Some("a"), Some(1), Some(5)),
                    (Some("a"), Some(2), Some(15)),
                    (Some("a"), Some(4), Some(31)),
                ],
            )
            .await;
            assert_eq!(
                rows(&watermark(&mut op, 9).await),
                ["a,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,1"]
            );
            assert_eq!(
                rows(&watermark(&mut op, 29).await),
                [
                    "a,1970-01-01T00:00:00,1970-01-01T00:00:00.020,2,3",
                    "a,1970-01-01T00:00:00,1970-01-01T00:00:00.030,2,3",
                ]
            );
            assert_eq!(
                rows(&watermark(&mut op, 49).await),
                [
                    "a,1970-01-01T00:00:00.030,1970-01-01T00:00:00.040,1,4",
                    "a,1970-01-01T00:00:00.030,1970-01-01T00:00:00.050,1,4",
                ]
            );
        }
    }

    const SESSION: WindowKind = WindowKind::Session { gap: 10 };

    #[tokio::test]
    async fn sessions_merge_touch_and_bridge() {
        let mut op = operator(SESSION, SQL, 0, 1, false).await;
        // a: [0,10) and [30,40) apart; b: [0,10) and [10,20) touch → [0,20).
        run(
            &mut op,
            SESSION,
            &[
                (Some("a"), Some(1), Some(0)),
                (Some("a"), Some(2), Some(30)),
                (Some("b"), Some(5), Some(0)),
                (Some("b"), Some(6), Some(10)),
            ],
        )
        .await;
        assert_eq!(op.sessions.values().map(|s| s.len()).sum::<usize>(), 3);
        // a@8: [8,18) overlaps [0,10) → [0,18); a@20: [20,30) touches [30,40) → [20,40).
        run(
            &mut op,
            SESSION,
            &[
                (Some("a"), Some(10), Some(8)),
                (Some("a"), Some(100), Some(20)),
            ],
        )
        .await;
        assert_eq!(op.sessions.values().map(|s| s.len()).sum::<usize>(), 3);
        // The bridge: a@18 → [18,28) touches [0,18) and overlaps [20,40): one session.
        run(&mut op, SESSION, &[(Some("a"), Some(1000), Some(18))]).await;
        assert_eq!(op.sessions.values().map(|s| s.len()).sum::<usize>(), 2);
        // b's [0,20) fires at 19, not before.
        assert!(watermark(&mut op, 18).await.is_empty());
        assert_eq!(
            rows(&watermark(&mut op, 19).await),
            ["b,1970-01-01T00:00:00,1970-01-01T00:00:00.020,2,11"]
        );
        // A late row for b touching nothing open is dropped; one for a joins [0,40).
        run(
            &mut op,
            SESSION,
            &[(Some("b"), Some(7), Some(2)), (Some("a"), Some(0), Some(5))],
        )
        .await;
        assert_eq!(op.counters().late_records, 1);
        let fired = watermark(&mut op, i64::MAX).await;
        assert_eq!(
            rows(&fired),
            ["a,1970-01-01T00:00:00,1970-01-01T00:00:00.040,6,1113"]
        );
    }

    /// Runs `first` on the `from` path (columnar or per group), checkpoints, restores
    /// into two subtasks on the `to` path with different key-group ranges, runs `second`
    /// routed by key, and compares with an uninterrupted run.
    async fn rescale_matches(
        kind: WindowKind,
        first: RecordBatch,
        second: RecordBatch,
        from: bool,
        to: bool,
    ) {
        let mut reference = operator(kind, SQL, 0, 1, false).await;
        feed(&mut reference, assign(kind, first.clone()).await).await;
        feed(&mut reference, assign(kind, second.clone()).await).await;
        let mut expected = rows(&watermark(&mut reference, i64::MAX).await);
        expected.sort();

        let mut old = operator(kind, SQL, 0, 1, from).await;
        feed(&mut old, assign(kind, first).await).await;
        let snap = snapshot(&mut old).await;
        assert_eq!(
            snap.keyed[0].schema().field(0).name(),
            meltwater_state::KEY_GROUP_COLUMN
        );
        let mut got = Vec::new();
        for i in 0..2 {
            let mut op = operator(kind, SQL, i, 2, to).await;
            let state = restored(&snap, i, 2);
            assert!(
                state.keyed[0].num_rows() > 0,
                "subtask {i} restores some keys"
            );
            op.restore(state).await.unwrap();
            feed(&mut op, assign(kind, route(&second, 0, i, 2)).await).await;
            got.extend(rows(&watermark(&mut op, i64::MAX).await));
        }
        got.sort();
        assert_eq!(got, expected);
        // The old operator still works after its snapshot.
        feed(&mut old, assign(kind, second).await).await;
        let mut again = rows(&watermark(&mut old, i64::MAX).await);
        again.sort();
        assert_eq!(again, expected);
    }

    fn keyed_rows(keys: &[&'static str], ts: &[i64]) -> RecordBatch {
        let mut r = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for (j, t) in ts.iter().enumerate() {
                r.push((Some(*k), Some((i * 10 + j) as i64), Some(*t)));
            }
        }
        source(&r)
    }

    #[tokio::test]
    async fn snapshot_restores_into_two_subtasks() {
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let hop = WindowKind::Hop { slide: 5, size: 15 };
        // Each path restores its own checkpoints and the other's (one format).
        for (from, to) in [(true, true), (false, false), (true, false), (false, true)] {
            for kind in [TUMBLE, hop.clone()] {
                rescale_matches(
                    kind,
                    keyed_rows(&keys, &[1, 12]),
                    keyed_rows(&keys, &[5, 25]),
                    from,
                    to,
                )
                .await;
            }
        }
        // Sessions: [1,11) and [25,35) restored; 10 → [10,20) bridges to 25? no (20 < 25),
        // it extends the first; 20 → [20,30) then merges everything. (Merging sessions
        // always run per group.)
        rescale_matches(
            SESSION,
            keyed_rows(&keys, &[1, 25]),
            keyed_rows(&keys, &[10, 20]),
            false,
            false,
        )
        .await;
    }

    #[tokio::test]
    async fn distinct_filter_and_microsecond_time() {
        use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
        let us = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("ts", us.clone(), true),
            Field::new("window_start", us.clone(), false),
            Field::new("window_end", us.clone(), false),
            Field::new("window_time", us.clone(), false),
        ]));
        let sql = "SELECT window_start, window_end, count(DISTINCT v) AS d, \
                   count(*) FILTER (WHERE v > 1) AS f, approx_distinct(v) AS a \
                   FROM t GROUP BY window_start, window_end";
        let spec = spec_for(schema.clone(), sql).await;
        let mut op = WindowAggregateOperator::try_new(
            spec,
            WindowSpec {
                kind: TUMBLE,
                window_start_group: 0,
                window_end_group: 1,
                sessions_assigned: false,
            },
            info(0, 1),
        )
        .unwrap();
        assert!(!op.is_columnar(), "COUNT(DISTINCT) runs per group");
        let source_schema = std::sync::Arc::new(Schema::new(schema.fields()[..3].to_vec()));
        let ts = datafusion::arrow::array::TimestampMicrosecondArray::from(vec![
            1000, 2000, 3000, 4000, 15000,
        ])
        .with_timezone("UTC");
        let batch = RecordBatch::try_new(
            source_schema,
            vec![
                std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"; 5])),
                std::sync::Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    Some(2),
                    None,
                    Some(3),
                ])),
                std::sync::Arc::new(ts),
            ],
        )
        .unwrap();
        let mut a = WindowAssignOperator::try_new(TUMBLE, 2, schema.clone()).unwrap();
        let assigned = feed(&mut a, batch).await;
        for b in assigned {
            feed(&mut op, b).await;
        }
        // Snapshot/restore in the middle keeps distinct values.
        let snap = snapshot(&mut op).await;
        let mut op2 =
            WindowAggregateOperator::try_new(op.spec.clone(), op.window, info(0, 1)).unwrap();
        op2.restore(restored(&snap, 0, 1)).await.unwrap();
        for o in [&mut op, &mut op2] {
            let fired = watermark(o, 9).await;
            assert_eq!(fired[0].schema().field(0).data_type(), &us);
            assert_eq!(
                rows(&fired),
                ["1970-01-01T00:00:00Z,1970-01-01T00:00:00.010Z,2,2,2"]
            );
        }
        assert_eq!(
            rows(&watermark(&mut op, 20).await),
            ["1970-01-01T00:00:00.010Z,1970-01-01T00:00:00.020Z,1,1,1"]
        );
    }

    /// Feeds `batches` (assigned to `window.kind`) to an operator on the `columnar` or
    /// per-group path, advancing the watermark after each, then a final watermark. After
    /// batch `checkpoint_after` the operator is checkpointed and replaced by
    /// `parallelism` restored subtasks, which get the rest of the rows routed by `k`.
    /// Returns the rows fired (per subtask, in order) and the late count.
    async fn scenario(
        spec: &AggregateSpec,
        window: WindowSpec,
        columnar: bool,
        batches: &[RecordBatch],
        checkpoint_after: usize,
        parallelism: usize,
    ) -> (Vec<String>, u64) {
        let run = scenario_within(
            spec,
            window,
            columnar,
            batches,
            checkpoint_after,
            parallelism,
            [None, None],
        )
        .await;
        (run.rows, run.late)
    }

    /// What [`scenario_within`] saw.
    struct Run {
        /// The rows fired (per subtask, in order).
        rows: Vec<String>,
        late: u64,
        /// Bytes spilled by all operators.
        spilled_bytes: u64,
        /// Per-group path: the key groups on disk when the checkpoint was taken.
        spilled_at_checkpoint: usize,
        /// The checkpoint's keyed rows.
        checkpoint_rows: usize,
    }

    /// [`scenario`] with the operator before the checkpoint kept within a state budget
    /// of `budgets[0]` bytes and the restored ones within `budgets[1]`.
    async fn scenario_within(
        spec: &AggregateSpec,
        window: WindowSpec,
        columnar: bool,
        batches: &[RecordBatch],
        checkpoint_after: usize,
        parallelism: usize,
        budgets: [Option<usize>; 2],
    ) -> Run {
        let spill_dir = tempfile::tempdir().unwrap();
        let within = |op: WindowAggregateOperator, i: usize, budget: Option<usize>| {
            within_budget(op, budget, spill_dir.path().join(format!("op-{i}")))
        };
        let kind = window.kind;
        let mut out = Vec::new();
        let mut op = within(
            operator_for(spec.clone(), window, 0, 1, columnar),
            99,
            budgets[0],
        );
        for (b, batch) in batches[..=checkpoint_after].iter().enumerate() {
            feed(&mut op, assign(kind, batch.clone()).await).await;
            out.extend(rows(&watermark(&mut op, random_watermark(b)).await));
        }
        let spilled_at_checkpoint = op.spilled_ends.len();
        let snap = snapshot(&mut op).await;
        let checkpoint_rows = snap.keyed.iter().map(|b| b.num_rows()).sum();
        let mut late = op.counters().late_records;
        let mut spilled_bytes = op.counters().spilled_bytes;
        for i in 0..parallelism {
            let mut op = within(
                operator_for(spec.clone(), window, i, parallelism, columnar),
                i,
                budgets[1],
            );
            op.restore(restored(&snap, i, parallelism)).await.unwrap();
            // The watermark comes back first (nothing left to fire at it).
            assert!(watermark(&mut op, random_watermark(checkpoint_after))
                .await
                .is_empty());
            for (b, batch) in batches.iter().enumerate().skip(checkpoint_after + 1) {
                let batch = route(batch, 0, i, parallelism);
                feed(&mut op, assign(kind, batch).await).await;
                out.extend(rows(&watermark(&mut op, random_watermark(b)).await));
            }
            out.extend(rows(&watermark(&mut op, i64::MAX).await));
            assert_eq!(op.open_windows(), 0);
            assert!(op.spilled_ends.is_empty() && op.usage.total == 0);
            late += op.counters().late_records;
            spilled_bytes += op.counters().spilled_bytes;
        }
        Run {
            rows: out,
            late,
            spilled_bytes,
            spilled_at_checkpoint,
            checkpoint_rows,
        }
    }

    const MANY_SQL: &str = "SELECT k, window_start, window_end, count(*) AS c, sum(v) AS s, \
                            min(v) AS mn, max(v) AS mx, avg(v) AS a, \
                            count(v) FILTER (WHERE v > 50) AS f \
                            FROM t GROUP BY k, window_start, window_end";

    fn kinds() -> [(WindowKind, bool); 4] {
        [
            (TUMBLE, false),
            (WindowKind::Hop { slide: 5, size: 20 }, false),
            (WindowKind::Cumulate { step: 10, size: 30 }, false),
            // SESSION windows formed upstream: grouped by their bounds as given.
            (SESSION, true),
        ]
    }

    #[tokio::test]
    async fn columnar_matches_per_group_over_many_keys_and_windows() {
        let batches = random_batches(7, 8, 400, 150);
        let queries = [
            (MANY_SQL, 1, 2),
            // Two key columns.
            (
                "SELECT k, window_start, window_end, v % 3 AS m, count(*) AS c, max(v) AS x \
                 FROM t GROUP BY k, window_start, window_end, v % 3",
                1,
                2,
            ),
            // No key.
            (
                "SELECT window_start, window_end, count(*) AS c, sum(v) AS s, \
                 count(*) FILTER (WHERE v IS NULL) AS n FROM t GROUP BY window_start, window_end",
                0,
                1,
            ),
        ];
        for (sql, start, end) in queries {
            let spec = spec_for(windowed_schema(), sql).await;
            for (kind, assigned) in kinds() {
                let window = window_spec(kind, start, end, assigned);
                let columnar = scenario(&spec, window, true, &batches, 3, 1).await;
                let per_group = scenario(&spec, window, false, &batches, 3, 1).await;
                assert_eq!(columnar, per_group, "{kind} {sql}");
                assert!(
                    columnar.0.len() > 50,
                    "{kind} {sql}: {} rows",
                    columnar.0.len()
                );
                assert!(columnar.1 > 0, "{kind} {sql}: some rows are late");
            }
        }
    }

    #[tokio::test]
    async fn spilling_over_the_budget_gives_the_same_rows() {
        let batches = random_batches(5, 8, 400, 150);
        let spec = spec_for(windowed_schema(), MANY_SQL).await;
        for (kind, assigned) in kinds() {
            let window = window_spec(kind, 1, 2, assigned);
            let in_memory = scenario(&spec, window, true, &batches, 3, 2).await;
            // 1 byte: every window is spilled after every batch; 16 KiB: some are.
            for budget in [1, 16 << 10] {
                let spilled =
                    scenario_within(&spec, window, true, &batches, 3, 2, [Some(budget); 2]).await;
                assert_eq!(
                    (spilled.rows, spilled.late),
                    in_memory,
                    "{kind}, budget {budget}"
                );
            }
        }
        // The spill is counted, and the memory it frees is what the budget allows.
        let dir = tempfile::tempdir().unwrap();
        let mut op = operator_for(spec.clone(), window_spec(TUMBLE, 1, 2, false), 0, 1, true)
            .with_memory_budget(1, dir.path().join("op"));
        feed(&mut op, assign(TUMBLE, batches[0].clone()).await).await;
        assert!(op.counters().spilled_bytes > 0);
        assert_eq!(op.columnar.as_ref().unwrap().memory_size(), 0);
    }

    #[tokio::test]
    async fn columnar_checkpoint_restores_at_another_parallelism() {
        let batches = random_batches(11, 6, 500, 200);
        let spec = spec_for(windowed_schema(), MANY_SQL).await;
        for (kind, assigned) in kinds() {
            let window = window_spec(kind, 1, 2, assigned);
            let (mut expected, late) = scenario(&spec, window, false, &batches, 5, 1).await;
            expected.sort();
            for (checkpoint_after, parallelism) in [(2, 3), (0, 2), (4, 1)] {
                let (mut got, got_late) =
                    scenario(&spec, window, true, &batches, checkpoint_after, parallelism).await;
                got.sort();
                assert_eq!(
                    got, expected,
                    "{kind} at {checkpoint_after} into {parallelism}"
                );
                if matches!(kind, WindowKind::Hop { .. }) {
                    // Each operator counts late HOP rows as its late (row, window) pairs
                    // divided by the windows per row: splitting the pairs may round.
                    assert!(got_late.abs_diff(late) <= parallelism as u64);
                } else {
                    assert_eq!(got_late, late, "{kind}");
                }
            }
        }
    }

    #[tokio::test]
    async fn columnar_checkpoint_keeps_state() {
        // Two checkpoints in a row on the same operator: taking state must not lose it.
        let spec = spec_for(windowed_schema(), MANY_SQL).await;
        let window = window_spec(TUMBLE, 1, 2, false);
        let mut op = operator_for(spec.clone(), window, 0, 1, true);
        let rows_in = [
            (Some("a"), Some(1), Some(1)),
            (Some("b"), Some(60), Some(2)),
            (Some("a"), Some(70), Some(13)),
            (None, None, Some(4)),
        ];
        feed(&mut op, assign(TUMBLE, source(&rows_in)).await).await;
        let first = snapshot(&mut op).await;
        let second = snapshot(&mut op).await;
        assert_eq!(first.keyed[0].num_rows(), 4);
        assert_eq!(rows(&first.keyed), rows(&second.keyed));
        feed(
            &mut op,
            assign(TUMBLE, source(&[(Some("a"), Some(3), Some(5))])).await,
        )
        .await;
        let expected = [
            "null,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,null,null,null,null,0",
            "a,1970-01-01T00:00:00,1970-01-01T00:00:00.010,2,4,1,3,2.0,0",
            "b,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,60,60,60,60.0,1",
            "a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,70,70,70,70.0,1",
        ];
        assert_eq!(rows(&watermark(&mut op, i64::MAX).await), expected);
        // The second checkpoint restored elsewhere holds the same state.
        let mut op = operator_for(spec, window, 0, 1, true);
        op.restore(restored(&second, 0, 1)).await.unwrap();
        feed(
            &mut op,
            assign(TUMBLE, source(&[(Some("a"), Some(3), Some(5))])).await,
        )
        .await;
        assert_eq!(rows(&watermark(&mut op, i64::MAX).await), expected);
    }

    const DISTINCT_SQL: &str = "SELECT k, window_start, window_end, count(DISTINCT v) AS d, \
                                count(*) AS c, sum(v) AS s \
                                FROM t GROUP BY k, window_start, window_end";

    /// The per-group path (DISTINCT, merging sessions) over a budget gives what it gives
    /// in memory: the same rows in the same order, the same late count, and checkpoints
    /// taken while key groups are on disk restore into one or two subtasks, spilling
    /// again there; checkpoints restore between operators with and without a budget.
    #[tokio::test]
    async fn per_group_spilling_gives_the_same_rows() {
        let batches = random_batches(13, 6, 300, 100);
        // (query, window, (checkpoint after batch, restored subtasks)...)
        let cases: [(&str, WindowKind, &[(usize, usize)]); 4] = [
            (DISTINCT_SQL, TUMBLE, &[(2, 2), (0, 1)]),
            (
                DISTINCT_SQL,
                WindowKind::Hop { slide: 5, size: 20 },
                &[(3, 2)],
            ),
            (DISTINCT_SQL, SESSION, &[(2, 2), (4, 1)]),
            (MANY_SQL, SESSION, &[(1, 2)]),
        ];
        for (sql, kind, checkpoints) in cases {
            let spec = spec_for(windowed_schema(), sql).await;
            // SESSION: merged by the aggregate itself.
            let window = window_spec(kind, 1, 2, false);
            for &(checkpoint_after, parallelism) in checkpoints {
                let in_memory = scenario(
                    &spec,
                    window,
                    false,
                    &batches,
                    checkpoint_after,
                    parallelism,
                )
                .await;
                assert!(in_memory.0.len() > 50, "{kind} {sql}");
                assert!(in_memory.1 > 0, "{kind} {sql}: some rows are late");
                let what = format!("{kind} {sql} at {checkpoint_after} into {parallelism}");
                // 1 byte: every key group is on disk after every batch and watermark;
                // 4 KiB: some are.
                for budget in [1, 4 << 10] {
                    let spilled = scenario_within(
                        &spec,
                        window,
                        false,
                        &batches,
                        checkpoint_after,
                        parallelism,
                        [Some(budget); 2],
                    )
                    .await;
                    assert_eq!(
                        (&spilled.rows, spilled.late),
                        (&in_memory.0, in_memory.1),
                        "{what}, budget {budget}"
                    );
                    assert!(spilled.spilled_bytes > 0, "{what}, budget {budget}");
                    assert!(spilled.spilled_at_checkpoint > 0, "{what}, budget {budget}");
                    assert!(spilled.checkpoint_rows > 0, "{what}, budget {budget}");
                }
                // A checkpoint without spilled state restores under a budget, and one
                // with spilled state restores without.
                for budgets in [[None, Some(1)], [Some(1), None]] {
                    let run = scenario_within(
                        &spec,
                        window,
                        false,
                        &batches,
                        checkpoint_after,
                        parallelism,
                        budgets,
                    )
                    .await;
                    assert_eq!(
                        (&run.rows, run.late),
                        (&in_memory.0, in_memory.1),
                        "{what}, budgets {budgets:?}"
                    );
                }
            }
        }
    }

    /// With a 1-byte budget, state leaves memory after every batch; its checkpoint holds
    /// the spilled rows in the checkpoint format, and the operator goes on from disk.
    #[tokio::test]
    async fn per_group_state_leaves_memory_and_checkpoints_from_disk() {
        let spec = spec_for(windowed_schema(), DISTINCT_SQL).await;
        let dir = tempfile::tempdir().unwrap();
        let mut op = operator_for(spec.clone(), window_spec(TUMBLE, 1, 2, false), 0, 1, false)
            .with_memory_budget(1, dir.path().join("op"));
        let input = [
            (Some("a"), Some(1), Some(1)),
            (Some("a"), Some(1), Some(2)),
            (Some("b"), Some(2), Some(3)),
            (Some("a"), Some(3), Some(12)),
        ];
        assert!(feed(&mut op, assign(TUMBLE, source(&input)).await)
            .await
            .is_empty());
        assert!(op.windows.is_empty());
        assert_eq!(op.usage.total, 0);
        assert!(op.counters().spilled_bytes > 0);
        // Key group of "a": earliest end 10 ([0,10) and [10,20) spilled together).
        let a: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"]));
        let kg_a = meltwater_state::key_groups(&[a], 1, 128).unwrap()[0];
        assert_eq!(op.spilled_ends[&kg_a], 10);
        let snap = snapshot(&mut op).await;
        assert_eq!(snap.keyed.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        let schema = snap.keyed[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            &names[..4],
            [
                meltwater_state::KEY_GROUP_COLUMN,
                "__window_start",
                "__window_end",
                "k"
            ]
        );
        // [0,10) fires from disk; [10,20) goes back to disk.
        let expected_first = [
            "a,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,2,2",
            "b,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,1,2",
        ];
        assert_eq!(rows(&watermark(&mut op, 9).await), expected_first);
        assert!(op.windows.is_empty());
        assert_eq!(op.spilled_ends[&kg_a], 20);
        let expected_last = ["a,1970-01-01T00:00:00.010,1970-01-01T00:00:00.020,1,1,3"];
        assert_eq!(rows(&watermark(&mut op, 19).await), expected_last);
        assert!(op.spilled_ends.is_empty());
        // The checkpoint taken from disk restores into an operator without a budget.
        let mut restored_op = operator_for(spec, window_spec(TUMBLE, 1, 2, false), 0, 1, false);
        restored_op.restore(restored(&snap, 0, 1)).await.unwrap();
        assert_eq!(rows(&watermark(&mut restored_op, 9).await), expected_first);
        assert_eq!(rows(&watermark(&mut restored_op, 19).await), expected_last);
    }

    /// Lateness of SESSION rows with key groups on disk: a row whose own window fired
    /// joins its key's spilled open session (not late); a row touching no open session
    /// is late.
    #[tokio::test]
    async fn late_session_rows_with_spilled_groups() {
        let dir = tempfile::tempdir().unwrap();
        for budget in [None, Some(1)] {
            let op = operator(SESSION, DISTINCT_SQL, 0, 1, false).await;
            let mut op = within_budget(op, budget, dir.path().join("op"));
            // a: [30,40); b: [0,10).
            run(
                &mut op,
                SESSION,
                &[
                    (Some("a"), Some(1), Some(30)),
                    (Some("b"), Some(2), Some(0)),
                ],
            )
            .await;
            assert_eq!(op.spilled_ends.len(), if budget.is_some() { 2 } else { 0 });
            assert_eq!(
                rows(&watermark(&mut op, 35).await),
                ["b,1970-01-01T00:00:00,1970-01-01T00:00:00.010,1,1,2"]
            );
            // a@22: [22,32) fired at 31, but it overlaps a's open [30,40), which is on
            // disk with a budget: it joins. b@22 and c@5 touch nothing open: late.
            run(
                &mut op,
                SESSION,
                &[
                    (Some("a"), Some(5), Some(22)),
                    (Some("b"), Some(6), Some(22)),
                    (Some("c"), Some(7), Some(5)),
                ],
            )
            .await;
            assert_eq!(op.counters().late_records, 2, "budget {budget:?}");
            assert_eq!(
                rows(&watermark(&mut op, i64::MAX).await),
                ["a,1970-01-01T00:00:00.022,1970-01-01T00:00:00.040,2,2,6"]
            );
            assert_eq!(op.counters().spilled_bytes > 0, budget.is_some());
        }
    }
}
