-- TPC-H Q5 (local supplier volume): the standard query text with the
-- validation substitution parameters (REGION = ASIA, DATE = 1994-01-01).
-- Sources: the Parquet tables tpchgen-cli writes under ${data}; the result goes to a
-- '${sink}' table (blackhole for timing, print to check the rows). bench/tpch.sh runs it:
--   meltwater run bench/tpch/q5.sql --mode batch --param data=DIR --param sink=blackhole
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

CREATE TABLE supplier (
  s_suppkey BIGINT, s_name STRING, s_address STRING, s_nationkey BIGINT, s_phone STRING,
  s_acctbal DECIMAL(15, 2), s_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/supplier');

CREATE TABLE nation (
  n_nationkey BIGINT, n_name STRING, n_regionkey BIGINT, n_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/nation');

CREATE TABLE region (
  r_regionkey BIGINT, r_name STRING, r_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/region');

CREATE TABLE result (n_name STRING, revenue DECIMAL(38, 4)) WITH ('connector' = '${sink}');

INSERT INTO result
SELECT
  n_name,
  SUM(l_extendedprice * (1 - l_discount)) AS revenue
FROM customer, orders, lineitem, supplier, nation, region
WHERE c_custkey = o_custkey
  AND l_orderkey = o_orderkey
  AND l_suppkey = s_suppkey
  AND c_nationkey = s_nationkey
  AND s_nationkey = n_nationkey
  AND n_regionkey = r_regionkey
  AND r_name = 'ASIA'
  AND o_orderdate >= DATE '1994-01-01'
  AND o_orderdate < DATE '1994-01-01' + INTERVAL '1' YEAR
GROUP BY n_name
ORDER BY revenue DESC;
