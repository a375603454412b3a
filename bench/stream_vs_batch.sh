#!/usr/bin/env bash
# Throughput of the same job in stream mode and in batch mode over the same datagen rows:
# a TUMBLE count and a HOP aggregation, each into an Iceberg table; and the checkpoint of
# an updating aggregate over 1M keys (size and duration).
#
#   bench/stream_vs_batch.sh [ROWS] [PARALLELISM]
#
# Uses the release binary (cargo build --release -p meltwater-cli). Prints one line per
# run: mode, job, rows, wall seconds, rows/s, rows/s per core, max RSS.
set -euo pipefail
ROWS=${1:-5000000}
P=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MELTWATER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/meltwater}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p meltwater-cli" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

. "$ROOT/bench/lib.sh"
for job in tumble hop; do
  {
    bench_gen_sql "$ROWS" "$P"
    echo "CREATE TABLE IF NOT EXISTS lake.bench.${job}_\${mode} ($(bench_window_columns $job));"
    echo "INSERT INTO lake.bench.${job}_\${mode}"
    bench_window_select $job
  } > $job.sql
done

cores=$P
for job in tumble hop; do
  for mode in batch stream; do
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o rss.txt "$BIN" run $job.sql --mode $mode --param mode=$mode --job-id "bench-$job-$mode-$$" >/dev/null
    end=$(date +%s.%N)
    secs=$(echo "$end - $start" | bc -l)
    printf "%-6s %-6s rows=%s wall=%.2fs rows/s=%.0f rows/s/core=%.0f maxrss=%s KiB\n" \
      "$mode" "$job" "$ROWS" "$secs" "$(echo "$ROWS / $secs" | bc -l)" "$(echo "$ROWS / $secs / $cores" | bc -l)" "$(cat rss.txt)"
  done
done

# Checkpoint size and duration for 1M keys: an updating aggregate held in state.
KEYS=1000000
cat > keys.sql <<SQL
SET 'parallelism.default' = '$P';
SET 'execution.checkpointing.interval' = '2 s';
CREATE TABLE keys (id BIGINT, v BIGINT) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$KEYS', 'rows-per-second' = '400000',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '$KEYS',
  'fields.v.min' = '0', 'fields.v.max' = '100'
);
CREATE TABLE IF NOT EXISTS lake.bench.keys (id BIGINT, n BIGINT, s BIGINT, ws TIMESTAMP(6));
INSERT INTO lake.bench.keys
SELECT id, COUNT(*), SUM(v), window_start FROM TABLE(TUMBLE(TABLE keys, DESCRIPTOR(t), INTERVAL '1' DAY))
GROUP BY window_start, window_end, id;
SQL
# keys has no time column: use the processing of a window over a constant time instead.
sed -i "s/CREATE TABLE keys (id BIGINT, v BIGINT)/CREATE TABLE keys (id BIGINT, v BIGINT, t TIMESTAMP(3))/; s/'fields.v.max' = '100'/'fields.v.max' = '100', 'fields.t.max-past' = '1 s'/" keys.sql
"$BIN" run keys.sql --mode stream --job-id bench-keys-$$ >/dev/null
"$BIN" checkpoints keys.sql --job-id bench-keys-$$
