//! The `blackhole` connector: a sink that accepts every row and discards it, as Flink's
//! blackhole connector does; for measuring a job without the cost of its sink.
//!
//! ```sql
//! CREATE TABLE nowhere (id BIGINT, name STRING) WITH ('connector' = 'blackhole');
//! INSERT INTO nowhere SELECT id, name FROM src;
//! ```
//!
//! It takes no option besides `'connector'`, accepts append-only and updating streams,
//! and counts what it discards (the run reports the count). It cannot be read.

use crate::options::OptionReader;
use crate::{Result, TableDef};

pub(crate) const CONNECTOR: &str = "blackhole";

/// Validates a blackhole table's options: only `'connector'`.
pub(crate) fn check_options(def: &TableDef) -> Result<()> {
    let reader = OptionReader::new(def, CONNECTOR);
    if let Some(key) = def.options.keys().find(|k| k.as_str() != "connector") {
        return Err(reader.unknown(key, "'connector'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt64Type};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::sink_table::SinkTable;

    fn def(options: &[(&str, &str)]) -> TableDef {
        TableDef {
            name: "nowhere".into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            primary_key: Vec::new(),
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn counts_and_discards() {
        let t = Arc::new(SinkTable::blackhole(def(&[("connector", "blackhole")])).unwrap());
        let ctx = SessionContext::new();
        ctx.register_table("nowhere", t.clone()).unwrap();
        let out = ctx
            .sql("INSERT INTO nowhere SELECT unnest(range(1000))")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(out[0].column(0).as_primitive::<UInt64Type>().value(0), 1000);
        let e = ctx
            .sql("SELECT * FROM nowhere")
            .await
            .unwrap()
            .collect()
            .await;
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("table 'nowhere': a blackhole table is a sink only; it cannot be read"));
    }

    #[test]
    fn takes_no_options() {
        let e = SinkTable::blackhole(def(&[("connector", "blackhole"), ("rows", "1")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "table 'nowhere': unknown option 'rows' for connector 'blackhole' (valid options: 'connector')"
        );
    }
}
