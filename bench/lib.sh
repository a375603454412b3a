# Shared by the bench scripts (source it): the datagen source and the window queries every
# throughput benchmark runs, so all engines and modes read the same job.

# The job header: parallelism $2, 10 s checkpoints, and `gen`, $1 datagen rows (id
# sequence, k in 0..999, v in 0..1000, ts random in the last hour, watermark 2 h behind).
bench_gen_sql() {
  cat <<SQL
SET 'parallelism.default' = '$2';
SET 'execution.checkpointing.interval' = '10 s';
CREATE TABLE gen (
  id BIGINT, k INT, v BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' HOUR
) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$1', 'seed' = '1',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '$1',
  'fields.k.min' = '0', 'fields.k.max' = '999',
  'fields.v.min' = '0', 'fields.v.max' = '1000',
  'fields.ts.max-past' = '1 h'
);
SQL
}

# The output columns of job $1 (tumble | hop), for the sink table's DDL.
bench_window_columns() {
  case $1 in
    tumble) echo "ws TIMESTAMP(6), k INT, n BIGINT" ;;
    hop) echo "ws TIMESTAMP(6), k INT, n BIGINT, s BIGINT, m BIGINT" ;;
  esac
}

# The query of job $1: tumble (1 min COUNT by k) or hop (1 min slide, 5 min size,
# COUNT, SUM, MAX by k).
bench_window_select() {
  case $1 in
    tumble) cat <<SQL
SELECT window_start, k, COUNT(*) FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, k;
SQL
    ;;
    hop) cat <<SQL
SELECT window_start, k, COUNT(*), SUM(v), MAX(v)
FROM TABLE(HOP(TABLE gen, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE))
GROUP BY window_start, window_end, k;
SQL
    ;;
  esac
}
