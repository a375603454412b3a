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
use crate::operator::{Operator, OperatorSnapshot, Output, RestoredState, SubtaskInfo};

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
}

/// Non-windowed `GROUP BY`; see the module docs.
pub struct UpdatingAggregateOperator {
    spec: AggregateSpec,
    info: SubtaskInfo,
    ttl_ms: Option<u64>,
    updating_input: bool,
    keys: KeyCodec,
    state_lens: Vec<usize>,
    groups: HashMap<Box<[u8]>, Group>,
    clock: Clock,
    next_ttl_check: i64,
}

impl std::fmt::Debug for UpdatingAggregateOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdatingAggregateOperator")
            .field("groups", &self.groups.len())
            .field("updating_input", &self.updating_input)
            .field("ttl_ms", &self.ttl_ms)
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
        };
        op.state_lens = state_lens(&|| op.new_accumulators())?;
        Ok(op)
    }

    /// Replaces the processing-time clock (ms since the epoch) used for the state TTL.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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

    /// Drops groups not updated for the TTL (checked at most every TTL / 2).
    fn expire(&mut self) {
        let Some(ttl) = self.ttl_ms else { return };
        let ttl = ttl.min(i64::MAX as u64) as i64;
        let now = (self.clock)();
        if now < self.next_ttl_check {
            return;
        }
        self.groups
            .retain(|_, g| now.saturating_sub(g.last_update) < ttl);
        self.next_ttl_check = now.saturating_add((ttl / 2).max(1));
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
        let now = (self.clock)();
        let key_count = self.spec.group_exprs.len();
        for batch in state.keyed {
            if batch.num_rows() == 0 {
                continue;
            }
            let counts = batch.column(0).as_primitive::<Int64Type>().clone();
            let updated = batch.column(1).as_primitive::<Int64Type>().clone();
            let keys = self.keys.encode(&batch.columns()[2..2 + key_count])?;
            let states = &batch.columns()[2 + key_count..];
            for row in 0..batch.num_rows() {
                let key: Box<[u8]> = keys.key(row).into();
                if !self.groups.contains_key(&key) {
                    let accs = self.new_accumulators()?;
                    self.groups.insert(
                        key.clone(),
                        Group {
                            accs,
                            count: 0,
                            emitted: None,
                            last_update: now,
                        },
                    );
                }
                let g = self.groups.get_mut(&key).expect("inserted above");
                merge_state_row(&mut g.accs, states, row, &self.state_lens)?;
                g.count += counts.value(row);
                g.last_update = updated.value(row).min(now);
            }
        }
        // Everything restored was emitted before the checkpoint.
        for g in self.groups.values_mut() {
            g.emitted = Some(evaluate(&mut g.accs)?);
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
        let mut local: HashMap<&[u8], usize> = HashMap::new();
        let mut touched: Vec<(&[u8], i64)> = Vec::new();
        let mut add_ids = vec![NO_GROUP; rows];
        let mut retract_ids = vec![NO_GROUP; rows];
        for row in 0..rows {
            let key = keys.key(row);
            let id = *local.entry(key).or_insert_with(|| {
                touched.push((key, 0));
                touched.len() - 1
            });
            if retracting[row] {
                retract_ids[row] = id;
                touched[id].1 -= 1;
            } else {
                add_ids[row] = id;
                touched[id].1 += 1;
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
        let mut emitted = Vec::new();
        for (id, (key, delta)) in touched.into_iter().enumerate() {
            if !self.groups.contains_key(key) {
                let accs = self.new_accumulators()?;
                self.groups.insert(
                    key.into(),
                    Group {
                        accs,
                        count: 0,
                        emitted: None,
                        last_update: now,
                    },
                );
            }
            let g = self.groups.get_mut(key).expect("inserted above");
            adds.update(id, &mut g.accs, false)?;
            if let Some(r) = &retracts {
                r.update(id, &mut g.accs, true)?;
            }
            g.count += delta;
            g.last_update = now;
            if g.count <= 0 {
                let g = self.groups.remove(key).expect("present");
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
        }
        if !emitted.is_empty() {
            out.push(self.output(emitted)?);
        }
        Ok(())
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
        if self.groups.is_empty() {
            return Ok(OperatorSnapshot::default());
        }
        let aggr_exprs = self.spec.aggr_exprs.clone();
        let sliding = self.updating_input;
        let make = || -> Result<Accumulators> {
            aggr_exprs
                .iter()
                .map(|a| {
                    if sliding {
                        a.create_sliding_accumulator()
                    } else {
                        a.create_accumulator()
                    }
                })
                .collect()
        };
        let mut keys: Vec<Box<[u8]>> = Vec::with_capacity(self.groups.len());
        let (mut counts, mut updated) = (Vec::new(), Vec::new());
        let mut states = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            keys.push(key.clone());
            counts.push(g.count);
            updated.push(g.last_update);
            states.push(checkpoint_accumulators(
                &mut g.accs,
                &make,
                &self.state_lens,
            )?);
        }
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let key_columns = self.keys.decode(&refs)?;
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
        let batch = snapshot_batch(&key_columns, self.info.key_groups, names, columns)?;
        Ok(OperatorSnapshot {
            keyed: vec![batch],
            state: serde_json::Value::Null,
        })
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        // A global aggregate has one result row even over no rows, as in batch mode; its
        // single key lives in key group 0, i.e. on subtask 0.
        if self.spec.group_exprs.is_empty() && self.info.index == 0 && self.groups.is_empty() {
            let mut accs = self.new_accumulators()?;
            let values = evaluate(&mut accs)?;
            out.push(self.output(vec![(Box::from(&[][..]), values, RowKind::Insert)])?);
        }
        Ok(())
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
        assert!(!op.groups.is_empty());
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
        assert_eq!(op.groups.len(), 1);
        assert_eq!(
            rows(&feed(&mut op, plain(&[(Some("a"), Some(1))])).await),
            ["a,1,0"]
        );
        let _ = Schema::new(Vec::<Field>::new());
    }
}
