//! The kafka connector's `avro` and `avro-confluent` formats end to end, against the real
//! broker (`noida-db`) and, for `avro-confluent`, the minimal schema registry of
//! `meltwater_integration::schema_registry` (no real registry installs here, see
//! docs/kafka.md):
//!
//! - a batch job writes every supported type (and nulls) to a topic as `avro`; jobs read
//!   it back in batch and in stream mode and print the rows the source view printed;
//! - a batch job writes `avro-confluent` records (schemas registered under
//!   `<topic>-value` and `<topic>-key`, records framed with their ids); Python's
//!   `fastavro` registers another writer schema (an extra field, an `int` for a `BIGINT`
//!   column, a `float` for a `DOUBLE`, a column missing) and frames records with it; three
//!   malformed records follow. Reads in both modes give the rows of both writers, and the
//!   malformed records are skipped and counted, sent to the dead-letter topic, or fail the
//!   job naming their offset.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meltwater_integration::kafka::KafkaBroker;
use meltwater_integration::schema_registry::SchemaRegistry;
use meltwater_integration::{meltwater, meltwater_ok as run, printed_rows};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Runs `job` (with `${name}` parameters) in `dir`.
fn run_job(dir: &Path, job: &str, mode: &str, params: &[(&str, &str)]) -> (String, String) {
    std::fs::write(dir.join("job.sql"), job).unwrap();
    let mut args: Vec<String> = vec!["run".into(), "job.sql".into(), "--mode".into(), mode.into()];
    for (k, v) in params {
        args.push("--param".into());
        args.push(format!("{k}={v}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(dir, &refs)
}

fn produce_bytes(broker: &KafkaBroker, topic: &str, values: &[Vec<u8>]) {
    let producer: FutureProducer = broker.config().create().expect("a producer");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            for v in values {
                producer
                    .send(
                        FutureRecord::<[u8], [u8]>::to(topic)
                            .partition(0)
                            .payload(v.as_slice()),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
            }
        });
}

const TYPED_COLUMNS: &str = "id BIGINT NOT NULL, flag BOOLEAN, n INT, f FLOAT, d DOUBLE, \
    s STRING, b BYTES, amount DECIMAL(10, 2), day DATE, ts TIMESTAMP(3), ts6 TIMESTAMP(6)";

const TYPED_SOURCE: &str = r#"
CREATE TEMPORARY VIEW src AS SELECT
  CAST(column1 AS BIGINT) AS id, CAST(column2 AS BOOLEAN) AS flag, CAST(column3 AS INT) AS n,
  CAST(column4 AS FLOAT) AS f, CAST(column5 AS DOUBLE) AS d, CAST(column6 AS STRING) AS s,
  CAST(column7 AS BYTEA) AS b, CAST(column8 AS DECIMAL(10, 2)) AS amount,
  CAST(column9 AS DATE) AS day, CAST(column10 AS TIMESTAMP(3)) AS ts,
  CAST(column11 AS TIMESTAMP(6)) AS ts6
FROM (VALUES
  (1, true, 7, 1.5, 2.25, 'héllo', 'ab', '12.34', '2026-03-01',
   '2026-03-01 12:00:00.123', '2026-03-01 12:00:00.123456'),
  (2, false, -7, -0.5, 1e300, '', '', '-99999999.99', '1969-12-31',
   '1969-12-31 23:59:59.999', '1970-01-01 00:00:00.000001'),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, true, 2147483647, 3.25, -0.0, 'x', 'y', '0.01', '2000-02-29',
   '2000-02-29 00:00:00', '2000-02-29 00:00:00')
);
"#;

#[test]
fn avro_written_in_batch_is_read_back_in_batch_and_stream_mode() {
    let Some(broker) = KafkaBroker::start("the Kafka avro end-to-end tests") else {
        return;
    };
    broker.create_topic("typed", 2);
    let dir = tempfile::tempdir().unwrap();
    let table = format!(
        "CREATE TABLE typed ({TYPED_COLUMNS}, PRIMARY KEY (id) NOT ENFORCED) WITH (
  'connector' = 'kafka', 'topic' = 'typed', 'properties.bootstrap.servers' = '${{bootstrap}}',
  'format' = 'avro', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out ({TYPED_COLUMNS}) WITH ('connector' = 'print');
"
    );
    let params = [("bootstrap", broker.bootstrap.as_str())];
    let expected = printed_rows(
        &run_job(
            dir.path(),
            &format!("{table}{TYPED_SOURCE}INSERT INTO out SELECT * FROM src;"),
            "batch",
            &params,
        )
        .0,
    );
    assert_eq!(expected.len(), 4, "{expected:?}");
    run_job(
        dir.path(),
        &format!("{table}{TYPED_SOURCE}INSERT INTO typed SELECT * FROM src;"),
        "batch",
        &params,
    );
    let records = broker.read_all("typed", false);
    assert_eq!(records.len(), 4);
    // Keys are Avro records of the primary key: a long, zigzag-encoded.
    let keys: BTreeSet<Vec<u8>> = records
        .iter()
        .map(|r| r.key.clone().unwrap().into_bytes())
        .collect();
    assert_eq!(keys, [2u8, 4, 6, 8].iter().map(|k| vec![*k]).collect());
    for mode in ["batch", "stream"] {
        let (stdout, _) = run_job(
            dir.path(),
            &format!("{table}INSERT INTO out SELECT * FROM typed;"),
            mode,
            &params,
        );
        assert_eq!(printed_rows(&stdout), expected, "{mode}");
    }
}

const PEOPLE: &str = "id BIGINT NOT NULL, name STRING, score DOUBLE, born DATE";

/// Registers a writer schema of its own under `people-value` and prints two records
/// framed with its id, hex-encoded, one a line.
const FASTAVRO_WRITER: &str = r#"
import io, json, struct, sys, urllib.request
import fastavro
url = sys.argv[1]
schema = {"type": "record", "name": "Person", "namespace": "ext", "fields": [
    {"name": "id", "type": "int"},
    {"name": "nickname", "type": "string"},
    {"name": "name", "type": ["null", "string"], "default": None},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "score", "type": "float"},
]}
request = urllib.request.Request(
    url + "/subjects/people-value/versions",
    data=json.dumps({"schema": json.dumps(schema)}).encode(),
    headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}, method="POST")
schema_id = json.load(urllib.request.urlopen(request))["id"]
parsed = fastavro.parse_schema(schema)
for record in [
    {"id": 100, "nickname": "a", "name": "ext-a", "tags": ["t1", "t2"], "score": 0.5},
    {"id": 101, "nickname": "b", "name": None, "tags": [], "score": -2.0},
]:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, parsed, record)
    print(out.getvalue().hex())
"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn avro_confluent_records_of_two_writers_are_read_in_both_modes() {
    let Some(broker) = KafkaBroker::start("the Kafka avro end-to-end tests") else {
        return;
    };
    let python = meltwater_integration::interop_python("the avro-confluent test")
        .expect("the broker's venv");
    let registry = SchemaRegistry::start();
    broker.create_topic("people", 1);
    let dir = tempfile::tempdir().unwrap();
    let params = [
        ("bootstrap", broker.bootstrap.as_str()),
        ("registry", registry.url.as_str()),
    ];
    let source = r#"
CREATE TEMPORARY VIEW src AS SELECT CAST(column1 AS BIGINT) AS id,
  CAST(column2 AS STRING) AS name, CAST(column3 AS DOUBLE) AS score,
  CAST(column4 AS DATE) AS born
FROM (VALUES (1, 'ann', 1.25, '1990-05-01'), (2, NULL, NULL, NULL), (3, 'cy', -3.5, '2001-01-01'));
"#;
    let write = format!(
        "CREATE TABLE people ({PEOPLE}, PRIMARY KEY (id) NOT ENFORCED) WITH (
  'connector' = 'kafka', 'topic' = 'people', 'properties.bootstrap.servers' = '${{bootstrap}}',
  'format' = 'avro-confluent', 'avro-confluent.url' = '${{registry}}');
{source}INSERT INTO people SELECT * FROM src;"
    );
    run_job(dir.path(), &write, "batch", &params);
    let value_ids = registry.versions("people-value");
    let key_ids = registry.versions("people-key");
    assert_eq!((value_ids.len(), key_ids.len()), (1, 1));
    let value_schema: serde_json::Value =
        serde_json::from_str(&registry.schema(value_ids[0]).unwrap()).unwrap();
    assert_eq!(value_schema["name"], "people");
    assert_eq!(value_schema["fields"][0]["type"], "long");
    assert_eq!(value_schema["fields"][3]["type"][1]["logicalType"], "date");
    let written = broker.read_all("people", false);
    assert_eq!(written.len(), 3);
    for r in &written {
        let value = r.value.as_deref().unwrap().as_bytes();
        assert_eq!(value[..5], [0, 0, 0, 0, value_ids[0] as u8]);
        let key = r.key.as_deref().unwrap().as_bytes();
        assert_eq!(key[..5], [0, 0, 0, 0, key_ids[0] as u8]);
    }

    // An independent writer, with a schema of its own.
    let out = Command::new(&python)
        .args(["-c", FASTAVRO_WRITER, &registry.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fastavro writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values: Vec<Vec<u8>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(unhex)
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!(registry.versions("people-value").len(), 2);
    let external_id = registry.versions("people-value")[1];
    // Malformed: not Confluent-framed, an id the registry does not know, a truncated
    // datum (offsets 5, 6 and 7).
    let truncated = values[0][..values[0].len() - 2].to_vec();
    values.push(br#"{"id":9}"#.to_vec());
    values.push(vec![0, 0, 0, 3, 231, 2]);
    values.push(truncated);
    produce_bytes(&broker, "people", &values);

    let read = format!(
        "CREATE TABLE people ({PEOPLE}) WITH (
  'connector' = 'kafka', 'topic' = 'people', 'properties.bootstrap.servers' = '${{bootstrap}}',
  'format' = 'avro-confluent', 'avro-confluent.schema-registry.url' = '${{registry}}',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
  'error.policy' = '${{policy}}', 'error.dead-letter.topic' = 'people_dlq');
CREATE TABLE out ({PEOPLE}) WITH ('connector' = 'print');
INSERT INTO out SELECT * FROM people;"
    );
    let expected_job = format!(
        "CREATE TABLE out ({PEOPLE}) WITH ('connector' = 'print');
{source}CREATE TEMPORARY VIEW ext AS SELECT CAST(column1 AS BIGINT) AS id,
  CAST(column2 AS STRING) AS name, CAST(column3 AS DOUBLE) AS score,
  CAST(column4 AS DATE) AS born
FROM (VALUES (100, 'ext-a', 0.5, NULL), (101, NULL, -2.0, NULL));
INSERT INTO out SELECT * FROM src UNION ALL SELECT * FROM ext;"
    );
    let expected = printed_rows(&run_job(dir.path(), &expected_job, "batch", &params).0);
    assert_eq!(expected.len(), 5, "{expected:?}");

    let with_policy = |policy: &'static str| {
        let mut p = params.to_vec();
        p.push(("policy", policy));
        p
    };
    let (stdout, _) = run_job(dir.path(), &read, "batch", &with_policy("skip"));
    assert_eq!(printed_rows(&stdout), expected);
    assert!(stdout.contains("3 malformed records skipped"), "{stdout}");

    let (stdout, _) = run_job(dir.path(), &read, "stream", &with_policy("dead-letter"));
    assert_eq!(printed_rows(&stdout), expected);
    let dead = broker.read_all("people_dlq", false);
    assert_eq!(dead.len(), 3);
    let error_of = |i: usize| {
        dead[i]
            .headers
            .iter()
            .find(|(k, _)| k == "meltwater.error")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert!(
        error_of(0).contains("offset 5") && error_of(0).contains("not the magic byte 0"),
        "{}",
        error_of(0)
    );
    assert!(
        error_of(1).contains("offset 6") && error_of(1).contains("schema id 999 is not in"),
        "{}",
        error_of(1)
    );
    assert!(
        error_of(2).contains("offset 7")
            && error_of(2).contains("column 'score'")
            && error_of(2).contains("truncated avro data"),
        "{}",
        error_of(2)
    );

    std::fs::write(dir.path().join("job.sql"), &read).unwrap();
    let mut args = vec!["run", "job.sql", "--mode", "batch"];
    let bootstrap = format!("bootstrap={}", broker.bootstrap);
    let registry_param = format!("registry={}", registry.url);
    args.extend(["--param", &bootstrap, "--param", &registry_param]);
    args.extend(["--param", "policy=fail"]);
    let out = meltwater(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("table 'people': malformed record at topic 'people' partition 0 offset 5"),
        "{stderr}"
    );

    // Each run fetched each writer schema once.
    let requests = registry.requests();
    let fetches = |id: u32| {
        requests
            .iter()
            .filter(|r| **r == format!("GET /schemas/ids/{id}"))
            .count()
    };
    assert_eq!(fetches(value_ids[0]), 3, "{requests:?}");
    assert_eq!(fetches(external_id), 3, "{requests:?}");
}
