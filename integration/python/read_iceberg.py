#!/usr/bin/env python3
"""Read an Iceberg table from a SQLite SqlCatalog (or a REST catalog) with a third-party
reader, print JSON lines.

    read_iceberg.py --catalog-db PATH --warehouse DIR --catalog-name NAME --table ns.table \
        --reader pyiceberg|duckdb [--columns a,b] [--order-by a,b]
    read_iceberg.py --catalog-db PATH --warehouse DIR --catalog-name NAME --table ns.table --snapshots
    read_iceberg.py --rest-uri URI [--warehouse W] --s3-endpoint URL --catalog-name NAME \
        --table ns.table ...    (a REST catalog whose files are in an S3-compatible store,
                                 read anonymously with path-style addressing)

Rows: one JSON object per line, keys = column names in table-schema order (or --columns order).
Values are normalised so both readers print byte-identical output for the same table:
    int -> int, float -> float (NaN/Infinity/-Infinity as strings), bool -> bool,
    decimal -> string keeping its scale ("10.00"), str -> str, bytes -> lowercase hex,
    timestamp -> "YYYY-MM-DDTHH:MM:SS.ffffff" (tz-aware ones converted to UTC, then naive),
    date -> "YYYY-MM-DD", time -> "HH:MM:SS.ffffff", uuid -> canonical string,
    struct -> object, list -> array, map -> array of [key, value] pairs, null -> null.
Rows are sorted by --order-by columns (if given), then by all remaining columns, with nulls last,
comparing the native values (numbers numerically, timestamps chronologically).

--snapshots prints the table's snapshots (pyiceberg, metadata order) instead of rows:
    {"snapshot_id", "parent_snapshot_id", "sequence_number", "timestamp_ms", "operation",
     "summary", "current"}
--files prints the live files of the current snapshot (pyiceberg's files table), sorted by
content then path:
    {"content": "data"|"position_deletes"|"equality_deletes", "file_path", "record_count",
     "partition"}
  and for a position-delete file, read with pyarrow:
    "field_ids": the Parquet field ids of its columns, "sorted": whether its rows are
    ordered by (file_path, pos), "data_files": the data files it names, "deleted_rows": the rows of the referenced data files at
    the deleted positions (normalised, sorted).

Readers:
  pyiceberg: SqlCatalog(name, uri=sqlite:///db, warehouse=file://dir).load_table().scan().to_arrow()
             (REST: RestCatalog(name, uri=..., s3.endpoint=..., s3.anonymous=true))
  duckdb:    metadata_location read straight from the SQLite `iceberg_tables` row, then
             iceberg_scan('<metadata.json>') with the avro + iceberg extensions loaded from the
             duckdb-extension-* wheels' files. REST: the metadata location the catalog's
             load-table answer gives (through pyiceberg), read over S3 with the httpfs
             extension and an S3 secret for the endpoint.
Exit codes: 0 ok, 2 table not found / bad arguments, 1 reader error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import glob
import importlib.util
import json
import math
import os
import sqlite3
import sys
import uuid
from urllib.parse import urlparse


class TableNotFound(Exception):
    pass


# --------------------------------------------------------------------------------------------
# value normalisation


def _fmt_time(t: dt.time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"


def _fmt_datetime(v: dt.datetime) -> str:
    if v.tzinfo is not None:
        v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{_fmt_time(v.time())}"


def normalise(v):
    """Python value (as produced by pyarrow's to_pylist) -> JSON-ready value."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(v, decimal.Decimal):
        # str() keeps the scale ("10.00") but may use exponent notation for tiny/huge values;
        # format 'f' never does.
        return format(v, "f")
    if isinstance(v, dt.datetime):  # before date: datetime is a date subclass
        return _fmt_datetime(v)
    if isinstance(v, dt.date):
        return f"{v.year:04d}-{v.month:02d}-{v.day:02d}"
    if isinstance(v, dt.time):
        return _fmt_time(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        return {str(k): normalise(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [normalise(x) for x in v]
    if hasattr(v, "to_pydatetime"):  # pandas Timestamp, should pandas ever be present
        return _fmt_datetime(v.to_pydatetime())
    raise TypeError(f"cannot normalise value of type {type(v).__name__}: {v!r}")


def _sort_key_value(v):
    """Totally ordered key for one (raw) value; None sorts last."""
    if v is None:
        return (9,)
    if isinstance(v, bool):
        return (0, int(v))
    if isinstance(v, (int, decimal.Decimal)):
        return (0, v)
    if isinstance(v, float):
        return (1, 0) if math.isnan(v) else (0, v)  # NaN after all numbers
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (3, bytes(v))
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return (4, normalise(v))  # fixed-width ISO strings sort chronologically
    return (5, json.dumps(normalise(v), sort_keys=True))


def sort_rows(rows: list[dict], columns: list[str], order_by: list[str]) -> list[dict]:
    keys = order_by + [c for c in columns if c not in order_by]
    return sorted(rows, key=lambda r: tuple(_sort_key_value(r[k]) for k in keys))


def print_rows(rows: list[dict], columns: list[str], order_by: list[str], out) -> None:
    for r in sort_rows(rows, columns, order_by):
        out.write(json.dumps({c: normalise(r[c]) for c in columns}, ensure_ascii=False,
                             separators=(",", ":"), allow_nan=False))
        out.write("\n")


# --------------------------------------------------------------------------------------------
# catalog helpers


def split_identifier(ident: str) -> tuple[str, str]:
    """'a.b.tbl' -> ('a.b', 'tbl'): the last part is the table, the rest the namespace
    (pyiceberg SqlCatalog and Java JdbcCatalog both store the namespace dot-joined)."""
    ns, _, name = ident.rpartition(".")
    if not ns or not name:
        raise ValueError(f"table must be namespace.table, got {ident!r}")
    return ns, name


def location_to_path(loc: str) -> str:
    """'file:///x', 'file:/x', 'file://localhost/x' or '/x' -> '/x'.
    No percent-decoding: pyiceberg, Java and Spark write raw paths into metadata."""
    if loc.startswith("file:"):
        parsed = urlparse(loc)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"unsupported file location with a host: {loc!r}")
        return parsed.path
    if "://" in loc:
        raise ValueError(f"not a local location: {loc!r}")
    return loc


def current_metadata_location(catalog_db: str, catalog_name: str, ident: str) -> str:
    """The table's current metadata_location, straight from the SQLite catalog file.
    Like pyiceberg, rows whose iceberg_type is not NULL/'TABLE' (i.e. views) are ignored."""
    ns, name = split_identifier(ident)
    if not os.path.exists(catalog_db):
        raise TableNotFound(f"catalog file {catalog_db} does not exist")
    con = sqlite3.connect(f"file:{catalog_db}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(iceberg_tables)")}
        if not cols:
            raise TableNotFound(f"{catalog_db} has no iceberg_tables table")
        sql = ("SELECT metadata_location FROM iceberg_tables "
               "WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?")
        if "iceberg_type" in cols:
            sql += " AND (iceberg_type IS NULL OR iceberg_type = 'TABLE')"
        row = con.execute(sql, (catalog_name, ns, name)).fetchone()
    finally:
        con.close()
    if row is None or row[0] is None:
        raise TableNotFound(f"table {ident} not found in catalog {catalog_name!r} ({catalog_db})")
    return row[0]


def open_rest_table(args):
    from pyiceberg.catalog.rest import RestCatalog
    from pyiceberg.exceptions import NoSuchTableError

    # auth type noop: without it pyiceberg 0.12 sends "Authorization: Bearer None", which a
    # server without authentication (SeaweedFS) refuses.
    props = {"uri": args.rest_uri, "s3.endpoint": args.s3_endpoint,
             "s3.path-style-access": "true", "s3.region": "us-east-1", "s3.anonymous": "true",
             "auth": {"type": "noop"}}
    if args.warehouse:
        props["warehouse"] = args.warehouse
    catalog = RestCatalog(args.catalog_name, **props)
    try:
        return catalog.load_table(args.table)
    except NoSuchTableError as e:
        raise TableNotFound(str(e)) from e


def open_pyiceberg_table(args):
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import NoSuchTableError

    if args.rest_uri:
        return open_rest_table(args)

    db = os.path.abspath(args.catalog_db)
    if not os.path.exists(db):  # SqlCatalog would silently create an empty catalog file
        raise TableNotFound(f"catalog file {db} does not exist")
    # init_catalog_tables=false: a reader must never create or alter the catalog's tables.
    catalog = SqlCatalog(args.catalog_name, uri=f"sqlite:///{db}",
                         warehouse=f"file://{os.path.abspath(args.warehouse)}",
                         init_catalog_tables="false")
    try:
        return catalog.load_table(args.table)
    except NoSuchTableError as e:
        raise TableNotFound(str(e)) from e


# --------------------------------------------------------------------------------------------
# readers


def read_pyiceberg(args, columns_arg: list[str] | None):
    table = open_pyiceberg_table(args)
    scan = table.scan(selected_fields=tuple(columns_arg)) if columns_arg else table.scan()
    at = scan.to_arrow()
    columns = columns_arg or [f.name for f in table.schema().fields]
    missing = [c for c in columns if c not in at.column_names]
    if missing:
        raise ValueError(f"unknown columns {missing}; table has {at.column_names}")
    return at.select(columns).to_pylist(), columns


def find_duckdb_extension(module: str, ext_name: str) -> str:
    """Path of <ext_name>.duckdb_extension inside the installed duckdb-extension-* wheel."""
    import duckdb

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"python package {module} is not installed (pip install {module.replace('_', '-')})")
    base = list(spec.submodule_search_locations)[0]
    want = os.path.join(base, "extensions", f"v{duckdb.__version__}", f"{ext_name}.duckdb_extension")
    if os.path.isfile(want):
        return want
    found = sorted(glob.glob(os.path.join(base, "**", f"{ext_name}.duckdb_extension"), recursive=True))
    if not found:
        raise RuntimeError(f"no {ext_name}.duckdb_extension under {base}")
    if len(found) > 1:
        print(f"read_iceberg: warning: several {ext_name} extensions {found}, using {found[-1]}"
              f" (duckdb is {duckdb.__version__})", file=sys.stderr)
    return found[-1]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _sql_ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def duckdb_connect():
    import duckdb

    # LOAD straight from the wheel's file: no INSTALL, so nothing is copied into ~/.duckdb
    # (61 MB) and parallel runs or other venvs never see each other's copies. Autoinstall /
    # autoload are off so DuckDB never tries the network for an extension.
    con = duckdb.connect(config={"autoinstall_known_extensions": "false",
                                 "autoload_known_extensions": "false"})
    for module, ext in (("duckdb_extension_avro", "avro"), ("duckdb_extension_iceberg", "iceberg")):
        con.execute(f"LOAD {_sql_str(find_duckdb_extension(module, ext))}")
    con.execute("SET TimeZone = 'UTC'")  # timestamptz -> arrow timestamp[us, tz=UTC]
    return con


def read_duckdb(args, columns_arg: list[str] | None):
    if args.rest_uri:
        meta = open_rest_table(args).metadata_location
        con = duckdb_connect()
        con.execute(f"LOAD {_sql_str(find_duckdb_extension('duckdb_extension_httpfs', 'httpfs'))}")
        endpoint = urlparse(args.s3_endpoint)
        con.execute("CREATE SECRET rest_s3 (TYPE s3, PROVIDER config, KEY_ID '', SECRET '', "
                    f"REGION 'us-east-1', ENDPOINT {_sql_str(endpoint.netloc)}, URL_STYLE 'path', "
                    f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'})")
    else:
        meta = location_to_path(current_metadata_location(args.catalog_db, args.catalog_name, args.table))
        con = duckdb_connect()
    select = ", ".join(_sql_ident(c) for c in columns_arg) if columns_arg else "*"
    rel = con.execute(f"SELECT {select} FROM iceberg_scan({_sql_str(meta)})")
    at = rel.to_arrow_table()
    return at.to_pylist(), list(at.column_names)


def print_snapshots(args, out) -> None:
    table = open_pyiceberg_table(args)
    current = table.current_snapshot()
    current_id = current.snapshot_id if current else None
    for s in table.snapshots():
        summary = dict(s.summary.additional_properties) if s.summary else {}
        out.write(json.dumps({
            "snapshot_id": s.snapshot_id,
            "parent_snapshot_id": s.parent_snapshot_id,
            "sequence_number": s.sequence_number,
            "timestamp_ms": s.timestamp_ms,
            "operation": s.summary.operation.value if s.summary else None,
            "summary": summary,
            "current": s.snapshot_id == current_id,
        }, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")


CONTENT = {0: "data", 1: "position_deletes", 2: "equality_deletes"}


def _position_delete_details(path: str) -> dict:
    import pyarrow.parquet as pq

    deletes = pq.read_table(location_to_path(path))
    field_ids = [int((f.metadata or {}).get(b"PARQUET:field_id", b"-1")) for f in deletes.schema]
    pairs = list(zip(deletes.column("file_path").to_pylist(), deletes.column("pos").to_pylist()))
    by_file: dict[str, list[int]] = {}
    for data_file, pos in pairs:
        by_file.setdefault(data_file, []).append(pos)
    rows = []
    for data_file, positions in by_file.items():
        data = pq.read_table(location_to_path(data_file))
        rows.extend(data.take(positions).to_pylist())
    columns = list(rows[0].keys()) if rows else []
    return {
        "field_ids": field_ids,
        "sorted": pairs == sorted(pairs),
        "data_files": sorted(by_file),
        "deleted_rows": [{c: normalise(r[c]) for c in columns} for r in sort_rows(rows, columns, [])],
    }


def print_files(args, out) -> None:
    table = open_pyiceberg_table(args)
    files = table.inspect.files().to_pylist()
    entries = []
    for f in files:
        entry = {
            "content": CONTENT[f["content"]],
            "file_path": f["file_path"],
            "record_count": f["record_count"],
            "partition": normalise(f.get("partition") or {}),
        }
        if f["content"] == 1:
            entry.update(_position_delete_details(f["file_path"]))
        entries.append(entry)
    for e in sorted(entries, key=lambda e: (e["content"], e["file_path"])):
        out.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog-db", help="SQLite catalog file")
    ap.add_argument("--warehouse", help="warehouse directory (REST: the catalog's warehouse)")
    ap.add_argument("--rest-uri", help="a REST catalog's URI instead of a SQLite catalog")
    ap.add_argument("--s3-endpoint", help="REST: the S3-compatible endpoint of the tables' files")
    ap.add_argument("--catalog-name", required=True)
    ap.add_argument("--table", required=True, help="namespace.table (namespace may contain dots)")
    ap.add_argument("--reader", choices=("pyiceberg", "duckdb"), default="pyiceberg")
    ap.add_argument("--columns", help="comma-separated columns to print (default: all)")
    ap.add_argument("--order-by", help="comma-separated sort columns (default: all columns)")
    ap.add_argument("--snapshots", action="store_true", help="print snapshots (via pyiceberg) instead of rows")
    ap.add_argument("--files", action="store_true", help="print the current snapshot's live files instead of rows")
    args = ap.parse_args(argv)
    if not args.rest_uri and not (args.catalog_db and args.warehouse):
        ap.error("--catalog-db and --warehouse are required without --rest-uri")
    if args.rest_uri and not args.s3_endpoint:
        ap.error("--rest-uri needs --s3-endpoint")

    split = lambda s: [c.strip() for c in s.split(",") if c.strip()] if s else []
    columns_arg = split(args.columns) or None
    order_by = split(args.order_by)

    out = sys.stdout
    out.reconfigure(encoding="utf-8")
    try:
        split_identifier(args.table)
        if args.snapshots:
            print_snapshots(args, out)
            return 0
        if args.files:
            print_files(args, out)
            return 0
        rows, columns = (read_pyiceberg if args.reader == "pyiceberg" else read_duckdb)(args, columns_arg)
        bad = [c for c in order_by if c not in columns]
        if bad:
            raise ValueError(f"--order-by columns {bad} are not among the output columns {columns}")
        print_rows(rows, columns, order_by, out)
    except TableNotFound as e:
        print(f"read_iceberg: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"read_iceberg: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
