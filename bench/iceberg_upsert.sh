#!/usr/bin/env bash
# Iceberg upserts and reads with equality deletes, Meltwater against pyiceberg (upsert) and
# DuckDB (scan), same machine, same run:
#
#   1. load:    ROWS rows (id 1..ROWS, v random) into lake.bench.t, PRIMARY KEY (id),
#               'write.upsert' = 'true', batch mode, then `maintain compact` (the load's own
#               equality deletes match nothing; compaction drops them). Setup, not compared.
#   2. upsert:  UPS rows (ids ROWS/2+1 .. ROWS/2+UPS, new v) into the same table: one row
#               delta of UPS data rows + UPS equality deletes (UPS/ROWS of the rows deleted).
#   3. scan:    SELECT COUNT(*), SUM(v) over the table with those deletes, by Meltwater
#               (batch job into a print table) and by DuckDB (iceberg_scan, same metadata).
#   4. compact, then the same scan again by both. The read cost of the equality deletes is
#      scan(with deletes) / scan(compacted), reported for the aggregate (which must read
#      the key column only to apply the deletes) and for a full scan, SELECT * into a
#      blackhole table (the issue's target: at most 1.5).
#   5. pyiceberg: the same ROWS-row table written by pyiceberg (its own SQLite catalog), then
#      `Table.upsert(df, join_cols=["id"])` with the same UPS rows, then a full scan.
#
#   bench/iceberg_upsert.sh [ROWS] [UPS] [PARALLELISM]   (defaults 10000000, 1000000, 2)
#
# Each timed step prints one line: step, engine, seconds, and rows/s where it applies; the
# summary gives Meltwater/peer ratios. Row counts and sums are checked to agree between
# engines (a mismatch fails the script). Meltwater's times are the CLI's wall times
# (process start, catalog and planning included); the peers' are in-process query times.
# DuckDB's scan of the table with equality deletes is cut off after DUCK_TIMEOUT seconds
# (default 300). The full scans (the read-cost ratio) are the median of SCAN_RUNS runs
# (default 5). Environment: MELTWATER_BIN (default the release
# binary in the shared target directory), MELTWATER_PYTHON (default the test venv's python,
# which has pyiceberg and DuckDB). Never builds anything.
set -euo pipefail
ROWS=${1:-10000000}
DUCK_TIMEOUT=${DUCK_TIMEOUT:-300}
SCAN_RUNS=${SCAN_RUNS:-5}
UPS=${2:-1000000}
P=${3:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MELTWATER_BIN:-}
if [ -z "$BIN" ]; then
  for b in /root/.cache/meltwater/target/release/meltwater "$ROOT/target/release/meltwater"; do
    if [ -x "$b" ]; then BIN=$b; break; fi
  done
fi
[ -x "${BIN:-}" ] || { echo "no release binary; build with: cargo build --release -p meltwater-cli" >&2; exit 2; }
PY=${MELTWATER_PYTHON:-$HOME/.cache/meltwater/venv/bin/python}
[ -x "$PY" ] || { echo "no python with pyiceberg/duckdb at $PY (run integration/python/setup_venv.sh)" >&2; exit 2; }
WORK=$(mktemp -d -t meltwater-upsert-bench-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
echo "iceberg upsert bench: rows=$ROWS upserts=$UPS parallelism=$P bin=$BIN work=$WORK"

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l | xargs printf '%.2f'; }

gen() { # gen NAME FIRST_ID COUNT SEED
  cat <<SQL
CREATE TABLE $1 (id BIGINT, v BIGINT) WITH (
  'connector' = 'datagen', 'number-of-rows' = '$3', 'seed' = '$4',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '$2', 'fields.id.end' = '$(( $2 + $3 - 1 ))',
  'fields.v.min' = '0', 'fields.v.max' = '1000000'
);
SQL
}
TABLE_DDL="CREATE TABLE IF NOT EXISTS lake.bench.t (id BIGINT, v BIGINT, PRIMARY KEY (id) NOT ENFORCED) WITH ('write.upsert' = 'true');"
{ echo "SET 'parallelism.default' = '$P';"; gen gen 1 "$ROWS" 1; echo "$TABLE_DDL"; echo "INSERT INTO lake.bench.t SELECT id, v FROM gen;"; } > load.sql
{ echo "SET 'parallelism.default' = '$P';"; gen ups $(( ROWS / 2 + 1 )) "$UPS" 2; echo "$TABLE_DDL"; echo "INSERT INTO lake.bench.t SELECT id, v FROM ups;"; } > upsert.sql
cat > full.sql <<SQL
SET 'parallelism.default' = '$P';
CREATE TABLE sink (id BIGINT, v BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT * FROM lake.bench.t;
SQL
# The full scan's time: the median of SCAN_RUNS runs (single runs of a 0.1-0.3 s command
# vary by a third on 2 cores).
full_scan() {
  local t times=()
  for _ in $(seq "$SCAN_RUNS"); do
    t=$(now); "$BIN" run full.sql --mode batch > /dev/null; times+=("$(elapsed "$t")")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (SCAN_RUNS + 1) / 2 ))p"
}
cat > scan.sql <<SQL
SET 'parallelism.default' = '$P';
CREATE TABLE out (n BIGINT, s BIGINT) WITH ('connector' = 'print');
INSERT INTO out SELECT COUNT(*), SUM(v) FROM lake.bench.t;
SQL

t=$(now); "$BIN" run load.sql --mode batch > load.log; echo "setup load: $(elapsed "$t") s"
t=$(now); "$BIN" maintain compact lake.bench.t > compact0.log; echo "setup compact: $(elapsed "$t") s"

t=$(now); "$BIN" run upsert.sql --mode batch > upsert.log; MW_UPSERT=$(elapsed "$t")
echo "upsert  meltwater  ${MW_UPSERT} s  $(echo "$UPS / $MW_UPSERT" | bc) rows/s"

cat > duck.py <<'PY'
import os, sys, time
sys.path.insert(0, os.environ["ROOT"] + "/integration/python")
import read_iceberg as r
loc = r.current_metadata_location(sys.argv[1], "lake", "bench.t")
con = r.duckdb_connect()
t = time.time()
n, s = con.execute(f"SELECT COUNT(*), SUM(v) FROM iceberg_scan({r._sql_str(r.location_to_path(loc))})").fetchone()
print(f"{time.time() - t:.2f} {n} {s}")
PY
export ROOT
duck_scan() { "$PY" duck.py "$WORK/meltwater-data/catalog.db"; }
mw_scan() {
  local t; t=$(now)
  local line; line=$("$BIN" run scan.sql --mode batch | grep '^+I\[' )
  echo "$(elapsed "$t") $(echo "$line" | sed -E 's/^\+I\[([0-9]+), ([0-9]+)\]$/\1 \2/')"
}
read -r MW_SCAN_D MW_N MW_S <<< "$(mw_scan)"
echo "scan with deletes  meltwater ${MW_SCAN_D} s  (rows $MW_N, sum $MW_S)"
MW_FULL_D=$(full_scan)
echo "full scan (SELECT *) with deletes  meltwater ${MW_FULL_D} s"
[ "$MW_N" = "$ROWS" ] || { echo "MISMATCH: meltwater read $MW_N rows" >&2; exit 1; }
if DK_OUT=$(timeout "$DUCK_TIMEOUT" "$PY" duck.py "$WORK/meltwater-data/catalog.db"); then
  read -r DK_SCAN_D DK_N DK_S <<< "$DK_OUT"
  echo "scan with deletes  duckdb    ${DK_SCAN_D} s  (rows $DK_N, sum $DK_S)"
  [ "$DK_N" = "$ROWS" ] && [ "$MW_S" = "$DK_S" ] || { echo "MISMATCH: meltwater $MW_N $MW_S, duckdb $DK_N $DK_S" >&2; exit 1; }
else
  DK_SCAN_D="timeout"
  echo "scan with deletes  duckdb    did not finish within ${DUCK_TIMEOUT} s"
fi

t=$(now); "$BIN" maintain compact lake.bench.t > compact1.log; MW_COMPACT=$(elapsed "$t")
echo "compact meltwater  ${MW_COMPACT} s  ($(grep rewrote compact1.log))"
read -r MW_SCAN_C MW_N2 MW_S2 <<< "$(mw_scan)"
read -r DK_SCAN_C DK_N2 DK_S2 <<< "$(duck_scan)"
echo "scan compacted     meltwater ${MW_SCAN_C} s  duckdb ${DK_SCAN_C} s"
MW_FULL_C=$(full_scan)
echo "full scan (SELECT *) compacted     meltwater ${MW_FULL_C} s"
[ "$MW_N2" = "$ROWS" ] && [ "$MW_S2" = "$MW_S" ] && [ "$DK_S2" = "$MW_S" ] || { echo "MISMATCH after compaction" >&2; exit 1; }

# pyiceberg: the same table, its own catalog; upsert the same rows, then scan.
read -r PY_UPSERT PY_SCAN PY_N PY_S <<< "$("$PY" - "$ROWS" "$UPS" <<'PY'
import sys, time, os
import pyarrow as pa, pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, LongType
rows, ups = int(sys.argv[1]), int(sys.argv[2])
os.makedirs("py/wh", exist_ok=True)
cat = SqlCatalog("py", uri="sqlite:///py/catalog.db", warehouse="file://" + os.path.abspath("py/wh"))
cat.create_namespace("bench")
schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", LongType(), required=False), identifier_field_ids=[1])
t = cat.create_table("bench.t", schema=schema)
arrow_schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.int64())])
def values(n):
    return pc.cast(pc.floor(pc.multiply(pc.random(n), 1000000)), pa.int64())
t.append(pa.table({"id": pa.array(range(1, rows + 1), pa.int64()), "v": values(rows)}, schema=arrow_schema))
first = rows // 2 + 1
df = pa.table({"id": pa.array(range(first, first + ups), pa.int64()), "v": values(ups)}, schema=arrow_schema)
t = cat.load_table("bench.t")
s = time.time(); t.upsert(df, join_cols=["id"]); up = time.time() - s
t = cat.load_table("bench.t")
s = time.time(); tbl = t.scan(selected_fields=("v",)).to_arrow(); n = tbl.num_rows; total = pc.sum(tbl["v"]).as_py(); sc = time.time() - s
print(f"{up:.2f} {sc:.2f} {n} {total}")
PY
)"
echo "upsert  pyiceberg  ${PY_UPSERT} s  $(echo "$UPS / $PY_UPSERT" | bc) rows/s"
echo "scan    pyiceberg  ${PY_SCAN} s  (rows $PY_N)"
[ "$PY_N" = "$ROWS" ] || { echo "pyiceberg row count $PY_N" >&2; exit 1; }

echo
echo "summary (rows=$ROWS, upserts=$UPS, parallelism=$P)"
printf 'upsert: meltwater %s s, pyiceberg %s s -> meltwater/pyiceberg time %.4f (pyiceberg takes %.0fx as long)\n' "$MW_UPSERT" "$PY_UPSERT" "$(echo "$MW_UPSERT / $PY_UPSERT" | bc -l)" "$(echo "$PY_UPSERT / $MW_UPSERT" | bc -l)"
if [ "$DK_SCAN_D" = timeout ]; then
  printf 'scan with %s%% equality-deleted rows: meltwater %s s, duckdb did not finish within %s s\n' "$(( UPS * 100 / ROWS ))" "$MW_SCAN_D" "$DUCK_TIMEOUT"
else
  printf 'scan with %s%% equality-deleted rows: meltwater %s s, duckdb %s s -> meltwater/duckdb time %.2f\n' "$(( UPS * 100 / ROWS ))" "$MW_SCAN_D" "$DK_SCAN_D" "$(echo "$MW_SCAN_D / $DK_SCAN_D" | bc -l)"
fi
printf 'scan compacted: meltwater %s s, duckdb %s s -> meltwater/duckdb time %.2f\n' "$MW_SCAN_C" "$DK_SCAN_C" "$(echo "$MW_SCAN_C / $DK_SCAN_C" | bc -l)"
printf 'read cost of the deletes, COUNT/SUM(v) (reads id only to apply them): meltwater %.2f\n' "$(echo "$MW_SCAN_D / $MW_SCAN_C" | bc -l)"
printf 'read cost of the deletes, full scan SELECT * (with / compacted): meltwater %.2f (target <= 1.5)\n' "$(echo "$MW_FULL_D / $MW_FULL_C" | bc -l)"
