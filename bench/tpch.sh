#!/usr/bin/env bash
# TPC-H Q1, Q3, Q5, Q9 and Q18 on the staged batch runtime, side by side with the same
# binary's --pipelined executor, a staged run under a memory limit, DataFusion (Python)
# and Spark local[2], all over the same Parquet files, in one run.
#
#   bench/tpch.sh
#
# Environment (all optional):
#   SF=1                 scale factor (fractional works: SF=0.5)
#   RUNS=3               timed runs per engine per query
#   STAT=median          median or best of the runs
#   QUERIES="q1 q3 q5 q9 q18"                               jobs under bench/tpch/
#   ENGINES="staged pipelined memlimit datafusion spark"
#   MEMORY_LIMIT=bytes   for memlimit (default: a tenth of the Parquet data's size)
#   VERIFY="staged pipelined memlimit"   Meltwater executors checked once more with a
#                        print sink (rows and a column checksum against DataFusion's)
#   TIMEOUT=1800         seconds before a run is stopped (counted as failed)
#   QUIET_WAIT=60        seconds to wait before a run for other work on the machine to
#                        stop (it skews the times on 2 cores)
#   DISTURBED=0.3        a run during which other processes used more cores than this
#                        on average is run again (at most twice)
#   RESULTS=DIR          where logs and tables go (default: a new /tmp/meltwater-tpch.*)
#   MELTWATER_BIN        the binary (default: $CARGO_TARGET_DIR or target/, release)
#   JAVA_HOME            Java 17 for Spark (default: the machine's java-17)
#
# Data: tpchgen-cli (the PyPI wheel, else `cargo install`) writes each table as 4 Parquet
# files under ~/.cache/meltwater/tpch/sf<SF>/<table>/, once. Each Python peer has its own
# venv under ~/.cache/meltwater/ (their pins clash). Times are wall seconds of the whole
# command (process start-up, planning, reading, the query, exit); the peers' in-process
# query times are printed too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MELTWATER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/meltwater}
CACHE=${MELTWATER_CACHE:-$HOME/.cache/meltwater}
SF=${SF:-1}
RUNS=${RUNS:-3}
STAT=${STAT:-median}
QUERIES=${QUERIES:-q1 q3 q5 q9 q18}
ENGINES=${ENGINES:-staged pipelined memlimit datafusion spark}
VERIFY=${VERIFY:-staged pipelined memlimit}
TIMEOUT=${TIMEOUT:-1800}
PEER="$ROOT/bench/tpch/peer.py"
has() { [[ " $ENGINES " == *" $1 "* ]]; }
say() { echo "tpch: $*" >&2; }

[ -x "$BIN" ] || { echo "build first: cargo build --release -p meltwater-cli (or set MELTWATER_BIN)" >&2; exit 2; }
case $STAT in median | best) ;; *) echo "STAT must be median or best" >&2; exit 2 ;; esac

# --- tools and data -------------------------------------------------------------------

# The python of venv $CACHE/$1-venv, with packages $3... installed unless it already
# imports module $2.
venv() {
  local dir=$CACHE/$1-venv module=$2
  shift 2
  if ! "$dir/bin/python" -c "import $module" 2>/dev/null; then
    say "installing $* into $dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "$@" >&2
  fi
  echo "$dir/bin/python"
}

tpchgen() {
  if [ -x "$CACHE/tpchgen-venv/bin/tpchgen-cli" ]; then
    echo "$CACHE/tpchgen-venv/bin/tpchgen-cli"
    return
  fi
  if [ -x "$CACHE/tools/bin/tpchgen-cli" ]; then
    echo "$CACHE/tools/bin/tpchgen-cli"
    return
  fi
  say "installing tpchgen-cli into $CACHE/tpchgen-venv"
  if python3 -m venv "$CACHE/tpchgen-venv" && "$CACHE/tpchgen-venv/bin/pip" install -q tpchgen-cli >&2; then
    echo "$CACHE/tpchgen-venv/bin/tpchgen-cli"
  else
    say "no tpchgen-cli wheel; building it (cargo install tpchgen-cli)"
    cargo install -q tpchgen-cli --root "$CACHE/tools" >&2
    echo "$CACHE/tools/bin/tpchgen-cli"
  fi
}

DATA=$CACHE/tpch/sf$SF
if [ ! -d "$DATA" ]; then
  gen=$(tpchgen)
  say "generating TPC-H SF$SF as Parquet into $DATA"
  mkdir -p "$CACHE/tpch"
  rm -rf "$DATA.tmp"
  "$gen" parquet --scale-factor "$SF" --parts 4 --output-dir "$DATA.tmp" --no-progress >&2
  mv "$DATA.tmp" "$DATA"
fi
DATA_BYTES=$(find "$DATA" -name '*.parquet' -printf '%s\n' | awk '{s += $1} END {print s}')
MEMORY_LIMIT=${MEMORY_LIMIT:-$((DATA_BYTES / 10))}

if has datafusion; then DF_PY=$(venv datafusion datafusion datafusion); fi
if has spark; then
  SPARK_PY=$(venv spark pyspark pyspark)
  if [ -z "${JAVA_HOME:-}" ]; then
    for j in /usr/lib/jvm/java-17-openjdk-*; do [ -d "$j" ] && JAVA_HOME=$j; done
  fi
  [ -n "${JAVA_HOME:-}" ] || { echo "set JAVA_HOME to a Java 17" >&2; exit 2; }
  export JAVA_HOME
fi

RESULTS=${RESULTS:-$(mktemp -d /tmp/meltwater-tpch.XXXXXX)}
mkdir -p "$RESULTS/logs" "$RESULTS/work"
: > "$RESULTS/times.tsv"
: > "$RESULTS/inproc.tsv"
: > "$RESULTS/spill.tsv"
: > "$RESULTS/verify.tsv"
: > "$RESULTS/errors.tsv"
printf 'sf\t%s\nruns\t%s\nstat\t%s\nqueries\t%s\nengines\t%s\ndata_bytes\t%s\nmemory_limit\t%s\n' \
  "$SF" "$RUNS" "$STAT" "$QUERIES" "$ENGINES" "$DATA_BYTES" "$MEMORY_LIMIT" > "$RESULTS/meta.tsv"
say "SF$SF at $DATA ($DATA_BYTES bytes of Parquet), $RUNS runs each, memory limit $MEMORY_LIMIT bytes; logs in $RESULTS"

# --- runs -----------------------------------------------------------------------------

# The command of engine $1 on job $2 with a $3 sink (Meltwater) as words.
command_of() {
  local engine=$1 job=$2 sink=$3
  local mw=("$BIN" run "$job" --mode batch --param "data=$DATA" --param "sink=$sink")
  case $engine in
    staged) CMD=("${mw[@]}") ;;
    pipelined) CMD=("${mw[@]}" --pipelined) ;;
    memlimit) CMD=("${mw[@]}" --memory-limit "$MEMORY_LIMIT") ;;
    datafusion) CMD=("$DF_PY" "$PEER" datafusion "$DATA" "$job") ;;
    spark) CMD=("$SPARK_PY" "$PEER" spark "$DATA" "$job") ;;
  esac
}

# Busy CPU seconds of the whole machine so far (from /proc/stat, USER_HZ = 100), steal
# included: the hypervisor running something else also skews the times.
busy() { awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat; }

# Waits (up to QUIET_WAIT seconds) until the rest of the machine uses under 0.2 cores over a
# second: another build or test run on this 2-core machine would skew the times.
QUIET_WAIT=${QUIET_WAIT:-60}
wait_quiet() {
  local waited=0 b0 used
  while :; do
    b0=$(busy)
    sleep 1
    used=$(echo "$(busy) - $b0" | bc -l)
    if (($(echo "$used < 0.2" | bc -l))) || [ "$waited" -ge "$QUIET_WAIT" ]; then
      if [ "$waited" -gt 0 ]; then
        say "waited ${waited} s for other work on the machine to stop (now $(printf '%.2f' "$used") cores busy)"
      fi
      return 0
    fi
    waited=$((waited + 1))
    [ $((waited % 30)) = 0 ] && say "other work on the machine uses ${used} cores; waiting for it (${waited} s of at most ${QUIET_WAIT} s)"
  done
}

# A field of the JSON line peer.py prints.
field() { sed -n "s/.*\"$2\": \"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$1"; }

# Runs CMD with its output in $1.out/.err; sets SECS (wall), CPU (its user + system
# seconds, Spark's JVM included), RSS (max KiB of the process `time` waits for), OTHER (CPU
# seconds the rest of the machine used or the hypervisor stole meanwhile) and STATUS (ok |
# exit N | timeout).
run_logged() {
  local log=$1 start end b0 rc=0 jvm
  wait_quiet
  b0=$(busy)
  start=$(date +%s.%N)
  (cd "$RESULTS/work" && timeout "$TIMEOUT" /usr/bin/time -f "%M %U %S" -o "$log.time" "${CMD[@]}") \
    >"$log.out" 2>"$log.err" || rc=$?
  end=$(date +%s.%N)
  SECS=$(echo "$end - $start" | bc -l)
  RSS="" CPU=""
  read -r RSS CPU < <(tail -1 "$log.time" 2>/dev/null | awk 'NF == 3 {print $1, $2 + $3}') || true
  jvm=$(field "$(grep '^{"rows"' "$log.out" | tail -1)" jvm_cpu)
  [ -n "$jvm" ] && CPU=$(echo "${CPU:-0} + $jvm" | bc -l)
  OTHER=$(echo "$(busy) - $b0 - ${CPU:-0}" | bc -l)
  case $rc in 0) STATUS=ok ;; 124) STATUS=timeout ;; *) STATUS="exit $rc" ;; esac
}

# A run disturbed by other work (over DISTURBED cores on average) is run again, at most
# twice.
DISTURBED=${DISTURBED:-0.3}
run_undisturbed() {
  local log=$1 again
  for again in 0 1 2; do
    run_logged "$log"
    if (($(echo "$OTHER / $SECS <= $DISTURBED" | bc -l))) || [ "$again" = 2 ]; then
      return
    fi
    say "run disturbed by other work ($(printf '%.2f' "$(echo "$OTHER / $SECS" | bc -l)") cores besides it); again"
  done
}

# The line that says why a run failed: Meltwater's `error: ...`, else the last line of stderr.
why() {
  { grep -m1 '^error: ' "$1.err" || grep -v '^\s*$' "$1.err" | tail -1 || true; } | cut -c1-2000
}

for q in $QUERIES; do
  job=$ROOT/bench/tpch/$q.sql
  for engine in $ENGINES; do
    command_of "$engine" "$job" blackhole
    for run in $(seq 1 "$RUNS"); do
      log=$RESULTS/logs/$q-$engine-$run
      run_undisturbed "$log"
      extra=""
      case $engine in
        datafusion | spark)
          if [ "$STATUS" = ok ]; then
            line=$(grep '^{"rows"' "$log.out" | tail -1)
            rows=$(field "$line" rows)
            inproc=$(field "$line" seconds)
            printf '%s\t%s\t%s\t%s\t%s\n' "$q" "$engine" "$run" "$inproc" "$(field "$line" setup)" >> "$RESULTS/inproc.tsv"
            [ "$run" = "$RUNS" ] && printf '%s\t%s\t%s\t%s\n' "$q" "$engine" "$rows" "$(field "$line" checksum)" >> "$RESULTS/verify.tsv"
            extra=" ($rows rows; the query alone ${inproc} s, set-up $(field "$line" setup) s)"
          fi
          ;;
        *)
          rows=$(sed -n 's/^insert result: \([0-9,]*\) rows\{0,1\} in .*/\1/p' "$log.out")
          extra=" (${rows:-?} rows)"
          if [ "$engine" = memlimit ] && [ "$STATUS" = ok ]; then
            spilled=$(sed -n 's/^spilled \(.*\) to disk over the memory limit$/\1/p' "$log.out")
            printf '%s\t%s\t%s\n' "$q" "$run" "${spilled:-0 B}" >> "$RESULTS/spill.tsv"
            extra="$extra, spilled ${spilled:-0 B}"
          fi
          # The stage table of the last run, for the report.
          [ "$STATUS" = ok ] && sed -n '/^ *stage  *statement/,/^read /p' "$log.out" | sed '$d' > "$RESULTS/stages-$q-$engine.txt"
          ;;
      esac
      printf '%s\t%s\t%s\t%.3f\t%s\t%s\t%s\t%.2f\n' "$q" "$engine" "$run" "$SECS" "${RSS:-}" "$STATUS" "${CPU:-}" "$OTHER" >> "$RESULTS/times.tsv"
      if [ "$STATUS" = ok ]; then
        say "$q $engine run $run/$RUNS: $(printf '%.2f' "$SECS") s$extra"
      else
        msg=$(why "$log")
        say "$q $engine run $run/$RUNS FAILED ($STATUS after $(printf '%.1f' "$SECS") s): $msg"
        printf '%s\t%s\t%s\n' "$q" "$engine" "$STATUS: $msg" >> "$RESULTS/errors.tsv"
        break # the other runs would fail the same way
      fi
    done
  done

  # Meltwater's rows, once per executor, through a print sink: count and checksum.
  for engine in $VERIFY; do
    has "$engine" || continue
    command_of "$engine" "$job" print
    log=$RESULTS/logs/$q-$engine-verify
    run_logged "$log"
    if [ "$STATUS" = ok ]; then
      result=$(python3 "$PEER" print-result "$job" < "$log.out")
      rows=$(field "$result" rows)
      checksum=$(field "$result" checksum)
      printf '%s\t%s\t%s\t%s\n' "$q" "$engine" "$rows" "$checksum" >> "$RESULTS/verify.tsv"
      say "$q $engine verify: $rows rows, checksum $checksum"
    else
      msg=$(why "$log")
      say "$q $engine verify FAILED ($STATUS): $msg"
      grep -q "^$q	$engine	" "$RESULTS/errors.tsv" ||
        printf '%s\t%s\t%s\n' "$q" "$engine" "$STATUS (print-sink run): $msg" >> "$RESULTS/errors.tsv"
    fi
  done
done

rm -rf "$RESULTS/work/meltwater-data"
python3 "$PEER" report "$RESULTS" | tee "$RESULTS/report.txt"
