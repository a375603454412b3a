#!/usr/bin/env python3
"""Write a small partitioned Iceberg v2 table with pyiceberg into a SQLite SqlCatalog.

Used to check the readers in read_iceberg.py, and as a fixture for tests of Meltwater READING
tables written by a third party (pyiceberg).

    python make_sample_table.py --catalog-db /tmp/x/catalog.db --warehouse /tmp/x/wh \
        --catalog-name meltwater --table sample.events [--java-v1-schema] [--appends 2]

Table schema (field ids 1..9):
    id long (required), name string, price double, ts timestamp (us, no tz),
    d date, amount decimal(10,2), category string, ts_tz timestamptz, payload binary
Partition spec: day(ts), identity(category).

--java-v1-schema creates `iceberg_tables` / `iceberg_namespace_properties` with sqlite3 first,
using the Java JDBC catalog's V1 DDL (including `iceberg_type VARCHAR(5)`), before pyiceberg
opens the catalog, so pyiceberg has to cope with a catalog file made by someone else.
Each append is one snapshot; rows are deterministic so outputs can be diffed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import sys
from decimal import Decimal

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)

# Java JdbcUtil V0 DDL + the V1 `ALTER TABLE ... ADD COLUMN iceberg_type VARCHAR(5)`, folded
# into one CREATE (what a freshly created V1 catalog looks like).
JAVA_V1_DDL = [
    """CREATE TABLE IF NOT EXISTS iceberg_tables (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name))""",
    """CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255),
        property_value VARCHAR(1000),
        PRIMARY KEY (catalog_name, namespace, property_key))""",
]

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType(), required=False),
    NestedField(3, "price", DoubleType(), required=False),
    NestedField(4, "ts", TimestampType(), required=False),
    NestedField(5, "d", DateType(), required=False),
    NestedField(6, "amount", DecimalType(10, 2), required=False),
    NestedField(7, "category", StringType(), required=False),
    NestedField(8, "ts_tz", TimestamptzType(), required=False),
    NestedField(9, "payload", BinaryType(), required=False),
)

SPEC = PartitionSpec(
    PartitionField(source_id=4, field_id=1000, transform=DayTransform(), name="ts_day"),
    PartitionField(source_id=7, field_id=1001, transform=IdentityTransform(), name="category"),
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("ts", pa.timestamp("us")),
        pa.field("d", pa.date32()),
        pa.field("amount", pa.decimal128(10, 2)),
        pa.field("category", pa.string()),
        pa.field("ts_tz", pa.timestamp("us", tz="UTC")),
        pa.field("payload", pa.binary()),
    ]
)


def batch_rows(batch: int) -> list[dict]:
    """Deterministic rows for append number `batch` (0-based); ids are unique across batches."""
    base = dt.datetime(2024, 3, 1, 12, 0, 0) + dt.timedelta(days=batch)
    utc = dt.timezone.utc
    rows = [
        dict(id=1, name="alpha", price=1.5, ts=base, d=dt.date(2024, 3, 1),
             amount=Decimal("10.00"), category="a",
             ts_tz=base.replace(tzinfo=utc), payload=b"\x00\x01"),
        dict(id=2, name="beta", price=-0.25, ts=base + dt.timedelta(microseconds=123456),
             d=dt.date(1970, 1, 1), amount=Decimal("-3.14"), category="b",
             ts_tz=(base + dt.timedelta(hours=5)).replace(tzinfo=utc), payload=b"\xff"),
        dict(id=3, name="gamma \u00e9\u4e2d", price=1e-7, ts=base + dt.timedelta(days=1, seconds=1),
             d=dt.date(2000, 2, 29), amount=Decimal("12345678.99"), category="a",
             ts_tz=None, payload=b""),
        dict(id=4, name=None, price=None, ts=None, d=None, amount=None, category=None,
             ts_tz=None, payload=None),
        dict(id=5, name="epsilon", price=123456789.125, ts=dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
             d=dt.date(1969, 12, 31), amount=Decimal("0.01"), category="b",
             ts_tz=dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=utc), payload=b"meltwater"),
    ]
    for r in rows:
        r["id"] += 100 * batch
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog-db", required=True, help="SQLite catalog file (created if absent)")
    ap.add_argument("--warehouse", required=True, help="warehouse directory (created if absent)")
    ap.add_argument("--catalog-name", default="meltwater")
    ap.add_argument("--table", default="sample.events", help="namespace.table")
    ap.add_argument("--appends", type=int, default=2, help="number of append snapshots (default 2)")
    ap.add_argument("--java-v1-schema", action="store_true",
                    help="pre-create the catalog tables with Java's V1 DDL (iceberg_type column) via sqlite3")
    args = ap.parse_args()

    db = os.path.abspath(args.catalog_db)
    warehouse = os.path.abspath(args.warehouse)
    os.makedirs(os.path.dirname(db), exist_ok=True)
    os.makedirs(warehouse, exist_ok=True)

    if args.java_v1_schema:
        con = sqlite3.connect(db)
        with con:
            for ddl in JAVA_V1_DDL:
                con.execute(ddl)
        con.close()

    namespace, _, _name = args.table.rpartition(".")
    if not namespace:
        ap.error("--table must be namespace.table")

    catalog = SqlCatalog(args.catalog_name, uri=f"sqlite:///{db}", warehouse=f"file://{warehouse}")
    catalog.create_namespace_if_not_exists(namespace)
    if catalog.table_exists(args.table):
        catalog.drop_table(args.table)
    table = catalog.create_table(args.table, schema=SCHEMA, partition_spec=SPEC)
    for b in range(args.appends):
        table.append(pa.Table.from_pylist(batch_rows(b), schema=ARROW_SCHEMA))

    table = catalog.load_table(args.table)
    print(f"table {args.table} metadata_location={table.metadata_location}", file=sys.stderr)
    print(f"snapshots={len(table.snapshots())} rows={len(table.scan().to_arrow())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
