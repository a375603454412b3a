//! SESSION windows without an aggregate above them: each row comes out with the bounds
//! of the session it ends up in, once that session can no longer change.
//!
//! The operator receives the window function's input rows, hash-partitioned by the
//! `PARTITION BY` keys (all on one subtask when there are none). A row opens the window
//! `[t, t + gap)`; windows of one key that overlap or touch merge into one session
//! ([`merge_sessions`], the window aggregate's merging), so a row may join, extend or
//! bridge the open sessions of its key whatever order rows arrive in. Rows are buffered
//! per session until the watermark passes the session's end - 1 ([`take_fired`], the
//! window aggregate's firing rule); then they are emitted, in event-time order, with
//! `window_start`, `window_end` and `window_time` appended exactly as batch mode's
//! `SessionWindowExec` does: start = the first row's time, end = the last row's + gap,
//! time = end - 1 ms, all in milliseconds, in the time column's type.
//!
//! Rows with a NULL time belong to no session and are dropped (as in batch mode). A row
//! whose window has already fired and that touches no open session of its key is late:
//! dropped and counted.
//!
//! Buffered rows stay in the (accepted rows of the) batches they arrived in; a session
//! holds references to them and emitting gathers them with `interleave`. A batch is freed
//! once its last buffered row was emitted; when most buffered rows are dead the live ones
//! are compacted into one batch. A checkpoint stores the buffered rows themselves (keyed
//! by the key group of their partition keys) and the watermark; sessions are rebuilt from
//! the rows' times on restore, at any parallelism.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::{internal_err, plan_err};
use datafusion::error::Result;
use meltwater_plan::window::{timestamps_to_ms, window_columns};

use super::window::{
    merge_sessions, take_fired, take_window, MergedSession, SpilledEnds, WindowKey,
};
use super::{restored_watermark, watermark_state, KeyCodec};
use crate::message::{EventTime, MIN_WATERMARK};
use crate::operator::{
    Operator, OperatorCounters, OperatorSnapshot, Output, RestoredState, SubtaskInfo,
};
use meltwater_state::KeyGroupSpill;

/// Rows per emitted batch (and per snapshot batch).
const BATCH_ROWS: usize = 8192;

/// Compact the buffered rows once at least this many are stored and over half are dead.
const COMPACT_MIN_ROWS: usize = 4096;

/// A buffered row: its event time (ms) and where it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowRef {
    time: i64,
    batch: u64,
    row: u32,
}

/// The batches buffered rows live in.
#[derive(Debug)]
struct RowStore {
    schema: SchemaRef,
    /// Batch id → (batch, its rows still buffered).
    batches: HashMap<u64, (RecordBatch, usize)>,
    next_id: u64,
    /// Rows still buffered, over all batches.
    live: usize,
    /// Rows of all stored batches (live or not).
    stored: usize,
    /// The memory of all stored batches.
    bytes: usize,
}

impl RowStore {
    fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            batches: HashMap::new(),
            next_id: 0,
            live: 0,
            stored: 0,
            bytes: 0,
        }
    }

    /// Stores `batch`, of which `live` rows are referenced; returns its id.
    fn add(&mut self, batch: RecordBatch, live: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.live += live;
        self.stored += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        self.batches.insert(id, (batch, live));
        id
    }

    /// The rows `refs`, in that order, as one batch of the input schema.
    fn gather(&self, refs: &[RowRef]) -> Result<RecordBatch> {
        if refs.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let mut slots: HashMap<u64, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut indices = Vec::with_capacity(refs.len());
        for r in refs {
            let slot = match slots.get(&r.batch) {
                Some(s) => *s,
                None => {
                    let Some((b, _)) = self.batches.get(&r.batch) else {
                        return internal_err!("session rows: buffered batch {} is gone", r.batch);
                    };
                    batches.push(b);
                    slots.insert(r.batch, batches.len() - 1);
                    batches.len() - 1
                }
            };
            indices.push((slot, r.row as usize));
        }
        Ok(interleave_record_batch(&batches, &indices)?)
    }

    /// The rows `refs` are no longer buffered.
    fn release(&mut self, refs: &[RowRef]) {
        for r in refs {
            if let Some(entry) = self.batches.get_mut(&r.batch) {
                entry.1 -= 1;
                self.live -= 1;
                if entry.1 == 0 {
                    if let Some((b, _)) = self.batches.remove(&r.batch) {
                        self.stored -= b.num_rows();
                        self.bytes -= b.get_array_memory_size();
                    }
                }
            }
        }
    }

    /// When over half of the stored rows are dead (with `now`, when any is), copies the
    /// live ones (all of `refs`) into one batch and points `refs` at it.
    fn compact(&mut self, mut refs: Vec<&mut RowRef>, now: bool) -> Result<()> {
        let due = if now {
            self.live < self.stored
        } else {
            self.stored >= COMPACT_MIN_ROWS && self.live * 2 <= self.stored
        };
        if !due {
            return Ok(());
        }
        let copies: Vec<RowRef> = refs.iter().map(|r| **r).collect();
        let batch = self.gather(&copies)?;
        self.batches.clear();
        self.live = 0;
        self.stored = 0;
        self.bytes = 0;
        if copies.is_empty() {
            return Ok(());
        }
        let id = self.add(batch, copies.len());
        for (i, r) in refs.iter_mut().enumerate() {
            r.batch = id;
            r.row = i as u32;
        }
        Ok(())
    }
}

/// Every buffered row's reference, of the open sessions `windows`.
fn all_refs(
    windows: &mut BTreeMap<WindowKey, HashMap<Box<[u8]>, Vec<RowRef>>>,
) -> Vec<&mut RowRef> {
    windows
        .values_mut()
        .flat_map(|keys| keys.values_mut())
        .flat_map(|rows| rows.iter_mut())
        .collect()
}

/// SESSION window assignment without an aggregate; see the module docs.
///
/// With a memory budget ([`SessionRowsOperator::with_memory_budget`]) the key groups
/// used least recently move their buffered rows to local spill files whenever the
/// buffered batches exceed it (down to about half of it), in the checkpoint's format. A
/// batch with rows of a spilled key group loads the group back first, and so does a
/// watermark that fires one of its sessions; the sessions are rebuilt from the rows, as
/// on restore.
pub struct SessionRowsOperator {
    gap: i64,
    time_index: usize,
    /// Columns of the input holding the `PARTITION BY` keys.
    key_indices: Vec<usize>,
    input_schema: SchemaRef,
    /// The window function's schema: the input's columns, then the window columns.
    output_schema: SchemaRef,
    time_type: DataType,
    info: SubtaskInfo,
    keys: KeyCodec,
    /// Open sessions by (end, start), then key: their rows.
    windows: BTreeMap<WindowKey, HashMap<Box<[u8]>, Vec<RowRef>>>,
    /// Each key's open sessions as (start, end), sorted, disjoint, not touching.
    sessions: HashMap<Box<[u8]>, Vec<(i64, i64)>>,
    store: RowStore,
    watermark: EventTime,
    late_records: u64,
    spill: Option<KeyGroupSpill>,
    /// With a budget: the keys with open sessions in memory, by key group.
    resident: HashMap<u16, HashSet<Box<[u8]>>>,
    /// Per spilled key group: the earliest end of its sessions (when it must be back).
    spilled_ends: SpilledEnds,
}

impl std::fmt::Debug for SessionRowsOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRowsOperator")
            .field("gap", &self.gap)
            .field("open_sessions", &self.windows.len())
            .field("buffered_rows", &self.store.live)
            .field("watermark", &self.watermark)
            .finish()
    }
}

impl SessionRowsOperator {
    /// `output_schema` is the window function's: its input's columns, then
    /// `window_start`, `window_end` and `window_time`. `time_index` and `key_indices`
    /// index the input's columns.
    pub fn try_new(
        gap: i64,
        time_index: usize,
        key_indices: Vec<usize>,
        output_schema: SchemaRef,
        info: SubtaskInfo,
    ) -> Result<Self> {
        let n = output_schema.fields().len();
        if n < 4 {
            return plan_err!("session windows: the output schema has no window columns");
        }
        let inputs = n - 3;
        if gap <= 0 {
            return plan_err!("session windows: the gap must be positive, got {gap} ms");
        }
        if time_index >= inputs || key_indices.iter().any(|&k| k >= inputs) {
            return plan_err!(
                "session windows: time column {time_index} or keys {key_indices:?} are not among the {inputs} input columns"
            );
        }
        let input_schema = Arc::new(Schema::new_with_metadata(
            output_schema.fields()[..inputs].to_vec(),
            output_schema.metadata().clone(),
        ));
        let time_type = input_schema.field(time_index).data_type().clone();
        if !matches!(time_type, DataType::Timestamp(..)) {
            return plan_err!("session windows: the time column has type {time_type}");
        }
        let keys = KeyCodec::new(
            key_indices
                .iter()
                .map(|&i| input_schema.field(i).data_type().clone())
                .collect(),
        )?;
        Ok(Self {
            gap,
            time_index,
            key_indices,
            store: RowStore::new(input_schema.clone()),
            input_schema,
            output_schema,
            time_type,
            info,
            keys,
            windows: BTreeMap::new(),
            sessions: HashMap::new(),
            watermark: MIN_WATERMARK,
            late_records: 0,
            spill: None,
            resident: HashMap::new(),
            spilled_ends: SpilledEnds::default(),
        })
    }

    /// Keeps the buffered rows within `budget` bytes (as their Arrow batches report
    /// their memory) by spilling the least recently used key groups to files under `dir`
    /// (created when needed, removed with the operator).
    pub fn with_memory_budget(mut self, budget: usize, dir: std::path::PathBuf) -> Self {
        self.spill = Some(KeyGroupSpill::new(budget, dir));
        self
    }

    /// Each row's key group (of its `PARTITION BY` keys, as the hash edge routes them).
    fn row_key_groups(&self, batch: &RecordBatch) -> Result<Vec<u16>> {
        let key_columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        meltwater_state::key_groups(&key_columns, batch.num_rows(), self.info.key_groups)
    }

    /// Loads the spilled key groups among `kgs` back into their sessions, marking `kgs`
    /// as just used.
    fn load_spilled(&mut self, kgs: &[u16]) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let loaded = spill.load_touched(kgs)?;
        self.spilled_ends.forget(kgs);
        for batch in loaded {
            // Their sessions were open: none of the rows is late. (Their key groups are
            // no longer spilled, so this loads nothing more.)
            self.ingest(batch, false)?;
        }
        Ok(())
    }

    /// Over the budget: moves the rows of the least recently used key groups to a spill
    /// file until the rows left take about half the budget.
    fn spill_if_over_budget(&mut self) -> Result<()> {
        let Some(spill) = self.spill.as_ref() else {
            return Ok(());
        };
        let budget = spill.budget();
        let row_size = std::mem::size_of::<RowRef>();
        if self.store.bytes + self.store.live * row_size <= budget {
            return Ok(());
        }
        // What a live row takes once the dead ones are compacted away.
        let per_row = self.store.bytes / self.store.stored.max(1) + row_size;
        let mut live = self.store.live;
        let mut parts = Vec::new();
        for kg in spill.coldest_first(self.resident.keys().copied()) {
            if live * per_row <= budget / 2 {
                break;
            }
            let Some(keys) = self.resident.remove(&kg) else {
                continue;
            };
            let mut refs = Vec::new();
            let mut first_end = i64::MAX;
            for key in keys {
                for (start, end) in self.sessions.remove(&key).unwrap_or_default() {
                    first_end = first_end.min(end);
                    refs.extend(
                        take_window(&mut self.windows, (end, start), &key).unwrap_or_default(),
                    );
                }
            }
            if refs.is_empty() {
                continue;
            }
            live -= refs.len();
            for chunk in refs.chunks(BATCH_ROWS) {
                let rows = self.store.gather(chunk)?;
                let n = rows.num_rows();
                parts.push((kg, meltwater_state::with_key_groups(&rows, vec![kg; n])?));
            }
            self.store.release(&refs);
            self.spilled_ends.note(kg, first_end);
        }
        self.spill
            .as_mut()
            .expect("checked above")
            .write_run(parts)?;
        self.store.compact(all_refs(&mut self.windows), true)
    }

    /// With a budget: records which keys have open sessions in memory after `keys`'
    /// sessions changed (key groups `kgs`, by the same index).
    fn track_resident(&mut self, keys: &[Box<[u8]>], kgs: &[u16]) {
        if self.spill.is_none() {
            return;
        }
        for (key, kg) in keys.iter().zip(kgs) {
            if self.sessions.contains_key(key) {
                self.resident.entry(*kg).or_default().insert(key.clone());
            } else if let Some(set) = self.resident.get_mut(kg) {
                set.remove(key);
                if set.is_empty() {
                    self.resident.remove(kg);
                }
            }
        }
    }

    /// Buffers the rows of `batch` in their sessions, merging sessions as needed; late
    /// rows (only when `check_late`) and rows with a NULL time are dropped. With a
    /// budget, the spilled key groups of the rows are loaded back first: a key's
    /// sessions are only ever merged whole.
    fn ingest(&mut self, batch: RecordBatch, check_late: bool) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        // Every stored batch has the same schema (the one restored batches get too).
        let batch = RecordBatch::try_new(self.input_schema.clone(), batch.columns().to_vec())?;
        let row_groups = match self.spill {
            Some(_) => {
                let groups = self.row_key_groups(&batch)?;
                self.load_spilled(&groups)?;
                groups
            }
            None => vec![],
        };
        let times = timestamps_to_ms(batch.column(self.time_index))?;
        let key_columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self.keys.encode(&key_columns)?;
        let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (row, t) in times.iter().enumerate() {
            if t.is_some() {
                by_key.entry(keys.key(row)).or_default().push(row);
            }
        }
        // Decide first (which rows stay, in which sessions), then store only those rows.
        let mut plans: Vec<(&[u8], Vec<MergedSession>)> = Vec::with_capacity(by_key.len());
        let mut accepted = vec![false; rows];
        let mut late = 0u64;
        for (key, key_rows) in by_key {
            let existing = self.sessions.get(key).map(|s| s.as_slice()).unwrap_or(&[]);
            let mut merged = merge_sessions(
                existing,
                key_rows.iter().map(|&r| {
                    let t = times[r].unwrap_or_default();
                    (t, t + self.gap, r)
                }),
            );
            merged.retain(|m| {
                let is_late = check_late && m.is_late(self.watermark);
                if is_late {
                    late += m.rows.len() as u64;
                }
                !is_late
            });
            for m in &merged {
                for &r in &m.rows {
                    accepted[r] = true;
                }
            }
            plans.push((key, merged));
        }
        self.late_records += late;
        let kept: Vec<u32> = (0..rows as u32).filter(|&r| accepted[r as usize]).collect();
        let live = kept.len();
        // Where each accepted row is in the stored batch.
        let (stored, position): (RecordBatch, Option<Vec<u32>>) = if live == rows {
            (batch, None)
        } else if live == 0 {
            return Ok(());
        } else {
            let mut position = vec![u32::MAX; rows];
            for (i, &r) in kept.iter().enumerate() {
                position[r as usize] = i as u32;
            }
            (
                take_record_batch(&batch, &UInt32Array::from(kept))?,
                Some(position),
            )
        };
        let id = self.store.add(stored, live);
        let (mut changed, mut changed_groups) = (Vec::new(), Vec::new());
        for (key, merged) in plans {
            let key: Box<[u8]> = key.into();
            if !row_groups.is_empty() {
                let first = merged.iter().find_map(|m| m.rows.first()).copied();
                if let Some(row) = first {
                    changed.push(key.clone());
                    changed_groups.push(row_groups[row]);
                }
            }
            let mut sessions = Vec::with_capacity(merged.len());
            for m in merged {
                // The merged session's rows: the existing sessions' rows (appended to the
                // largest of them), then the new ones.
                let mut refs: Vec<RowRef> = Vec::new();
                for &(s, e) in &m.old {
                    let Some(mut old) = take_window(&mut self.windows, (e, s), &key) else {
                        return internal_err!("session [{s}, {e}) has no rows");
                    };
                    if old.len() > refs.len() {
                        std::mem::swap(&mut refs, &mut old);
                    }
                    refs.extend(old);
                }
                refs.extend(m.rows.iter().map(|&r| RowRef {
                    time: times[r].unwrap_or_default(),
                    batch: id,
                    row: position.as_ref().map_or(r as u32, |p| p[r]),
                }));
                self.windows
                    .entry((m.end, m.start))
                    .or_default()
                    .insert(key.clone(), refs);
                sessions.push((m.start, m.end));
            }
            if sessions.is_empty() {
                self.sessions.remove(&key);
            } else {
                self.sessions.insert(key, sessions);
            }
        }
        self.track_resident(&changed, &changed_groups);
        Ok(())
    }

    /// Emits the rows of `fired` sessions (in firing order, keys sorted within a window
    /// end, rows in event-time order) with their window columns, and frees them.
    fn emit(
        &mut self,
        fired: BTreeMap<WindowKey, HashMap<Box<[u8]>, Vec<RowRef>>>,
        out: &mut Output,
    ) -> Result<()> {
        let (mut refs, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        let mut closed: Vec<Box<[u8]>> = Vec::new();
        for ((end, start), keys) in fired {
            let mut keys: Vec<_> = keys.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, mut rows) in keys {
                if let Some(list) = self.sessions.get_mut(&key) {
                    list.retain(|w| *w != (start, end));
                    if list.is_empty() {
                        self.sessions.remove(&key);
                        if self.spill.is_some() {
                            closed.push(key.clone());
                        }
                    }
                }
                // Stable: rows of equal time keep their arrival order.
                rows.sort_by_key(|r| r.time);
                starts.extend(std::iter::repeat_n(start, rows.len()));
                ends.extend(std::iter::repeat_n(end, rows.len()));
                refs.extend(rows);
            }
        }
        let mut from = 0;
        while from < refs.len() {
            let to = (from + BATCH_ROWS).min(refs.len());
            let rows = self.store.gather(&refs[from..to])?;
            let mut columns = rows.columns().to_vec();
            columns.extend(window_columns(
                starts[from..to].to_vec(),
                ends[from..to].to_vec(),
                &self.time_type,
            )?);
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
            from = to;
        }
        self.store.release(&refs);
        if !closed.is_empty() {
            let key_refs: Vec<&[u8]> = closed.iter().map(|k| k.as_ref()).collect();
            let key_columns = self.keys.decode(&key_refs)?;
            let kgs =
                meltwater_state::key_groups(&key_columns, closed.len(), self.info.key_groups)?;
            self.track_resident(&closed, &kgs);
        }
        self.store.compact(all_refs(&mut self.windows), false)
    }
}

#[async_trait]
impl Operator for SessionRowsOperator {
    fn name(&self) -> String {
        format!("SessionRows[gap={}ms]", self.gap)
    }

    async fn restore(&mut self, state: RestoredState) -> Result<()> {
        // The rows of this subtask's keys; each key's rows come from one old subtask, so
        // its sessions rebuild exactly. None of them is late: they were open.
        for batch in state.keyed {
            self.ingest(batch, false)?;
            self.spill_if_over_budget()?;
        }
        // The lowest watermark any old subtask had reached: rows later than that were
        // late before the checkpoint too.
        if let Some(w) = restored_watermark(&state.states) {
            self.watermark = self.watermark.max(w);
        }
        Ok(())
    }

    async fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        self.ingest(batch, true)?;
        self.spill_if_over_budget()
    }

    async fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) -> Result<EventTime> {
        if watermark <= self.watermark {
            return Ok(watermark);
        }
        self.watermark = watermark;
        // Spilled sessions that fire now come back first.
        let due = self.spilled_ends.due(watermark);
        self.load_spilled(&due)?;
        let fired = take_fired(&mut self.windows, watermark);
        if !fired.is_empty() {
            self.emit(fired, out)?;
        }
        self.spill_if_over_budget()?;
        Ok(watermark)
    }

    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        let refs: Vec<RowRef> = self
            .windows
            .values()
            .flat_map(|keys| keys.values())
            .flatten()
            .copied()
            .collect();
        let mut keyed = Vec::new();
        for chunk in refs.chunks(BATCH_ROWS) {
            let rows = self.store.gather(chunk)?;
            // The key groups of the arrays the hash edge routes by: the key columns.
            let key_columns: Vec<ArrayRef> = self
                .key_indices
                .iter()
                .map(|&i| rows.column(i).clone())
                .collect();
            let groups =
                meltwater_state::key_groups(&key_columns, rows.num_rows(), self.info.key_groups)?;
            keyed.push(meltwater_state::with_key_groups(&rows, groups)?);
        }
        // Spilled key groups are part of the state: their rows as spilled.
        if let Some(spill) = &self.spill {
            keyed.extend(spill.snapshot()?);
        }
        Ok(OperatorSnapshot {
            keyed,
            state: watermark_state(self.watermark),
        })
    }

    fn counters(&self) -> OperatorCounters {
        OperatorCounters {
            late_records: self.late_records,
            spilled_bytes: self.spill.as_ref().map_or(0, |s| s.spilled_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::test_util::*;

    const GAP: i64 = 10;

    fn operator(index: usize, parallelism: usize) -> SessionRowsOperator {
        SessionRowsOperator::try_new(GAP, 2, vec![0], windowed_schema(), info(index, parallelism))
            .unwrap()
    }

    /// What batch mode computes for `input` (all at once): each row with its session,
    /// by the same rule batch mode's `SessionWindowExec` applies (sorted by key and time,
    /// a new session when the key changes or the next row is more than the gap after the
    /// last one), as `k,v,ts,start,end,time` strings, sorted.
    fn expected(input: &[(Option<&str>, Option<i64>, Option<i64>)]) -> Vec<String> {
        let mut sorted: Vec<_> = input.iter().filter(|r| r.2.is_some()).cloned().collect();
        sorted.sort_by_key(|r| (r.0, r.2));
        let mut out = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let (start, mut last) = (sorted[i].2.unwrap(), sorted[i].2.unwrap());
            let mut j = i + 1;
            while j < sorted.len()
                && sorted[j].0 == sorted[i].0
                && sorted[j].2.unwrap() <= last + GAP
            {
                last = sorted[j].2.unwrap();
                j += 1;
            }
            for r in &sorted[i..j] {
                out.push(((r.0, r.1, r.2.unwrap()), (start, last + GAP)));
            }
            i = j;
        }
        // Render through the same columns the operator emits.
        let mut batch_rows: Vec<(Option<&str>, Option<i64>, Option<i64>)> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for ((k, v, t), (s, e)) in out {
            batch_rows.push((k, v, Some(t)));
            starts.push(s);
            ends.push(e);
        }
        let b = source(&batch_rows);
        let mut columns = b.columns().to_vec();
        let ts_type = b.schema().field(2).data_type().clone();
        columns.extend(window_columns(starts, ends, &ts_type).unwrap());
        let b = RecordBatch::try_new(windowed_schema(), columns).unwrap();
        let mut r = rows(&[b]);
        r.sort();
        r
    }

    fn sorted(batches: &[RecordBatch]) -> Vec<String> {
        let mut r = rows(batches);
        r.sort();
        r
    }

    fn key(op: &SessionRowsOperator, k: &str) -> Box<[u8]> {
        let column: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec![k]));
        op.keys.encode(&[column]).unwrap().key(0).into()
    }

    /// `1970-01-01T00:00:00.0xx` for `ms` < 1000.
    fn at(ms: i64) -> String {
        if ms == 0 {
            "1970-01-01T00:00:00".into()
        } else {
            format!("1970-01-01T00:00:00.{ms:03}")
        }
    }

    #[tokio::test]
    async fn out_of_order_rows_merge_two_sessions() {
        let mut op = operator(0, 1);
        // a: [0,10) and [30,40) are apart; b: one session [5,15).
        let first = [
            (Some("a"), Some(1), Some(0)),
            (Some("a"), Some(2), Some(30)),
            (Some("b"), Some(3), Some(5)),
            (Some("c"), Some(4), None),
        ];
        assert!(feed(&mut op, source(&first)).await.is_empty());
        assert_eq!(op.sessions.values().map(|s| s.len()).sum::<usize>(), 3);
        // Watermark 8 closes nothing ([0,10) fires at 9).
        assert!(watermark(&mut op, 8).await.is_empty());
        // Out of time order but within the delay: a@20 → [20,30) touches [30,40);
        // a@9 → [9,19) extends [0,10) to [0,19), still apart from [20,40).
        // Then a@12 → [12,22) bridges [0,19) and [20,40): one session [0,40).
        let second = [
            (Some("a"), Some(5), Some(20)),
            (Some("a"), Some(6), Some(9)),
        ];
        assert!(feed(&mut op, source(&second)).await.is_empty());
        assert_eq!(op.sessions[&key(&op, "a")], [(0, 19), (20, 40)]);
        let third = [(Some("a"), Some(7), Some(12))];
        assert!(feed(&mut op, source(&third)).await.is_empty());
        assert_eq!(op.sessions.values().map(|s| s.len()).sum::<usize>(), 2);
        assert_eq!(op.counters().late_records, 0);
        // b's [5,15) fires at 14, with its window columns.
        assert!(watermark(&mut op, 13).await.is_empty());
        let fired = watermark(&mut op, 14).await;
        assert_eq!(fired[0].schema(), windowed_schema());
        assert_eq!(
            rows(&fired),
            [format!("b,3,{},{},{},{}", at(5), at(5), at(15), at(14))]
        );
        // a's merged session [0,40) fires at 39, rows in time order.
        let fired = watermark(&mut op, 39).await;
        let (s, e, t) = (at(0), at(40), at(39));
        assert_eq!(
            rows(&fired),
            [
                format!("a,1,{},{s},{e},{t}", at(0)),
                format!("a,6,{},{s},{e},{t}", at(9)),
                format!("a,7,{},{s},{e},{t}", at(12)),
                format!("a,5,{},{s},{e},{t}", at(20)),
                format!("a,2,{},{s},{e},{t}", at(30)),
            ]
        );
        assert!(op.windows.is_empty() && op.sessions.is_empty());
        assert_eq!(op.store.live, 0);
        assert!(op.store.batches.is_empty(), "emitted rows are freed");
        // The same as batch mode over all the rows.
        let all: Vec<_> = first.iter().chain(&second).chain(&third).cloned().collect();
        let mut got = rows(&fired);
        got.push(format!("b,3,{},{},{},{}", at(5), at(5), at(15), at(14)));
        got.sort();
        assert_eq!(got, expected(&all));
    }

    #[tokio::test]
    async fn late_rows_are_dropped_and_counted() {
        let mut op = operator(0, 1);
        feed(
            &mut op,
            source(&[
                (Some("a"), Some(1), Some(0)),
                (Some("b"), Some(2), Some(50)),
            ]),
        )
        .await;
        assert_eq!(rows(&watermark(&mut op, 20).await).len(), 1);
        // a@5: [5,15) fired (14 <= 20) and touches nothing open: late. b@45: [45,55)
        // is late on its own but touches b's open [50,60): it joins. a@16: [16,26) open.
        // b@NULL: no session, not late either.
        feed(
            &mut op,
            source(&[
                (Some("a"), Some(3), Some(5)),
                (Some("b"), Some(4), Some(45)),
                (Some("a"), Some(5), Some(16)),
                (Some("b"), Some(6), None),
            ]),
        )
        .await;
        assert_eq!(op.counters().late_records, 1);
        // Only the 2 accepted rows of the 4 are stored (b@50 keeps the first batch).
        assert_eq!(op.store.live, 3);
        assert_eq!(op.store.stored, 4);
        let fired = watermark(&mut op, i64::MAX).await;
        assert_eq!(
            sorted(&fired),
            [
                format!("a,5,{},{},{},{}", at(16), at(16), at(26), at(25)),
                format!("b,2,{},{},{},{}", at(50), at(45), at(60), at(59)),
                format!("b,4,{},{},{},{}", at(45), at(45), at(60), at(59)),
            ]
        );
        assert_eq!(op.counters().late_records, 1);
        // After the final watermark every row is late.
        feed(&mut op, source(&[(Some("a"), Some(9), Some(1000))])).await;
        assert_eq!(op.counters().late_records, 2);
        assert!(op.windows.is_empty() && op.store.batches.is_empty());
    }

    #[tokio::test]
    async fn matches_batch_sessions_with_microseconds_and_no_keys() {
        use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
        use datafusion::arrow::datatypes::{Field, TimeUnit};
        let us = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", us.clone(), true),
        ]));
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in ["window_start", "window_end", "window_time"] {
            fields.push(Field::new(name, us.clone(), false));
        }
        let schema = Arc::new(Schema::new(fields));
        let mut op =
            SessionRowsOperator::try_new(10, 1, vec![], schema.clone(), info(0, 1)).unwrap();
        // 1.5 ms and 11.999 ms (floored to 1 and 11: 10 ms apart, one session), 22.5 ms.
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![11_999, 1_500, 22_500])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        feed(&mut op, batch).await;
        let fired = watermark(&mut op, i64::MAX).await;
        assert_eq!(fired[0].schema(), schema);
        assert_eq!(
            rows(&fired),
            [
                "y,1970-01-01T00:00:00.001500Z,1970-01-01T00:00:00.001Z,1970-01-01T00:00:00.021Z,1970-01-01T00:00:00.020Z",
                "x,1970-01-01T00:00:00.011999Z,1970-01-01T00:00:00.001Z,1970-01-01T00:00:00.021Z,1970-01-01T00:00:00.020Z",
                "z,1970-01-01T00:00:00.022500Z,1970-01-01T00:00:00.022Z,1970-01-01T00:00:00.032Z,1970-01-01T00:00:00.031Z",
            ]
        );
    }

    /// The rows of `batch` with key group in subtask `index`'s range.
    fn rows_of(batch: &RecordBatch, index: usize, parallelism: usize) -> RecordBatch {
        route(batch, 0, index, parallelism)
    }

    fn keyed_rows(
        keys: &[&'static str],
        ts: &[i64],
    ) -> Vec<(Option<&'static str>, Option<i64>, Option<i64>)> {
        let mut r = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for (j, t) in ts.iter().enumerate() {
                r.push((Some(*k), Some((i * 10 + j) as i64), Some(*t)));
            }
        }
        r
    }

    #[tokio::test]
    async fn snapshot_restores_across_a_parallelism_change() {
        let keys = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
        ];
        // Before the checkpoint: sessions [1,11) and [25,35) per key, watermark 3.
        let first = keyed_rows(&keys, &[25, 1]);
        // After: 10 extends [1,11) to [1,20); 20 bridges it to [25,35): [1,35) per key;
        // 100 opens another.
        let second = keyed_rows(&keys, &[10, 20, 100]);
        let all: Vec<_> = first.iter().chain(&second).cloned().collect();
        let want = expected(&all);

        // Old run: 2 subtasks, routed by key.
        let mut old: Vec<SessionRowsOperator> = (0..2).map(|i| operator(i, 2)).collect();
        let mut snapshots = Vec::new();
        for (i, op) in old.iter_mut().enumerate() {
            feed(op, rows_of(&source(&first), i, 2)).await;
            assert!(watermark(op, 3).await.is_empty());
            let snap = snapshot(op).await;
            assert_eq!(
                snap.keyed[0].schema().field(0).name(),
                meltwater_state::KEY_GROUP_COLUMN
            );
            assert_eq!(
                snap.keyed[0].num_rows(),
                rows_of(&source(&first), i, 2).num_rows()
            );
            snapshots.push(snap);
        }
        // New run: 3 subtasks, each restoring its key groups from both old snapshots.
        let mut got = Vec::new();
        for i in 0..3 {
            let mut op = operator(i, 3);
            let range = meltwater_state::KeyGroupRange::of_subtask(i, 128, 3);
            let state = RestoredState {
                keyed: snapshots
                    .iter()
                    .map(|s| range.select(&s.keyed[0]).unwrap())
                    .collect(),
                states: snapshots.iter().map(|s| s.state.clone()).collect(),
            };
            assert!(state.keyed.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
            op.restore(state).await.unwrap();
            assert_eq!(op.watermark, 3);
            feed(&mut op, rows_of(&source(&second), i, 3)).await;
            got.extend(rows(&watermark(&mut op, i64::MAX).await));
            assert_eq!(op.counters().late_records, 0);
        }
        got.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), all.len());

        // The old operators keep working after their snapshot.
        let mut again = Vec::new();
        for (i, op) in old.iter_mut().enumerate() {
            feed(op, rows_of(&source(&second), i, 2)).await;
            again.extend(rows(&watermark(op, i64::MAX).await));
        }
        again.sort();
        assert_eq!(again, want);
    }

    #[tokio::test]
    async fn restored_watermark_keeps_late_rows_late() {
        let mut op = operator(0, 1);
        feed(&mut op, source(&[(Some("a"), Some(1), Some(100))])).await;
        watermark(&mut op, 50).await;
        let snap = snapshot(&mut op).await;
        let mut restored_op = operator(0, 1);
        restored_op.restore(restored(&snap, 0, 1)).await.unwrap();
        // [5,15) fired before the checkpoint: late after the restore too.
        feed(&mut restored_op, source(&[(Some("b"), Some(2), Some(5))])).await;
        assert_eq!(restored_op.counters().late_records, 1);
        assert_eq!(
            rows(&watermark(&mut restored_op, i64::MAX).await),
            [format!(
                "a,1,{},{},{},{}",
                "1970-01-01T00:00:00.100",
                "1970-01-01T00:00:00.100",
                "1970-01-01T00:00:00.110",
                "1970-01-01T00:00:00.109"
            )]
        );
    }

    #[tokio::test]
    async fn compacts_when_most_buffered_rows_are_emitted() {
        let mut op = operator(0, 1);
        // 5000 rows of key "a" in [0, 5000) (one session), 10 of "b" at 10000..:
        // after "a" fires, the 10 live rows are compacted out of the big batch.
        let mut r: Vec<(Option<&str>, Option<i64>, Option<i64>)> =
            (0..5000).map(|t| (Some("a"), Some(t), Some(t))).collect();
        r.extend((0..10).map(|t| (Some("b"), Some(t), Some(10_000 + t))));
        feed(&mut op, source(&r)).await;
        let fired = watermark(&mut op, 6000).await;
        assert_eq!(fired.iter().map(|b| b.num_rows()).sum::<usize>(), 5000);
        assert!(fired.iter().all(|b| b.num_rows() <= BATCH_ROWS));
        assert_eq!(op.store.stored, 10);
        assert_eq!(op.store.live, 10);
        let fired = watermark(&mut op, i64::MAX).await;
        let v: Vec<String> = rows(&fired)
            .iter()
            .map(|r| r.split(',').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(v, (0..10).map(|t| t.to_string()).collect::<Vec<_>>());
        assert!(op.store.batches.is_empty());
    }

    /// Feeds `batches` (watermark [`random_watermark`] after each, then the final one) to
    /// a subtask (`index` of `parallelism`, restored from `restore` when given) kept
    /// within `budget` bytes. Returns what each watermark emitted (sorted, since rows of
    /// equal time have no order), the late count and the bytes spilled.
    async fn sessions_within(
        batches: &[RecordBatch],
        first_watermark: usize,
        budget: Option<usize>,
        restore: Option<RestoredState>,
        (index, parallelism): (usize, usize),
    ) -> (Vec<Vec<String>>, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut op = operator(index, parallelism);
        if let Some(b) = budget {
            op = op.with_memory_budget(b, dir.path().join("op"));
        }
        if let Some(state) = restore {
            op.restore(state).await.unwrap();
        }
        let mut out = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            assert!(feed(&mut op, batch.clone()).await.is_empty());
            out.push(sorted(
                &watermark(&mut op, random_watermark(first_watermark + b)).await,
            ));
        }
        out.push(sorted(&watermark(&mut op, i64::MAX).await));
        assert!(op.windows.is_empty() && op.spilled_ends.is_empty());
        let counters = op.counters();
        (out, counters.late_records, counters.spilled_bytes)
    }

    #[tokio::test]
    async fn spilling_over_the_budget_gives_the_same_rows() {
        // Sessions of gap 10 over times in 300-wide ranges: many merge, some rows are late.
        let batches = random_batches(9, 8, 300, 40);
        let (in_memory, late, none) = sessions_within(&batches, 0, None, None, (0, 1)).await;
        assert_eq!(none, 0);
        assert!(late > 0);
        assert!(in_memory.iter().map(|w| w.len()).sum::<usize>() > 1000);
        // 1 byte: every key group goes to disk after every batch; 16 KiB: some do.
        for budget in [1, 16 << 10] {
            let (spilled, spilled_late, bytes) =
                sessions_within(&batches, 0, Some(budget), None, (0, 1)).await;
            assert_eq!(spilled, in_memory, "budget {budget}");
            assert_eq!(spilled_late, late, "budget {budget}");
            assert!(bytes > 0, "budget {budget}: nothing spilled");
        }
        // What is spilled leaves memory; the buffered rows keep to the budget.
        let dir = tempfile::tempdir().unwrap();
        let mut op = operator(0, 1).with_memory_budget(16 << 10, dir.path().join("op"));
        for batch in random_batches(10, 6, 500, 200) {
            feed(&mut op, batch).await;
            let memory = op.store.bytes + op.store.live * std::mem::size_of::<RowRef>();
            assert!(memory <= 16 << 10, "{memory} bytes in memory");
        }
        assert!(!op.spilled_ends.is_empty());
    }

    #[tokio::test]
    async fn spilled_rows_are_checkpointed_and_restore_at_another_parallelism() {
        let batches = random_batches(12, 8, 300, 40);
        let (before, after) = batches.split_at(4);
        let (reference, late, _) = sessions_within(&batches, 0, None, None, (0, 1)).await;
        let mut expected: Vec<String> = reference[before.len()..].concat();
        expected.sort();

        // With a 1-byte budget every buffered row is on disk when the checkpoint is taken.
        let dir = tempfile::tempdir().unwrap();
        let mut old = operator(0, 1).with_memory_budget(1, dir.path().join("op"));
        let mut old_late = 0;
        for (b, batch) in before.iter().enumerate() {
            feed(&mut old, batch.clone()).await;
            watermark(&mut old, random_watermark(b)).await;
        }
        assert_eq!(old.store.live, 0);
        old_late += old.counters().late_records;
        let snap = snapshot(&mut old).await;
        let buffered: usize = snap.keyed.iter().map(|b| b.num_rows()).sum();
        assert!(buffered > 100, "{buffered} rows in the checkpoint");

        // Restored into 3 subtasks, each within a budget of its own.
        let mut got = Vec::new();
        let mut new_late = 0;
        for (i, budget) in [(0, 1), (1, 4 << 10), (2, 1 << 20)] {
            let state = restored(&snap, i, 3);
            let input: Vec<RecordBatch> = after.iter().map(|b| rows_of(b, i, 3)).collect();
            let (rows, late, _) =
                sessions_within(&input, before.len(), Some(budget), Some(state), (i, 3)).await;
            got.extend(rows.concat());
            new_late += late;
        }
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(old_late + new_late, late);
    }
}
