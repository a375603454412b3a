//! The broker's own limit for `bench/kafka.sh`: a plain rdkafka producer and consumer,
//! without decoding, to compare Meltwater's Kafka source and sink against.
//!
//!   kafka_plain create BOOTSTRAP TOPIC P    # a topic with P partitions
//!   kafka_plain produce BOOTSTRAP TOPIC N   # N JSON records of about 100 bytes
//!   kafka_plain consume BOOTSTRAP TOPIC     # every record up to the end offsets
//!
//! Prints `records=N seconds=S`.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: kafka_plain create BOOTSTRAP TOPIC P | produce BOOTSTRAP TOPIC N | consume BOOTSTRAP TOPIC";
    let (Some(cmd), Some(bootstrap), Some(topic)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let started = Instant::now();
    let records = match cmd.as_str() {
        "create" => {
            let partitions: i32 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .expect("an admin client");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let results = runtime
                .block_on(admin.create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                ))
                .expect("create_topics");
            for r in results {
                r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
            }
            0
        }
        "produce" => {
            let n: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{usage}");
                std::process::exit(2)
            });
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .expect("a producer");
            for i in 0..n {
                let value = format!(
                    r#"{{"id":{i},"customer":"c{}","amount":"{}.{:02}","ts":"2026-03-01 00:{:02}:{:02}.000"}}"#,
                    i % 1000,
                    i % 500,
                    i % 100,
                    (i / 60) % 60,
                    i % 60
                );
                let mut record: BaseRecord<'_, (), String> = BaseRecord::to(topic).payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            record = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                if i % 200_000 == 0 && i > 0 {
                    eprintln!("… produced {i}");
                }
            }
            producer.flush(Duration::from_secs(120)).expect("flush");
            n
        }
        "consume" => {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "kafka-plain")
                .set("enable.auto.commit", "false")
                .create()
                .expect("a consumer");
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            let mut tpl = TopicPartitionList::new();
            let mut remaining = 0i64;
            for p in md.topics()[0].partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                remaining += high - low;
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("partition");
            }
            consumer.assign(&tpl).expect("assign");
            let total = remaining as u64;
            while remaining > 0 {
                if let Some(m) = consumer.poll(Duration::from_secs(5)) {
                    m.expect("a message");
                    remaining -= 1;
                }
            }
            total
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    println!(
        "records={records} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
}
