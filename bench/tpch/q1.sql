-- TPC-H Q1 (pricing summary report): the standard query text with the
-- validation substitution parameters (DELTA = 90).
-- Sources: the Parquet tables tpchgen-cli writes under ${data}; the result goes to a
-- '${sink}' table (blackhole for timing, print to check the rows). bench/tpch.sh runs it:
--   meltwater run bench/tpch/q1.sql --mode batch --param data=DIR --param sink=blackhole
-- checksum column (bench/tpch.sh compares engines on it): sum_charge

CREATE TABLE lineitem (
  l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT,
  l_quantity DECIMAL(15, 2), l_extendedprice DECIMAL(15, 2), l_discount DECIMAL(15, 2),
  l_tax DECIMAL(15, 2), l_returnflag STRING, l_linestatus STRING, l_shipdate DATE,
  l_commitdate DATE, l_receiptdate DATE, l_shipinstruct STRING, l_shipmode STRING,
  l_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/lineitem');

CREATE TABLE result (
  l_returnflag STRING, l_linestatus STRING, sum_qty DECIMAL(38, 2),
  sum_base_price DECIMAL(38, 2), sum_disc_price DECIMAL(38, 4), sum_charge DECIMAL(38, 6),
  avg_qty DECIMAL(38, 6), avg_price DECIMAL(38, 6), avg_disc DECIMAL(38, 6), count_order BIGINT
) WITH ('connector' = '${sink}');

INSERT INTO result
SELECT
  l_returnflag,
  l_linestatus,
  SUM(l_quantity) AS sum_qty,
  SUM(l_extendedprice) AS sum_base_price,
  SUM(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
  SUM(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
  AVG(l_quantity) AS avg_qty,
  AVG(l_extendedprice) AS avg_price,
  AVG(l_discount) AS avg_disc,
  COUNT(*) AS count_order
FROM lineitem
WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus;
