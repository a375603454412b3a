-- TPC-H Q9 (product type profit measure): the standard query text with the
-- validation substitution parameters (COLOR = green).
-- Sources: the Parquet tables tpchgen-cli writes under ${data}; the result goes to a
-- '${sink}' table (blackhole for timing, print to check the rows). bench/tpch.sh runs it:
--   meltwater run bench/tpch/q9.sql --mode batch --param data=DIR --param sink=blackhole
-- checksum column (bench/tpch.sh compares engines on it): sum_profit

CREATE TABLE part (
  p_partkey BIGINT, p_name STRING, p_mfgr STRING, p_brand STRING, p_type STRING, p_size INT,
  p_container STRING, p_retailprice DECIMAL(15, 2), p_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/part');

CREATE TABLE supplier (
  s_suppkey BIGINT, s_name STRING, s_address STRING, s_nationkey BIGINT, s_phone STRING,
  s_acctbal DECIMAL(15, 2), s_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/supplier');

CREATE TABLE lineitem (
  l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT,
  l_quantity DECIMAL(15, 2), l_extendedprice DECIMAL(15, 2), l_discount DECIMAL(15, 2),
  l_tax DECIMAL(15, 2), l_returnflag STRING, l_linestatus STRING, l_shipdate DATE,
  l_commitdate DATE, l_receiptdate DATE, l_shipinstruct STRING, l_shipmode STRING,
  l_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/lineitem');

CREATE TABLE partsupp (
  ps_partkey BIGINT, ps_suppkey BIGINT, ps_availqty INT, ps_supplycost DECIMAL(15, 2),
  ps_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/partsupp');

CREATE TABLE orders (
  o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus STRING, o_totalprice DECIMAL(15, 2),
  o_orderdate DATE, o_orderpriority STRING, o_clerk STRING, o_shippriority INT,
  o_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/orders');

CREATE TABLE nation (
  n_nationkey BIGINT, n_name STRING, n_regionkey BIGINT, n_comment STRING
) WITH ('connector' = 'filesystem', 'format' = 'parquet', 'path' = '${data}/nation');

CREATE TABLE result (nation STRING, o_year BIGINT, sum_profit DECIMAL(38, 4))
WITH ('connector' = '${sink}');

INSERT INTO result
SELECT
  nation,
  o_year,
  SUM(amount) AS sum_profit
FROM (
  SELECT
    n_name AS nation,
    EXTRACT(YEAR FROM o_orderdate) AS o_year,
    l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity AS amount
  FROM part, supplier, lineitem, partsupp, orders, nation
  WHERE s_suppkey = l_suppkey
    AND ps_suppkey = l_suppkey
    AND ps_partkey = l_partkey
    AND p_partkey = l_partkey
    AND o_orderkey = l_orderkey
    AND s_nationkey = n_nationkey
    AND p_name LIKE '%green%'
) AS profit
GROUP BY nation, o_year
ORDER BY nation, o_year DESC;
