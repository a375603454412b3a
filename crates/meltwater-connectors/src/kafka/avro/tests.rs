use std::sync::Arc;

use apache_avro::types::Value;
use datafusion::arrow::array::{
    BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::*;

fn all_types() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("b", DataType::Boolean, false),
        Field::new("i", DataType::Int32, true),
        Field::new("l", DataType::Int64, false),
        Field::new("f", DataType::Float32, true),
        Field::new("d", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("by", DataType::Binary, true),
        Field::new("dec", DataType::Decimal128(10, 2), true),
        Field::new("dt", DataType::Date32, true),
        Field::new(
            "ts3",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new(
            "ts6",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
    ]))
}

fn all_types_batch() -> RecordBatch {
    RecordBatch::try_new(
        all_types(),
        vec![
            Arc::new(BooleanArray::from(vec![true, false, true])),
            Arc::new(Int32Array::from(vec![Some(-5), None, Some(i32::MAX)])),
            Arc::new(Int64Array::from(vec![i64::MIN, 0, 1 << 40])),
            Arc::new(Float32Array::from(vec![Some(1.5), None, Some(-0.25)])),
            Arc::new(Float64Array::from(vec![Some(2.5e300), None, Some(-1.0)])),
            Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(&b""[..]),
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(12345), None, Some(-9_999_999_999)])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(Date32Array::from(vec![Some(20_513), None, Some(-1)])),
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_772_366_400_123),
                None,
                Some(-1),
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(1_772_366_400_123_456),
                None,
                Some(0),
            ])),
        ],
    )
    .unwrap()
}

fn plain() -> AvroFormat {
    AvroFormat { registry: None }
}

fn confluent() -> AvroFormat {
    AvroFormat {
        registry: Some(RegistryOptions {
            url: "http://127.0.0.1:9".into(),
            subject: None,
        }),
    }
}

fn malformed(e: ConnectorError) -> (Option<String>, String) {
    match e {
        ConnectorError::MalformedRecord {
            column, message, ..
        } => (column, message),
        other => panic!("not a malformed record: {other}"),
    }
}

#[test]
fn schema_is_derived_from_the_ddl() {
    let text = writer_schema("kafka_local.orders", None, &all_types()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nullable = |t: serde_json::Value| serde_json::json!(["null", t]);
    let expected = serde_json::json!({
        "type": "record",
        "name": "kafka_local_orders",
        "fields": [
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": nullable("int".into()), "default": null},
            {"name": "l", "type": "long"},
            {"name": "f", "type": nullable("float".into()), "default": null},
            {"name": "d", "type": nullable("double".into()), "default": null},
            {"name": "s", "type": nullable("string".into()), "default": null},
            {"name": "by", "type": nullable("bytes".into()), "default": null},
            {"name": "dec", "type": nullable(serde_json::json!(
                {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})),
             "default": null},
            {"name": "dt", "type": nullable(serde_json::json!(
                {"type": "int", "logicalType": "date"})), "default": null},
            {"name": "ts3", "type": nullable(serde_json::json!(
                {"type": "long", "logicalType": "timestamp-millis"})), "default": null},
            {"name": "ts6", "type": nullable(serde_json::json!(
                {"type": "long", "logicalType": "timestamp-micros"})), "default": null},
        ]
    });
    assert_eq!(json, expected);
    // A valid Avro schema, with the logical types recognised.
    let AvroSchema::Record(r) = AvroSchema::parse_str(&text).unwrap() else {
        panic!("a record")
    };
    assert!(matches!(r.fields[7].schema, AvroSchema::Union(_)));
    assert_eq!(r.fields[2].schema, AvroSchema::Long);

    let bad = |t: DataType, name: &str| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ok", DataType::Int64, true),
            Field::new(name, t, true),
        ]));
        writer_schema("t", None, &schema).unwrap_err().to_string()
    };
    let e = bad(DataType::Int16, "small");
    assert!(
        e.contains("column 'small': type SMALLINT has no avro mapping"),
        "{e}"
    );
    let e = bad(DataType::Timestamp(TimeUnit::Nanosecond, None), "t9");
    assert!(e.contains("column 't9': type TIMESTAMP(9)"), "{e}");
    let e = bad(DataType::Int64, "my-col");
    assert!(e.contains("column 'my-col': an avro field name"), "{e}");
}

async fn decode_all(decoder: &mut AvroDecoder, payloads: &[Vec<u8>]) -> RecordBatch {
    for (i, p) in payloads.iter().enumerate() {
        decoder.decode(p, "test", i as u64).await.unwrap();
    }
    RecordBatch::try_new(decoder.schema.clone(), decoder.finish().unwrap()).unwrap()
}

#[tokio::test]
async fn every_type_round_trips_with_nulls() {
    let batch = all_types_batch();
    let encoder = AvroEncoder::new("t", "t", &all_types(), &plain(), String::new()).unwrap();
    let payloads = encoder.encode(&batch).unwrap();
    assert_eq!(payloads.len(), 3);
    let mut decoder = AvroDecoder::new("t", &all_types(), &plain(), 8).unwrap();
    assert_eq!(decode_all(&mut decoder, &payloads).await, batch);
    // The builders start over after a flush.
    assert_eq!(
        decode_all(&mut decoder, &payloads[1..]).await,
        batch.slice(1, 2)
    );
}

/// Our encoding read by apache-avro, and apache-avro's encoding read by us.
#[tokio::test]
async fn encoding_agrees_with_apache_avro() {
    let text = writer_schema("t", None, &all_types()).unwrap();
    let schema = AvroSchema::parse_str(&text).unwrap();
    let u = |v: Value| Value::Union(1, Box::new(v));
    let null = || Value::Union(0, Box::new(Value::Null));
    let row0 = Value::Record(vec![
        ("b".into(), Value::Boolean(true)),
        ("i".into(), u(Value::Int(-5))),
        ("l".into(), Value::Long(i64::MIN)),
        ("f".into(), u(Value::Float(1.5))),
        ("d".into(), u(Value::Double(2.5e300))),
        ("s".into(), u(Value::String("héllo".into()))),
        ("by".into(), u(Value::Bytes(vec![0, 255]))),
        (
            "dec".into(),
            u(Value::Decimal(apache_avro::Decimal::from(
                12345i128.to_be_bytes(),
            ))),
        ),
        ("dt".into(), u(Value::Date(20_513))),
        ("ts3".into(), u(Value::TimestampMillis(1_772_366_400_123))),
        (
            "ts6".into(),
            u(Value::TimestampMicros(1_772_366_400_123_456)),
        ),
    ]);
    let row1 = Value::Record(vec![
        ("b".into(), Value::Boolean(false)),
        ("i".into(), null()),
        ("l".into(), Value::Long(0)),
        ("f".into(), null()),
        ("d".into(), null()),
        ("s".into(), null()),
        ("by".into(), null()),
        ("dec".into(), null()),
        ("dt".into(), null()),
        ("ts3".into(), null()),
        ("ts6".into(), null()),
    ]);
    let encoder = AvroEncoder::new("t", "t", &all_types(), &plain(), String::new()).unwrap();
    let ours = encoder.encode(&all_types_batch().slice(0, 2)).unwrap();
    for (bytes, expected) in ours.iter().zip([&row0, &row1]) {
        let got = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        assert_eq!(&got, expected);
    }
    let theirs: Vec<Vec<u8>> = [row0, row1]
        .into_iter()
        .map(|v| apache_avro::to_avro_datum(&schema, v).unwrap())
        .collect();
    let mut decoder = AvroDecoder::new("t", &all_types(), &plain(), 8).unwrap();
    assert_eq!(
        decode_all(&mut decoder, &theirs).await,
        all_types_batch().slice(0, 2)
    );
}

#[test]
fn decimals_use_minimal_twos_complement() {
    for v in [
        0i128,
        1,
        -1,
        127,
        128,
        -128,
        -129,
        255,
        65_535,
        i128::MAX,
        i128::MIN,
    ] {
        let b = decimal_bytes(v);
        assert_eq!(unscaled(&b).unwrap(), v, "{v}: {b:?}");
        assert_eq!(
            apache_avro::Decimal::from(&b),
            apache_avro::Decimal::from(v.to_be_bytes())
        );
    }
    assert_eq!(decimal_bytes(128), vec![0, 128]);
    assert_eq!(decimal_bytes(-129), vec![0xff, 0x7f]);
    // Wider than 16 bytes: fine when the rest is sign extension.
    let mut wide = vec![0xff; 4];
    wide.extend_from_slice(&(-5i128).to_be_bytes());
    assert_eq!(unscaled(&wide).unwrap(), -5);
    let mut wide = vec![1];
    wide.extend_from_slice(&0i128.to_be_bytes());
    assert!(unscaled(&wide).is_err());
}

fn table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("b", DataType::Boolean, false),
        Field::new("l", DataType::Int64, false),
        Field::new("d", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new(
            "ts3",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("missing", DataType::Int32, true),
    ]))
}

const WRITER: &str = r#"{"type": "record", "name": "w", "namespace": "ns", "fields": [
    {"name": "extra", "type": {"type": "array", "items": {"type": "record", "name": "Inner",
        "fields": [{"name": "x", "type": "string"},
                   {"name": "m", "type": {"type": "map", "values": "long"}}]}}},
    {"name": "l", "type": "int"},
    {"name": "d", "type": ["null", "float"]},
    {"name": "s", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
    {"name": "ts3", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "b", "type": "boolean"},
    {"name": "again", "type": ["null", "Inner"]}
]}"#;

fn writer_record(l: i32, d: Option<f32>, again: bool) -> Value {
    let inner = |x: &str| {
        Value::Record(vec![
            ("x".into(), Value::String(x.into())),
            (
                "m".into(),
                Value::Map([("k".to_string(), Value::Long(-7))].into_iter().collect()),
            ),
        ])
    };
    Value::Record(vec![
        (
            "extra".into(),
            Value::Array(vec![inner("one"), inner("two")]),
        ),
        ("l".into(), Value::Int(l)),
        (
            "d".into(),
            match d {
                Some(d) => Value::Union(1, Box::new(Value::Float(d))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        ("s".into(), Value::Enum(1, "B".into())),
        ("ts3".into(), Value::TimestampMicros(1_500_999)),
        ("b".into(), Value::Boolean(true)),
        (
            "again".into(),
            if again {
                Value::Union(1, Box::new(inner("three")))
            } else {
                Value::Union(0, Box::new(Value::Null))
            },
        ),
    ])
}

fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(datum);
    v
}

/// A decoder of `table_schema` that knows writer schema `WRITER` as id 7 (the registry
/// is never asked).
fn resolving_decoder() -> AvroDecoder {
    let mut decoder = AvroDecoder::new("t", &table_schema(), &confluent(), 8).unwrap();
    let plan = compile(WRITER, &decoder.columns).unwrap();
    decoder.plans.insert(7, Ok(Arc::new(plan)));
    decoder
}

#[tokio::test]
async fn writer_schemas_resolve_against_the_table() {
    let writer = AvroSchema::parse_str(WRITER).unwrap();
    let mut decoder = resolving_decoder();
    let payloads: Vec<Vec<u8>> = [
        writer_record(41, Some(0.5), true),
        writer_record(-3, None, false),
    ]
    .into_iter()
    .map(|v| framed(7, &apache_avro::to_avro_datum(&writer, v).unwrap()))
    .collect();
    let got = decode_all(&mut decoder, &payloads).await;
    let expected = RecordBatch::try_new(
        table_schema(),
        vec![
            Arc::new(BooleanArray::from(vec![true, true])),
            // int promoted to long
            Arc::new(Int64Array::from(vec![41, -3])),
            // float promoted to double
            Arc::new(Float64Array::from(vec![Some(0.5), None])),
            // enum read as its symbol
            Arc::new(StringArray::from(vec!["B", "B"])),
            // timestamp-micros read as milliseconds
            Arc::new(TimestampMillisecondArray::from(vec![1_500, 1_500])),
            // not in the writer schema: null
            Arc::new(Int32Array::from(vec![None, None])),
        ],
    )
    .unwrap();
    assert_eq!(got, expected);

    // Writer schemas that cannot be read as the table, with the column named.
    let columns = &decoder.columns.clone();
    let e = compile(
        r#"{"type":"record","name":"w","fields":[{"name":"b","type":"boolean"}]}"#,
        columns,
    )
    .unwrap_err();
    assert_eq!(
        e,
        "the writer schema has no field 'l', and the column is NOT NULL"
    );
    let e = compile(
        r#"{"type":"record","name":"w","fields":[{"name":"b","type":"boolean"},
            {"name":"l","type":"string"}]}"#,
        columns,
    )
    .unwrap_err();
    assert_eq!(e, "column 'l': cannot read avro string as BIGINT");
    let e = compile(
        r#"{"type":"record","name":"w","fields":[{"name":"b","type":"boolean"},
            {"name":"l","type":"long"}, {"name":"d","type":["string","boolean"]}]}"#,
        columns,
    )
    .unwrap_err();
    assert!(e.starts_with("column 'd': no branch"), "{e}");
    // A union with one readable branch is fine; a record taking another is malformed.
    let text = r#"{"type":"record","name":"w","fields":[{"name":"b","type":"boolean"},
            {"name":"l","type":"long"}, {"name":"d","type":["null","string"]}]}"#;
    let plan = compile(text, columns).unwrap();
    decoder.plans.insert(12, Ok(Arc::new(plan)));
    decoder
        .decode(&framed(12, &[1, 2, 0]), "src", 0)
        .await
        .unwrap();
    let (c, m) = malformed(
        decoder
            .decode(&framed(12, &[1, 2, 2, 2, b'x']), "src", 1)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (c.as_deref(), m.as_str()),
        (Some("d"), "cannot read avro string as DOUBLE")
    );
    assert!(compile(r#""long""#, columns)
        .unwrap_err()
        .contains("not a record"));
}

#[tokio::test]
async fn malformed_records_are_errors_and_leave_no_row() {
    let writer = AvroSchema::parse_str(WRITER).unwrap();
    let good = framed(
        7,
        &apache_avro::to_avro_datum(&writer, writer_record(1, Some(1.0), true)).unwrap(),
    );
    let mut decoder = resolving_decoder();
    decoder.plans.insert(
        9,
        Err("schema id 9 is not in the schema registry http://r".into()),
    );
    fn err(decoder: &mut AvroDecoder, payload: Vec<u8>) -> (Option<String>, String) {
        malformed(futures::executor::block_on(decoder.decode(&payload, "src", 3)).unwrap_err())
    }
    let d = &mut decoder;
    // Header (5), 'extra' (a block of 2 records of 9 bytes, its count and end: 20), 'l' (1).
    let d_at = 5 + 20 + 1;
    let (c, m) = err(d, good[..d_at + 3].to_vec());
    assert!(m.contains("truncated avro data"), "{m}");
    assert_eq!(c.as_deref(), Some("d"));
    let (c, m) = err(d, good[..good.len() - 1].to_vec());
    assert!(m.contains("truncated avro data"), "{m}");
    assert_eq!(c, None, "in a field the table does not read");
    let (c, m) = err(d, [good.clone(), vec![0]].concat());
    assert_eq!(
        (c, m.as_str()),
        (None, "1 bytes after the end of the avro record")
    );
    let (_, m) = err(d, [&[b'{'][..], &good[1..]].concat());
    assert!(
        m.contains("the first byte is 0x7b, not the magic byte 0"),
        "{m}"
    );
    let (_, m) = err(d, vec![0, 0, 0]);
    assert!(m.contains("shorter than its 5-byte header"), "{m}");
    let (_, m) = err(d, framed(9, &good[5..]));
    assert!(
        m.contains("schema id 9 is not in the schema registry"),
        "{m}"
    );
    // A union branch that does not exist, in the column 'd'.
    let mut bad_union = good.clone();
    assert_eq!(bad_union[d_at], 2, "the union index of 'd'");
    bad_union[d_at] = 8;
    let (c, m) = err(d, bad_union);
    assert_eq!(c.as_deref(), Some("d"));
    assert!(m.contains("union branch 4 does not exist"), "{m}");
    // Null for a NOT NULL column, in a writer union.
    let writer_nullable_l = r#"{"type":"record","name":"w","fields":[
        {"name":"b","type":"boolean"}, {"name":"l","type":["null","long"]}]}"#;
    let plan = compile(writer_nullable_l, &d.columns).unwrap();
    d.plans.insert(11, Ok(Arc::new(plan)));
    let (c, m) = err(d, framed(11, &[1, 0]));
    assert_eq!(
        (c.as_deref(), m.as_str()),
        (Some("l"), "null for a NOT NULL column")
    );
    // A good record after all that is the only row.
    decoder
        .decode(&framed(11, &[1, 2, 4]), "src", 4)
        .await
        .unwrap();
    decoder.decode(&good, "src", 5).await.unwrap();
    let batch = RecordBatch::try_new(table_schema(), decoder.finish().unwrap()).unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(
        batch.column(1).as_primitive::<Int64Type>().values(),
        &[2, 1]
    );

    // Plain avro: invalid UTF-8 in a string column.
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
    let mut d = AvroDecoder::new("t", &schema, &plain(), 1).unwrap();
    let (c, m) = malformed(d.decode(&[4, 0xff, 0xfe], "src", 0).await.unwrap_err());
    assert_eq!(c.as_deref(), Some("s"));
    assert!(m.contains("not UTF-8"), "{m}");
}

#[test]
fn format_options() {
    use crate::TableDef;
    let def = |opts: &[(&str, &str)]| TableDef {
        name: "t".into(),
        schema: Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)])),
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        primary_key: vec![],
        metadata: Default::default(),
    };
    let parse = |name: &str, opts: &[(&str, &str)]| {
        let d = def(opts);
        AvroFormat::parse(&OptionReader::new(&d, "kafka"), "format", name)
    };
    assert_eq!(parse("avro", &[]).unwrap(), plain());
    let f = parse(
        "avro-confluent",
        &[("avro-confluent.schema-registry.url", "http://h:8081/")],
    )
    .unwrap();
    assert_eq!(f.registry.unwrap().url, "http://h:8081");
    let e = parse("avro-confluent", &[]).unwrap_err().to_string();
    assert!(e.contains("'avro-confluent.url'"), "{e}");
    let e = parse("avro-confluent", &[("avro-confluent.url", "h:8081")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("http://"), "{e}");
    let e = parse("avro", &[("avro-confluent.url", "http://h")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("option of the 'avro-confluent' format"), "{e}");
}
