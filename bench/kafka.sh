#!/usr/bin/env bash
# Kafka source and sink throughput against the broker's own limit, in one run on the
# loopback broker of the tests (noida-db, from the test venv):
#
#   1. plain rdkafka producer: N JSON records (~100 B) into `bench_in` (P partitions);
#   2. plain rdkafka consumer: all of them, no decoding;
#   3. Meltwater source: a batch job reading `bench_in` (bounded, JSON decoded into Arrow,
#      5 columns) into a blackhole table, at parallelism 1 and 2;
#   4. Meltwater sink: a batch job from datagen (N rows) into `bench_out` as JSON
#      (at-least-once), against (1);
#   5. the same in stream mode (checkpoints every second), at-least-once and exactly-once
#      (records kept in the checkpoint, one transaction per checkpoint).
#
#   bench/kafka.sh [N=1000000] [P=4]
#
# Env: MELTWATER_VENV (default ~/.cache/meltwater/venv). Prints records/s and ratios.
set -euo pipefail
N=${1:-1000000}
P=${2:-4}
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/meltwater/target}"
export CARGO_TARGET_DIR="$target"
venv="${MELTWATER_VENV:-$HOME/.cache/meltwater/venv}"
say() { printf '[kafka bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

say "building meltwater and the plain client (release)"
# One invocation, so both targets share the workspace's dependency features (a separate
# `-p meltwater-connectors` build would compile DataFusion again with other features).
(cd "$repo" && cargo build --release -q -p meltwater-cli -p meltwater-connectors --bin meltwater --example kafka_plain)
M="$target/release/meltwater"
PLAIN="$target/release/examples/kafka_plain"

bin="$("$venv/bin/python" -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))')"
work="$(mktemp -d)"
port=$(( 20000 + RANDOM % 20000 ))
"$bin" start --only kafka --host 127.0.0.1 --kafka-port "$port" --data-dir "$work/broker" >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
boot="127.0.0.1:$port"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
say "broker noida-db on $boot, $N records, $P partitions"
cd "$work"

secs_of() { sed -n 's/.*seconds=\([0-9.]*\).*/\1/p'; }
done_in() { sed -n 's/^done in \([0-9.]*\) s$/\1/p'; }
per_s() { python3 -c "print(round($1/$2))"; }

"$PLAIN" create "$boot" bench_in "$P" >/dev/null
"$PLAIN" create "$boot" bench_out "$P" >/dev/null

say "1. plain producer"
t_prod=$("$PLAIN" produce "$boot" bench_in "$N" 2>/dev/null | secs_of)
say "2. plain consumer"
t_cons=$("$PLAIN" consume "$boot" bench_in | secs_of)

cat > source.sql <<SQL
CREATE TABLE src (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3),
  off BIGINT METADATA FROM 'offset' VIRTUAL) WITH (
  'connector' = 'kafka', 'topic' = 'bench_in', 'properties.bootstrap.servers' = '$boot',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE sink (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3),
  off BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT * FROM src;
SQL
say "3. meltwater source, parallelism 1 and 2"
t_src1=$("$M" run source.sql --mode batch --parallelism 1 2>/dev/null | done_in)
t_src2=$("$M" run source.sql --mode batch --parallelism 2 2>/dev/null | done_in)

cat > sink.sql <<SQL
CREATE TABLE gen (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$N', 'fields.id.kind' = 'sequence',
  'fields.id.start' = '1', 'fields.id.end' = '$N', 'fields.customer.length' = '4',
  'fields.ts.max-past' = '1 h');
CREATE TABLE out (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'kafka', 'topic' = 'bench_out', 'properties.bootstrap.servers' = '$boot',
  'format' = 'json');
INSERT INTO out SELECT * FROM gen;
SQL
cat > gen_only.sql <<SQL
CREATE TABLE gen (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$N', 'fields.id.kind' = 'sequence',
  'fields.id.start' = '1', 'fields.id.end' = '$N', 'fields.customer.length' = '4',
  'fields.ts.max-past' = '1 h');
CREATE TABLE out (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'blackhole');
INSERT INTO out SELECT * FROM gen;
SQL
say "4. meltwater sink (and datagen alone, to subtract)"
t_sink=$("$M" run sink.sql --mode batch 2>/dev/null | done_in)
t_gen=$("$M" run gen_only.sql --mode batch 2>/dev/null | done_in)

stream_sink() {
    cat > "stream_$1.sql" <<SQL
SET 'execution.checkpointing.interval' = '1 s';
CREATE TABLE gen (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$N', 'fields.id.kind' = 'sequence',
  'fields.id.start' = '1', 'fields.id.end' = '$N', 'fields.customer.length' = '4',
  'fields.ts.max-past' = '1 h');
CREATE TABLE out (id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3)) WITH (
  'connector' = 'kafka', 'topic' = 'bench_out_$1', 'properties.bootstrap.servers' = '$boot',
  'format' = 'json', 'sink.delivery-guarantee' = '$2');
INSERT INTO out SELECT * FROM gen;
SQL
    "$PLAIN" create "$boot" "bench_out_$1" "$P" >/dev/null
    "$M" run "stream_$1.sql" --mode stream --parallelism 1 2>/dev/null | done_in
}
say "5. meltwater sink in stream mode, at-least-once and exactly-once"
t_alo=$(stream_sink alo at-least-once)
t_eo=$(stream_sink eo exactly-once)

printf '\n%-44s %10s %14s\n' "what ($N records, $P partitions)" "seconds" "records/s"
row() { printf '%-44s %10s %14s\n' "$1" "$2" "$(per_s "$N" "$2")"; }
row "plain rdkafka producer" "$t_prod"
row "plain rdkafka consumer (no decoding)" "$t_cons"
row "meltwater source, JSON -> Arrow, p=1" "$t_src1"
row "meltwater source, JSON -> Arrow, p=2" "$t_src2"
row "meltwater sink, Arrow -> JSON (datagen in)" "$t_sink"
row "  datagen -> blackhole alone" "$t_gen"
row "meltwater sink, stream, at-least-once" "$t_alo"
row "meltwater sink, stream, exactly-once" "$t_eo"
python3 - "$t_prod" "$t_cons" "$t_src1" "$t_src2" "$t_sink" "$t_alo" "$t_eo" <<'PY'
import sys
prod, cons, s1, s2, sink, alo, eo = map(float, sys.argv[1:])
print(f"\nsource p=1 / plain consumer: {cons / s1:.2f} of the consumer's rate")
print(f"source p=2 / plain consumer: {cons / s2:.2f}")
print(f"sink / plain producer:       {prod / sink:.2f} of the producer's rate")
print(f"stream sink at-least-once:   {prod / alo:.2f}; exactly-once: {prod / eo:.2f}")
PY
