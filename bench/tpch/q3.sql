-- TPC-H Q3 (shipping priority): the standard query text with the
-- validation substitution parameters (SEGMENT = BUILDING, DATE = 1995-03-15).
-- Sources: the Parquet tables tpchgen-cli writes under ${data}; the result goes to a
-- '${sink}' table (blackhole for timing, print to check the rows). bench/tpch.sh runs it:
--   meltwater run bench/tpch/q3.sql --mode batch --param data=DIR --param sink=blackhole
-- checksum column (bench/tpch.sh compares engines on it): revenue

CREATE TABLE customer (
  c_custkey BIGINT, c_name STRING, c_address STRING, c_nationkey BIGINT, c_phone STRING,
  c_acctbal DECIMAL(15, 2), c_mktsegment STRING, c_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/customer');

CREATE TABLE orders (
  o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus STRING, o_totalprice DECIMAL(15, 2),
  o_orderdate DATE, o_orderpriority STRING, o_clerk STRING, o_shippriority INT,
  o_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/orders');

CREATE TABLE lineitem (
  l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT,
  l_quantity DECIMAL(15, 2), l_extendedprice DECIMAL(15, 2), l_discount DECIMAL(15, 2),
  l_tax DECIMAL(15, 2), l_returnflag STRING, l_linestatus STRING, l_shipdate DATE,
  l_commitdate DATE, l_receiptdate DATE, l_shipinstruct STRING, l_shipmode STRING,
  l_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/lineitem');

CREATE TABLE result (
  l_orderkey BIGINT, revenue DECIMAL(38, 4), o_orderdate DATE, o_shippriority INT
) WITH ('connector' = '${sink}');

INSERT INTO result
SELECT
  l_orderkey,
  SUM(l_extendedprice * (1 - l_discount)) AS revenue,
  o_orderdate,
  o_shippriority
FROM customer, orders, lineitem
WHERE c_mktsegment = 'BUILDING'
  AND c_custkey = o_custkey
  AND l_orderkey = o_orderkey
  AND o_orderdate < DATE '1995-03-15'
  AND l_shipdate > DATE '1995-03-15'
GROUP BY l_orderkey, o_orderdate, o_shippriority
ORDER BY revenue DESC, o_orderdate
LIMIT 10;
