//! Kafka end to end, against a real Kafka-compatible broker (`noida-db`, started on
//! 127.0.0.1 by the test):
//!
//! - a stream job Kafka → TUMBLE aggregate and raw rows → Iceberg is killed with SIGKILL
//!   several times and restarted from its checkpoints (partition offsets); at the end the
//!   tables hold every record exactly once and equal the batch run of the same job file
//!   over the same offsets (mode equivalence); malformed records went to the dead-letter
//!   topic (stream run) or were skipped and counted (batch run);
//! - a batch job writes a topic to another with `exactly-once`: a `read_committed`
//!   consumer sees each record once; a stream job copies it at least once;
//! - a stream job copies a topic and keeps an upserted count per key, both
//!   `exactly-once`, across aborts just before and just after a checkpoint's commit: a
//!   `read_committed` consumer sees each record once and the final counts;
//! - a malformed record under `'error.policy' = 'fail'` fails the job naming the topic,
//!   partition and offset;
//! - partitions added to a topic while an unbounded job reads it are discovered and read
//!   from their start;
//! - a topic registered in a catalog file is read and written as `cluster.table` without
//!   DDL, and `meltwater catalog infer-schema` prints a DDL (and catalog entry) that parse
//!   to the produced columns.

use std::collections::BTreeSet;
use std::path::Path;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::crash::{clock_seed, next_random};
use meltwater_integration::kafka::KafkaBroker;
use meltwater_integration::{meltwater, meltwater_bin, meltwater_ok as run, printed_rows};

const ROWS: i64 = 60_000;
/// Offsets of the malformed records (in produce order).
const MALFORMED: [i64; 6] = [17, 5_000, 12_345, 30_001, 45_000, 59_998];

const JOB: &str = r#"
SET 'execution.checkpointing.interval' = '300 ms';
CREATE TABLE orders (
  order_id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3),
  part INT METADATA FROM 'partition' VIRTUAL,
  off BIGINT METADATA FROM 'offset' VIRTUAL,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka', 'topic' = 'orders',
  'properties.bootstrap.servers' = '${bootstrap}',
  'properties.max.partition.fetch.bytes' = '4096',
  'format' = 'json',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
  'error.policy' = '${policy}', 'error.dead-letter.topic' = 'orders_dlq'
);
CREATE TABLE IF NOT EXISTS lake.kc.raw${suffix} (order_id BIGINT, part INT, off BIGINT);
CREATE TABLE IF NOT EXISTS lake.kc.per_minute${suffix} (
  window_start TIMESTAMP(3), customer STRING, n BIGINT, total DECIMAL(38, 2));
INSERT INTO lake.kc.raw${suffix} SELECT order_id, part, off FROM orders;
INSERT INTO lake.kc.per_minute${suffix}
SELECT window_start, customer, COUNT(*), SUM(amount)
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, customer;
"#;

fn order(i: i64) -> String {
    let secs = i * 37 / 1000;
    format!(
        r#"{{"order_id":{i},"customer":"c{}","amount":"{}.{:02}","ts":"2026-03-01 {:02}:{:02}:{:02}.{:03}"}}"#,
        i % 13,
        i % 100,
        i % 7,
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (i * 37) % 1000
    )
}

/// `orders` on 3 partitions: record `i` on partition `i % 3`; the malformed ones are
/// truncated JSON.
fn produce_orders(broker: &KafkaBroker) {
    broker.create_topic("orders", 3);
    let values: Vec<String> = (0..ROWS)
        .map(|i| {
            if MALFORMED.contains(&i) {
                format!("{{\"order_id\": {i}, \"customer")
            } else {
                order(i)
            }
        })
        .collect();
    let keys: Vec<String> = (0..ROWS).map(|i| format!("k{i}")).collect();
    let records: Vec<(i32, Option<&str>, &str)> = (0..ROWS as usize)
        .map(|i| ((i % 3) as i32, Some(keys[i].as_str()), values[i].as_str()))
        .collect();
    broker.produce("orders", &records);
}

/// Creates `topic` with `partitions` partitions and produces `value(i)` for `i` in
/// `0..n` without keys, record `i` to partition `i % partitions`.
fn produce_spread(
    broker: &KafkaBroker,
    topic: &str,
    partitions: i32,
    n: i64,
    value: impl Fn(i64) -> String,
) {
    broker.create_topic(topic, partitions);
    let values: Vec<String> = (0..n).map(value).collect();
    let records: Vec<(i32, Option<&str>, &str)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i as i32) % partitions, None, v.as_str()))
        .collect();
    broker.produce(topic, &records);
}

/// The complete checkpoints of job `job` under `dir`.
fn checkpoints(dir: &Path, job: &str) -> usize {
    std::fs::read_dir(dir.join("meltwater-data/checkpoints").join(job))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("_manifest.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Runs the job up to `kills` times, each run killed with SIGKILL at a random moment
/// (up to 400 ms) after it completed a new checkpoint, so every restart resumes from one.
/// Returns how many runs were killed (fewer when a run ended first).
fn kill_after_checkpoints(dir: &Path, args: &[&str], kills: usize, seed: &mut u64) -> usize {
    let mut killed = 0;
    while killed < kills {
        let before = checkpoints(dir, "job");
        let mut child = Command::new(meltwater_bin())
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meltwater");
        let started = Instant::now();
        let mut ended = false;
        while checkpoints(dir, "job") <= before {
            if child.try_wait().unwrap().is_some() {
                ended = true;
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no checkpoint in 120 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if ended {
            break;
        }
        std::thread::sleep(Duration::from_millis(next_random(seed) % 400));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        killed += 1;
        eprintln!("killed run {killed} after {:?}", started.elapsed());
    }
    killed
}

/// The rows of an Iceberg table of the lake, read by a meltwater batch job into a print
/// sink, sorted.
fn table_rows(dir: &Path, table: &str, columns: &str) -> Vec<String> {
    let job = format!(
        "CREATE TABLE out ({columns}) WITH ('connector' = 'print');\nINSERT INTO out SELECT * FROM lake.kc.{table};\n"
    );
    std::fs::write(dir.join("read.sql"), job).unwrap();
    printed_rows(&run(dir, &["run", "read.sql", "--mode", "batch"]).0)
}

#[test]
fn a_killed_kafka_to_iceberg_job_resumes_exactly_once_and_matches_batch() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_orders(&broker);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), JOB).unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let stream_args = [
        "run",
        "job.sql",
        "--mode",
        "stream",
        "--param",
        &bootstrap,
        "--param",
        "policy=dead-letter",
        "--param",
        "suffix=",
    ];
    let mut seed = clock_seed();
    eprintln!("kafka crash test: seed {seed}");
    let killed = kill_after_checkpoints(dir.path(), &stream_args, 3, &mut seed);
    eprintln!("killed {killed} times");
    assert!(killed >= 1, "the job ended before it could be killed once");
    let (stdout, _) = run(dir.path(), &stream_args);
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");

    let (batch, _) = run(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--param",
            &bootstrap,
            "--param",
            "policy=skip",
            "--param",
            "suffix=_batch",
        ],
    );
    // Both statements read the topic: each record twice, each malformed one skipped
    // twice.
    let read = 2 * (ROWS as u64 - MALFORMED.len() as u64);
    assert!(
        batch.contains(&format!(
            "read  orders (kafka): {},{:03} rows",
            read / 1000,
            read % 1000
        )) && batch.contains("12 malformed records skipped"),
        "{batch}"
    );

    // Every well-formed record exactly once, with its partition and offset.
    let raw = table_rows(dir.path(), "raw", "order_id BIGINT, part INT, off BIGINT");
    assert_eq!(raw.len() as i64, ROWS - MALFORMED.len() as i64);
    let expected: BTreeSet<String> = (0..ROWS)
        .filter(|i| !MALFORMED.contains(i))
        .map(|i| format!("+I[{i}, {}, {}]", i % 3, i / 3))
        .collect();
    assert_eq!(raw.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        raw,
        table_rows(
            dir.path(),
            "raw_batch",
            "order_id BIGINT, part INT, off BIGINT"
        )
    );
    let columns = "window_start TIMESTAMP(3), customer STRING, n BIGINT, total DECIMAL(38, 2)";
    let windows = table_rows(dir.path(), "per_minute", columns);
    assert!(windows.len() > 13 * 30, "{} windows", windows.len());
    assert_eq!(windows, table_rows(dir.path(), "per_minute_batch", columns));

    // The malformed records are in the dead-letter topic (at least once: a restarted run
    // sends again those it sent after its last checkpoint), with the error and origin.
    let dlq = broker.read_all("orders_dlq", false);
    let origins: BTreeSet<(String, String)> = dlq
        .iter()
        .map(|r| {
            let h = |k: &str| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert!(
                h("meltwater.error").contains("malformed record at topic 'orders'"),
                "{r:?}"
            );
            (
                h("meltwater.source.partition"),
                h("meltwater.source.offset"),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = MALFORMED
        .iter()
        .map(|i| ((i % 3).to_string(), (i / 3).to_string()))
        .collect();
    assert_eq!(origins, expected);
}

#[test]
fn kafka_to_kafka_exactly_once_in_batch_and_at_least_once_in_stream() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_spread(&broker, "events", 2, 500, |i| {
        format!(r#"{{"id":{i},"kind":"k{}"}}"#, i % 4)
    });
    let dir = tempfile::tempdir().unwrap();
    let job = r#"
CREATE TABLE events (id BIGINT, kind STRING) WITH (
  'connector' = 'kafka', 'topic' = 'events', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE copied (id BIGINT, kind STRING, PRIMARY KEY (id) NOT ENFORCED) WITH (
  'connector' = 'kafka', 'topic' = '${out}', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = '${format}', 'sink.delivery-guarantee' = '${guarantee}');
INSERT INTO copied SELECT id, upper(kind) FROM events;
"#;
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let args = |mode: &'static str, out: &'static str, format: &'static str, g: &'static str| {
        vec![
            "run".to_string(),
            "job.sql".into(),
            "--mode".into(),
            mode.into(),
            "--param".into(),
            bootstrap.clone(),
            "--param".into(),
            format!("out={out}"),
            "--param".into(),
            format!("format={format}"),
            "--param".into(),
            format!("guarantee={g}"),
        ]
    };
    let run_args = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(dir.path(), &refs)
    };
    let (stdout, _) = run_args(args("batch", "copied_batch", "json", "exactly-once"));
    assert!(stdout.contains("insert copied: 500 rows"), "{stdout}");
    let committed = broker.read_all("copied_batch", false);
    assert_eq!(committed.len(), 500);
    let ids: BTreeSet<i64> = committed
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(
                r.key.as_deref(),
                Some(format!(r#"{{"id":{}}}"#, v["id"]).as_str())
            );
            assert_eq!(v["kind"], format!("K{}", v["id"].as_i64().unwrap() % 4));
            v["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, (0..500).collect());
    // Records with the same key went to the same partition.
    let uncommitted = broker.read_all("copied_batch", true);
    assert_eq!(uncommitted.len(), 500, "no aborted records");

    let (stdout, _) = run_args(args("stream", "copied_stream", "csv", "at-least-once"));
    assert!(stdout.contains("done in"), "{stdout}");
    let copied = broker.read_all("copied_stream", false);
    let values: BTreeSet<String> = copied.iter().filter_map(|r| r.value.clone()).collect();
    let expected: BTreeSet<String> = (0..500).map(|i| format!("{i},K{}", i % 4)).collect();
    assert_eq!(values, expected);
}

const CLICKS: i64 = 40_000;

/// Exactly-once Kafka → Kafka in stream mode, across crashes: a copy of the topic and an
/// updating per-page count (an upsert topic keyed by page), both `exactly-once`. The
/// first run aborts right after checkpoint 2 is complete and before its transactions
/// commit (the restart must commit them from the checkpoint); the second aborts right
/// after checkpoint 3's transactions committed (the restart must not send them again).
/// A `read_committed` consumer then sees every input record exactly once and the last
/// count of each page is its total.
#[test]
fn stream_exactly_once_kafka_to_kafka_across_crashes() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_spread(&broker, "clicks", 3, CLICKS, |i| {
        format!(r#"{{"id":{i},"page":"p{}"}}"#, i % 7)
    });
    let dir = tempfile::tempdir().unwrap();
    let job = r#"
SET 'execution.checkpointing.interval' = '200 ms';
CREATE TABLE clicks (id BIGINT, page STRING) WITH (
  'connector' = 'kafka', 'topic' = 'clicks', 'properties.bootstrap.servers' = '${bootstrap}',
  'properties.max.partition.fetch.bytes' = '2048',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE copied (id BIGINT, page STRING) WITH (
  'connector' = 'kafka', 'topic' = 'copied', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'json', 'sink.delivery-guarantee' = 'exactly-once');
CREATE TABLE per_page (page STRING, n BIGINT, PRIMARY KEY (page) NOT ENFORCED) WITH (
  'connector' = 'kafka', 'topic' = 'per_page', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'json', 'sink.delivery-guarantee' = 'exactly-once');
INSERT INTO copied SELECT id, page FROM clicks;
INSERT INTO per_page SELECT page, COUNT(*) FROM clicks GROUP BY page;
"#;
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let args = [
        "run",
        "job.sql",
        "--mode",
        "stream",
        "--param",
        bootstrap.as_str(),
    ];

    let aborted = |var: &str, checkpoint: u64| {
        let out = Command::new(meltwater_bin())
            .current_dir(dir.path())
            .args(args)
            .env(var, checkpoint.to_string())
            .output()
            .expect("run meltwater");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("checkpoint {checkpoint}")),
            "the run did not abort at checkpoint {checkpoint}: {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout),
        );
    };
    // Checkpoint 2 is complete but its transactions are not committed.
    aborted("MELTWATER_ABORT_BEFORE_COMMIT", 2);
    let visible = broker.read_all("copied", false).len();
    assert!(
        (visible as i64) < CLICKS,
        "only checkpoint 1 is committed, yet {visible} records are visible"
    );
    // The restart commits checkpoint 2 from the checkpoint, then dies once checkpoint 3
    // is committed: the next restart must find checkpoint 3's transaction committed.
    aborted("MELTWATER_ABORT_AFTER_COMMIT", 3);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("meltwater-data/checkpoints/job/chk-3/_manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pending_in_3: u64 = manifest["operators"]
        .as_object()
        .unwrap()
        .values()
        .filter(|o| o["name"] == "sink: kafka copied")
        .flat_map(|o| o["subtasks"].as_array().unwrap().iter())
        .map(|s| s["state"]["pending_records"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("checkpoint 3 held {pending_in_3} records for copied");
    let (stdout, _) = run(dir.path(), &args);
    assert!(stdout.contains("restored from checkpoint 3"), "{stdout}");
    if pending_in_3 > 0 {
        assert!(
            stdout.contains("checkpoint 3's transaction to topic copied was already committed"),
            "{stdout}"
        );
    }
    let copied = broker.read_all("copied", false);
    let mut ids: Vec<i64> = copied
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            v["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids.len() as i64, CLICKS, "each record once, none lost");
    assert_eq!(ids, (0..CLICKS).collect::<Vec<_>>());

    // The last committed value of each page's key is its count.
    let mut last = std::collections::BTreeMap::new();
    for r in broker.read_all("per_page", false) {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let page = key["page"].as_str().unwrap().to_string();
        match r.value.as_deref() {
            Some(v) => {
                let v: serde_json::Value = serde_json::from_str(v).unwrap();
                last.insert(page, v["n"].as_i64().unwrap());
            }
            None => {
                last.remove(&page);
            }
        }
    }
    let expected: std::collections::BTreeMap<String, i64> = (0..7)
        .map(|p| {
            (
                format!("p{p}"),
                (0..CLICKS).filter(|i| i % 7 == p).count() as i64,
            )
        })
        .collect();
    assert_eq!(last, expected);

    // After each checkpoint the source committed its offsets for the table's consumer
    // group (monitoring): at the end, every partition's end.
    for (partition, (committed, end)) in broker
        .group_offsets("meltwater-clicks", "clicks", 3)
        .into_iter()
        .enumerate()
    {
        assert_eq!(committed, Some(end), "partition {partition}");
    }
}

#[test]
fn a_malformed_record_under_fail_names_topic_partition_and_offset() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    broker.create_topic("bids", 1);
    broker.produce(
        "bids",
        &[
            (0, None, r#"{"id":1,"price":10}"#),
            (0, None, r#"{"id":2,"price":"ten"}"#),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        r#"
CREATE TABLE bids (id BIGINT, price BIGINT) WITH (
  'connector' = 'kafka', 'topic' = 'bids', 'properties.bootstrap.servers' = '{}',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out (id BIGINT, price BIGINT) WITH ('connector' = 'print');
INSERT INTO out SELECT * FROM bids;
"#,
        broker.bootstrap
    );
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    for mode in ["batch", "stream"] {
        let out = meltwater(dir.path(), &["run", "job.sql", "--mode", mode]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}");
        assert!(
            stderr.contains(
                "table 'bids': malformed record at topic 'bids' partition 0 offset 1, column 'price'"
            ),
            "{mode}: {stderr}"
        );
    }
}

#[test]
fn partitions_added_while_a_job_runs_are_read() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    broker.create_topic("growing", 1);
    let values: Vec<String> = (0..100).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let first: Vec<(i32, Option<&str>, &str)> =
        values.iter().map(|v| (0, None, v.as_str())).collect();
    broker.produce("growing", &first);
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        r#"
SET 'execution.checkpointing.interval' = '1 h';
CREATE TABLE growing (id BIGINT, part INT METADATA FROM 'partition' VIRTUAL) WITH (
  'connector' = 'kafka', 'topic' = 'growing', 'properties.bootstrap.servers' = '{}',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.topic-partition-discovery.interval' = '300 ms');
CREATE TABLE out (id BIGINT, part INT) WITH ('connector' = 'print');
INSERT INTO out SELECT * FROM growing;
"#,
        broker.bootstrap
    );
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    let stdout_path = dir.path().join("stdout.txt");
    let mut child = Command::new(meltwater_bin())
        .current_dir(dir.path())
        .args(["run", "job.sql", "--mode", "stream"])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start meltwater");
    let wait_for = |n: usize| {
        let started = Instant::now();
        loop {
            let rows = printed_rows(&std::fs::read_to_string(&stdout_path).unwrap_or_default());
            if rows.len() >= n || started.elapsed() > Duration::from_secs(60) {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(wait_for(100).len(), 100);
    broker.add_partitions("growing", 3);
    let more: Vec<String> = (100..200).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let records: Vec<(i32, Option<&str>, &str)> = more
        .iter()
        .enumerate()
        .map(|(i, v)| (1 + (i % 2) as i32, None, v.as_str()))
        .collect();
    broker.produce("growing", &records);
    let rows = wait_for(200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut expected: Vec<String> = (0..200)
        .map(|i| format!("+I[{i}, {}]", if i < 100 { 0 } else { 1 + (i - 100) % 2 }))
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
}

#[test]
fn registered_topics_are_read_and_written_without_ddl() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    broker.create_topic("shop.orders", 2);
    broker.create_topic("big_orders", 1);
    let values: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"order_id":{i},"customer":"c{}","amount":{}.5,"ts":"2026-03-01T12:00:{i:02}Z"}}"#,
                i % 3,
                i * 10
            )
        })
        .collect();
    let records: Vec<(i32, Option<&str>, &str)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i % 2) as i32, None, v.as_str()))
        .collect();
    broker.produce("shop.orders", &records);
    let dir = tempfile::tempdir().unwrap();
    let catalog = format!(
        r#"
[kafka.kl]
bootstrap-servers = "{}"
properties = {{ "client.id" = "meltwater-it" }}

[kafka.kl.topics.orders]
topic = "shop.orders"
format = "json"
columns = [
  "order_id BIGINT",
  "customer STRING",
  "amount DOUBLE",
  "ts TIMESTAMP(3)",
  "part INT METADATA FROM 'partition' VIRTUAL",
]
watermark = "ts - INTERVAL '5' SECOND"
options = {{ "scan.startup.mode" = "earliest-offset", "scan.bounded.mode" = "latest-offset" }}

[kafka.kl.topics.big_orders]
format = "json"
columns = "order_id BIGINT, amount DOUBLE"
primary-key = ["order_id"]
options = {{ "sink.delivery-guarantee" = "exactly-once" }}
"#,
        broker.bootstrap
    );
    std::fs::write(dir.path().join("dict.toml"), catalog).unwrap();
    std::fs::write(
        dir.path().join("job.sql"),
        "CREATE TABLE out (order_id BIGINT, customer STRING, amount DOUBLE, part INT)
           WITH ('connector' = 'print');
         INSERT INTO out SELECT order_id, customer, amount, part FROM kl.orders;
         INSERT INTO kl.big_orders SELECT order_id, amount FROM kl.orders WHERE amount > 50;",
    )
    .unwrap();
    let (stdout, _) = run(
        dir.path(),
        &[
            "--catalog",
            "dict.toml",
            "run",
            "job.sql",
            "--mode",
            "batch",
        ],
    );
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("+I[{i}, c{}, {}.5, {}]", i % 3, i * 10, i % 2))
        .collect();
    expected.sort();
    assert_eq!(printed_rows(&stdout), expected, "{stdout}");
    let mut written: Vec<(Option<String>, Option<String>)> = broker
        .read_all("big_orders", false)
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    written.sort();
    let mut expected: Vec<(Option<String>, Option<String>)> = (5..10)
        .map(|i| {
            (
                Some(format!(r#"{{"order_id":{i}}}"#)),
                Some(format!(r#"{{"order_id":{i},"amount":{}.5}}"#, i * 10)),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(written, expected);

    // A job's DDL cannot take a registered name.
    std::fs::write(
        dir.path().join("clash.sql"),
        "CREATE TABLE kl.orders (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '1');
         CREATE TABLE out (id BIGINT) WITH ('connector' = 'print');
         INSERT INTO out SELECT id FROM kl.orders;",
    )
    .unwrap();
    let out = meltwater(
        dir.path(),
        &[
            "--catalog",
            "dict.toml",
            "run",
            "clash.sql",
            "--mode",
            "batch",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "clash.sql:1:1: CREATE TABLE kl.orders: 'kl' is a Kafka cluster of the catalog file"
        ),
        "{stderr}"
    );
}

#[test]
fn infer_schema_prints_a_ddl_and_a_catalog_entry_for_a_topic() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    broker.create_topic("events", 3);
    let values: Vec<String> = (0..60)
        .map(|i| {
            let note = if i % 4 == 0 {
                r#","note":{"tags":["a"]}"#.to_string()
            } else {
                String::new()
            };
            let score = if i % 2 == 0 {
                format!("{i}")
            } else {
                format!("{i}.25")
            };
            format!(
                r#"{{"id":{i},"userName":"u{i}","score":{score},"ok":{},"timestamp":"2026-03-01T12:00:00.{i:03}Z"{note}}}"#,
                i % 3 == 0
            )
        })
        .collect();
    let records: Vec<(i32, Option<&str>, &str)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i % 3) as i32, None, v.as_str()))
        .collect();
    broker.produce("events", &records);
    broker.create_topic("nothing", 1);
    let dir = tempfile::tempdir().unwrap();

    let (stdout, _) = run(
        dir.path(),
        &[
            "catalog",
            "infer-schema",
            "--bootstrap-servers",
            &broker.bootstrap,
            "--topic",
            "events",
            "--samples",
            "30",
        ],
    );
    assert!(
        stdout.contains(&format!(
            "-- sampled 30 messages of topic 'events' on {}, from the start of 3 partitions:\n--   partition 0: 10 of 20 (offsets 0..20)\n--   partition 1: 10 of 20 (offsets 0..20)\n--   partition 2: 10 of 20 (offsets 0..20)\n",
            broker.bootstrap
        )),
        "{stdout}"
    );
    // The DDL is a job file's CREATE TABLE with the sampled columns.
    let start = stdout.find("CREATE TABLE").expect("a DDL");
    let end = start + stdout[start..].find(");").expect("the DDL's end") + 2;
    let ddl = &stdout[start..end];
    let job = meltwater_sql::parse_job("printed", ddl, &Default::default())
        .unwrap_or_else(|e| panic!("{e}\n{ddl}"));
    let meltwater_sql::JobStatement::CreateTable(t) = &job.statements[0].statement else {
        panic!("{ddl}");
    };
    let columns: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.data_type))
        .collect();
    assert_eq!(
        columns,
        [
            "id BIGINT",
            "\"userName\" STRING",
            "score DOUBLE",
            "ok BOOLEAN",
            "timestamp TIMESTAMP(3)",
            "note STRING"
        ],
        "{ddl}"
    );
    let options = t.options_map();
    assert_eq!(options["topic"], "events");
    assert_eq!(options["properties.bootstrap.servers"], broker.bootstrap);
    assert_eq!(options["format"], "json");
    assert_eq!(options["scan.startup.mode"], "earliest-offset");

    // The catalog entry registers the same table; a job reads it back through it.
    let entry = &stdout[stdout.find("[kafka.local]").expect("a catalog entry")..];
    let catalog = entry.replace(
        "options = { \"scan.startup.mode\" = \"earliest-offset\" }",
        "options = { \"scan.startup.mode\" = \"earliest-offset\", \"scan.bounded.mode\" = \"latest-offset\" }",
    );
    std::fs::write(dir.path().join("dict.toml"), &catalog).unwrap();
    std::fs::write(
        dir.path().join("job.sql"),
        "CREATE TABLE out (n BIGINT, notes BIGINT, top DOUBLE) WITH ('connector' = 'print');
         INSERT INTO out SELECT COUNT(*), COUNT(note), MAX(score) FROM local.events;",
    )
    .unwrap();
    let (stdout, _) = run(
        dir.path(),
        &[
            "--catalog",
            "dict.toml",
            "run",
            "job.sql",
            "--mode",
            "batch",
        ],
    );
    assert_eq!(printed_rows(&stdout), ["+I[60, 15, 59.25]"], "{catalog}");

    // Clear errors: no such topic, an empty topic, no broker.
    for (args, expected) in [
        (
            vec![
                "--bootstrap-servers",
                broker.bootstrap.as_str(),
                "--topic",
                "missing",
            ],
            format!(
                "error: topic 'missing' does not exist on {}",
                broker.bootstrap
            ),
        ),
        (
            vec![
                "--bootstrap-servers",
                broker.bootstrap.as_str(),
                "--topic",
                "nothing",
            ],
            "error: topic 'nothing' holds no messages (partitions: 1)".to_string(),
        ),
        (
            vec!["--bootstrap-servers", "127.0.0.1:9", "--topic", "events"],
            "error: cannot reach the Kafka brokers 127.0.0.1:9 within 10 s".to_string(),
        ),
    ] {
        let mut all = vec!["catalog", "infer-schema"];
        all.extend(args);
        let out = meltwater(dir.path(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?}");
        assert!(stderr.starts_with(&expected), "{all:?}: {stderr}");
    }
}

/// Debezium change events for users `0..300`: a snapshot read of user 0, creates for
/// the others, an update of every third user's city, a delete of every seventh, one
/// event wrapped in Kafka Connect's schema envelope, one tombstone and one malformed
/// event; keyed by id over 2 partitions. Returns the final users (id, city).
fn produce_user_changes(broker: &KafkaBroker) -> std::collections::BTreeMap<i64, String> {
    broker.create_topic("users_cdc", 2);
    let user = |i: i64, city: i64| format!(r#"{{"id":{i},"name":"u{i}","city":"c{city}"}}"#);
    let mut events: Vec<(i64, Option<String>)> = Vec::new();
    let mut users = std::collections::BTreeMap::new();
    for i in 0..300 {
        let op = if i == 0 { "r" } else { "c" };
        let event = format!(
            r#"{{"before":null,"after":{},"op":"{op}","ts_ms":{i}}}"#,
            user(i, i % 5)
        );
        let event = if i == 1 {
            format!(r#"{{"schema":{{"type":"struct"}},"payload":{event}}}"#)
        } else {
            event
        };
        events.push((i, Some(event)));
        users.insert(i, format!("c{}", i % 5));
    }
    for i in (0..300).step_by(3) {
        events.push((
            i,
            Some(format!(
                r#"{{"before":{},"after":{},"op":"u"}}"#,
                user(i, i % 5),
                user(i, (i + 1) % 5)
            )),
        ));
        users.insert(i, format!("c{}", (i + 1) % 5));
    }
    for i in (0..300).step_by(7) {
        let city: i64 = users[&i][1..].parse().unwrap();
        events.push((
            i,
            Some(format!(
                r#"{{"before":{},"after":null,"op":"d"}}"#,
                user(i, city)
            )),
        ));
        events.push((i, None)); // Debezium's tombstone after a delete.
        users.remove(&i);
    }
    events.push((
        5,
        Some(r#"{"before":null,"after":{"id":"five"},"op":"c"}"#.into()),
    ));
    let keys: Vec<String> = events
        .iter()
        .map(|(i, _)| format!(r#"{{"id":{i}}}"#))
        .collect();
    let mut records = Vec::new();
    for ((i, value), key) in events.iter().zip(&keys) {
        match value {
            Some(v) => records.push(((i % 2) as i32, Some(key.as_str()), v.as_str())),
            None => broker.produce_tombstone("users_cdc", (i % 2) as i32, key),
        }
    }
    // Tombstones went first (each produced alone): harmless, they carry no change.
    broker.produce("users_cdc", &records);
    users
}

/// `debezium-json` read as an updating stream: a copy of the table (upserted by id)
/// and a count per city written to Iceberg tables with primary keys, in stream mode and
/// in batch mode (which applies the bounded changelog); both hold the final users and
/// their counts, and the malformed event was skipped and counted.
#[test]
fn debezium_changes_give_the_same_tables_in_stream_and_batch_mode() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    let users = produce_user_changes(&broker);
    let dir = tempfile::tempdir().unwrap();
    let job = r#"
SET 'execution.checkpointing.interval' = '200 ms';
CREATE TABLE users (id BIGINT, name STRING, city STRING) WITH (
  'connector' = 'kafka', 'topic' = 'users_cdc', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'debezium-json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset', 'error.policy' = 'skip');
CREATE TABLE IF NOT EXISTS lake.kc.users_${mode} (id BIGINT, name STRING, city STRING,
  PRIMARY KEY (id) NOT ENFORCED);
CREATE TABLE IF NOT EXISTS lake.kc.per_city_${mode} (city STRING, n BIGINT,
  PRIMARY KEY (city) NOT ENFORCED);
INSERT INTO lake.kc.users_${mode} SELECT id, name, city FROM users;
INSERT INTO lake.kc.per_city_${mode} SELECT city, COUNT(*) FROM users GROUP BY city;
"#;
    std::fs::write(dir.path().join("job.sql"), job).unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let mut expected_users: Vec<String> = users
        .iter()
        .map(|(i, city)| format!("+I[{i}, u{i}, {city}]"))
        .collect();
    let mut per_city = std::collections::BTreeMap::new();
    for city in users.values() {
        *per_city.entry(city.clone()).or_insert(0) += 1;
    }
    expected_users.sort();
    let expected_counts: Vec<String> = per_city
        .iter()
        .map(|(city, n)| format!("+I[{city}, {n}]"))
        .collect();
    for mode in ["stream", "batch"] {
        let param = format!("mode={mode}");
        let (stdout, _) = run(
            dir.path(),
            &[
                "run", "job.sql", "--mode", mode, "--param", &bootstrap, "--param", &param,
            ],
        );
        assert!(
            // Each INSERT reads the topic: the malformed event is skipped twice.
            stdout.contains("2 malformed records skipped"),
            "{mode}: {stdout}"
        );
        let got = table_rows(
            dir.path(),
            &format!("users_{mode}"),
            "id BIGINT, name STRING, city STRING",
        );
        assert_eq!(got, expected_users, "{mode}");
        let counts = table_rows(
            dir.path(),
            &format!("per_city_{mode}"),
            "city STRING, n BIGINT",
        );
        assert_eq!(counts, expected_counts, "{mode}");
    }
}

/// `key.format`, `key.fields` and `'value.fields-include' = 'EXCEPT_KEY'`: a batch job
/// writes records keyed `{"id":N}` whose values hold the other columns only; the same
/// table read in batch and stream mode gives the rows back, and a record whose key does
/// not decode is skipped and counted.
#[test]
fn key_fields_write_and_read_records_keyed_by_their_columns() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_spread(&broker, "people_src", 2, 50, |i| {
        format!(r#"{{"id":{i},"name":"p{i}"}}"#)
    });
    let dir = tempfile::tempdir().unwrap();
    let people = r#"
CREATE TABLE people (id BIGINT NOT NULL, name STRING) WITH (
  'connector' = 'kafka', 'topic' = 'people', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'json', 'key.format' = 'json', 'key.fields' = 'id',
  'value.fields-include' = 'EXCEPT_KEY', 'error.policy' = 'skip',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
"#;
    std::fs::write(
        dir.path().join("write.sql"),
        format!(
            r#"{people}
CREATE TABLE src (id BIGINT, name STRING) WITH (
  'connector' = 'kafka', 'topic' = 'people_src', 'properties.bootstrap.servers' = '${{bootstrap}}',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
INSERT INTO people SELECT id, name FROM src;
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("read.sql"),
        format!(
            "{people}\nCREATE TABLE out (id BIGINT, name STRING) WITH ('connector' = 'print');\nINSERT INTO out SELECT id, name FROM people;\n"
        ),
    )
    .unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    run(
        dir.path(),
        &["run", "write.sql", "--mode", "batch", "--param", &bootstrap],
    );
    let written = broker.read_all("people", false);
    assert_eq!(written.len(), 50);
    for r in &written {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let id = key["id"].as_i64().unwrap();
        assert_eq!(
            r.value.as_deref(),
            Some(format!(r#"{{"name":"p{id}"}}"#).as_str())
        );
    }
    // A record whose key is not the key format's.
    broker.produce("people", &[(0, Some("not json"), r#"{"name":"x"}"#)]);
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..50).map(|i| format!("+I[{i}, p{i}]")).collect();
        v.sort();
        v
    };
    for mode in ["batch", "stream"] {
        let (stdout, _) = run(
            dir.path(),
            &["run", "read.sql", "--mode", mode, "--param", &bootstrap],
        );
        assert_eq!(printed_rows(&stdout), expected, "{mode}");
        assert!(
            stdout.contains("1 malformed record skipped"),
            "{mode}: {stdout}"
        );
    }
}

/// An updating aggregate written as `debezium-json` change events (no primary key) in
/// stream mode, exactly once, then read back as a changelog in batch mode: the rows the
/// events leave are the final counts, and retractions went out as delete events.
#[test]
fn an_updating_stream_written_as_change_events_reads_back_as_its_result() {
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_spread(&broker, "visits", 2, 300, |i| {
        format!(r#"{{"id":{i},"page":"p{}"}}"#, i % 4)
    });
    broker.create_topic("page_changes", 1);
    let dir = tempfile::tempdir().unwrap();
    let changes = r#"
CREATE TABLE page_changes (page STRING, n BIGINT) WITH (
  'connector' = 'kafka', 'topic' = 'page_changes', 'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'debezium-json', 'sink.delivery-guarantee' = 'exactly-once',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
"#;
    std::fs::write(
        dir.path().join("write.sql"),
        format!(
            r#"SET 'execution.checkpointing.interval' = '100 ms';
{changes}
CREATE TABLE visits (id BIGINT, page STRING) WITH (
  'connector' = 'kafka', 'topic' = 'visits', 'properties.bootstrap.servers' = '${{bootstrap}}',
  'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
INSERT INTO page_changes SELECT page, COUNT(*) FROM visits GROUP BY page;
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("read.sql"),
        format!(
            "{changes}\nCREATE TABLE out (page STRING, n BIGINT) WITH ('connector' = 'print');\nINSERT INTO out SELECT page, n FROM page_changes;\n"
        ),
    )
    .unwrap();
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    run(
        dir.path(),
        &[
            "run",
            "write.sql",
            "--mode",
            "stream",
            "--param",
            &bootstrap,
        ],
    );
    let events = broker.read_all("page_changes", false);
    let ops: Vec<String> = events
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            v["op"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ops.iter().all(|o| o == "c" || o == "d"), "{ops:?}");
    assert_eq!(
        ops.iter().filter(|o| *o == "c").count() - ops.iter().filter(|o| *o == "d").count(),
        4,
        "one live row per page"
    );
    let (stdout, _) = run(
        dir.path(),
        &["run", "read.sql", "--mode", "batch", "--param", &bootstrap],
    );
    assert_eq!(
        printed_rows(&stdout),
        vec!["+I[p0, 75]", "+I[p1, 75]", "+I[p2, 75]", "+I[p3, 75]"]
    );
}

/// Every read of one kafka table in a job reads the offsets its first read resolved, so
/// that the statements of a job agree even while the topic grows: a second source of the
/// same table, opened after more records arrived, gets the same bounded ranges.
#[test]
fn the_reads_of_a_table_in_one_job_share_their_bounded_ranges() {
    use meltwater_connectors::{ConnectorTable, TableDef};
    let Some(broker) = KafkaBroker::start("the Kafka end-to-end tests") else {
        return;
    };
    produce_spread(&broker, "growing", 2, 10, |i| format!(r#"{{"id":{i}}}"#));
    let def = || TableDef {
        name: "growing".into(),
        schema: std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "id",
                datafusion::arrow::datatypes::DataType::Int64,
                true,
            ),
        ])),
        options: [
            ("connector", "kafka"),
            ("topic", "growing"),
            ("properties.bootstrap.servers", broker.bootstrap.as_str()),
            ("format", "json"),
            ("scan.startup.mode", "earliest-offset"),
            ("scan.bounded.mode", "latest-offset"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        primary_key: Vec::new(),
        metadata: Default::default(),
    };
    let table = meltwater_connectors::kafka::KafkaTable::try_new(def()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ranges = |source: std::sync::Arc<dyn meltwater_connectors::stream::StreamSource>| {
        runtime.block_on(source.discover_splits()).unwrap();
        source.enumerator_state()
    };
    let first = ranges(table.stream_source().unwrap());
    broker.produce(
        "growing",
        &[(0, None, r#"{"id":10}"#), (1, None, r#"{"id":11}"#)],
    );
    let second = ranges(table.stream_source().unwrap());
    assert_eq!(first, second);
    assert_eq!(first["ranges"]["growing/0"]["stop"], 5, "{first}");
    // A table of another job (planned anew) sees the new records.
    let again = meltwater_connectors::kafka::KafkaTable::try_new(def()).unwrap();
    let third = ranges(again.stream_source().unwrap());
    assert_eq!(third["ranges"]["growing/0"]["stop"], 6, "{third}");
}
