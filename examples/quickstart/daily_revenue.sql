-- Quickstart: daily revenue per category, from the shipped orders into an Iceberg table.
--
--   meltwater run examples/quickstart/daily_revenue.sql --mode batch
--
-- Reads every CSV file under data/orders (one file writes timestamps the SQL way,
-- `2026-03-01 12:00:00.123`, the other in ISO-8601), groups the orders into one-day
-- tumbling windows per category, and writes the result into lake.shop.daily_revenue in
-- the embedded catalog (./meltwater-data).

CREATE TABLE orders (
  order_id    BIGINT,
  customer_id BIGINT,
  category    STRING,
  amount      DECIMAL(10, 2),
  order_time  TIMESTAMP(3),
  WATERMARK FOR order_time AS order_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'filesystem',
  'path' = 'examples/quickstart/data/orders',
  'format' = 'csv',
  'csv.header' = 'true'
);

CREATE TABLE IF NOT EXISTS lake.shop.daily_revenue (
  day      DATE,
  category STRING,
  orders   BIGINT,
  revenue  DECIMAL(38, 2)
) PARTITIONED BY (category);

INSERT INTO lake.shop.daily_revenue
SELECT CAST(window_start AS DATE) AS day, category, COUNT(*) AS orders, SUM(amount) AS revenue
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' DAY))
GROUP BY window_start, window_end, category;
