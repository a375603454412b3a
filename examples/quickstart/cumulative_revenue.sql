-- Revenue so far today, per category, updated every hour: a CUMULATE window.
--
--   meltwater run examples/quickstart/cumulative_revenue.sql --mode batch
--
-- Each order counts in every window from the start of its day up to each hour boundary
-- after it, so the row for (day, 10:00) holds the revenue from midnight to 10:00. In
-- stream mode the same job emits each hour's row when the watermark passes it.

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

CREATE TABLE IF NOT EXISTS lake.shop.revenue_so_far_today (
  window_start TIMESTAMP(6),
  window_end   TIMESTAMP(6),
  category     STRING,
  orders       BIGINT,
  revenue      DECIMAL(38, 2)
) PARTITIONED BY (days(window_start));

INSERT INTO lake.shop.revenue_so_far_today
SELECT window_start, window_end, category, COUNT(*) AS orders, SUM(amount) AS revenue
FROM TABLE(CUMULATE(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' HOUR, INTERVAL '1' DAY))
GROUP BY window_start, window_end, category;
