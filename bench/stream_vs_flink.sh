#!/usr/bin/env bash
# Meltwater stream mode against Apache Flink 2.3 (PyFlink, local MiniCluster), same machine,
# same run, same two jobs as stream_vs_batch.sh:
#   tumble: TUMBLE 1 min, COUNT(*) by k (k in 0..999)
#   hop:    HOP 1 min slide / 5 min size, COUNT(*), SUM(v), MAX(v) by k
# over ROWS datagen rows (id sequence, k random 0..999, v random 0..1000, ts random in the
# last hour: `fields.ts.max-past` = '1 h' in BOTH engines, Flink's datagen accepts it for
# TIMESTAMP(3) columns), event time with `WATERMARK FOR ts AS ts - INTERVAL '2' HOUR`
# (so no window closes before end of input in either engine: all ~60 (tumble) / ~64 (hop)
# windows x 1000 keys stay in state and are emitted at end of input), parallelism P,
# checkpoints every 10 s, into a `blackhole` sink in both engines. Flink runs in STREAMING
# mode (`execution.runtime-mode` = streaming) with window TVFs; its datagen gets
# `rows-per-second` = 1e12 so it never throttles.
#
#   bench/stream_vs_flink.sh [ROWS] [PARALLELISM]      (defaults 20000000, 2)
#
# Every (engine, job) runs twice: with ROWS rows and with FIXED_ROWS (1000) rows; the second
# run's wall time is the engine's fixed cost (process/JVM start-up, planning, MiniCluster,
# final checkpoint), and rows/s is printed both raw and with that fixed time subtracted.
# One line per (engine, job): rows, wall s, fixed s, rows/s, rows/s excluding fixed, max RSS
# (KiB, /usr/bin/time -f %M; for Flink also the gateway JVM's peak RSS, VmHWM, since the
# MiniCluster runs in that JVM, a child of the Python process).
#
# Flink JVM settings: defaults (no -Xmx: max heap = 1/4 of physical memory; the script prints
# the JVM's maxMemory), default state backend (hashmap, on heap), checkpoints to files in the
# temporary directory (the default JobManager storage caps state at 5 MiB, and datagen's
# sequence field keeps every not-yet-emitted id in its checkpointed state: 80 MB at 20M rows).
# Meltwater also writes its checkpoints to disk under the temporary directory.
#
# Environment: MELTWATER_BIN (default /root/.cache/meltwater/target/release/meltwater, else
# target/release/meltwater), MELTWATER_FLINK_VENV (default ~/.cache/meltwater/flink-venv,
# created with `pip install apache-flink==2.3.0` if missing), JAVA_HOME (default: the
# machine's Java 17 under /usr/lib/jvm). Never builds anything.
set -euo pipefail
ROWS=${1:-20000000}
P=${2:-2}
FIXED_ROWS=${FIXED_ROWS:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MELTWATER_BIN:-}
if [ -z "$BIN" ]; then
  for b in /root/.cache/meltwater/target/release/meltwater "${CARGO_TARGET_DIR:-$ROOT/target}/release/meltwater"; do
    [ -x "$b" ] && { BIN=$b; break; }
  done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no meltwater release binary (set MELTWATER_BIN)" >&2; exit 2; }
VENV=${MELTWATER_FLINK_VENV:-$HOME/.cache/meltwater/flink-venv}

# Java 17 for Flink.
if [ -z "${JAVA_HOME:-}" ] || ! "$JAVA_HOME/bin/java" -version 2>&1 | grep -q 'version "17'; then
  JAVA_HOME=
  for j in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk* /usr/lib/jvm/*17*; do
    if [ -x "$j/bin/java" ] && "$j/bin/java" -version 2>&1 | grep -q 'version "17'; then JAVA_HOME=$j; break; fi
  done
  [ -n "$JAVA_HOME" ] || { echo "no Java 17 found under /usr/lib/jvm (apt-get install openjdk-17-jdk-headless)" >&2; exit 2; }
fi
export JAVA_HOME
echo "# meltwater: $BIN"
echo "# java: $JAVA_HOME ($("$JAVA_HOME/bin/java" -version 2>&1 | head -1))"

# The Flink venv.
if ! "$VENV/bin/python" -c 'import pyflink' 2>/dev/null; then
  echo "# creating $VENV with apache-flink==2.3.0"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q apache-flink==2.3.0
fi
echo "# flink venv: $VENV (apache-flink $("$VENV/bin/pip" show apache-flink 2>/dev/null | sed -n 's/^Version: //p'))"
echo "# rows=$ROWS fixed_rows=$FIXED_ROWS parallelism=$P; load: $(uptime | sed 's/.*load average: //')"

WORK=$(mktemp -d)
cleanup() {
  # Kill anything of ours still running (a JVM left by a failed PyFlink run), then the files.
  if [ -n "${RUNPID:-}" ]; then kill -- "-$RUNPID" 2>/dev/null || kill "$RUNPID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

# ---- Meltwater -------------------------------------------------------------------------
. "$ROOT/bench/lib.sh"
mw_sql() { # job rows
  bench_gen_sql "$2" "$P"
  echo "CREATE TABLE bh ($(bench_window_columns $1)) WITH ('connector' = 'blackhole');"
  echo "INSERT INTO bh"
  bench_window_select $1
}

# ---- Flink (PyFlink TableEnvironment, STREAMING mode) -----------------------------------
cat > flink_job.py <<'PY'
import os, sys, time
from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

job, rows, p = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conf = Configuration()
conf.set_string("execution.runtime-mode", "streaming")
conf.set_string("parallelism.default", p)
conf.set_string("execution.checkpointing.interval", "10 s")
# Checkpoints to files (as Meltwater's): the default JobManager storage caps state at 5 MiB,
# and datagen's sequence generator keeps the not-yet-emitted ids in its state (8 B each),
# so checkpoints fail and the job restarts forever.
conf.set_string("execution.checkpointing.dir", "file://" + os.path.abspath("flink-chk"))
settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
t_env = TableEnvironment.create(settings)
# ts: Flink's datagen random timestamp, now minus up to 1 h, as Meltwater's.
t_env.execute_sql(f"""
CREATE TABLE gen (
  id BIGINT, k INT, v BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' HOUR
) WITH (
  'connector' = 'datagen', 'number-of-rows' = '{rows}', 'rows-per-second' = '1000000000000',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{rows}',
  'fields.k.min' = '0', 'fields.k.max' = '999',
  'fields.v.min' = '0', 'fields.v.max' = '1000',
  'fields.ts.max-past' = '1 h'
)""")
if job == "tumble":
    t_env.execute_sql("CREATE TABLE bh (ws TIMESTAMP(3), k INT, n BIGINT) WITH ('connector' = 'blackhole')")
    q = """INSERT INTO bh
SELECT window_start, k, COUNT(*) FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, k"""
else:
    t_env.execute_sql("CREATE TABLE bh (ws TIMESTAMP(3), k INT, n BIGINT, s BIGINT, m BIGINT) WITH ('connector' = 'blackhole')")
    q = """INSERT INTO bh
SELECT window_start, k, COUNT(*), SUM(v), MAX(v)
FROM TABLE(HOP(TABLE gen, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE))
GROUP BY window_start, window_end, k"""
t0 = time.time()
res = t_env.execute_sql(q)
client = res.get_job_client()
res.wait()  # raises if the job failed
submit_to_end = time.time() - t0
# The job result (its net runtime: from the job's start on the MiniCluster to its end, so
# without JVM/MiniCluster start-up and planning); the MiniCluster is already shut down, so
# its status cannot be asked any more: getting the result without an exception is FINISHED.
net_ms = client.get_job_execution_result().result().get_net_runtime()
status = "FINISHED"
from pyflink.java_gateway import get_gateway
maxheap = get_gateway().jvm.java.lang.Runtime.getRuntime().maxMemory()
# The MiniCluster runs in the gateway JVM, a child of this process: its peak RSS.
jvm_hwm = 0
me = str(os.getpid())
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        with open(f"/proc/{d}/stat") as f:
            ppid = f.read().rsplit(")", 1)[1].split()[1]
        if ppid != me:
            continue
        with open(f"/proc/{d}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    jvm_hwm = max(jvm_hwm, int(line.split()[1]))
    except OSError:
        pass
print(f"FLINK status={status} job_net_runtime_ms={net_ms} submit_to_end_s={submit_to_end:.2f} "
      f"jvm_max_heap_mib={maxheap // (1 << 20)} jvm_hwm_kib={jvm_hwm}")
PY

# run ENGINE JOB ROWS -> sets WALL, RSS, INFO
run() {
  local engine=$1 job=$2 rows=$3 start end
  if [ "$engine" = meltwater ]; then
    mw_sql "$job" "$rows" > "$job.sql"
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o rss.txt "$BIN" run "$job.sql" --mode stream --fresh \
      --checkpoint-dir "$WORK/chk" --job-id "mw-$job-$rows-$$" > out.txt 2>&1 &
  else
    start=$(date +%s.%N)
    setsid /usr/bin/time -f "%M" -o rss.txt "$VENV/bin/python" flink_job.py "$job" "$rows" "$P" > out.txt 2>&1 &
  fi
  RUNPID=$!
  if ! wait "$RUNPID"; then
    echo "!! $engine $job rows=$rows failed:" >&2; tail -40 out.txt >&2; exit 1
  fi
  end=$(date +%s.%N)
  # Flink runs in its own process group (setsid): end whatever of it outlived Python (the
  # gateway JVM), by that group's id.
  if [ "$engine" = flink ]; then kill -- "-$RUNPID" 2>/dev/null || true; fi
  RUNPID=
  WALL=$(echo "$end - $start" | bc -l)
  RSS=$(tail -1 rss.txt)
  if [ "$engine" = meltwater ]; then
    local read
    read=$(sed -n 's/^read  *gen (datagen): \([0-9,]*\) rows.*/\1/p' out.txt | tr -d ,)
    [ "$read" = "$rows" ] || { echo "!! meltwater $job read ${read:-?} rows, expected $rows" >&2; cat out.txt >&2; exit 1; }
    INFO="read=$read $(sed -n 's/^wrote bh (blackhole): \([0-9,]*\) rows.*/out_rows=\1/p' out.txt | tr -d ,)"
  else
    grep -q '^FLINK status=FINISHED' out.txt || { echo "!! flink $job did not finish:" >&2; tail -40 out.txt >&2; exit 1; }
    INFO=$(sed -n 's/^FLINK //p' out.txt)
  fi
  if [ "$engine" = flink ]; then
    RSS="$RSS KiB (gateway JVM VmHWM $(sed -n 's/.*jvm_hwm_kib=\([0-9]*\).*/\1/p' out.txt) KiB)"
  else
    RSS="$RSS KiB"
  fi
}

RESULTS=()
for job in tumble hop; do
  for engine in meltwater flink; do
    echo "# $engine $job: fixed-cost run ($FIXED_ROWS rows)"
    run "$engine" "$job" "$FIXED_ROWS"; FIXED=$WALL; FINFO=$INFO
    echo "#   wall=$(printf %.2f "$FIXED")s $FINFO"
    echo "# $engine $job: $ROWS rows"
    run "$engine" "$job" "$ROWS"
    echo "#   wall=$(printf %.2f "$WALL")s $INFO"
    net=$(echo "$WALL - $FIXED" | bc -l)
    if [ "$(echo "$net > 0" | bc -l)" = 1 ]; then ex=$(printf %.0f "$(echo "$ROWS / $net" | bc -l)"); else ex=n/a; fi
    line=$(printf "%-9s %-6s rows=%s wall=%.2fs fixed=%.2fs rows/s=%.0f rows/s_excl_fixed=%s maxrss=%s" \
      "$engine" "$job" "$ROWS" "$WALL" "$FIXED" "$(echo "$ROWS / $WALL" | bc -l)" "$ex" "$RSS")
    echo "$line"
    RESULTS+=("$line")
  done
done
echo "# summary (engine job rows wall fixed rows/s rows/s-excluding-fixed max-RSS):"
printf '%s\n' "${RESULTS[@]}"
