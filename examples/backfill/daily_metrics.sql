-- Daily metrics per country, recomputed for the days from ${from} to ${to} (inclusive).
--
-- INSERT OVERWRITE replaces exactly the day partitions the recomputed rows fall in (dynamic
-- partition overwrite): days outside the range keep their rows, and running the same
-- backfill twice leaves the same table. Run it with examples/backfill/backfill.sh, or:
--
--   meltwater run examples/backfill/daily_metrics.sql --mode batch \
--     --param from=2026-03-01 --param to=2026-03-31

SET 'pipeline.name' = 'daily_metrics';

CREATE TABLE events (
  event_id BIGINT, user_id BIGINT, country STRING, kind STRING, amount DECIMAL(10, 2),
  event_time TIMESTAMP(3)
) WITH ('connector' = 'filesystem', 'path' = 'examples/backfill/data/events',
        'format' = 'csv', 'csv.header' = 'true');

CREATE TABLE IF NOT EXISTS lake.analytics.daily_metrics (
  day DATE, country STRING, events BIGINT, users BIGINT, purchases BIGINT,
  revenue DECIMAL(38, 2)
) PARTITIONED BY (day);

INSERT OVERWRITE lake.analytics.daily_metrics
SELECT CAST(event_time AS DATE) AS day, country, COUNT(*) AS events,
       COUNT(DISTINCT user_id) AS users,
       SUM(CASE WHEN kind = 'purchase' THEN 1 ELSE 0 END) AS purchases,
       SUM(amount) AS revenue
FROM events
WHERE CAST(event_time AS DATE) BETWEEN DATE '${from}' AND DATE '${to}'
GROUP BY CAST(event_time AS DATE), country;
