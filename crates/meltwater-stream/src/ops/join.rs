//! Regular (unwindowed) joins over streams: both inputs are kept in keyed state, and
//! every row that arrives on one side is joined with the rows the other side holds for
//! its key (Flink's streaming join).
//!
//! Inputs arrive hash-partitioned by the equi-join keys, so a subtask holds every row
//! of its keys from both sides. Each stored row carries how many rows of the other
//! side it currently matches (equi-keys and the residual `ON` condition), which is what
//! the outer, semi and anti variants need to know when a match appears or disappears:
//!
//! | join | a row's output | when its match count goes 0 → 1 | 1 → 0 |
//! |---|---|---|---|
//! | inner | one row per match | | |
//! | outer (its side preserved) | null-padded row while it matches nothing | `-D` the padded row | `+I` it again |
//! | semi | the row itself while it matches something | `+I` | `-D` |
//! | anti | the row itself while it matches nothing | `-D` | `+I` |
//!
//! Updating inputs (`+I`/`+U` accumulate, `-U`/`-D` retract) retract their joined rows.
//! The output is append-only for inner joins and semi joins over append-only inputs;
//! every other combination produces an updating stream of `+I` and `-D` rows.
//!
//! Rows whose key has a NULL never match (unless the keys compare with `IS NOT DISTINCT
//! FROM`) and are not stored.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, UInt8Array,
};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type, UInt8Type,
};
use datafusion::common::{plan_err, JoinType};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;

use crate::aggregate::updating::{system_clock, Clock};
use crate::aggregate::KeyCodec;
use crate::changelog::{self, RowKind};
use crate::operator::{
    Operator, OperatorCounters, OperatorSnapshot, Output, RestoredState, SubtaskInfo,
};
use meltwater_state::KeyGroupSpill;

/// What the planner hands the join operator.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub join_type: JoinType,
    /// Equi-join key expressions over each input's rows.
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The residual `ON` condition, over the left columns followed by the right ones.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Keys compare with `IS NOT DISTINCT FROM` (NULL matches NULL).
    pub null_equals_null: bool,
    /// The inputs' data columns (without the op column).
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    pub left_updating: bool,
    pub right_updating: bool,
    /// The join's rows (without the op column).
    pub output_schema: SchemaRef,
    /// Whether the output carries the op column.
    pub output_updating: bool,
    /// `table.exec.state.ttl`: a stored row not written for this long (processing
    /// time) is dropped, and later rows of the other side no longer match it.
    pub ttl_ms: Option<u64>,
    /// `state.memory-budget`: bytes of stored rows per subtask before spilling (the
    /// runtime applies it with [`JoinOperator::with_memory_budget`]).
    pub memory_budget: Option<usize>,
}

impl JoinSpec {
    /// Whether a join of this type over these inputs emits retractions.
    pub fn updating(join_type: JoinType, left_updating: bool, right_updating: bool) -> bool {
        left_updating
            || right_updating
            || matches!(
                join_type,
                JoinType::Left
                    | JoinType::Right
                    | JoinType::Full
                    | JoinType::LeftAnti
                    | JoinType::RightAnti
            )
    }
}

/// Columns of a snapshot batch before the rows' own (after the key group): side,
/// copies, matches, written.
const META: usize = 4;

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// What one side's rows become in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Part of joined rows only (inner, or the non-preserved side of an outer join).
    Joined,
    /// Joined, and null-padded while unmatched (the preserved side of an outer join).
    Padded,
    /// Output alone while matched.
    Semi,
    /// Output alone while unmatched.
    Anti,
    /// Never output (the other side of a semi or anti join).
    Hidden,
}

fn roles(join_type: JoinType) -> Result<[Role; 2]> {
    use Role::*;
    Ok(match join_type {
        JoinType::Inner => [Joined, Joined],
        JoinType::Left => [Padded, Joined],
        JoinType::Right => [Joined, Padded],
        JoinType::Full => [Padded, Padded],
        JoinType::LeftSemi => [Semi, Hidden],
        JoinType::RightSemi => [Hidden, Semi],
        JoinType::LeftAnti => [Anti, Hidden],
        JoinType::RightAnti => [Hidden, Anti],
        other => return plan_err!("{other} joins are not supported in stream mode"),
    })
}

/// A distinct row of one side (the encoded row is its key in [`KeyRows`]) with its
/// multiplicity.
#[derive(Debug, Clone)]
struct Entry {
    copies: u32,
    /// Rows of the other side each copy matches.
    matches: u32,
    key_group: u16,
    /// Processing time (ms) the row was last stored; for the state TTL.
    written: i64,
}

/// The distinct rows of one join key, by encoded row: looked up by row in O(1), and by
/// position while a batch's candidate pairs are evaluated.
type KeyRows = IndexMap<Box<[u8]>, Entry>;

/// Memory of a stored distinct row besides its encoding (entry, map slot, box).
const ROW_OVERHEAD: usize = std::mem::size_of::<Entry>() + 48;

/// Memory of a join key's map besides its encoding.
const KEY_OVERHEAD: usize = 96;

/// The rows of one key group, by key, and the memory they take.
#[derive(Default)]
struct GroupRows {
    keys: HashMap<Box<[u8]>, KeyRows>,
    bytes: usize,
}

/// One input's rows, by key group and key.
struct Side {
    schema: SchemaRef,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_codec: KeyCodec,
    row_codec: KeyCodec,
    role: Role,
    table: HashMap<u16, GroupRows>,
    rows: usize,
    /// The memory the stored rows take (encodings plus their entries).
    bytes: usize,
}

impl Side {
    fn new(schema: SchemaRef, keys: Vec<Arc<dyn PhysicalExpr>>, role: Role) -> Result<Self> {
        let key_types = keys
            .iter()
            .map(|k| k.data_type(&schema))
            .collect::<Result<Vec<_>>>()?;
        let row_types = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Self {
            key_codec: KeyCodec::new(key_types)?,
            row_codec: KeyCodec::new(row_types)?,
            schema,
            keys,
            role,
            table: HashMap::new(),
            rows: 0,
            bytes: 0,
        })
    }

    /// The key columns of `batch` (the side's data columns).
    fn key_columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.keys
            .iter()
            .map(|k| {
                k.evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
            })
            .collect()
    }

    /// Decodes stored rows into the side's columns.
    fn decode(&self, rows: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        if self.schema.fields().is_empty() {
            return Ok(vec![]);
        }
        self.row_codec.decode(rows)
    }

    /// The rows stored under `key` (of key group `kg`).
    fn get(&self, kg: u16, key: &[u8]) -> Option<&KeyRows> {
        self.table.get(&kg)?.keys.get(key)
    }

    fn get_mut(&mut self, kg: u16, key: &[u8]) -> Option<&mut KeyRows> {
        self.table.get_mut(&kg)?.keys.get_mut(key)
    }

    fn add(&mut self, key: &[u8], row: &[u8], stored: Entry) {
        let group = self.table.entry(stored.key_group).or_default();
        self.rows += stored.copies as usize;
        let mut added = 0;
        if !group.keys.contains_key(key) {
            group.keys.insert(key.into(), KeyRows::default());
            added += key.len() + KEY_OVERHEAD;
        }
        let entries = group.keys.get_mut(key).expect("inserted above");
        match entries.get_mut(row) {
            Some(e) => {
                e.copies += stored.copies;
                e.written = e.written.max(stored.written);
            }
            None => {
                entries.insert(row.into(), stored);
                added += row.len() + ROW_OVERHEAD;
            }
        }
        group.bytes += added;
        self.bytes += added;
    }

    /// Drops rows last written before `cutoff`.
    fn expire(&mut self, cutoff: i64) {
        let (mut dropped, mut freed) = (0usize, 0usize);
        self.table.retain(|_, group| {
            group.keys.retain(|key, entries| {
                entries.retain(|row, e| {
                    let keep = e.written >= cutoff;
                    if !keep {
                        dropped += e.copies as usize;
                        group.bytes -= row.len() + ROW_OVERHEAD;
                        freed += row.len() + ROW_OVERHEAD;
                    }
                    keep
                });
                if entries.is_empty() {
                    group.bytes -= key.len() + KEY_OVERHEAD;
                    freed += key.len() + KEY_OVERHEAD;
                }
                !entries.is_empty()
            });
            !group.keys.is_empty()
        });
        self.rows -= dropped;
        self.bytes -= freed;
    }

    /// Removes one copy of `row`; false when the side does not hold it.
    fn remove(&mut self, kg: u16, key: &[u8], row: &[u8]) -> bool {
        let Some(group) = self.table.get_mut(&kg) else {
            return false;
        };
        let Some(entries) = group.keys.get_mut(key) else {
            return false;
        };
        let Some(e) = entries.get_mut(row) else {
            return false;
        };
        e.copies -= 1;
        let mut freed = 0;
        if e.copies == 0 {
            entries.swap_remove(row);
            freed += row.len() + ROW_OVERHEAD;
            if entries.is_empty() {
                group.keys.remove(key);
                freed += key.len() + KEY_OVERHEAD;
            }
        }
        group.bytes -= freed;
        self.bytes -= freed;
        if group.keys.is_empty() {
            self.table.remove(&kg);
        }
        self.rows -= 1;
        true
    }

    /// Takes key group `kg`'s rows out of the side.
    fn take_group(&mut self, kg: u16) -> Option<GroupRows> {
        let group = self.table.remove(&kg)?;
        self.bytes -= group.bytes;
        self.rows -= group
            .keys
            .values()
            .flat_map(|entries| entries.values())
            .map(|e| e.copies as usize)
            .sum::<usize>();
        Some(group)
    }
}

/// Where an output row's columns of one side come from.
#[derive(Debug, Clone)]
enum Src {
    /// Row `i` of the batch being processed.
    Input(usize),
    /// A stored row (its encoding).
    Stored(Box<[u8]>),
    /// NULLs (padding of an outer join).
    Null,
}

/// Output rows being collected for one input batch.
#[derive(Default)]
struct Emitted {
    kinds: Vec<RowKind>,
    sides: [Vec<Src>; 2],
}

impl Emitted {
    fn push(&mut self, kind: RowKind, left: Src, right: Src, times: u32) {
        for _ in 0..times {
            self.kinds.push(kind);
            self.sides[LEFT].push(left.clone());
            self.sides[RIGHT].push(right.clone());
        }
    }
}

/// A regular join; see the module docs.
///
/// Both sides' rows are kept by key group. With a memory budget
/// ([`JoinOperator::with_memory_budget`]) the key groups used least recently (both sides'
/// rows of them) move to local spill files whenever the rows' memory exceeds it (down to
/// half of it), in the checkpoint's row format; a batch with rows of a spilled key group
/// first loads that group back, as a restore would.
pub struct JoinOperator {
    spec: JoinSpec,
    info: SubtaskInfo,
    sides: [Side; 2],
    clock: Clock,
    next_ttl_check: i64,
    /// The cutoff of the last TTL check: rows loaded back from spill files written
    /// before it are dropped, as the rows in memory were.
    ttl_cutoff: i64,
    spill: Option<KeyGroupSpill>,
}

impl std::fmt::Debug for JoinOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOperator")
            .field("join_type", &self.spec.join_type)
            .field("left_rows", &self.sides[LEFT].rows)
            .field("right_rows", &self.sides[RIGHT].rows)
            .finish()
    }
}

impl JoinOperator {
    pub fn try_new(spec: JoinSpec, info: SubtaskInfo) -> Result<Self> {
        let [l, r] = roles(spec.join_type)?;
        let left = Side::new(spec.left_schema.clone(), spec.left_keys.clone(), l)?;
        let right = Side::new(spec.right_schema.clone(), spec.right_keys.clone(), r)?;
        Ok(Self {
            spec,
            info,
            sides: [left, right],
            clock: Arc::new(system_clock),
            next_ttl_check: i64::MIN,
            ttl_cutoff: i64::MIN,
            spill: None,
        })
    }

    /// Keeps the stored rows within `budget` bytes by spilling the least recently used
    /// key groups to files under `dir` (created when needed, removed with the operator).
    pub fn with_memory_budget(mut self, budget: usize, dir: std::path::PathBuf) -> Self {
        self.spill = Some(KeyGroupSpill::new(budget, dir));
        self
    }

    /// Loads the spilled key groups among `kgs` (a batch's rows') back into both sides,
    /// and marks `kgs` as just used.
    fn load_spilled(&mut self, kgs: &[u16]) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        for batch in spill.load_touched(kgs)? {
            self.merge_state(&batch, self.ttl_cutoff)?;
        }
        Ok(())
    }

    /// Over the budget: moves the least recently used key groups (both sides' rows) to
    /// a spill file until half the budget is used.
    fn spill_if_over_budget(&mut self) -> Result<()> {
        let Some(spill) = self.spill.as_ref() else {
            return Ok(());
        };
        let budget = spill.budget();
        let memory = |sides: &[Side; 2]| sides[LEFT].bytes + sides[RIGHT].bytes;
        if memory(&self.sides) <= budget {
            return Ok(());
        }
        let mut resident: Vec<u16> = self.sides[LEFT].table.keys().copied().collect();
        resident.extend(self.sides[RIGHT].table.keys().copied());
        resident.sort_unstable();
        resident.dedup();
        let mut parts = Vec::new();
        for kg in spill.coldest_first(resident) {
            if memory(&self.sides) <= budget / 2 {
                break;
            }
            for s in [LEFT, RIGHT] {
                let Some(group) = self.sides[s].take_group(kg) else {
                    continue;
                };
                let (rows, entries): (Vec<&[u8]>, Vec<&Entry>) = group
                    .keys
                    .values()
                    .flatten()
                    .map(|(row, e)| (row.as_ref(), e))
                    .unzip();
                if let Some(batch) = self.state_batch(s, &rows, &entries)? {
                    parts.push((kg, batch));
                }
            }
        }
        self.spill.as_mut().expect("checked above").write_run(parts)
    }

    /// Replaces the processing-time clock (ms since the epoch) used for the state TTL.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Drops rows not written for the TTL (checked at most every TTL / 2).
    fn expire(&mut self, now: i64) {
        let Some(ttl) = self.spec.ttl_ms else { return };
        let ttl = ttl.min(i64::MAX as u64) as i64;
        if now < self.next_ttl_check {
            return;
        }
        self.ttl_cutoff = now.saturating_sub(ttl);
        for side in self.sides.iter_mut() {
            side.expire(self.ttl_cutoff);
        }
        self.next_ttl_check = now.saturating_add((ttl / 2).max(1));
    }

    /// Rows held on each side.
    pub fn state_rows(&self) -> (usize, usize) {
        (self.sides[LEFT].rows, self.sides[RIGHT].rows)
    }

    /// The output sources of a row of side `s` joined with one of the other side.
    fn pair(s: usize, own: Src, other: Src) -> (Src, Src) {
        if s == LEFT {
            (own, other)
        } else {
            (other, own)
        }
    }

    /// The output sources of a row of side `s` on its own (semi/anti) or padded.
    fn alone(s: usize, own: Src) -> (Src, Src) {
        Self::pair(s, own, Src::Null)
    }

    fn process_side(&mut self, s: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let o = 1 - s;
        let now = (self.clock)();
        self.expire(now);
        let (data, kinds) = if self.input_updating(s) {
            changelog::split_ops(&batch)?
        } else {
            (batch, vec![RowKind::Insert; 0])
        };
        let data = RecordBatch::try_new_with_options(
            self.sides[s].schema.clone(),
            data.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(data.num_rows())),
        )?;
        let n = data.num_rows();
        let key_columns = self.sides[s].key_columns(&data)?;
        let keys = self.sides[s].key_codec.encode(&key_columns)?;
        let rows = self.sides[s].row_codec.encode(data.columns())?;
        let groups = meltwater_state::key_groups(&key_columns, n, self.info.key_groups)?;
        self.load_spilled(&groups)?;
        let matchable: Vec<bool> = (0..n)
            .map(|i| self.spec.null_equals_null || key_columns.iter().all(|c| c.is_valid(i)))
            .collect();

        // Candidates: (input row, index of the other side's entry under the key). The
        // other side does not change while this batch is processed.
        let mut cand_rows: Vec<usize> = Vec::new();
        let mut cand_entries: Vec<usize> = Vec::new();
        for i in 0..n {
            if !matchable[i] {
                continue;
            }
            if let Some(entries) = self.sides[o].get(groups[i], keys.key(i)) {
                for e in 0..entries.len() {
                    cand_rows.push(i);
                    cand_entries.push(e);
                }
            }
        }
        let pass = self.residual(s, &data, &keys, &groups, &cand_rows, &cand_entries)?;

        let mut out = Emitted::default();
        let own_role = self.sides[s].role;
        let other_role = self.sides[o].role;
        let mut c = 0usize;
        for i in 0..n {
            let accumulate = kinds.get(i).is_none_or(|k| k.is_accumulate());
            let key = keys.key(i);
            let row = rows.key(i);
            if !accumulate && matchable[i] && !self.sides[s].remove(groups[i], key, row) {
                // A retraction of a row this side does not hold (never seen, or
                // retracted already): nothing to undo.
                while c < cand_rows.len() && cand_rows[c] == i {
                    c += 1;
                }
                continue;
            }
            let mut matches = 0u32;
            while c < cand_rows.len() && cand_rows[c] == i {
                if pass[c] {
                    let entries = self.sides[o]
                        .get_mut(groups[i], key)
                        .expect("candidate key");
                    let (row, e) = entries
                        .get_index_mut(cand_entries[c])
                        .expect("candidate row");
                    let times = e.copies;
                    let other = Src::Stored(row.clone());
                    matches += times;
                    if accumulate {
                        if e.matches == 0 {
                            match other_role {
                                Role::Padded => {
                                    let (l, r) = Self::alone(o, other.clone());
                                    out.push(RowKind::Delete, l, r, times);
                                }
                                Role::Semi => {
                                    let (l, r) = Self::alone(o, other.clone());
                                    out.push(RowKind::Insert, l, r, times);
                                }
                                Role::Anti => {
                                    let (l, r) = Self::alone(o, other.clone());
                                    out.push(RowKind::Delete, l, r, times);
                                }
                                Role::Joined | Role::Hidden => {}
                            }
                        }
                        e.matches += 1;
                        if matches!(own_role, Role::Joined | Role::Padded) {
                            let (l, r) = Self::pair(s, Src::Input(i), other);
                            out.push(RowKind::Insert, l, r, times);
                        }
                    } else {
                        e.matches = e.matches.saturating_sub(1);
                        if matches!(own_role, Role::Joined | Role::Padded) {
                            let (l, r) = Self::pair(s, Src::Input(i), other.clone());
                            out.push(RowKind::Delete, l, r, times);
                        }
                        if e.matches == 0 {
                            let (l, r) = Self::alone(o, other);
                            match other_role {
                                Role::Padded => out.push(RowKind::Insert, l, r, times),
                                Role::Semi => out.push(RowKind::Delete, l, r, times),
                                Role::Anti => out.push(RowKind::Insert, l, r, times),
                                Role::Joined | Role::Hidden => {}
                            }
                        }
                    }
                }
                c += 1;
            }
            let kind = if accumulate {
                RowKind::Insert
            } else {
                RowKind::Delete
            };
            let (l, r) = Self::alone(s, Src::Input(i));
            match own_role {
                Role::Padded if matches == 0 => out.push(kind, l, r, 1),
                Role::Semi if matches > 0 => out.push(kind, l, r, 1),
                Role::Anti if matches == 0 => out.push(kind, l, r, 1),
                _ => {}
            }
            if accumulate && matchable[i] {
                let stored = Entry {
                    copies: 1,
                    matches,
                    key_group: groups[i],
                    written: now,
                };
                self.sides[s].add(key, row, stored);
            }
        }
        let output = self.build_output(s, &data, out)?;
        self.spill_if_over_budget()?;
        Ok(output.into_iter().collect())
    }

    fn input_updating(&self, s: usize) -> bool {
        if s == LEFT {
            self.spec.left_updating
        } else {
            self.spec.right_updating
        }
    }

    /// Evaluates the residual `ON` condition over the candidate pairs.
    fn residual(
        &self,
        s: usize,
        data: &RecordBatch,
        keys: &crate::aggregate::EncodedKeys,
        groups: &[u16],
        cand_rows: &[usize],
        cand_entries: &[usize],
    ) -> Result<Vec<bool>> {
        let Some(filter) = &self.spec.filter else {
            return Ok(vec![true; cand_rows.len()]);
        };
        if cand_rows.is_empty() {
            return Ok(vec![]);
        }
        let o = 1 - s;
        let idx = UInt32Array::from_iter_values(cand_rows.iter().map(|i| *i as u32));
        let own: Vec<ArrayRef> = data
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        let stored: Vec<&[u8]> = cand_rows
            .iter()
            .zip(cand_entries)
            .map(|(i, e)| {
                self.sides[o]
                    .get(groups[*i], keys.key(*i))
                    .expect("candidate key")
                    .get_index(*e)
                    .expect("candidate row")
                    .0
                    .as_ref()
            })
            .collect();
        let other = self.sides[o].decode(&stored)?;
        let (left, right) = if s == LEFT {
            (own, other)
        } else {
            (other, own)
        };
        let fields: Vec<Arc<Field>> = self.sides[LEFT]
            .schema
            .fields()
            .iter()
            .chain(self.sides[RIGHT].schema.fields().iter())
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            left.into_iter().chain(right).collect(),
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(cand_rows.len())),
        )?;
        let v = filter.evaluate(&batch)?.into_array(batch.num_rows())?;
        let b = v.as_boolean();
        Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
    }

    /// Materializes the collected output rows of a batch from side `s`.
    fn build_output(
        &self,
        s: usize,
        data: &RecordBatch,
        out: Emitted,
    ) -> Result<Option<RecordBatch>> {
        let n = out.kinds.len();
        if n == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        for side in [LEFT, RIGHT] {
            let role = self.sides[side].role;
            if role == Role::Hidden {
                continue;
            }
            columns.extend(self.side_columns(side, side == s, data, &out.sides[side])?);
        }
        let batch = RecordBatch::try_new_with_options(
            self.spec.output_schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        if self.spec.output_updating {
            Ok(Some(changelog::with_ops(&batch, &out.kinds)?))
        } else {
            Ok(Some(batch))
        }
    }

    /// The columns of side `side` for the output rows `srcs`.
    fn side_columns(
        &self,
        side: usize,
        is_input: bool,
        data: &RecordBatch,
        srcs: &[Src],
    ) -> Result<Vec<ArrayRef>> {
        let schema = &self.sides[side].schema;
        let stored: Vec<&[u8]> = srcs
            .iter()
            .filter_map(|s| match s {
                Src::Stored(r) => Some(r.as_ref()),
                _ => None,
            })
            .collect();
        let decoded = if stored.is_empty() {
            vec![]
        } else {
            self.sides[side].decode(&stored)?
        };
        // Sources per column: 0 = the input batch, 1 = decoded stored rows, 2 = one NULL.
        let mut indices = Vec::with_capacity(srcs.len());
        let mut next_stored = 0usize;
        for s in srcs {
            indices.push(match s {
                Src::Input(i) => (0, *i),
                Src::Stored(_) => {
                    next_stored += 1;
                    (1, next_stored - 1)
                }
                Src::Null => (2, 0),
            });
        }
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (c, f) in schema.fields().iter().enumerate() {
            let null = new_null_array(f.data_type(), 1);
            let input = if is_input {
                data.column(c).clone()
            } else {
                new_null_array(f.data_type(), 0)
            };
            let stored = decoded
                .get(c)
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), 0));
            columns.push(interleave(
                &[input.as_ref(), stored.as_ref(), null.as_ref()],
                &indices,
            )?);
        }
        Ok(columns)
    }

    /// The snapshot schema: key group, side, copies, matches, then every column of
    /// both sides (those of the other side NULL).
    fn snapshot_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("__side", DataType::UInt8, false),
            Field::new("__copies", DataType::UInt32, false),
            Field::new("__matches", DataType::UInt32, false),
            Field::new("__written", DataType::Int64, false),
        ];
        for (prefix, side) in [("l", LEFT), ("r", RIGHT)] {
            for (i, f) in self.sides[side].schema.fields().iter().enumerate() {
                fields.push(Field::new(
                    format!("{prefix}{i}"),
                    f.data_type().clone(),
                    true,
                ));
            }
        }
        Arc::new(Schema::new(fields))
    }

    /// The checkpoint rows (with the key-group column) of side `s`'s stored `rows` and
    /// their `entries`; `None` for no row.
    fn state_batch(
        &self,
        s: usize,
        rows: &[&[u8]],
        entries: &[&Entry],
    ) -> Result<Option<RecordBatch>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let n = entries.len();
        let own = self.sides[s].decode(rows)?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(vec![s as u8; n])),
            Arc::new(UInt32Array::from_iter_values(
                entries.iter().map(|e| e.copies),
            )),
            Arc::new(UInt32Array::from_iter_values(
                entries.iter().map(|e| e.matches),
            )),
            Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.written),
            )),
        ];
        for t in [LEFT, RIGHT] {
            if t == s {
                columns.extend(own.iter().cloned());
            } else {
                for f in self.sides[t].schema.fields() {
                    columns.push(new_null_array(f.data_type(), n));
                }
            }
        }
        let batch = RecordBatch::try_new_with_options(
            self.snapshot_schema(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let groups = entries.iter().map(|e| e.key_group).collect();
        Ok(Some(meltwater_state::with_key_groups(&batch, groups)?))
    }

    /// Stores checkpoint rows (key-group column removed) in their sides; rows written
    /// before `written_from` are left out (expired).
    fn merge_state(&mut self, batch: &RecordBatch, written_from: i64) -> Result<()> {
        let widths = [
            self.sides[LEFT].schema.fields().len(),
            self.sides[RIGHT].schema.fields().len(),
        ];
        if batch.num_columns() != META + widths[0] + widths[1] {
            return plan_err!(
                "the join's checkpointed state has {} columns, expected {}: the job's join inputs changed",
                batch.num_columns(),
                META + widths[0] + widths[1]
            );
        }
        let side_col = batch.column(0).as_primitive::<UInt8Type>().clone();
        let copies = batch.column(1).as_primitive::<UInt32Type>().clone();
        let matches = batch.column(2).as_primitive::<UInt32Type>().clone();
        let written = batch.column(3).as_primitive::<Int64Type>().clone();
        for s in [LEFT, RIGHT] {
            let idx = UInt32Array::from_iter_values(
                (0..batch.num_rows())
                    .filter(|i| {
                        side_col.value(*i) as usize == s && written.value(*i) >= written_from
                    })
                    .map(|i| i as u32),
            );
            if idx.is_empty() {
                continue;
            }
            let offset = META + if s == LEFT { 0 } else { widths[0] };
            let columns: Vec<ArrayRef> = (offset..offset + widths[s])
                .map(|c| take(batch.column(c).as_ref(), &idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let side = &mut self.sides[s];
            let data = RecordBatch::try_new_with_options(
                side.schema.clone(),
                columns,
                &datafusion::arrow::array::RecordBatchOptions::new()
                    .with_row_count(Some(idx.len())),
            )?;
            let key_columns = side.key_columns(&data)?;
            let keys = side.key_codec.encode(&key_columns)?;
            let rows = side.row_codec.encode(data.columns())?;
            let groups =
                meltwater_state::key_groups(&key_columns, data.num_rows(), self.info.key_groups)?;
            for (j, i) in idx.values().iter().enumerate() {
                let i = *i as usize;
                let stored = Entry {
                    copies: copies.value(i),
                    matches: matches.value(i),
                    key_group: groups[j],
                    written: written.value(i),
                };
                side.add(keys.key(j), rows.key(j), stored);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for JoinOperator {
    fn name(&self) -> String {
        format!("{} join", self.spec.join_type)
    }

    async fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let s = if input == 0 { LEFT } else { RIGHT };
        for b in self.process_side(s, batch)? {
            out.push(b);
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        let mut keyed = Vec::new();
        for s in [LEFT, RIGHT] {
            let (rows, entries): (Vec<&[u8]>, Vec<&Entry>) = self.sides[s]
                .table
                .values()
                .flat_map(|group| group.keys.values())
                .flatten()
                .map(|(row, e)| (row.as_ref(), e))
                .unzip();
            keyed.extend(self.state_batch(s, &rows, &entries)?);
        }
        // Spilled key groups are part of the state: their rows as spilled.
        if let Some(spill) = &self.spill {
            keyed.extend(spill.snapshot()?);
        }
        Ok(OperatorSnapshot {
            keyed,
            state: serde_json::Value::Null,
        })
    }

    async fn restore(&mut self, state: RestoredState) -> Result<()> {
        for batch in state.keyed {
            self.merge_state(&batch, i64::MIN)?;
            self.spill_if_over_budget()?;
        }
        Ok(())
    }

    fn counters(&self) -> OperatorCounters {
        OperatorCounters {
            spilled_bytes: self.spill.as_ref().map_or(0, |s| s.spilled_bytes()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::logical_expr::Operator as BinOp;
    use datafusion::physical_expr::expressions::{col, BinaryExpr};

    fn left_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("a", DataType::Utf8, true),
        ]))
    }
    fn right_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]))
    }

    fn info(index: usize, parallelism: usize) -> SubtaskInfo {
        SubtaskInfo {
            operator_id: "join#1".into(),
            index,
            parallelism,
            key_groups: 128,
        }
    }

    fn spec(join_type: JoinType, filter: bool, left_updating: bool) -> JoinSpec {
        let (l, r) = (left_schema(), right_schema());
        let joined: Vec<Field> = l
            .fields()
            .iter()
            .chain(r.fields().iter())
            .map(|f| f.as_ref().clone())
            .collect();
        let joined = Arc::new(Schema::new(joined));
        let output_schema = match join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => l.clone(),
            JoinType::RightSemi | JoinType::RightAnti => r.clone(),
            _ => joined.clone(),
        };
        // Residual: b > 10 (column 3 of the joined schema).
        let filter = filter.then(|| {
            Arc::new(BinaryExpr::new(
                Arc::new(datafusion::physical_expr::expressions::Column::new("b", 3)),
                BinOp::Gt,
                datafusion::physical_expr::expressions::lit(10i64),
            )) as Arc<dyn PhysicalExpr>
        });
        JoinSpec {
            join_type,
            left_keys: vec![col("id", &l).unwrap()],
            right_keys: vec![col("id", &r).unwrap()],
            filter,
            null_equals_null: false,
            left_schema: l,
            right_schema: r,
            left_updating,
            right_updating: false,
            output_schema,
            output_updating: JoinSpec::updating(join_type, left_updating, false),
            ttl_ms: None,
            memory_budget: None,
        }
    }

    fn left(rows: &[(Option<i64>, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            left_schema(),
            vec![
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }
    fn right(rows: &[(Option<i64>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            right_schema(),
            vec![
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// Rows as `kind|c1|c2...` strings (kind `+I` for append-only output).
    fn lines(batches: &[RecordBatch]) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            let updating = changelog::is_updating(&b.schema());
            let (data, kinds) = if updating {
                changelog::split_ops(b).unwrap()
            } else {
                (b.clone(), vec![RowKind::Insert; b.num_rows()])
            };
            for r in 0..data.num_rows() {
                let mut s = kinds[r].short().to_string();
                for c in data.columns() {
                    s.push('|');
                    s.push_str(&if c.is_null(r) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, r).unwrap()
                    });
                }
                out.push(s);
            }
        }
        out
    }

    async fn feed(op: &mut JoinOperator, input: usize, batch: RecordBatch) -> Vec<String> {
        let mut out = Output::default();
        op.process(input, batch, &mut out).await.unwrap();
        lines(&out.take())
    }

    #[tokio::test]
    async fn inner_join_is_symmetric_and_append_only() {
        let mut op =
            JoinOperator::try_new(spec(JoinType::Inner, false, false), info(0, 1)).unwrap();
        assert!(feed(
            &mut op,
            0,
            left(&[(Some(1), "x"), (Some(2), "y"), (None, "n")])
        )
        .await
        .is_empty());
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(1), 5), (Some(1), 6), (None, 7)])).await,
            vec!["+I|1|x|1|5", "+I|1|x|1|6"]
        );
        assert_eq!(
            feed(&mut op, 0, left(&[(Some(1), "z")])).await,
            vec!["+I|1|z|1|5", "+I|1|z|1|6"]
        );
        // NULL keys are not stored.
        assert_eq!(op.state_rows(), (3, 2));
    }

    #[tokio::test]
    async fn duplicates_multiply() {
        let mut op =
            JoinOperator::try_new(spec(JoinType::Inner, false, false), info(0, 1)).unwrap();
        feed(&mut op, 1, right(&[(Some(1), 5), (Some(1), 5)])).await;
        assert_eq!(
            feed(&mut op, 0, left(&[(Some(1), "x")])).await,
            vec!["+I|1|x|1|5", "+I|1|x|1|5"]
        );
    }

    #[tokio::test]
    async fn left_outer_retracts_padding_when_a_match_arrives() {
        let mut op = JoinOperator::try_new(spec(JoinType::Left, true, false), info(0, 1)).unwrap();
        assert_eq!(
            feed(&mut op, 0, left(&[(Some(1), "x"), (None, "n")])).await,
            vec!["+I|1|x|NULL|NULL", "+I|NULL|n|NULL|NULL"]
        );
        // b = 3 fails the residual condition: still unmatched.
        assert!(feed(&mut op, 1, right(&[(Some(1), 3)])).await.is_empty());
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(1), 20)])).await,
            vec!["-D|1|x|NULL|NULL", "+I|1|x|1|20"]
        );
        // A second match only adds.
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(1), 30)])).await,
            vec!["+I|1|x|1|30"]
        );
    }

    #[tokio::test]
    async fn full_outer_pads_both_sides() {
        let mut op = JoinOperator::try_new(spec(JoinType::Full, false, false), info(0, 1)).unwrap();
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(2), 9)])).await,
            vec!["+I|NULL|NULL|2|9"]
        );
        assert_eq!(
            feed(&mut op, 0, left(&[(Some(2), "y"), (Some(3), "z")])).await,
            vec!["-D|NULL|NULL|2|9", "+I|2|y|2|9", "+I|3|z|NULL|NULL"]
        );
    }

    #[tokio::test]
    async fn semi_and_anti() {
        let mut semi =
            JoinOperator::try_new(spec(JoinType::LeftSemi, false, false), info(0, 1)).unwrap();
        assert!(feed(&mut semi, 0, left(&[(Some(1), "x")])).await.is_empty());
        assert_eq!(
            feed(&mut semi, 1, right(&[(Some(1), 1)])).await,
            vec!["+I|1|x"]
        );
        // Further matches emit nothing: the row is in the result once.
        assert!(feed(&mut semi, 1, right(&[(Some(1), 2)])).await.is_empty());
        assert_eq!(
            feed(&mut semi, 0, left(&[(Some(1), "w")])).await,
            vec!["+I|1|w"]
        );

        let mut anti =
            JoinOperator::try_new(spec(JoinType::LeftAnti, false, false), info(0, 1)).unwrap();
        assert_eq!(
            feed(&mut anti, 0, left(&[(Some(1), "x"), (None, "n")])).await,
            vec!["+I|1|x", "+I|NULL|n"]
        );
        assert_eq!(
            feed(&mut anti, 1, right(&[(Some(1), 1)])).await,
            vec!["-D|1|x"]
        );
    }

    #[tokio::test]
    async fn retractions_undo_joined_rows() {
        let mut op = JoinOperator::try_new(spec(JoinType::Left, false, true), info(0, 1)).unwrap();
        let ins = changelog::with_ops(&left(&[(Some(1), "x")]), &[RowKind::Insert]).unwrap();
        assert_eq!(feed(&mut op, 0, ins).await, vec!["+I|1|x|NULL|NULL"]);
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(1), 4)])).await,
            vec!["-D|1|x|NULL|NULL", "+I|1|x|1|4"]
        );
        let del = changelog::with_ops(&left(&[(Some(1), "x")]), &[RowKind::Delete]).unwrap();
        assert_eq!(feed(&mut op, 0, del).await, vec!["-D|1|x|1|4"]);
        assert_eq!(op.state_rows(), (0, 1));
        // A retraction of a row never seen changes nothing.
        let del = changelog::with_ops(&left(&[(Some(7), "q")]), &[RowKind::Delete]).unwrap();
        assert!(feed(&mut op, 0, del).await.is_empty());
    }

    #[tokio::test]
    async fn snapshot_restores_into_other_parallelism() {
        let mut op = JoinOperator::try_new(spec(JoinType::Left, false, false), info(0, 1)).unwrap();
        let ids: Vec<(Option<i64>, &str)> = (0..40).map(|i| (Some(i), "x")).collect();
        feed(&mut op, 0, left(&ids)).await;
        let rs: Vec<(Option<i64>, i64)> = (0..40).step_by(2).map(|i| (Some(i), i)).collect();
        feed(&mut op, 1, right(&rs)).await;
        let snap = op.snapshot(1, &mut Output::default()).await.unwrap();
        let mut restored = Vec::new();
        for index in 0..2 {
            let range = meltwater_state::KeyGroupRange::of_subtask(index, 128, 2);
            let keyed = snap
                .keyed
                .iter()
                .map(|b| range.select(b).unwrap())
                .collect();
            let mut r =
                JoinOperator::try_new(spec(JoinType::Left, false, false), info(index, 2)).unwrap();
            r.restore(RestoredState {
                keyed,
                states: vec![],
            })
            .await
            .unwrap();
            restored.push(r);
        }
        let total: (usize, usize) = restored
            .iter()
            .map(|r| r.state_rows())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!(total, (40, 20));
        // Row 1 was unmatched and row 2 matched: match counts survived the restore,
        // in whichever subtask now holds each key.
        let owner = |k: i64| {
            let g = meltwater_state::key_groups(
                &[Arc::new(Int64Array::from(vec![k])) as ArrayRef],
                1,
                128,
            )
            .unwrap()[0];
            meltwater_state::subtask_for_key_group(g, 128, 2)
        };
        let seen = feed(&mut restored[owner(1)], 1, right(&[(Some(1), 100)])).await;
        assert_eq!(
            feed(&mut restored[owner(2)], 1, right(&[(Some(2), 7)])).await,
            vec!["+I|2|x|2|7"]
        );
        assert_eq!(seen, vec!["-D|1|x|NULL|NULL", "+I|1|x|1|100"]);
    }

    #[tokio::test]
    async fn rows_expire_after_the_ttl() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let now = Arc::new(AtomicI64::new(0));
        let clock = now.clone();
        let mut spec = spec(JoinType::Inner, false, false);
        spec.ttl_ms = Some(100);
        let mut op = JoinOperator::try_new(spec, info(0, 1))
            .unwrap()
            .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        feed(&mut op, 0, left(&[(Some(1), "old")])).await;
        now.store(60, Ordering::SeqCst);
        feed(&mut op, 0, left(&[(Some(1), "new")])).await;
        now.store(130, Ordering::SeqCst);
        // "old" (written at 0) expired; "new" (at 60) did not.
        assert_eq!(
            feed(&mut op, 1, right(&[(Some(1), 5)])).await,
            vec!["+I|1|new|1|5"]
        );
        assert_eq!(op.state_rows(), (1, 1));
    }

    /// Alternating left and right batches over 40 ids (and some NULL ids): left rows
    /// `a` in a few values so rows repeat, right `b` in [0, 30) so the residual `b > 10`
    /// filters some pairs out. With `retract`, every third left batch deletes the first
    /// rows of the left batch before it (an updating left input).
    fn random_inputs(seed: u64, steps: usize, retract: bool) -> Vec<(usize, RecordBatch)> {
        let mut next = crate::aggregate::test_util::random(seed);
        let id = |next: &mut dyn FnMut(u64) -> u64| match next(15) {
            0 => None,
            _ => Some(next(40) as i64),
        };
        let names = ["p", "q", "r"];
        let mut out = Vec::new();
        let mut last_left: Option<RecordBatch> = None;
        for step in 0..steps {
            if step % 2 == 0 {
                let rows: Vec<(Option<i64>, &str)> = (0..25)
                    .map(|_| (id(&mut next), names[next(3) as usize]))
                    .collect();
                let batch = left(&rows);
                let batch = if retract {
                    changelog::with_ops(&batch, &vec![RowKind::Insert; rows.len()]).unwrap()
                } else {
                    batch
                };
                out.push((0, batch.clone()));
                if retract && step % 3 == 0 {
                    if let Some(prev) = last_left.take() {
                        let (data, _) = changelog::split_ops(&prev).unwrap();
                        let gone = data.slice(0, 10);
                        let kinds = vec![RowKind::Delete; gone.num_rows()];
                        out.push((0, changelog::with_ops(&gone, &kinds).unwrap()));
                    }
                }
                last_left = Some(batch);
            } else {
                let rows: Vec<(Option<i64>, i64)> =
                    (0..25).map(|_| (id(&mut next), next(30) as i64)).collect();
                out.push((1, right(&rows)));
            }
        }
        out
    }

    /// Feeds `inputs` to a join subtask (`index` of `parallelism`, restored from
    /// `restore` when given) kept within `budget` bytes; returns its output lines and the
    /// bytes spilled.
    async fn joined_within(
        spec: &JoinSpec,
        inputs: &[(usize, RecordBatch)],
        budget: Option<usize>,
        restore: Option<RestoredState>,
        (index, parallelism): (usize, usize),
    ) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut op = JoinOperator::try_new(spec.clone(), info(index, parallelism)).unwrap();
        if let Some(b) = budget {
            op = op.with_memory_budget(b, dir.path().join("op"));
        }
        if let Some(state) = restore {
            op.restore(state).await.unwrap();
        }
        let mut out = Vec::new();
        for (input, batch) in inputs {
            out.extend(feed(&mut op, *input, batch.clone()).await);
        }
        (out, op.counters().spilled_bytes)
    }

    #[tokio::test]
    async fn spilling_over_the_budget_gives_the_same_rows() {
        let cases = [
            (
                spec(JoinType::Full, true, false),
                random_inputs(1, 12, false),
            ),
            (
                spec(JoinType::Left, false, true),
                random_inputs(2, 12, true),
            ),
            (
                spec(JoinType::LeftAnti, true, true),
                random_inputs(3, 12, true),
            ),
            (
                spec(JoinType::Inner, false, false),
                random_inputs(4, 12, false),
            ),
        ];
        for (spec, inputs) in cases {
            let what = format!("{:?} join", spec.join_type);
            let (in_memory, none) = joined_within(&spec, &inputs, None, None, (0, 1)).await;
            assert_eq!(none, 0);
            assert!(in_memory.len() > 50, "{what}: {} rows", in_memory.len());
            // 1 byte: every key group goes to disk after every batch; 2 KiB: some do.
            for budget in [1, 2 << 10] {
                let (spilled, bytes) =
                    joined_within(&spec, &inputs, Some(budget), None, (0, 1)).await;
                assert_eq!(spilled, in_memory, "{what}, budget {budget}");
                assert!(bytes > 0, "{what}, budget {budget}: nothing spilled");
            }
        }
        // What is spilled leaves memory; the budget is kept.
        let dir = tempfile::tempdir().unwrap();
        let mut op = JoinOperator::try_new(spec(JoinType::Inner, false, false), info(0, 1))
            .unwrap()
            .with_memory_budget(2 << 10, dir.path().join("op"));
        for (input, batch) in random_inputs(5, 10, false) {
            feed(&mut op, input, batch).await;
            let memory = op.sides[LEFT].bytes + op.sides[RIGHT].bytes;
            assert!(memory <= 2 << 10, "{memory} bytes in memory");
        }
        assert!(op.spill.as_ref().is_some_and(|s| !s.is_empty()));
    }

    #[tokio::test]
    async fn spilled_rows_are_checkpointed_and_restore_at_another_parallelism() {
        let spec = spec(JoinType::Left, true, true);
        let inputs = random_inputs(6, 16, true);
        let (before, after) = inputs.split_at(inputs.len() / 2);
        let (reference, _) = joined_within(&spec, &inputs, None, None, (0, 1)).await;
        let (first_part, _) = joined_within(&spec, before, None, None, (0, 1)).await;
        let mut expected = reference[first_part.len()..].to_vec();
        expected.sort();

        // With a 1-byte budget every stored row is on disk when the checkpoint is taken.
        let dir = tempfile::tempdir().unwrap();
        let mut old = JoinOperator::try_new(spec.clone(), info(0, 1))
            .unwrap()
            .with_memory_budget(1, dir.path().join("op"));
        for (input, batch) in before {
            feed(&mut old, *input, batch.clone()).await;
        }
        assert_eq!(old.state_rows(), (0, 0));
        let snap = old.snapshot(1, &mut Output::default()).await.unwrap();
        let stored: usize = snap.keyed.iter().map(|b| b.num_rows()).sum();
        assert!(stored > 40, "{stored} rows in the checkpoint");

        // Restored into 3 subtasks, each within a budget of its own.
        let mut got = Vec::new();
        for (i, budget) in [(0, 1), (1, 1 << 10), (2, 1 << 20)] {
            let state = crate::aggregate::test_util::restored(&snap, i, 3);
            let input: Vec<(usize, RecordBatch)> = after
                .iter()
                .map(|(s, b)| (*s, crate::aggregate::test_util::route(b, 0, i, 3)))
                .collect();
            let (rows, _) = joined_within(&spec, &input, Some(budget), Some(state), (i, 3)).await;
            got.extend(rows);
        }
        got.sort();
        assert_eq!(got, expected);

        // The old subtask carries on after its checkpoint as if nothing happened.
        let mut rest = Vec::new();
        for (input, batch) in after {
            rest.extend(feed(&mut old, *input, batch.clone()).await);
        }
        assert_eq!(rest, reference[first_part.len()..]);
    }
}
