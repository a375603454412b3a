//! SQL column types of job DDL → Arrow types, as Flink SQL names them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use meltwater_sql::sqlparser::ast::{
    ArrayElemTypeDef, ColumnDef, ColumnOption, DataType as SqlType, ExactNumberInfo, Ident,
    TimezoneInfo,
};

/// Identifiers as the planner sees them: unquoted ones folded to lower case (as DataFusion
/// folds them in queries), quoted ones as written.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn timestamp_unit(precision: Option<u64>) -> TimeUnit {
    // Flink's default TIMESTAMP precision is 6.
    match precision.unwrap_or(6) {
        0 => TimeUnit::Second,
        1..=3 => TimeUnit::Millisecond,
        4..=6 => TimeUnit::Microsecond,
        _ => TimeUnit::Nanosecond,
    }
}

/// The Arrow type of a DDL column type.
pub fn arrow_type(sql: &SqlType) -> Result<DataType, String> {
    Ok(match sql {
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::TinyInt(_) => DataType::Int8,
        SqlType::SmallInt(_) => DataType::Int16,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => DataType::Int32,
        SqlType::BigInt(_) | SqlType::Int8(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Real | SqlType::Float4 | SqlType::Float32 => DataType::Float32,
        SqlType::Float(info) => match info {
            ExactNumberInfo::Precision(p) if *p > 24 => DataType::Float64,
            _ => DataType::Float32,
        },
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float64 => {
            DataType::Float64
        }
        SqlType::Decimal(info) | SqlType::Numeric(info) | SqlType::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => (10, 0),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s as u64),
            };
            if p == 0 || p > 38 || s > p {
                return Err(format!(
                    "DECIMAL({p}, {s}) is out of range: precision 1..38, scale <= precision"
                ));
            }
            DataType::Decimal128(p as u8, s as i8)
        }
        SqlType::String(_)
        | SqlType::Varchar(_)
        | SqlType::Char(_)
        | SqlType::Character(_)
        | SqlType::CharacterVarying(_)
        | SqlType::CharVarying(_)
        | SqlType::Nvarchar(_)
        | SqlType::Text => DataType::Utf8,
        SqlType::Bytes(_)
        | SqlType::Binary(_)
        | SqlType::Varbinary(_)
        | SqlType::Bytea
        | SqlType::Blob(_) => DataType::Binary,
        SqlType::Date => DataType::Date32,
        SqlType::Timestamp(p, tz) => match tz {
            TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => {
                DataType::Timestamp(timestamp_unit(*p), Some("UTC".into()))
            }
            _ => DataType::Timestamp(timestamp_unit(*p), None),
        },
        SqlType::TimestampNtz(p) | SqlType::Datetime(p) => {
            DataType::Timestamp(timestamp_unit(*p), None)
        }
        SqlType::Custom(name, modifiers) => {
            let n = name.to_string().to_uppercase();
            let precision = modifiers.first().and_then(|m| m.parse::<u64>().ok());
            match n.as_str() {
                "TIMESTAMP_LTZ" => {
                    DataType::Timestamp(timestamp_unit(precision), Some("UTC".into()))
                }
                "STRING" => DataType::Utf8,
                "BYTES" => DataType::Binary,
                _ => return Err(format!("unsupported column type {sql}")),
            }
        }
        SqlType::Array(ArrayElemTypeDef::AngleBracket(inner))
        | SqlType::Array(ArrayElemTypeDef::SquareBracket(inner, _))
        | SqlType::Array(ArrayElemTypeDef::Parenthesis(inner)) => {
            DataType::List(Arc::new(Field::new("element", arrow_type(inner)?, true)))
        }
        other => return Err(format!("unsupported column type {other}")),
    })
}

/// The Arrow schema of a `CREATE TABLE` column list. Primary key columns and
/// `NOT NULL` columns are not nullable.
pub fn schema_of(columns: &[ColumnDef], primary_key: &[String]) -> Result<Schema, String> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        let name = normalize_ident(&c.name);
        if !seen.insert(name.clone()) {
            return Err(format!("column '{name}' is declared twice"));
        }
        let data_type = arrow_type(&c.data_type).map_err(|e| format!("column '{name}': {e}"))?;
        let not_null = c
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::NotNull))
            || primary_key.contains(&name);
        fields.push(Field::new(name, data_type, !not_null));
    }
    for k in primary_key {
        if !seen.contains(k) {
            return Err(format!(
                "PRIMARY KEY names column '{k}', which the table does not have"
            ));
        }
    }
    Ok(Schema::new(fields))
}

/// Whether a query column of type `from` may be written to a column of type `to`
/// without an explicit CAST: the same family and no loss of range.
pub fn implicitly_castable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from == &Null {
        return true;
    }
    let int_width = |t: &DataType| match t {
        Int8 | UInt8 => Some(8),
        Int16 | UInt16 => Some(16),
        Int32 | UInt32 => Some(32),
        Int64 | UInt64 => Some(64),
        _ => None,
    };
    match (from, to) {
        (f, t) if int_width(f).is_some() && int_width(t).is_some() => int_width(f) <= int_width(t),
        (f, Float32 | Float64) if int_width(f).is_some() => true,
        // An integer fits when the decimal keeps as many integer digits as the type's
        // largest value has: 3, 5, 10 or 19 (20 for UInt64).
        (f, Decimal128(p, s)) if int_width(f).is_some() => {
            let digits = match f {
                Int8 | UInt8 => 3,
                Int16 | UInt16 => 5,
                Int32 | UInt32 => 10,
                UInt64 => 20,
                _ => 19,
            };
            *p as i32 - *s as i32 >= digits
        }
        (Float16 | Float32, Float64) | (Float16, Float32) => true,
        (Decimal128(..), Float32 | Float64) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s1 <= s2 && (*p1 as i32 - *s1 as i32) <= (*p2 as i32 - *s2 as i32)
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Timestamp(..), Timestamp(..)) => true,
        (Date32 | Date64, Date32 | Date64 | Timestamp(..)) => true,
        (List(a) | LargeList(a), List(b) | LargeList(b)) => {
            implicitly_castable(a.data_type(), b.data_type())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use meltwater_sql::sqlparser::dialect::GenericDialect;
    use meltwater_sql::sqlparser::parser::Parser;

    use super::*;

    fn ty(sql: &str) -> DataType {
        let t = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_data_type()
            .unwrap();
        arrow_type(&t).unwrap()
    }

    #[test]
    fn maps_flink_types() {
        assert_eq!(ty("BIGINT"), DataType::Int64);
        assert_eq!(ty("STRING"), DataType::Utf8);
        assert_eq!(
            ty("TIMESTAMP(3)"),
            DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert_eq!(
            ty("TIMESTAMP"),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(
            ty("TIMESTAMP_LTZ(3)"),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(ty("DECIMAL(10, 2)"), DataType::Decimal128(10, 2));
        assert_eq!(ty("DOUBLE"), DataType::Float64);
        assert_eq!(ty("DATE"), DataType::Date32);
    }

    #[test]
    fn implicit_casts_widen_only() {
        assert!(implicitly_castable(&DataType::Int32, &DataType::Int64));
        assert!(!implicitly_castable(&DataType::Int64, &DataType::Int32));
        assert!(implicitly_castable(&DataType::Int64, &DataType::Float64));
        assert!(!implicitly_castable(&DataType::Utf8, &DataType::Int64));
        assert!(!implicitly_castable(&DataType::Float64, &DataType::Int64));
        assert!(implicitly_castable(
            &DataType::Decimal128(10, 2),
            &DataType::Decimal128(12, 2)
        ));
        assert!(!implicitly_castable(
            &DataType::Decimal128(10, 2),
            &DataType::Decimal128(10, 0)
        ));
        assert!(implicitly_castable(
            &DataType::Int32,
            &DataType::Decimal128(12, 2)
        ));
        assert!(!implicitly_castable(
            &DataType::Int32,
            &DataType::Decimal128(5, 2)
        ));
        assert!(!implicitly_castable(
            &DataType::Int64,
            &DataType::Decimal128(20, 2)
        ));
    }
}
