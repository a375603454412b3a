//! A real Kafka-compatible broker for end-to-end tests: `noida-db`'s Kafka service (from
//! PyPI, installed into the project's venv by `integration/python/setup_venv.sh`), started
//! on 127.0.0.1 with a fresh data directory and stopped when dropped; plus helpers to
//! create topics, produce and read back with `read_committed`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A running broker; stopped (and its data removed) on drop.
pub struct KafkaBroker {
    child: Child,
    pub bootstrap: String,
    _data: tempfile::TempDir,
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// `None` for a tombstone.
    pub value: Option<String>,
    pub headers: Vec<(String, String)>,
}

fn broker_binary(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "noida-db is not installed in {}: run `bash integration/python/setup_venv.sh` ({})",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

impl KafkaBroker {
    /// Starts a broker, or returns `None` (having said so) where the interop venv cannot
    /// be made outside CI; see [`crate::interop_python`].
    pub fn start(what: &str) -> Option<Self> {
        let python = crate::interop_python(what)?;
        let bin = broker_binary(&python);
        for _ in 0..3 {
            let port = free_port();
            let data = tempfile::tempdir().expect("a temp dir");
            let log = std::fs::File::create(data.path().join("broker.log")).expect("a log file");
            let child = Command::new(&bin)
                .args([
                    "start",
                    "--only",
                    "kafka",
                    "--host",
                    "127.0.0.1",
                    "--kafka-port",
                ])
                .arg(port.to_string())
                .arg("--data-dir")
                .arg(data.path().join("data"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut broker = KafkaBroker {
                child,
                bootstrap: format!("127.0.0.1:{port}"),
                _data: data,
            };
            if broker.wait_ready() {
                return Some(broker);
            }
        }
        panic!("the Kafka broker {} did not start", bin.display());
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let consumer: BaseConsumer = self.config().create().expect("a consumer");
            if consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().expect("an admin");
        let results = runtime()
            .block_on(admin.create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .expect("create_topics");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
    }

    /// Grows `topic` to `total` partitions.
    pub fn add_partitions(&self, topic: &str, total: usize) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().expect("an admin");
        let results = runtime()
            .block_on(
                admin.create_partitions(&[NewPartitions::new(topic, total)], &AdminOptions::new()),
            )
            .expect("create_partitions");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot add partitions to {t}: {e}"));
        }
    }

    /// Produces `(partition, key, value)` records, in order, and waits for each.
    pub fn produce(&self, topic: &str, records: &[(i32, Option<&str>, &str)]) {
        let producer: FutureProducer = self
            .config()
            .set("linger.ms", "5")
            .create()
            .expect("a producer");
        runtime().block_on(async {
            let mut pending = Vec::new();
            for (partition, key, value) in records {
                let mut r: FutureRecord<'_, str, str> =
                    FutureRecord::to(topic).partition(*partition).payload(value);
                if let Some(k) = key {
                    r = r.key(k);
                }
                pending.push(
                    producer
                        .send_result(r)
                        .unwrap_or_else(|(e, _)| panic!("produce: {e}")),
                );
            }
            for p in pending {
                p.await
                    .expect("delivery")
                    .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
            }
        });
    }

    /// The offsets consumer group `group` committed on partitions `0..partitions` of
    /// `topic` (`None` where it committed none), and each partition's end offset.
    pub fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Vec<(Option<i64>, i64)> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| {
                let offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (offset, high)
            })
            .collect()
    }

    /// Produces a record with key `key` and no value (a tombstone) to `partition`.
    pub fn produce_tombstone(&self, topic: &str, partition: i32, key: &str) {
        let producer: FutureProducer = self.config().create().expect("a producer");
        runtime().block_on(async {
            producer
                .send(
                    FutureRecord::<str, str>::to(topic)
                        .partition(partition)
                        .key(key),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        });
    }

    /// Every record of `topic` up to its end (`read_committed` unless `uncommitted`).
    pub fn read_all(&self, topic: &str, uncommitted: bool) -> Vec<Record> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "meltwater-tests")
            .set("enable.auto.commit", "false")
            .set(
                "isolation.level",
                if uncommitted {
                    "read_uncommitted"
                } else {
                    "read_committed"
                },
            )
            .create()
            .expect("a consumer");
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .expect("watermarks");
            ends.push((*p, high));
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let position = consumer.position().expect("position");
            let done = ends.iter().all(|(p, high)| {
                match position.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o >= *high,
                    _ => *high == 0,
                }
            });
            if done || Instant::now() > deadline {
                break;
            }
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.expect("a message");
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        h.value
                                            .map(|v| String::from_utf8_lossy(v).into_owned())
                                            .unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        out
    }
}
