//! The staged runtime against DataFusion's pipelined execution of the same physical
//! plans: same rows for aggregates, joins (partitioned and broadcast), sorts, limits,
//! unions and window functions; task retries; failures naming the stage and partition;
//! spilling under a memory limit.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use meltwater_batch::stage::{
    run_stages, FailTask, JobProgress, StageOptions, StageProgress, StagedPlan,
};

const ROWS: i64 = 60_000;

fn facts(partitions: usize) -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("v", DataType::Float64, false),
    ]));
    let per = ROWS / partitions as i64;
    let parts = (0..partitions as i64)
        .map(|p| {
            // Several batches per partition.
            (0..4)
                .map(|b| {
                    let ids: Vec<i64> = (0..per / 4).map(|i| p * per + b * (per / 4) + i).collect();
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from(ids.clone())),
                            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 13))),
                            Arc::new(StringArray::from_iter_values(
                                ids.iter().map(|i| format!("s{}", i % 1000)),
                            )),
                            Arc::new(Float64Array::from_iter_values(
                                ids.iter().map(|i| (*i as f64) * 0.5),
                            )),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        })
        .collect();
    MemTable::try_new(schema, parts).unwrap()
}

fn dims() -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..13)),
            Arc::new(StringArray::from_iter_values(
                (0..13).map(|k| format!("dim{k}")),
            )),
        ],
    )
    .unwrap();
    MemTable::try_new(schema, vec![vec![batch]]).unwrap()
}

fn context(memory_limit: Option<usize>) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(3)
        .with_batch_size(1024);
    config
        .options_mut()
        .optimizer
        .enable_join_dynamic_filter_pushdown = false;
    let mut rt = RuntimeEnvBuilder::new();
    if let Some(limit) = memory_limit {
        rt = rt.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        config.options_mut().optimizer.prefer_hash_join = false;
        // As the CLI does for a small budget: the merge reservation fits in it.
        config.options_mut().execution.sort_spill_reservation_bytes = limit / 16;
    }
    let ctx = SessionContext::new_with_config_rt(config, rt.build_arc().unwrap());
    ctx.register_table("facts", Arc::new(facts(3))).unwrap();
    ctx.register_table("dims", Arc::new(dims())).unwrap();
    ctx
}

async fn plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}

fn options(fail_task: Option<FailTask>, max_attempts: u32) -> StageOptions {
    StageOptions {
        max_attempts,
        concurrency: 3,
        fail_task,
    }
}

/// Rows as sorted text lines (order-insensitive comparison) unless `ordered`.
fn lines(batches: &[RecordBatch], ordered: bool) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    if !ordered {
        rows.sort();
    }
    rows
}

async fn staged(
    ctx: &SessionContext,
    sql: &str,
    dir: &Path,
    opts: &StageOptions,
) -> (
    Result<Vec<RecordBatch>, String>,
    StagedPlan,
    Arc<JobProgress>,
) {
    let staged = StagedPlan::cut(plan(ctx, sql).await, dir.to_path_buf()).unwrap();
    let progress = Arc::new(JobProgress::default());
    let out = run_stages(&staged, "query", ctx.task_ctx(), opts, &progress)
        .await
        .map_err(|e| e.to_string());
    (out, staged, progress)
}

#[tokio::test]
async fn staged_results_equal_pipelined() {
    let ctx = context(None);
    let queries: &[(&str, bool, usize)] = &[
        // (query, ordered output, minimum number of stages; the final merge stays in the
        // final stage, so a top-k or a global aggregate over one exchange-free input is
        // one stage)
        (
            "SELECT k, count(*), sum(v), min(s) FROM facts GROUP BY k",
            false,
            2,
        ),
        (
            "SELECT f.k, d.name, count(*) AS n FROM facts f JOIN dims d ON f.k = d.k \
             GROUP BY f.k, d.name",
            false,
            2,
        ),
        (
            "SELECT a.id, b.id FROM facts a JOIN facts b ON a.id = b.id + 1 \
             WHERE a.id % 1000 = 0",
            false,
            2,
        ),
        (
            "SELECT id, v FROM facts ORDER BY v DESC, id LIMIT 25",
            true,
            1,
        ),
        (
            "SELECT s, count(DISTINCT k) FROM facts GROUP BY s ORDER BY s",
            true,
            3,
        ),
        (
            "SELECT k FROM facts WHERE id < 10 UNION ALL SELECT k FROM dims",
            false,
            1,
        ),
        (
            "SELECT id, k, sum(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 2 PRECEDING \
             AND CURRENT ROW) AS w FROM facts WHERE id % 50 = 0",
            false,
            2,
        ),
        ("SELECT count(*), sum(id) FROM facts", false, 1),
        (
            "SELECT k, count(*) FROM facts WHERE k IN (SELECT k FROM dims WHERE name < 'dim5') \
             GROUP BY k",
            false,
            2,
        ),
    ];
    for (sql, ordered, min_stages) in queries {
        let dir = tempfile::tempdir().unwrap();
        let expected = collect(plan(&ctx, sql).await, ctx.task_ctx())
            .await
            .unwrap();
        let (got, staged_plan, progress) = staged(&ctx, sql, dir.path(), &options(None, 1)).await;
        let got = got.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            staged_plan.stages.len() >= *min_stages,
            "{sql}: {} stages\n{}",
            staged_plan.stages.len(),
            staged_plan.display()
        );
        assert_eq!(
            lines(&got, *ordered),
            lines(&expected, *ordered),
            "{sql}\n{}",
            staged_plan.display()
        );
        // Every stage reported its tasks done.
        for p in progress.stages() {
            assert_eq!(StageProgress::get(&p.tasks_done), p.tasks, "{sql}");
        }
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for stage in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(stage.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_failed_task_is_retried_alone_from_its_stage_inputs() {
    let ctx = context(None);
    let sql = "SELECT k, count(*) AS n, sum(id) AS s FROM facts GROUP BY k";
    let expected = collect(plan(&ctx, sql).await, ctx.task_ctx())
        .await
        .unwrap();
    // Stage 1, task 0 fails twice (after writing its first batch), then succeeds.
    let dir = tempfile::tempdir().unwrap();
    let fail = FailTask::parse("1/0x2").unwrap();
    let (got, _, progress) = staged(&ctx, sql, dir.path(), &options(Some(fail), 3)).await;
    assert_eq!(lines(&got.unwrap(), false), lines(&expected, false));
    let stages = progress.stages();
    assert_eq!(StageProgress::get(&stages[0].retries), 2);
    assert_eq!(StageProgress::get(&stages[1].retries), 0);
    // The failed attempts' files are gone; task 0's files are its third attempt's, the
    // other tasks ran once.
    let files = files_in(dir.path());
    assert!(!files.is_empty());
    for f in &files {
        if f.starts_with("t00000-") {
            assert!(f.contains("-a3-"), "{f} in {files:?}");
        } else {
            assert!(f.contains("-a1-"), "{f} in {files:?}");
        }
    }

    // A final-stage task fails once and is retried too.
    let dir = tempfile::tempdir().unwrap();
    let fail = FailTask::parse("2/1").unwrap();
    let (got, staged_plan, progress) = staged(&ctx, sql, dir.path(), &options(Some(fail), 3)).await;
    assert_eq!(staged_plan.stages.len(), 2);
    assert_eq!(lines(&got.unwrap(), false), lines(&expected, false));
    assert_eq!(StageProgress::get(&progress.stages()[1].retries), 1);
}

#[tokio::test]
async fn a_stage_out_of_attempts_fails_the_job_naming_stage_partition_and_cause() {
    let ctx = context(None);
    let sql = "SELECT k, count(*) FROM facts GROUP BY k";
    let dir = tempfile::tempdir().unwrap();
    let fail = FailTask::parse("1/2x5").unwrap();
    let (got, _, progress) = staged(&ctx, sql, dir.path(), &options(Some(fail), 2)).await;
    let err = got.unwrap_err();
    assert!(
        err.contains("stage 1, partition 2 failed after 2 attempt(s)")
            && err.contains("injected failure"),
        "{err}"
    );
    // The job stopped at stage 1.
    assert_eq!(progress.stages().len(), 1);

    // An error in the data is not retried: it would fail again.
    let sql = "SELECT CAST(concat('x', s) AS BIGINT) FROM facts";
    let dir = tempfile::tempdir().unwrap();
    let (got, _, progress) = staged(&ctx, sql, dir.path(), &options(None, 3)).await;
    let err = got.unwrap_err();
    // Shown as the error itself, without the stage: it is not the stage's doing.
    assert!(!err.contains("attempt"), "{err}");
    assert!(err.contains("Cannot cast string 'xs"), "{err}");
    assert_eq!(
        progress
            .stages()
            .iter()
            .map(|p| StageProgress::get(&p.retries))
            .sum::<u64>(),
        0
    );
}

#[tokio::test]
async fn sorts_and_aggregates_spill_under_a_memory_limit() {
    // 60,000 rows of strings and numbers (about 4 MiB in memory); a 3 MiB budget
    // shared by three tasks.
    let ctx = context(Some(3 * 1024 * 1024));
    let unbounded = context(None);
    for sql in [
        "SELECT id, s, v FROM facts ORDER BY s, v DESC",
        "SELECT id, count(*), max(s) FROM facts GROUP BY id",
    ] {
        let expected = collect(plan(&unbounded, sql).await, unbounded.task_ctx())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (got, _, progress) = staged(&ctx, sql, dir.path(), &options(None, 1)).await;
        let got = got.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let ordered = sql.contains("ORDER BY");
        assert_eq!(lines(&got, ordered), lines(&expected, ordered), "{sql}");
        let spilled: u64 = progress
            .stages()
            .iter()
            .map(|p| StageProgress::get(&p.spilled_bytes))
            .sum();
        assert!(spilled > 0, "{sql}: nothing spilled");
    }
}

#[tokio::test]
async fn every_shuffle_compression_gives_the_same_rows() {
    use meltwater_batch::shuffle::CompressionType;
    let ctx = context(None);
    let sql = "SELECT s, count(*), sum(v) FROM facts GROUP BY s";
    let expected = collect(plan(&ctx, sql).await, ctx.task_ctx())
        .await
        .unwrap();
    let mut sizes = Vec::new();
    for compression in [
        None,
        Some(CompressionType::LZ4_FRAME),
        Some(CompressionType::ZSTD),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let staged =
            StagedPlan::cut_with(plan(&ctx, sql).await, dir.path().to_path_buf(), compression)
                .unwrap();
        let progress = Arc::new(JobProgress::default());
        let got = run_stages(
            &staged,
            "query",
            ctx.task_ctx(),
            &options(None, 1),
            &progress,
        )
        .await
        .unwrap();
        assert_eq!(
            lines(&got, false),
            lines(&expected, false),
            "{compression:?}"
        );
        sizes.push(StageProgress::get(&progress.stages()[0].bytes_written));
    }
    // Compressed files are smaller than uncompressed ones.
    assert!(sizes[1] < sizes[0] && sizes[2] < sizes[0], "{sizes:?}");
}

#[tokio::test]
async fn joins_over_two_shuffles_filter_the_right_side_by_the_left_keys() {
    // Partitioned joins (never broadcast), hash and sort-merge, between 60,000 facts
    // and a few keys (one NULL): the facts that cannot match are dropped before their
    // shuffle where the join type allows it, and every join type gives DataFusion's rows.
    for sort_merge in [false, true] {
        let ctx = context(None);
        let state = ctx.state_ref();
        {
            let mut state = state.write();
            let o = &mut state.config_mut().options_mut().optimizer;
            o.hash_join_single_partition_threshold = 0;
            o.hash_join_single_partition_threshold_rows = 0;
            o.prefer_hash_join = !sort_merge;
        }
        ctx.sql(
            "CREATE TABLE few AS SELECT CAST(column1 AS BIGINT) AS key, column2 AS tag \
             FROM (VALUES (1, 'a'), (13, 'b'), (NULL, 'n'), (59999, 'z'), (70000, 'x'))",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let queries = [
            (
                "SELECT f.id, w.tag FROM few w JOIN facts f ON f.id = w.key",
                true,
            ),
            (
                "SELECT f.id, w.tag FROM few w LEFT JOIN facts f ON f.id = w.key",
                true,
            ),
            (
                "SELECT f.id, w.tag FROM few w RIGHT JOIN facts f ON f.id = w.key",
                false,
            ),
            (
                "SELECT f.id, w.tag FROM few w FULL JOIN facts f ON f.id = w.key",
                false,
            ),
            // A sort-merge semi join keeps the facts on its left: they are not filtered.
            (
                "SELECT id FROM facts WHERE id IN (SELECT key FROM few)",
                !sort_merge,
            ),
            (
                "SELECT key FROM few WHERE key NOT IN (SELECT id FROM facts)",
                false,
            ),
            (
                "SELECT key FROM few w WHERE NOT EXISTS (SELECT 1 FROM facts f WHERE f.id = w.key)",
                false,
            ),
            (
                "SELECT key FROM few w WHERE EXISTS (SELECT 1 FROM facts f WHERE f.id = w.key)",
                false,
            ),
        ];
        for (sql, selective) in queries {
            let expected = collect(plan(&ctx, sql).await, ctx.task_ctx())
                .await
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (got, staged_plan, progress) =
                staged(&ctx, sql, dir.path(), &options(None, 1)).await;
            let got = got.unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(
                lines(&got, false),
                lines(&expected, false),
                "{sql} (sort-merge: {sort_merge})\n{}",
                staged_plan.display()
            );
            let most = progress
                .stages()
                .iter()
                .map(|p| StageProgress::get(&p.rows))
                .max()
                .unwrap_or(0);
            if selective {
                assert!(
                    most < 100,
                    "{sql} (sort-merge: {sort_merge}): a stage wrote {most} rows\n{}",
                    staged_plan.display()
                );
            }
        }
    }
}

/// The statement's final merge (a top-k's merge, the coalesce under a global aggregate)
/// reads its input's partitions in the final stage, so no shuffle file is written for it;
/// a merge below a hash exchange is still cut.
#[tokio::test]
async fn the_final_merge_runs_in_the_final_stage() {
    let ctx = context(None);
    for (sql, stages) in [
        ("SELECT id, v FROM facts ORDER BY v DESC, id LIMIT 25", 1),
        ("SELECT count(*), sum(id) FROM facts", 1),
        // The ORDER BY's merge is final; the GROUP BY's hash exchange is a cut.
        (
            "SELECT k, count(*) AS n FROM facts GROUP BY k ORDER BY n DESC, k",
            2,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let expected = collect(plan(&ctx, sql).await, ctx.task_ctx())
            .await
            .unwrap();
        let (got, staged_plan, _) = staged(&ctx, sql, dir.path(), &options(None, 1)).await;
        let shown = staged_plan.display();
        assert_eq!(staged_plan.stages.len(), stages, "{sql}\n{shown}");
        assert!(!shown.contains("one partition per task"), "{sql}\n{shown}");
        let last = staged_plan.stages.last().unwrap();
        assert_eq!(last.tasks(), 1, "{sql}\n{shown}");
        assert_eq!(lines(&got.unwrap(), true), lines(&expected, true), "{sql}");
        if stages == 1 {
            assert!(files_in(dir.path()).is_empty(), "{sql}");
        }
    }
}
