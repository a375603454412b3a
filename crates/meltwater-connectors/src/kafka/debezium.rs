//! `'format' = 'debezium-json'`: Debezium change events (JSON, with or without the
//! `schema`/`payload` wrapper of Kafka Connect's JSON converter) read as an updating
//! stream. `c` (create) and `r` (snapshot read) events are `+I` rows of `after`; `u`
//! events are `-U` of `before` then `+U` of `after`; `d` events are `-D` of `before`.
//! Tombstones (no value) carry no change. An update or delete without `before` is a
//! malformed record: the source table must log full before images (PostgreSQL: `REPLICA
//! IDENTITY FULL`), or the stream cannot retract what the row was.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int8Array};
use datafusion::arrow::datatypes::SchemaRef;
use serde_json::Value;

use crate::changelog::RowKind;
use crate::format::{RecordDecoder, TextFormat};
use crate::{ConnectorError, ErrorPolicy, Result};

/// Decodes change events into the value columns plus each row's kind.
#[derive(Debug)]
pub(crate) struct DebeziumDecoder {
    table: String,
    /// Decodes the `before`/`after` images (always failing on a bad one: the reader
    /// applies the table's policy to the whole event).
    rows: RecordDecoder,
    ops: Vec<i8>,
}

impl DebeziumDecoder {
    pub fn new(table: &str, value_schema: &SchemaRef, batch_size: usize) -> Result<Self> {
        Ok(Self {
            table: table.to_string(),
            rows: RecordDecoder::new(
                table,
                value_schema,
                None,
                TextFormat::Json,
                ErrorPolicy::Fail,
                batch_size,
            )?,
            ops: Vec::new(),
        })
    }

    /// Decodes one event; returns the rows it added (none, or all of them: an event
    /// whose image cannot be decoded adds nothing).
    pub fn decode(&mut self, payload: &[u8], source: &str, offset: u64) -> Result<usize> {
        let malformed = |message: String| ConnectorError::MalformedRecord {
            table: self.table.clone(),
            source_name: source.to_string(),
            line: offset,
            column: None,
            message,
        };
        let event: Value = serde_json::from_slice(payload)
            .map_err(|e| malformed(format!("not a JSON change event: {e}")))?;
        // Kafka Connect's JSON converter with schemas wraps the event.
        let event = match (event.get("schema"), event.get("payload")) {
            (Some(_), Some(p)) => p,
            _ => &event,
        };
        let op = event
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no \"op\": not a Debezium change event".into()))?;
        let image = |name: &str| {
            event.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
                malformed(match name {
                    "before" => format!(
                        "a \"{op}\" event without \"before\": the source table must log full before images (PostgreSQL: REPLICA IDENTITY FULL)"
                    ),
                    _ => format!("a \"{op}\" event without \"after\""),
                })
            })
        };
        let changes: Vec<(RowKind, &Value)> = match op {
            "c" | "r" => vec![(RowKind::Insert, image("after")?)],
            "u" => vec![
                (RowKind::UpdateBefore, image("before")?),
                (RowKind::UpdateAfter, image("after")?),
            ],
            "d" => vec![(RowKind::Delete, image("before")?)],
            other => {
                return Err(malformed(format!(
                    "unknown \"op\" \"{other}\" (expected c, r, u or d)"
                )))
            }
        };
        let images: Vec<Vec<u8>> = changes
            .iter()
            .map(|(_, v)| serde_json::to_vec(v).expect("a JSON value serializes"))
            .collect();
        // Every image but the first is checked first, so that an event adds all its rows
        // or none (the first one's decoding appends nothing when it fails).
        for image in images.iter().skip(1) {
            self.rows.check_json(image, source, offset)?;
        }
        for ((kind, _), image) in changes.iter().zip(&images) {
            self.rows.decode_json(image, source, offset)?;
            self.ops.push(*kind as i8);
        }
        Ok(changes.len())
    }

    /// The value columns and the op column of the rows decoded since the last flush.
    pub fn flush(&mut self) -> Result<(Vec<ArrayRef>, ArrayRef)> {
        let values = self
            .rows
            .flush()?
            .map(|b| b.columns().to_vec())
            .unwrap_or_default();
        let ops: ArrayRef = Arc::new(Int8Array::from(std::mem::take(&mut self.ops)));
        Ok((values, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Int8Type, Schema};

    fn decoder() -> DebeziumDecoder {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        DebeziumDecoder::new("users", &schema, 16).unwrap()
    }

    #[test]
    fn events_become_row_kinds() {
        let mut d = decoder();
        let events = [
            r#"{"before":null,"after":{"id":1,"name":"ada"},"op":"c","ts_ms":1}"#,
            r#"{"before":{"id":1,"name":"ada"},"after":{"id":1,"name":"ada l"},"op":"u"}"#,
            r#"{"schema":{"type":"struct"},"payload":{"before":null,"after":{"id":2,"name":"bo"},"op":"r"}}"#,
            r#"{"before":{"id":2,"name":"bo"},"after":null,"op":"d"}"#,
        ];
        let added: Vec<usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                d.decode(e.as_bytes(), "topic users partition 0", i as u64)
                    .unwrap()
            })
            .collect();
        assert_eq!(added, vec![1, 2, 1, 1]);
        let (values, ops) = d.flush().unwrap();
        let ids: &Int64Array = values[0].as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 1, 1, 2, 2]);
        let names: Vec<_> = values[1].as_string::<i32>().iter().flatten().collect();
        assert_eq!(names, vec!["ada", "ada", "ada l", "bo", "bo"]);
        let ops: Vec<i8> = ops.as_primitive::<Int8Type>().values().to_vec();
        assert_eq!(ops, vec![0, 1, 2, 0, 3]);
    }

    #[test]
    fn a_bad_event_adds_no_row_and_says_why() {
        let mut d = decoder();
        // The update's after image lacks the NOT NULL id: neither image is added.
        let e = d
            .decode(
                br#"{"before":{"id":1,"name":"a"},"after":{"name":"b"},"op":"u"}"#,
                "topic users partition 0",
                7,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("id"), "{e}");
        let e = d
            .decode(br#"{"before":null,"after":null,"op":"d"}"#, "t", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
        let e = d.decode(br#"{"id":1}"#, "t", 9).unwrap_err().to_string();
        assert!(e.contains("not a Debezium change event"), "{e}");
        let e = d.decode(br#"{"op":"t"}"#, "t", 10).unwrap_err().to_string();
        assert!(e.contains("unknown \"op\" \"t\""), "{e}");
        assert!(d.decode(b"{oops", "t", 11).is_err());
        let (values, ops) = d.flush().unwrap();
        assert!(values.is_empty());
        assert_eq!(ops.len(), 0);
    }
}
