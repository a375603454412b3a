//! `GROUP BY` without a window over a stream: an updating result.
//!
//! After each input batch, every group the batch touched emits what changed: `+I` the
//! first time, `-U` old / `+U` new when its value changed (nothing when unchanged), and
//! `-D` of the last emitted row when its number of accumulated rows drops to 0 (the group
//! is then dropped).
//!
//! Over an updating input (last column [`changelog::OP_COLUMN`]) `+I`/`+U` rows
//! accumulate and `-U`/`-D` rows retract. Only aggregates whose retraction is exact in
//! any order and whose checkpointed state keeps everything retraction needs are allowed
//! there: `COUNT`, `SUM`, `AVG` (not `DISTINCT`); the others fail at construction.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, Int8Type};
use datafusion::common::{internal_err, plan_err, ScalarValue};
use datafusion::error::Result;

use super::{
    checkpoint_accumulators, evaluate, merge_state_row, scalars_to_array, snapshot_batch,
    state_lens, transpose_to_columns, Accumulators, AggregateSpec, GroupedRows, KeyCodec, NO_GROUP,
};
use crate::changelog::{self, RowKind};
use crate::message::EventTime;
use crate::operator::{
    Operator, OperatorCounters, OperatorSnapshot, Output, RestoredState, SubtaskInfo,
};
use meltwater_state::KeyGroupSpill;

/// Processing time in ms since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub(crate) fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Aggregate functions that can run over an updating input.
const RETRACTABLE: [&str; 4] = ["count", "sum", "avg", "mean"];

struct Group {
    accs: Accumulators,
    /// Accumulated rows minus retracted rows.
    count: i64,
    /// The aggregate values last emitted (`None`: nothing emitted yet).
    emitted: Option<Vec<ScalarValue>>,
    /// Processing time of the last update (for the state TTL).
    last_update: i64,
    /// The memory the group takes, as last measured (kept with a memory budget only).
    size: usize,
}

/// The groups of one key group and the memory they take (measured with a budget only).
#[derive(Default)]
struct KeyGroupState {
    groups: HashMap<Box<[u8]>, Group>,
    bytes: usize,
}

/// A group's memory: its key, its accumulators and the values it last emitted, plus the
/// map entry around them.
fn group_size(key: &[u8], g: &Group) -> usize {
    key.len()
        + std::mem::size_of::<Group>()
        + 32
        + g.accs.iter().map(|a| a.size()).sum::<usize>()
        + g.emitted
            .as_ref()
            .map_or(0, |v| v.iter().map(ScalarValue::size).sum())
}

/// Whether a group last updated at `last_update` outlives a TTL check at `now`.
fn alive(now: i64, last_update: i64, ttl: i64) -> bool {
    now.saturating_sub(last_update) < ttl
}

/// Non-windowed `GROUP BY`; see the module docs.
///
/// Groups are kept by key group. With a memory budget
/// ([`UpdatingAggregateOperator::with_memory_budget`]) the key groups used least recently
/// move to local spill files whenever the groups' memory exceeds it (down to half of
/// it), in the checkpoint's row format; a batch with rows of a spilled key group first
/// loads that group back, as a restore would.
pub struct UpdatingAggregateOperator {
    spec: AggregateSpec,
    info: SubtaskInfo,
    ttl_ms: Option<u64>,
    updating_input: bool,
    keys: KeyCodec,
    state_lens: Vec<usize>,
    groups: HashMap<u16, KeyGroupState>,
    clock: Clock,
    next_ttl_check: i64,
    /// Processing time of the last TTL check: groups loaded back from spill files expire
    /// by it as the groups in memory did.
    last_ttl_check: Option<i64>,
    spill: Option<KeyGroupSpill>,
    /// The memory of all groups in memory (measured with a budget only).
    memory: usize,
}

impl std::fmt::Debug for UpdatingAggregateOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdatingAggregateOperator")
            .field("groups", &self.group_count())
            .field("updating_input", &self.updating_input)
            .field("ttl_ms", &self.ttl_ms)
            .field("memory", &self.memory)
            .finish()
    }
}

impl UpdatingAggregateOperator {
    pub fn try_new(spec: AggregateSpec, info: SubtaskInfo, ttl_ms: Option<u64>) -> Result<Self> {
        let updating_input = spec.is_updating_input();
        if updating_input {
            for a in &spec.aggr_exprs {
                let name = a.fun().name().to_lowercase();
                if a.is_distinct() || !RETRACTABLE.contains(&name.as_str()) {
                    let what = if a.is_distinct() {
                        format!("{}(DISTINCT ...)", name.to_uppercase())
                    } else {
                        name.to_uppercase()
                    };
                    return plan_err!(
                        "aggregate {what} ({}) cannot retract rows, so it cannot run over an updating input (one with updates or deletes); supported there: COUNT, SUM, AVG",
                        a.name()
                    );
                }
                a.create_sliding_accumulator()?;
            }
        }
        let keys = KeyCodec::new(spec.group_types()?)?;
        let mut op = Self {
            spec,
            info,
            ttl_ms,
            updating_input,
            keys,
            state_lens: vec![],
            groups: HashMap::new(),
            clock: Arc::new(system_clock),
            next_ttl_check: i64::MIN,
            last_ttl_check: None,
            spill: None,
            memory: 0,
        };
        op.state_lens = state_lens(&|| op.new_accumulators())?;
        Ok(op)
    }

    /// Replaces the processing-time clock (ms since the epoch) used for the state TTL.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps the groups in memory within `budget` bytes (as the accumulators report their
    /// sizes) by spilling the least recently used key groups to files under `dir`
    /// (created when needed, removed with the operator).
    pub fn with_memory_budget(mut self, budget: usize, dir: std::path::PathBuf) -> Self {
        self.spill = Some(KeyGroupSpill::new(budget, dir));
        self
    }

    /// Groups held in memory.
    fn group_count(&self) -> usize {
        self.groups.values().map(|s| s.groups.len()).sum()
    }

    fn new_accumulators(&self) -> Result<Accumulators> {
        self.spec
            .aggr_exprs
            .iter()
            .map(|a| {
                if self.updating_input {
                    a.create_sliding_accumulator()
                } else {
                    a.create_accumulator()
                }
            })
            .collect()
    }

    fn ttl(&self) -> Option<i64> {
        self.ttl_ms.map(|t| t.min(i64::MAX as u64) as i64)
    }

    /// Drops groups not updated for the TTL (checked at most every TTL / 2).
    fn expire(&mut self) {
        let Some(ttl) = self.ttl() else { return };
        let now = (self.clock)();
        if now < self.next_ttl_check {
            return;
        }
        let mut freed = 0;
        self.groups.retain(|_, state| {
            state.groups.retain(|_, g| {
                let keep = alive(now, g.last_update, ttl);
                if !keep {
                    state.bytes -= g.size;
                    freed += g.size;
                }
                keep
            });
            !state.groups.is_empty()
        });
        self.memory -= freed;
        self.last_ttl_check = Some(now);
        self.next_ttl_check = now.saturating_add((ttl / 2).max(1));
    }

    /// Creates `key`'s group in key group `kg` unless it exists: no rows, nothing
    /// emitted, updated `now`.
    fn ensure_group(&mut self, kg: u16, key: &[u8], now: i64) -> Result<()> {
        let exists = self
            .groups
            .get(&kg)
            .is_some_and(|s| s.groups.contains_key(key));
        if !exists {
            let group = Group {
                accs: self.new_accumulators()?,
                count: 0,
                emitted: None,
                last_update: now,
                size: 0,
            };
            let state = self.groups.entry(kg).or_default();
            state.groups.insert(key.into(), group);
        }
        Ok(())
    }

    /// Merges checkpoint-format rows (key-group column removed) into the groups, leaving
    /// their emitted values to [`Self::settle`]. Returns the key groups of the rows.
    fn merge_state(&mut self, batch: &RecordBatch) -> Result<Vec<u16>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let now = (self.clock)();
        let key_count = self.spec.group_exprs.len();
        let counts = batch.column(0).as_primitive::<Int64Type>().clone();
        let updated = batch.column(1).as_primitive::<Int64Type>().clone();
        let key_columns = &batch.columns()[2..2 + key_count];
        let keys = self.keys.encode(key_columns)?;
        let kgs = meltwater_state::key_groups(key_columns, batch.num_rows(), self.info.key_groups)?;
        let states = &batch.columns()[2 + key_count..];
        for (row, &kg) in kgs.iter().enumerate() {
            let key = keys.key(row);
            self.ensure_group(kg, key, now)?;
            let g = self
                .groups
                .get_mut(&kg)
                .and_then(|s| s.groups.get_mut(key))
                .expect("inserted above");
            merge_state_row(&mut g.accs, states, row, &self.state_lens)?;
            g.count += counts.value(row);
            g.last_update = updated.value(row).min(now);
            // Emitted: evaluated once all of the group's rows are merged.
            g.emitted = None;
        }
        let mut kgs = kgs;
        kgs.sort_unstable();
        kgs.dedup();
        Ok(kgs)
    }

    /// After [`Self::merge_state`] into key groups `kgs`: drops the groups the last TTL
    /// check would have dropped, marks the others as emitted (everything in a checkpoint
    /// or a spill file was emitted before) and measures them.
    fn settle(&mut self, kgs: &[u16]) -> Result<()> {
        let expired_by = self.ttl().zip(self.last_ttl_check);
        let measure = self.spill.is_some();
        for kg in kgs {
            let Some(state) = self.groups.get_mut(kg) else {
                continue;
            };
            if let Some((ttl, now)) = expired_by {
                state.groups.retain(|_, g| {
                    let keep = alive(now, g.last_update, ttl);
                    if !keep {
                        state.bytes -= g.size;
                        self.memory -= g.size;
                    }
                    keep
                });
            }
            for (key, g) in state.groups.iter_mut() {
                if g.emitted.is_none() {
                    g.emitted = Some(evaluate(&mut g.accs)?);
                }
                if measure {
                    let size = group_size(key, g);
                    state.bytes = state.bytes + size - g.size;
                    self.memory = self.memory + size - g.size;
                    g.size = size;
                }
            }
            if state.groups.is_empty() {
                self.groups.remove(kg);
            }
        }
        Ok(())
    }

    /// Loads the spilled key groups among `kgs` (the key groups of a batch's rows) back
    /// into memory, and marks `kgs` as just used.
    fn load_spilled(&mut self, kgs: &[u16]) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let mut merged = Vec::new();
        for batch in spill.load_touched(kgs)? {
            merged.extend(self.merge_state(&batch)?);
        }
        merged.sort_unstable();
        merged.dedup();
        self.settle(&merged)
    }

    /// Over the budget: moves the least recently used key groups to a spill file until
    /// half the budget is used.
    fn spill_if_over_budget(&mut self) -> Result<()> {
        let Some(spill) = self.spill.as_ref() else {
            return Ok(());
        };
        let budget = spill.budget();
        if self.memory <= budget {
            return Ok(());
        }
        let order = spill.coldest_first(self.groups.keys().copied());
        let mut parts = Vec::new();
        for kg in order {
            if self.memory <= budget / 2 {
                break;
            }
            let Some(mut state) = self.groups.remove(&kg) else {
                continue;
            };
            self.memory -= state.bytes;
            if let Some(batch) = self.state_batch(state.groups.iter_mut())? {
                parts.push((kg, batch));
            }
        }
        self.spill.as_mut().expect("checked above").write_run(parts)
    }

    /// The checkpoint rows of `groups` (with the key-group column), `None` for no group.
    /// Taking an accumulator's state may consume it, so each is rebuilt from its state.
    fn state_batch<'a>(
        &self,
        groups: impl Iterator<Item = (&'a Box<[u8]>, &'a mut Group)>,
    ) -> Result<Option<RecordBatch>> {
        let make = || self.new_accumulators();
        let mut keys: Vec<&[u8]> = Vec::new();
        let (mut counts, mut updated) = (Vec::new(), Vec::new());
        let mut states = Vec::new();
        for (key, g) in groups {
            keys.push(key.as_ref());
            counts.push(g.count);
            updated.push(g.last_update);
            states.push(checkpoint_accumulators(
                &mut g.accs,
                &make,
                &self.state_lens,
            )?);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let key_columns = self.keys.decode(&keys)?;
        let mut names = vec!["__count".to_string(), "__last_update".to_string()];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(counts)),
            Arc::new(Int64Array::from(updated)),
        ];
        for ((_, name), c) in self.spec.group_exprs.iter().zip(&key_columns) {
            names.push(name.clone());
            columns.push(c.clone());
        }
        for (a, n) in self.state_lens.iter().enumerate() {
            for f in 0..*n {
                names.push(format!("__acc{a}_{f}"));
            }
        }
        let width: usize = self.state_lens.iter().sum();
        columns.extend(transpose_to_columns(states, width)?);
        Ok(Some(snapshot_batch(
            &key_columns,
            self.info.key_groups,
            names,
            columns,
        )?))
    }

    /// An updating batch of `rows` (key, values, kind).
    fn output(&self, rows: Vec<(Box<[u8]>, Vec<ScalarValue>, RowKind)>) -> Result<RecordBatch> {
        let refs: Vec<&[u8]> = rows.iter().map(|r| r.0.as_ref()).collect();
        let mut columns = self.keys.decode(&refs)?;
        let schema = &self.spec.output_schema;
        let groups = self.spec.group_exprs.len();
        let mut per_agg: Vec<Vec<ScalarValue>> = (0..self.spec.aggr_exprs.len())
            .map(|_| Vec::new())
            .collect();
        let mut kinds = Vec::with_capacity(rows.len());
        for (_, values, kind) in rows {
            for (a, v) in values.into_iter().enumerate() {
                per_agg[a].push(v);
            }
            kinds.push(kind);
        }
        for (a, v) in per_agg.into_iter().enumerate() {
            columns.push(scalars_to_array(v, schema.field(groups + a).data_type())?);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        changelog::with_ops(&batch, &kinds)
    }
}

#[async_trait]
impl Operator for UpdatingAggregateOperator {
    fn name(&self) -> String {
        "UpdatingAggregate".to_string()
    }

    async fn restore(&mut self, state: RestoredState) -> Result<()> {
        for batch in state.keyed {
            let kgs = self.merge_state(&batch)?;
            // Everything restored was emitted before the checkpoint.
            self.settle(&kgs)?;
            self.spill_if_over_budget()?;
        }
        Ok(())
    }

    async fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        self.expire();
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch_updating = changelog::is_updating(&batch.schema());
        if batch_updating != self.updating_input {
            return internal_err!(
                "updating aggregate planned for an {} input received an {} batch",
                if self.updating_input {
                    "updating"
                } else {
                    "append-only"
                },
                if batch_updating {
                    "updating"
                } else {
                    "append-only"
                }
            );
        }
        let rows = batch.num_rows();
        // Expressions are evaluated on the batch as received (see `AggregateSpec`).
        let retracting: Vec<bool> = if self.updating_input {
            let ops = batch
                .column(batch.num_columns() - 1)
                .as_primitive::<Int8Type>();
            ops.values()
                .iter()
                .map(|v| {
                    !RowKind::from_i8(*v)
                        .unwrap_or(RowKind::Insert)
                        .is_accumulate()
                })
                .collect()
        } else {
            vec![false; rows]
        };
        let group_values = self.spec.evaluate_groups(&batch)?;
        let keys = self.keys.encode(&group_values)?;
        let kgs = meltwater_state::key_groups(&group_values, rows, self.info.key_groups)?;
        self.load_spilled(&kgs)?;
        let mut local: HashMap<&[u8], usize> = HashMap::new();
        let mut touched: Vec<(&[u8], u16, i64)> = Vec::new();
        let mut add_ids = vec![NO_GROUP; rows];
        let mut retract_ids = vec![NO_GROUP; rows];
        for row in 0..rows {
            let key = keys.key(row);
            let id = *local.entry(key).or_insert_with(|| {
                touched.push((key, kgs[row], 0));
                touched.len() - 1
            });
            if retracting[row] {
                retract_ids[row] = id;
                touched[id].2 -= 1;
            } else {
                add_ids[row] = id;
                touched[id].2 += 1;
            }
        }
        let args = self.spec.evaluate_args(&batch)?;
        let filters = self.spec.evaluate_filters(&batch)?;
        let adds = GroupedRows::new(&args, &filters, &add_ids, touched.len())?;
        let retracts = if self.updating_input {
            Some(GroupedRows::new(
                &args,
                &filters,
                &retract_ids,
                touched.len(),
            )?)
        } else {
            None
        };
        let now = (self.clock)();
        let measure = self.spill.is_some();
        let mut emitted = Vec::new();
        for (id, (key, kg, delta)) in touched.into_iter().enumerate() {
            self.ensure_group(kg, key, now)?;
            let state = self.groups.get_mut(&kg).expect("inserted above");
            let g = state.groups.get_mut(key).expect("inserted above");
            adds.update(id, &mut g.accs, false)?;
            if let Some(r) = &retracts {
                r.update(id, &mut g.accs, true)?;
            }
            g.count += delta;
            g.last_update = now;
            if g.count <= 0 {
                let g = state.groups.remove(key).expect("present");
                state.bytes -= g.size;
                self.memory -= g.size;
                if state.groups.is_empty() {
                    self.groups.remove(&kg);
                }
                if let Some(old) = g.emitted {
                    emitted.push((Box::<[u8]>::from(key), old, RowKind::Delete));
                }
                continue;
            }
            let new = evaluate(&mut g.accs)?;
            match g.emitted.replace(new.clone()) {
                None => emitted.push((key.into(), new, RowKind::Insert)),
                Some(old) if old != new => {
                    emitted.push((key.into(), old, RowKind::UpdateBefore));
                    emitted.push((key.into(), new, RowKind::UpdateAfter));
                }
                Some(_) => {}
            }
            if measure {
                let size = group_size(key, g);
                state.bytes = state.bytes + size - g.size;
                self.memory = self.memory + size - g.size;
                g.size = size;
            }
        }
        if !emitted.is_empty() {
            out.push(self.output(emitted)?);
        }
        self.spill_if_over_budget()
    }

    async fn on_watermark(&mut self, watermark: EventTime, _out: &mut Output) -> Result<EventTime> {
        self.expire();
        Ok(watermark)
    }

    async fn snapshot(
        &mut self,
        _checkpoint_id: u64,
        _out: &mut Output,
    ) -> Result<OperatorSnapshot> {
        let mut groups = std::mem::take(&mut self.groups);
        let batch = self.state_batch(groups.values_mut().flat_map(|s| s.groups.iter_mut()));
        self.groups = groups;
        let mut keyed: Vec<RecordBatch> = batch?.into_iter().collect();
        // Spilled key groups are part of the state: their rows as spilled.
        if let Some(spill) = &self.spill {
            keyed.extend(spill.snapshot()?);
        }
        Ok(OperatorSnapshot {
            keyed,
            state: serde_json::Value::Null,
        })
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        // A global aggregate has one result row even over no rows, as in batch mode; its
        // single key lives in key group 0, i.e. on subtask 0.
        let spilled = self.spill.as_ref().is_some_and(|s| !s.is_empty());
        if self.spec.group_exprs.is_empty()
            && self.info.index == 0
            && self.groups.is_empty()
            && !spilled
        {
            let mut accs = self.new_accumulators()?;
            let values = evaluate(&mut accs)?;
            out.push(self.output(vec![(Box::from(&[][..]), values, RowKind::Insert)])?);
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
    use std::sync::atomic::{AtomicI64, Ordering};

    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::aggregate::test_util::*;
    use crate::changelog::with_ops;

    async fn operator(sql: &str, index: usize, parallelism: usize) -> UpdatingAggregateOperator {
        let spec = spec_for(source_schema(), sql).await;
        UpdatingAggregateOperator::try_new(spec, info(index, parallelism), None).unwrap()
    }

    fn updating_schema() -> datafusion::arrow::datatypes::SchemaRef {
        changelog::updating_schema(&source_schema())
    }

    async fn updating_operator(sql: &str) -> Result<UpdatingAggregateOperator> {
        let spec = spec_for(updating_schema(), sql).await;
        assert!(spec.is_updating_input());
        UpdatingAggregateOperator::try_new(spec, info(0, 1), None)
    }

    fn changes(rows: &[(Option<&str>, Option<i64>)], kind: RowKind) -> RecordBatch {
        let r: Vec<_> = rows.iter().map(|(k, v)| (*k, *v, Some(0))).collect();
        with_ops(&source(&r), &vec![kind; rows.len()]).unwrap()
    }

    fn plain(rows: &[(Option<&str>, Option<i64>)]) -> RecordBatch {
        let r: Vec<_> = rows.iter().map(|(k, v)| (*k, *v, Some(0))).collect();
        source(&r)
    }

    #[tokio::test]
    async fn changelog_sequence() {
        let mut op = operator(
            "SELECT k, count(*) AS c, sum(v) AS s, max(v) AS m FROM t GROUP BY k",
            0,
            1,
        )
        .await;
        // Ops: 0 = +I, 1 = -U, 2 = +U, 3 = -D.
        let out = feed(
            &mut op,
            plain(&[(Some("a"), Some(1)), (Some("b"), Some(2)), (None, None)]),
        )
        .await;
        assert_eq!(out[0].schema().field(4).name(), changelog::OP_COLUMN);
        assert_eq!(rows(&out), ["a,1,1,1,0", "b,1,2,2,0", "null,1,null,null,0"]);
        let out = feed(
            &mut op,
            plain(&[(Some("a"), Some(3)), (Some("a"), Some(4))]),
        )
        .await;
        assert_eq!(rows(&out), ["a,1,1,1,1", "a,3,8,4,2"]);
        // A NULL key is a group of its own; NULL values leave SUM/MAX unchanged.
        let out = feed(&mut op, plain(&[(None, Some(5))])).await;
        assert_eq!(rows(&out), ["null,1,null,null,1", "null,2,5,5,2"]);

        // Unchanged results emit nothing.
        let mut op = operator("SELECT k, max(v) AS m FROM t GROUP BY k", 0, 1).await;
        feed(&mut op, plain(&[(Some("a"), Some(5))])).await;
        assert!(
            feed(&mut op, plain(&[(Some("a"), Some(3)), (Some("a"), None)]))
                .await
                .is_empty()
        );
        assert_eq!(
            rows(&feed(&mut op, plain(&[(Some("a"), Some(9))])).await),
            ["a,5,1", "a,9,2"]
        );
    }

    #[tokio::test]
    async fn retractions_update_and_delete() {
        let mut op = updating_operator(
            "SELECT k, count(*) AS c, sum(v) AS s, avg(v) AS a FROM t GROUP BY k",
        )
        .await
        .unwrap();
        let out = feed(
            &mut op,
            changes(
                &[
                    (Some("a"), Some(1)),
                    (Some("a"), Some(2)),
                    (Some("b"), Some(5)),
                ],
                RowKind::Insert,
            ),
        )
        .await;
        assert_eq!(rows(&out), ["a,2,3,1.5,0", "b,1,5,5.0,0"]);
        let out = feed(
            &mut op,
            changes(&[(Some("a"), Some(1))], RowKind::UpdateBefore),
        )
        .await;
        assert_eq!(rows(&out), ["a,2,3,1.5,1", "a,1,2,2.0,2"]);
        let out = feed(&mut op, changes(&[(Some("b"), Some(5))], RowKind::Delete)).await;
        assert_eq!(rows(&out), ["b,1,5,5.0,3"]);
        assert!(op.group_count() > 0);
        let out = feed(
            &mut op,
            changes(&[(Some("b"), Some(7))], RowKind::UpdateAfter),
        )
        .await;
        assert_eq!(rows(&out), ["b,1,7,7.0,0"]);
        // Insert and retract within one batch: nothing to say.
        let mut batch = changes(
            &[(Some("c"), Some(1)), (Some("c"), Some(1))],
            RowKind::Insert,
        );
        let ops: datafusion::arrow::array::ArrayRef =
            Arc::new(datafusion::arrow::array::Int8Array::from(vec![0, 3]));
        let mut cols = batch.columns().to_vec();
        cols[3] = ops;
        batch = RecordBatch::try_new(batch.schema(), cols).unwrap();
        assert!(feed(&mut op, batch).await.is_empty());

        // The spec of an append-only plan can be turned into one over updates.
        let spec = spec_for(source_schema(), "SELECT k, sum(v) AS s FROM t GROUP BY k")
            .await
            .with_updating_input();
        let mut op = UpdatingAggregateOperator::try_new(spec, info(0, 1), None).unwrap();
        feed(&mut op, changes(&[(Some("a"), Some(4))], RowKind::Insert)).await;
        let out = feed(&mut op, changes(&[(Some("a"), Some(4))], RowKind::Delete)).await;
        assert_eq!(rows(&out), ["a,4,3"]);
    }

    #[tokio::test]
    async fn non_retractable_aggregates_rejected_over_updates() {
        let e = updating_operator("SELECT k, count(DISTINCT v) FROM t GROUP BY k")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("COUNT(DISTINCT ...)"), "{e}");
        let e = updating_operator("SELECT k, max(v) FROM t GROUP BY k")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAX") && e.contains("updating input"), "{e}");
        let e = updating_operator("SELECT approx_distinct(v) FROM t")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("APPROX_DISTINCT"), "{e}");
    }

    #[tokio::test]
    async fn distinct_counts_and_filters() {
        let mut op = operator(
            "SELECT k, count(DISTINCT v) AS d, approx_distinct(v) AS ad, \
             count(*) FILTER (WHERE v > 1) AS f, sum(v) FILTER (WHERE v > 1) AS fs \
             FROM t GROUP BY k",
            0,
            1,
        )
        .await;
        let out = feed(
            &mut op,
            plain(&[
                (Some("a"), Some(1)),
                (Some("a"), Some(2)),
                (Some("a"), Some(2)),
                (Some("a"), None),
            ]),
        )
        .await;
        assert_eq!(rows(&out), ["a,2,2,2,4,0"]);
        // Checkpoint in between: the distinct values survive.
        let snap = snapshot(&mut op).await;
        let mut op2 = operator(
            "SELECT k, count(DISTINCT v) AS d, approx_distinct(v) AS ad, \
             count(*) FILTER (WHERE v > 1) AS f, sum(v) FILTER (WHERE v > 1) AS fs \
             FROM t GROUP BY k",
            0,
            1,
        )
        .await;
        op2.restore(restored(&snap, 0, 1)).await.unwrap();
        for o in [&mut op, &mut op2] {
            let out = feed(o, plain(&[(Some("a"), Some(1)), (Some("a"), Some(3))])).await;
            assert_eq!(rows(&out), ["a,2,2,2,4,1", "a,3,3,3,7,2"]);
        }
    }

    #[tokio::test]
    async fn global_aggregate_over_no_rows() {
        let sql = "SELECT count(*) AS c, sum(v) AS s, count(DISTINCT v) AS d FROM t";
        let mut op = operator(sql, 0, 2).await;
        let mut out = Output::default();
        op.finish(&mut out).await.unwrap();
        assert_eq!(rows(&out.take()), ["0,null,0,0"]);
        // Other subtasks never hold the global key.
        let mut op = operator(sql, 1, 2).await;
        op.finish(&mut out).await.unwrap();
        assert!(out.take().is_empty());
        // With rows: the usual single group, nothing extra at the end.
        let mut op = operator(sql, 0, 2).await;
        assert_eq!(
            rows(&feed(&mut op, plain(&[(None, Some(4))])).await),
            ["1,4,1,0"]
        );
        op.finish(&mut out).await.unwrap();
        assert!(out.take().is_empty());
        // Restored state counts as having seen rows.
        let snap = snapshot(&mut op).await;
        let mut op = operator(sql, 0, 1).await;
        op.restore(restored(&snap, 0, 1)).await.unwrap();
        op.finish(&mut out).await.unwrap();
        assert!(out.take().is_empty());
    }

    #[tokio::test]
    async fn snapshot_restores_into_two_subtasks() {
        let sql = "SELECT k, count(*) AS c, sum(v) AS s, count(DISTINCT v) AS d FROM t GROUP BY k";
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let first = plain(
            &keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Some(*k), Some(i as i64)))
                .collect::<Vec<_>>(),
        );
        let second = plain(
            &keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Some(*k), Some(100 + i as i64)))
                .chain([(Some("new"), Some(1))])
                .collect::<Vec<_>>(),
        );
        let mut reference = operator(sql, 0, 1).await;
        feed(&mut reference, first.clone()).await;
        let mut expected = rows(&feed(&mut reference, second.clone()).await);
        expected.sort();

        let mut old = operator(sql, 0, 1).await;
        feed(&mut old, first).await;
        let snap = snapshot(&mut old).await;
        let mut got = Vec::new();
        for i in 0..2 {
            let mut op = operator(sql, i, 2).await;
            let state = restored(&snap, i, 2);
            assert!(state.keyed[0].num_rows() > 0 && state.keyed[0].num_rows() < keys.len());
            op.restore(state).await.unwrap();
            got.extend(rows(&feed(&mut op, route(&second, 0, i, 2)).await));
        }
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 21);
    }

    #[tokio::test]
    async fn idle_groups_expire_after_ttl() {
        let now = Arc::new(AtomicI64::new(0));
        let clock = now.clone();
        let spec = spec_for(source_schema(), "SELECT k, count(*) AS c FROM t GROUP BY k").await;
        let mut op = UpdatingAggregateOperator::try_new(spec, info(0, 1), Some(100))
            .unwrap()
            .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        feed(
            &mut op,
            plain(&[(Some("a"), Some(1)), (Some("b"), Some(1))]),
        )
        .await;
        now.store(60, Ordering::SeqCst);
        assert_eq!(
            rows(&feed(&mut op, plain(&[(Some("b"), Some(1))])).await),
            ["b,1,1", "b,2,2"]
        );
        now.store(150, Ordering::SeqCst);
        watermark(&mut op, 0).await;
        // a (last updated at 0) expired; b (at 60) did not.
        assert_eq!(op.group_count(), 1);
        assert_eq!(
            rows(&feed(&mut op, plain(&[(Some("a"), Some(1))])).await),
            ["a,1,0"]
        );
        let _ = Schema::new(Vec::<Field>::new());
    }

    /// Feeds `batches` to a subtask (`index` of `parallelism`, restored from `restore`
    /// when given) kept within `budget` bytes, then ends the input; returns the changelog
    /// rows and the bytes spilled.
    async fn changelog_within(
        sql: &str,
        batches: &[RecordBatch],
        budget: Option<usize>,
        restore: Option<RestoredState>,
        (index, parallelism): (usize, usize),
    ) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_for(source_schema(), sql).await;
        let spec = if batches
            .first()
            .is_some_and(|b| changelog::is_updating(&b.schema()))
        {
            spec.with_updating_input()
        } else {
            spec
        };
        let mut op =
            UpdatingAggregateOperator::try_new(spec, info(index, parallelism), None).unwrap();
        if let Some(b) = budget {
            op = op.with_memory_budget(b, dir.path().join("op"));
        }
        if let Some(state) = restore {
            op.restore(state).await.unwrap();
        }
        let mut out = Vec::new();
        for b in batches {
            out.extend(rows(&feed(&mut op, b.clone()).await));
        }
        let mut end = Output::default();
        op.finish(&mut end).await.unwrap();
        out.extend(rows(&end.take()));
        (out, op.counters().spilled_bytes)
    }

    /// [`random_batches`] as a changelog: each batch inserted, and from the third on,
    /// the batch two before deleted again (its groups shrink, some to nothing).
    fn random_changelog(seed: u64) -> Vec<RecordBatch> {
        let plain = random_batches(seed, 6, 200, 60);
        let mut out = Vec::new();
        for (b, batch) in plain.iter().enumerate() {
            out.push(with_ops(batch, &vec![RowKind::Insert; batch.num_rows()]).unwrap());
            if b >= 2 {
                let old = &plain[b - 2];
                out.push(with_ops(old, &vec![RowKind::Delete; old.num_rows()]).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn spilling_over_the_budget_gives_the_same_changelog() {
        let cases = [
            (
                "SELECT k, count(*) AS c, sum(v) AS s, max(v) AS m, count(DISTINCT v) AS d, \
                 approx_distinct(v) AS ad FROM t GROUP BY k",
                random_batches(3, 8, 300, 120),
            ),
            // One global group (key group 0).
            (
                "SELECT count(*) AS c, sum(v) AS s, min(v) AS m FROM t",
                random_batches(4, 5, 100, 10),
            ),
            // An updating input: rows inserted, then retracted.
            (
                "SELECT k, count(*) AS c, sum(v) AS s, avg(v) AS a FROM t GROUP BY k",
                random_changelog(5),
            ),
        ];
        for (sql, batches) in cases {
            let (in_memory, none) = changelog_within(sql, &batches, None, None, (0, 1)).await;
            assert_eq!(none, 0);
            assert!(in_memory.len() > batches.len(), "{sql}");
            // 1 byte: every key group goes to disk after every batch; 4 KiB: some do.
            for budget in [1, 4 << 10] {
                let (spilled, bytes) =
                    changelog_within(sql, &batches, Some(budget), None, (0, 1)).await;
                assert_eq!(spilled, in_memory, "{sql}, budget {budget}");
                // (A single global group stays under 4 KiB.)
                assert!(
                    bytes > 0 || budget > 1,
                    "{sql}, budget {budget}: nothing spilled"
                );
            }
        }
        // What is spilled leaves memory; the budget is kept.
        let dir = tempfile::tempdir().unwrap();
        let mut op = operator("SELECT k, count(*) AS c FROM t GROUP BY k", 0, 1)
            .await
            .with_memory_budget(8 << 10, dir.path().join("op"));
        for batch in random_batches(6, 4, 500, 400) {
            feed(&mut op, batch).await;
            assert!(op.memory <= 8 << 10, "{} bytes in memory", op.memory);
            assert!(op.group_count() > 0);
        }
        assert!(op.spill.as_ref().is_some_and(|s| !s.is_empty()));
    }

    #[tokio::test]
    async fn spilled_groups_are_checkpointed_and_restore_at_another_parallelism() {
        let sql = "SELECT k, count(*) AS c, sum(v) AS s, count(DISTINCT v) AS d FROM t GROUP BY k";
        let batches = random_batches(8, 6, 300, 80);
        let (before, after) = batches.split_at(3);
        // Without a budget, in one subtask: the changelog after the checkpoint.
        let (reference, _) = changelog_within(sql, &batches, None, None, (0, 1)).await;
        let (first_part, _) = changelog_within(sql, before, None, None, (0, 1)).await;
        let mut expected = reference[first_part.len()..].to_vec();
        expected.sort();

        // With a 1-byte budget every group is on disk when the checkpoint is taken.
        let dir = tempfile::tempdir().unwrap();
        let mut old = operator(sql, 0, 1)
            .await
            .with_memory_budget(1, dir.path().join("op"));
        for b in before {
            feed(&mut old, b.clone()).await;
        }
        assert_eq!(old.group_count(), 0);
        let snap = snapshot(&mut old).await;
        let groups: usize = snap.keyed.iter().map(|b| b.num_rows()).sum();
        assert!(groups > 40, "{groups} groups in the checkpoint");

        // Restored into 2 subtasks (one spilling everything, one within 2 KiB).
        let mut got = Vec::new();
        for (i, budget) in [(0, 1), (1, 2 << 10)] {
            let input: Vec<RecordBatch> = after.iter().map(|b| route(b, 0, i, 2)).collect();
            let (rows, bytes) = changelog_within(
                sql,
                &input,
                Some(budget),
                Some(restored(&snap, i, 2)),
                (i, 2),
            )
            .await;
            assert!(bytes > 0);
            got.extend(rows);
        }
        got.sort();
        assert_eq!(got, expected);

        // The old subtask carries on after its checkpoint as if nothing happened.
        let mut rest = Vec::new();
        for b in after {
            rest.extend(rows(&feed(&mut old, b.clone()).await));
        }
        assert_eq!(rest, reference[first_part.len()..]);
    }
}
