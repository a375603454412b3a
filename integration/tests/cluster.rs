//! Batch jobs on a Ballista cluster: one `meltwater cluster scheduler` and two
//! `meltwater cluster executor`s on 127.0.0.1, each started in a directory of its own,
//! run a job whose statements shuffle (a grouped aggregate, a join), assign windows
//! and overwrite partitions of Iceberg tables. The tables it leaves equal those the
//! embedded run of the same job leaves, row for row (also after DELETE, UPDATE and MERGE,
//! merge-on-read and copy-on-write); both executors ran tasks; a failed write task
//! fails the job, which commits nothing; and an unreachable scheduler is named in the
//! error. Kafka scans and sinks run on the
//! executors too, with the same rows and records as the embedded run.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::kafka::KafkaBroker;
use meltwater_integration::{meltwater, meltwater_bin, meltwater_ok, printed_rows};

const TABLES: &str = r#"
CREATE TABLE orders (id BIGINT, customer BIGINT, amount DOUBLE, day STRING, ts TIMESTAMP(3)) WITH (
  'connector' = 'filesystem', 'path' = 'orders.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE customers (customer BIGINT, region STRING) WITH (
  'connector' = 'filesystem', 'path' = 'customers.csv', 'format' = 'csv', 'csv.header' = 'true'
);
CREATE TABLE IF NOT EXISTS lake.db.by_customer (customer BIGINT, n BIGINT, total DOUBLE)
  WITH ('write.delete.mode' = 'merge-on-read');
CREATE TABLE IF NOT EXISTS lake.db.by_region (region STRING, n BIGINT, top DOUBLE)
  WITH ('write.update.mode' = 'merge-on-read');
CREATE TABLE IF NOT EXISTS lake.db.hourly (window_start TIMESTAMP(3), n BIGINT, total DOUBLE)
  WITH ('write.merge.mode' = 'merge-on-read');
CREATE TABLE IF NOT EXISTS lake.db.daily (day STRING, customer BIGINT, n BIGINT)
  PARTITIONED BY (day);
CREATE TABLE IF NOT EXISTS lake.db.latest (customer BIGINT, last_id BIGINT, day STRING,
  PRIMARY KEY (customer) NOT ENFORCED) WITH ('write.upsert' = 'true');
CREATE TABLE IF NOT EXISTS lake.db.day_totals (day STRING, customers BIGINT, n BIGINT);
"#;

const JOB: &str = r#"
INSERT INTO lake.db.by_customer
SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer;
INSERT INTO lake.db.by_region
SELECT c.region, count(*), max(o.amount)
FROM orders o JOIN customers c ON o.customer = c.customer GROUP BY c.region;
INSERT INTO lake.db.hourly
SELECT window_start, count(*), sum(amount)
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' HOUR))
GROUP BY window_start, window_end;
INSERT OVERWRITE lake.db.daily
SELECT day, customer, count(*) FROM orders WHERE day >= '${from}' GROUP BY day, customer;
INSERT INTO lake.db.latest
SELECT customer, max(id), max(day) FROM orders WHERE day >= '${from}' GROUP BY customer;
-- Reads the partitioned table as the job found it (the previous run's partitions).
MERGE INTO lake.db.day_totals t
USING (SELECT day, count(*) AS customers, sum(n) AS n FROM lake.db.daily GROUP BY day) s
ON t.day = s.day
WHEN MATCHED AND s.day < '${from}' THEN DELETE
WHEN MATCHED THEN UPDATE SET customers = s.customers, n = t.n + s.n
WHEN NOT MATCHED THEN INSERT VALUES (s.day, s.customers, s.n);
"#;

/// Reads every table back through the embedded runtime, printing its rows.
const READ: &str = r#"
CREATE TABLE p1 (customer BIGINT, n BIGINT, total DOUBLE) WITH ('connector' = 'print');
CREATE TABLE p2 (region STRING, n BIGINT, top DOUBLE) WITH ('connector' = 'print');
CREATE TABLE p3 (window_start TIMESTAMP(3), n BIGINT, total DOUBLE) WITH ('connector' = 'print');
CREATE TABLE p4 (day STRING, customer BIGINT, n BIGINT) WITH ('connector' = 'print');
CREATE TABLE p5 (customer BIGINT, last_id BIGINT, day STRING) WITH ('connector' = 'print');
CREATE TABLE p6 (day STRING, customers BIGINT, n BIGINT) WITH ('connector' = 'print');
INSERT INTO p1 SELECT * FROM lake.db.by_customer;
INSERT INTO p2 SELECT * FROM lake.db.by_region;
INSERT INTO p3 SELECT * FROM lake.db.hourly;
INSERT INTO p4 SELECT * FROM lake.db.daily;
INSERT INTO p5 SELECT * FROM lake.db.latest;
INSERT INTO p6 SELECT * FROM lake.db.day_totals;
"#;

const ORDERS: u64 = 20_000;

fn write_inputs(dir: &Path) {
    let mut csv = String::from("id,customer,amount,day,ts\n");
    for id in 0..ORDERS {
        let customer = (id * 7919) % 500;
        let day = 1 + (id % 28);
        let hour = (id / 7) % 24;
        let _ = writeln!(
            csv,
            "{id},{customer},{}.{:02},2026-02-{day:02},2026-02-{day:02} {hour:02}:{:02}:00",
            (id * 31) % 1000,
            id % 100,
            id % 60
        );
    }
    std::fs::write(dir.join("orders.csv"), csv).unwrap();
    let mut customers = String::from("customer,region\n");
    for c in 0..500 {
        let _ = writeln!(customers, "{c},region-{}", c % 9);
    }
    std::fs::write(dir.join("customers.csv"), customers).unwrap();
    std::fs::write(dir.join("job.sql"), format!("{TABLES}{JOB}")).unwrap();
    std::fs::write(dir.join("read.sql"), format!("{TABLES}{READ}")).unwrap();
    let totals = READ
        .lines()
        .filter(|l| l.contains("p6"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("read_totals.sql"), format!("{TABLES}{totals}\n")).unwrap();
}

/// A port nothing listens on now (and, for executors, the one after it too).
fn free_port(pair: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !pair || port == u16::MAX {
            return port;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The cluster's processes, killed when the test ends.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    Command::new(meltwater_bin())
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rows of every table, read back by the embedded runtime in `dir`.
fn tables(dir: &Path) -> Vec<String> {
    read(dir, "read.sql")
}

fn read(dir: &Path, job: &str) -> Vec<String> {
    let (out, _) = meltwater_ok(dir, &["run", job, "--mode", "batch", "--pipelined"]);
    printed_rows(&out)
}

/// Job directories an executor's work directory holds (Ballista keeps each job's
/// shuffle files under `<work dir>/<job id>`).
fn job_dirs(work: &Path) -> usize {
    std::fs::read_dir(work)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .count()
        })
        .unwrap_or(0)
}

/// One scheduler and two executors (one task at a time each) under `root`; returns the
/// processes, the scheduler's `df://` URL and the executors' work directories.
fn start_cluster(root: &Path, executor_env: &[(&str, &Path)]) -> (Cluster, String, Vec<PathBuf>) {
    let scheduler_port = free_port(false);
    let scheduler = format!("127.0.0.1:{scheduler_port}");
    let mut cluster = Cluster(Vec::new());
    cluster.0.push(spawn(
        &root.join("scheduler"),
        &["cluster", "scheduler", "--bind", &scheduler],
        &[],
    ));
    wait_listening(scheduler_port);
    let mut works = Vec::new();
    for i in 0..2 {
        let port = free_port(true);
        let dir = root.join(format!("executor-{i}"));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        cluster.0.push(spawn(
            &dir,
            &[
                "cluster",
                "executor",
                "--scheduler",
                &scheduler,
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--concurrent-tasks",
                "1",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            executor_env,
        ));
        wait_listening(port);
        works.push(work);
    }
    (cluster, format!("df://{scheduler}"), works)
}

#[test]
fn cluster_run_equals_embedded_run() {
    let root = tempfile::tempdir().unwrap();
    let client = root.path().join("client");
    let embedded = root.path().join("embedded");
    for d in [&client, &embedded] {
        std::fs::create_dir_all(d).unwrap();
        write_inputs(d);
    }

    let (_cluster, url, works) = start_cluster(root.path(), &[]);
    let run = |dir: &Path, extra: &[&str], from: &str| {
        let param = format!("from={from}");
        let mut args = vec![
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--parallelism",
            "4",
            "--param",
            &param,
        ];
        args.extend_from_slice(extra);
        meltwater_ok(dir, &args).0
    };

    let out = run(&client, &["--cluster", &url], "2026-02-01");
    assert!(out.contains("on the cluster df://"), "{out}");
    assert!(out.contains("lake.db.by_customer"), "{out}");
    run(&embedded, &[], "2026-02-01");
    let on_cluster = tables(&client);
    assert_eq!(on_cluster, tables(&embedded));
    // 500 customers, 9 regions, 24 hours on 28 days, 500 customers' days.
    assert!(on_cluster.len() > 500 + 9 + 24 * 28, "{}", on_cluster.len());
    for work in &works {
        assert!(
            job_dirs(work) > 0,
            "executor work directory {} holds no job: the executor ran no task",
            work.display()
        );
    }

    // A backfill of the second half of the month on the cluster replaces only those
    // partitions, upserts the latest orders and merges the first run's daily partitions
    // (an Iceberg scan with partition values), as the embedded run does.
    run(&client, &["--cluster", &url], "2026-02-15");
    run(&embedded, &[], "2026-02-15");
    let on_cluster = tables(&client);
    assert_eq!(on_cluster, tables(&embedded));
    // The MERGE inserted one total per day of the first run's partitions.
    let totals = read(&client, "read_totals.sql");
    assert_eq!(totals.len(), 28, "{totals:?}");
    assert_eq!(totals, read(&embedded, "read_totals.sql"));

    // DELETE, UPDATE and MERGE run on the executors too: a merge-on-read DELETE, UPDATE
    // and MERGE (position deletes) and a copy-on-write DELETE (rewritten files; the job's
    // MERGE above rewrote files of day_totals).
    let changes = format!(
        "{TABLES}DELETE FROM lake.db.by_customer WHERE customer < 10;\n\
         UPDATE lake.db.by_region SET top = top * 2 WHERE region IN ('region-3', 'region-5');\n\
         DELETE FROM lake.db.daily WHERE customer % 3 = 0 AND day < '2026-02-04';\n\
         MERGE INTO lake.db.hourly t USING (\n\
           SELECT window_start, max(n) AS n FROM lake.db.hourly\n\
           WHERE date_part('hour', window_start) = 3 GROUP BY window_start\n\
           UNION ALL SELECT TIMESTAMP '2030-01-01 00:00:00', 1) AS s\n\
         ON t.window_start = s.window_start\n\
         WHEN MATCHED AND s.n % 2 = 0 THEN DELETE\n\
         WHEN MATCHED THEN UPDATE SET total = t.total + 1\n\
         WHEN NOT MATCHED THEN INSERT VALUES (s.window_start, s.n, 0.0);\n"
    );
    for dir in [&client, &embedded] {
        std::fs::write(dir.join("changes.sql"), &changes).unwrap();
    }
    let before = tables(&client);
    meltwater_ok(
        &client,
        &["run", "changes.sql", "--mode", "batch", "--cluster", &url],
    );
    meltwater_ok(&embedded, &["run", "changes.sql", "--mode", "batch"]);
    let after = tables(&client);
    assert_eq!(after, tables(&embedded));
    assert_ne!(after, before);
    assert!(
        after.iter().any(|r| r.contains("2030-01-01")),
        "the MERGE's inserted row is missing"
    );
    assert!(
        after.len() < before.len(),
        "{} rows, {} before",
        after.len(),
        before.len()
    );
}

/// A write task of the job's last statement that fails on an executor after writing its
/// files fails the job (Ballista retries lost executors and shuffle fetches, not task
/// errors), and the job commits nothing, not even the statements before; the rerun commits tables equal to the embedded run's, without the failed
/// task's files, which stay on disk unreferenced.
#[test]
fn a_failed_write_task_fails_the_job_and_commits_nothing() {
    let root = tempfile::tempdir().unwrap();
    let markers = root.path().join("failed-attempts");
    std::fs::create_dir_all(&markers).unwrap();
    // The last statement's first write task fails, after the other three statements
    // wrote their files.
    let fail = PathBuf::from(format!("{}:lake.db.daily", markers.display()));
    let (_cluster, url, _) = start_cluster(root.path(), &[("MELTWATER_FAIL_CLUSTER_WRITE", &fail)]);
    let (client, embedded) = (root.path().join("client"), root.path().join("embedded"));
    let args = |cluster: Option<&'static str>| {
        let mut args = vec![
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--parallelism",
            "4",
            "--param",
            "from=2026-02-01",
        ];
        args.extend(cluster.map(|_| "--cluster"));
        args
    };
    for dir in [&client, &embedded] {
        std::fs::create_dir_all(dir).unwrap();
        write_inputs(dir);
    }
    let mut failing = args(Some(""));
    failing.push(&url);
    let out = meltwater(&client, &failing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("injected failure of the write"), "{stderr}");
    assert!(tables(&client).is_empty(), "a failed job committed rows");
    meltwater_ok(&client, &failing);
    meltwater_ok(&embedded, &args(None));
    assert_eq!(tables(&client), tables(&embedded));
    // The failed task's data files are in the warehouse but in no snapshot.
    let parquet = |dir: &Path| {
        let mut n = 0;
        let mut stack = vec![dir.join("meltwater-data/warehouse")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    n += 1;
                }
            }
        }
        n
    };
    let (on_disk, committed) = (parquet(&client), parquet(&embedded));
    // The failed run's files of all four statements stayed behind.
    assert!(
        on_disk > committed,
        "{on_disk} files on disk, {committed} embedded"
    );
}

#[test]
fn unreachable_scheduler_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let port = free_port(false);
    let url = format!("df://127.0.0.1:{port}");
    let out = meltwater(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--param",
            "from=2026-02-01",
            "--cluster",
            &url,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

const KAFKA_JOB: &str = r#"
CREATE TABLE events (id BIGINT, user_id BIGINT, kind STRING) WITH (
  'connector' = 'kafka', 'topic' = 'events',
  'properties.bootstrap.servers' = '${bootstrap}', 'format' = 'json',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
  'error.policy' = 'skip'
);
CREATE TABLE counts_out (kind STRING, n BIGINT, users BIGINT) WITH (
  'connector' = 'kafka', 'topic' = '${out}',
  'properties.bootstrap.servers' = '${bootstrap}', 'format' = 'json'
);
CREATE TABLE IF NOT EXISTS lake.k.per_user (user_id BIGINT, n BIGINT, kinds BIGINT);
INSERT INTO lake.k.per_user
SELECT user_id, count(*), count(DISTINCT kind) FROM events GROUP BY user_id;
INSERT INTO counts_out SELECT kind, count(*), count(DISTINCT user_id) FROM events GROUP BY kind;
"#;

const KAFKA_READ: &str = r#"
CREATE TABLE p (user_id BIGINT, n BIGINT, kinds BIGINT) WITH ('connector' = 'print');
INSERT INTO p SELECT * FROM lake.k.per_user;
"#;

/// Kafka on a cluster: executors read the offset ranges the scheduler resolved (three
/// partitions, malformed records skipped) and produce to a topic; the Iceberg table and
/// the records produced equal the embedded run's.
#[test]
fn kafka_source_and_sink_on_a_cluster() {
    let Some(broker) = KafkaBroker::start("Kafka on a cluster") else {
        return;
    };
    broker.create_topic("events", 3);
    let mut values = Vec::new();
    for id in 0..3_000i64 {
        let kind = ["view", "click", "buy", "share"][(id % 4) as usize];
        values.push(format!(
            r#"{{"id": {id}, "user_id": {}, "kind": "{kind}"}}"#,
            id * 13 % 97
        ));
    }
    values[1_234] = "{not json".to_string();
    let records: Vec<(i32, Option<&str>, &str)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i % 3) as i32, None, v.as_str()))
        .collect();
    broker.produce("events", &records);

    let root = tempfile::tempdir().unwrap();
    let (_cluster, url, _) = start_cluster(root.path(), &[]);
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let mut results = Vec::new();
    for (name, cluster) in [("cluster", Some(url.as_str())), ("embedded", None)] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.sql"), KAFKA_JOB).unwrap();
        std::fs::write(
            dir.join("read.sql"),
            format!("{}{KAFKA_READ}", KAFKA_JOB.split("INSERT").next().unwrap()),
        )
        .unwrap();
        let out = format!("out={name}_counts");
        let mut args = vec![
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--parallelism",
            "3",
            "--param",
            &bootstrap,
            "--param",
            &out,
        ];
        if let Some(url) = cluster {
            args.extend(["--cluster", url]);
        }
        meltwater_ok(&dir, &args);
        let (printed, _) = meltwater_ok(
            &dir,
            &[
                "run",
                "read.sql",
                "--mode",
                "batch",
                "--pipelined",
                "--param",
                &bootstrap,
                "--param",
                &out,
            ],
        );
        let mut produced: Vec<String> = broker
            .read_all(&format!("{name}_counts"), false)
            .into_iter()
            .filter_map(|r| r.value)
            .collect();
        produced.sort();
        results.push((printed_rows(&printed), produced));
    }
    let (cluster, embedded) = (&results[0], &results[1]);
    assert_eq!(cluster.0.len(), 97, "{:?}", cluster.0);
    assert_eq!(cluster.0, embedded.0);
    assert_eq!(cluster.1.len(), 4, "{:?}", cluster.1);
    assert_eq!(cluster.1, embedded.1);
    // 2,999 well-formed records, 750 of each kind but the one the malformed record was.
    let total: u64 = cluster
        .1
        .iter()
        .map(|v| {
            let v: serde_json::Value = serde_json::from_str(v).unwrap();
            v["n"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total, 2_999);
}
