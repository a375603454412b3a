//! Table creation: an Arrow schema from `CREATE TABLE` becomes an Iceberg v2 schema with
//! fresh field ids, and `PARTITIONED BY` expressions become a partition spec.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, schema_to_arrow_schema};
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};
use iceberg::TableCreation;

use crate::error::{IcebergContext, IcebergError, Result};

/// One `PARTITIONED BY` entry: a source column and its transform.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionFieldDef {
    pub column: String,
    pub transform: Transform,
}

impl PartitionFieldDef {
    /// From a transform call as written in SQL: `days(ts)` / `day(ts)`, `hours`, `months`,
    /// `years`, `bucket(16, id)`, `truncate(10, s)`, `identity(c)`, or a bare column.
    pub fn parse(function: Option<&str>, args: &[String]) -> std::result::Result<Self, String> {
        let Some(function) = function else {
            let [column] = args else {
                return Err("expected a column".into());
            };
            return Ok(Self {
                column: column.clone(),
                transform: Transform::Identity,
            });
        };
        let f = function.to_ascii_lowercase();
        let one_column = |t: Transform| match args {
            [c] => Ok(Self {
                column: c.clone(),
                transform: t,
            }),
            _ => Err(format!("{function}() takes one column")),
        };
        let with_width = |make: fn(u32) -> Transform| match args {
            [n, c] => n
                .parse::<u32>()
                .map(|n| Self {
                    column: c.clone(),
                    transform: make(n),
                })
                .map_err(|_| format!("{function}(N, column) needs a whole number N, got '{n}'")),
            _ => Err(format!(
                "{function}() takes a width and a column: {function}(16, id)"
            )),
        };
        match f.as_str() {
            "identity" => one_column(Transform::Identity),
            "year" | "years" => one_column(Transform::Year),
            "month" | "months" => one_column(Transform::Month),
            "day" | "days" => one_column(Transform::Day),
            "hour" | "hours" => one_column(Transform::Hour),
            "bucket" => with_width(Transform::Bucket),
            "truncate" => with_width(Transform::Truncate),
            other => Err(format!(
                "unknown partition transform '{other}'; use identity, years, months, days, hours, bucket(N, c) or truncate(N, c)"
            )),
        }
    }
}

/// Iceberg stores timestamps in microseconds and has no 8/16-bit integers: the Arrow
/// type a column of `data_type` takes in a table.
fn iceberg_compatible(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Int8 | DataType::Int16 => DataType::Int32,
        DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

/// The request to create `name` with the given columns, partitioning and properties.
pub fn table_creation(
    table: &str,
    name: &str,
    columns: &ArrowSchema,
    partitioning: &[PartitionFieldDef],
    properties: HashMap<String, String>,
) -> Result<TableCreation> {
    // The primary key becomes the schema's identifier fields, which other engines read;
    // identifier fields are required.
    let key: Vec<&str> = properties
        .get(crate::upsert::PRIMARY_KEY_PROPERTY)
        .map(|k| k.split(',').collect())
        .unwrap_or_default();
    let fields: Vec<Field> = columns
        .fields()
        .iter()
        .map(|f| {
            let nullable = f.is_nullable() && !key.contains(&f.name().as_str());
            Field::new(f.name(), iceberg_compatible(f.data_type()), nullable)
        })
        .collect();
    let schema = arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields))
        .context(|| format!("table {table}: unsupported column type"))?;
    let schema = if key.is_empty() {
        schema
    } else {
        let ids = key
            .iter()
            .map(|k| {
                schema
                    .field_by_name(k)
                    .map(|f| f.id)
                    .ok_or_else(|| IcebergError::Table {
                        table: table.to_string(),
                        message: format!(
                            "PRIMARY KEY names column '{k}', which the table does not have"
                        ),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        schema
            .into_builder()
            .with_identifier_field_ids(ids)
            .build()
            .context(|| format!("table {table}: invalid PRIMARY KEY"))?
    };
    let mut spec = UnboundPartitionSpec::builder();
    for (i, p) in partitioning.iter().enumerate() {
        let field = schema
            .field_by_name(&p.column)
            .ok_or_else(|| IcebergError::Table {
                table: table.to_string(),
                message: format!(
                    "PARTITIONED BY names column '{}', which the table does not have",
                    p.column
                ),
            })?;
        let partition_name = match p.transform {
            Transform::Identity => p.column.clone(),
            Transform::Bucket(n) => format!("{}_bucket_{n}", p.column),
            Transform::Truncate(n) => format!("{}_trunc_{n}", p.column),
            Transform::Year => format!("{}_year", p.column),
            Transform::Month => format!("{}_month", p.column),
            Transform::Day => format!("{}_day", p.column),
            Transform::Hour => format!("{}_hour", p.column),
            _ => format!("{}_{i}", p.column),
        };
        spec = spec
            .add_partition_field(field.id, partition_name, p.transform)
            .context(|| format!("table {table}: invalid partition field on '{}'", p.column))?;
    }
    Ok(TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .partition_spec(spec.build())
        .properties(properties)
        .build())
}

/// The Arrow schema DataFusion sees for an Iceberg schema (no field-id metadata).
pub fn arrow_schema(schema: &Schema) -> Result<SchemaRef> {
    let arrow =
        schema_to_arrow_schema(schema).context(|| "cannot convert table schema to Arrow".into())?;
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_metadata(HashMap::new()))
        .collect();
    Ok(std::sync::Arc::new(ArrowSchema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partition_transforms() {
        let p = PartitionFieldDef::parse(Some("days"), &["ts".into()]).unwrap();
        assert_eq!(p.transform, Transform::Day);
        let p = PartitionFieldDef::parse(Some("bucket"), &["16".into(), "id".into()]).unwrap();
        assert_eq!(
            (p.column.as_str(), p.transform),
            ("id", Transform::Bucket(16))
        );
        let p = PartitionFieldDef::parse(None, &["category".into()]).unwrap();
        assert_eq!(p.transform, Transform::Identity);
        let e = PartitionFieldDef::parse(Some("weeks"), &["ts".into()]).unwrap_err();
        assert!(e.contains("unknown partition transform 'weeks'"), "{e}");
        let e = PartitionFieldDef::parse(Some("bucket"), &["x".into(), "id".into()]).unwrap_err();
        assert!(e.contains("whole number"), "{e}");
    }

    #[test]
    fn creation_maps_types_and_partitioning() {
        let cols = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("small", DataType::Int16, true),
        ]);
        let parts = [
            PartitionFieldDef {
                column: "ts".into(),
                transform: Transform::Day,
            },
            PartitionFieldDef {
                column: "id".into(),
                transform: Transform::Bucket(16),
            },
        ];
        let c = table_creation("lake.db.t", "t", &cols, &parts, HashMap::new()).unwrap();
        let arrow = arrow_schema(&c.schema).unwrap();
        assert_eq!(
            arrow.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(arrow.field(2).data_type(), &DataType::Int32);
        let spec = c.partition_spec.unwrap();
        assert_eq!(spec.fields().len(), 2);
        let bad = [PartitionFieldDef {
            column: "nope".into(),
            transform: Transform::Day,
        }];
        let e = table_creation("lake.db.t", "t", &cols, &bad, HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
    }
}
