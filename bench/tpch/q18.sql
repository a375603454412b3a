-- TPC-H Q18 (large volume customer): the standard query text with the
-- validation substitution parameters (QUANTITY = 300).
-- Sources: the Parquet tables tpchgen-cli writes under ${data}; the result goes to a
-- '${sink}' table (blackhole for timing, print to check the rows). bench/tpch.sh runs it:
--   meltwater run bench/tpch/q18.sql --mode batch --param data=DIR --param sink=blackhole
-- checksum column (bench/tpch.sh compares engines on it): sum_quantity

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
  c_name STRING, c_custkey BIGINT, o_orderkey BIGINT, o_orderdate DATE,
  o_totalprice DECIMAL(15, 2), sum_quantity DECIMAL(38, 2)
) WITH ('connector' = '${sink}');

INSERT INTO result
SELECT
  c_name,
  c_custkey,
  o_orderkey,
  o_orderdate,
  o_totalprice,
  SUM(l_quantity) AS sum_quantity
FROM customer, orders, lineitem
WHERE o_orderkey IN (
    SELECT l_orderkey
    FROM lineitem
    GROUP BY l_orderkey
    HAVING SUM(l_quantity) > 300
  )
  AND c_custkey = o_custkey
  AND o_orderkey = l_orderkey
GROUP BY c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice
ORDER BY o_totalprice DESC, o_orderdate
LIMIT 100;
