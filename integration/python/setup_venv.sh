#!/usr/bin/env bash
# Create (or reuse) the Python venv holding the third-party Iceberg readers used by
# Meltwater's interop tests (pyiceberg, DuckDB + iceberg/avro/httpfs extensions), the moto S3
# server the checkpoint-store test runs (`python -m moto.server`) and SeaweedFS's `weed`
# (an Iceberg REST catalog with S3, for integration/tests/iceberg_rest.rs).
#
#   venv=$(bash integration/python/setup_venv.sh)     # progress on stderr, path on stdout
#
# Location: ${MELTWATER_VENV:-$HOME/.cache/meltwater/venv}
# Base interpreter: ${MELTWATER_BASE_PYTHON:-python3}
#
# Idempotent: the sha256 of requirements.txt plus the base interpreter's version is kept in
# <venv>/.meltwater-requirements.sha256; pip only runs when that changes. If the venv's
# interpreter is broken or differs from the base one, the venv is rebuilt from scratch.
# The venv path is always the last line printed (and the only line on stdout).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
venv="${MELTWATER_VENV:-$HOME/.cache/meltwater/venv}"
base_python="${MELTWATER_BASE_PYTHON:-python3}"
stamp="$venv/.meltwater-requirements.sha256"

log() { printf '[setup_venv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ -f "$req" ]] || { log "missing $req"; exit 1; }
command -v "$base_python" >/dev/null || { log "base interpreter '$base_python' not found"; exit 1; }

mkdir -p "$(dirname "$venv")"

# Serialise concurrent runs against the same venv (e.g. two CI jobs on one machine).
if command -v flock >/dev/null; then
    exec 9>"$venv.lock"
    flock 9
fi

base_version="$("$base_python" -c 'import sys; print(sys.version.replace("\n", " "))')"
want="$( { cat "$req"; printf 'python=%s\n' "$base_version"; } | sha256sum | cut -d' ' -f1)"

venv_ok=0
if [[ -x "$venv/bin/python" ]]; then
    if have_version="$("$venv/bin/python" -c 'import sys; print(sys.version.replace("\n", " "))' 2>/dev/null)" \
        && [[ "$have_version" == "$base_version" ]]; then
        venv_ok=1
    else
        log "venv at $venv is broken or was built with another interpreter; rebuilding"
        rm -rf "$venv"
    fi
fi

if [[ $venv_ok -eq 0 ]]; then
    log "creating venv at $venv with $base_python ($base_version)"
    "$base_python" -m venv "$venv"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "requirements unchanged (sha256 ${want:0:12}); nothing to install"
else
    log "installing $req into $venv"
    "$venv/bin/python" -m pip install --no-input --disable-pip-version-check -q -r "$req" >&2
    printf '%s\n' "$want" >"$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
    log "installed: $("$venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null \
        | grep -iE '^(pyiceberg|pyiceberg[-_]core|duckdb|duckdb[-_]extension[-_][a-z]+|pyarrow|sqlalchemy|moto|boto3|seaweedfs[-_]bin)==' | tr '\n' ' ')"
fi

echo "$venv"
