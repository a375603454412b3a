#!/usr/bin/env bash
# Recomputes lake.analytics.daily_metrics for one day or a range of days, for cron or an
# orchestrator. Idempotent: a rerun of the same range leaves the same table.
#
#   backfill.sh --date 2026-03-05                  # one day (e.g. yesterday, from cron)
#   backfill.sh --from 2026-03-01 --to 2026-03-31  # a month
#
# Options after `--` go to `meltwater run` (e.g. -- --memory-limit 2GiB --catalog c.toml).
# Environment: MELTWATER (the binary; default `meltwater` on PATH), BACKFILL_LOCK (a lock
# file; default /tmp/meltwater-daily_metrics.lock).
#
# Exit codes: 0 done (the range is committed), 1 the job failed and committed nothing (safe
# to rerun), 2 wrong arguments, 3 another backfill of this job holds the lock.
set -uo pipefail

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

from="" to=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --date) from="${2:-}"; to="${2:-}"; shift 2 ;;
    --from) from="${2:-}"; shift 2 ;;
    --to) to="${2:-}"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "backfill.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
is_date() { [[ "$1" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] && date -d "$1" +%F >/dev/null 2>&1; }
if ! is_date "$from" || ! is_date "$to"; then
  echo "backfill.sh: --date, or --from and --to, must be dates as YYYY-MM-DD (got '$from', '$to')" >&2
  exit 2
fi
if [[ "$(date -d "$from" +%s)" -gt "$(date -d "$to" +%s)" ]]; then
  echo "backfill.sh: --from $from is after --to $to" >&2
  exit 2
fi

here="$(cd "$(dirname "$0")" && pwd)"
job="$here/daily_metrics.sql"
meltwater="${MELTWATER:-meltwater}"
lock="${BACKFILL_LOCK:-/tmp/meltwater-daily_metrics.lock}"

exec 9>"$lock"
if ! flock -n 9; then
  echo "backfill.sh: another backfill holds $lock" >&2
  exit 3
fi

echo "$(date -u +%FT%TZ) backfill daily_metrics $from..$to"
"$meltwater" run "$job" --mode batch --param "from=$from" --param "to=$to" "$@"
status=$?
if [[ $status -ne 0 ]]; then
  echo "$(date -u +%FT%TZ) backfill daily_metrics $from..$to failed (exit $status); nothing was committed" >&2
  exit 1
fi
echo "$(date -u +%FT%TZ) backfill daily_metrics $from..$to done"
