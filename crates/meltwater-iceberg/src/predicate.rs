//! DataFusion filter expressions → Iceberg predicates, for partition and file pruning.
//!
//! Only what converts exactly is converted: comparisons of a column with a literal,
//! `IS [NOT] NULL`, `IN` lists, and `AND`/`OR`/`NOT` of those. Pruning is a pushdown
//! DataFusion re-checks, so an unconvertible part of an `AND` is dropped (weaker is safe),
//! while an unconvertible part of an `OR` or `NOT` drops the whole expression.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;

/// How a table scanned by Iceberg file pruning takes `filters`: `Inexact` where the
/// filter converts to an Iceberg predicate (partitions and file statistics prune files,
/// so rows still need the filter), else `Unsupported`.
pub fn filter_pushdown(filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if to_iceberg_predicate(&[(*f).clone()]).is_some() {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// The Iceberg predicate for `filters` (a conjunction), if any part converts.
pub fn to_iceberg_predicate(filters: &[Expr]) -> Option<Predicate> {
    filters
        .iter()
        .filter_map(convert_conjunct)
        .reduce(Predicate::and)
}

fn convert_conjunct(expr: &Expr) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => match (convert_conjunct(left), convert_conjunct(right)) {
            (Some(l), Some(r)) => Some(l.and(r)),
            (Some(p), None) | (None, Some(p)) => Some(p),
            (None, None) => None,
        },
        other => convert_exact(other),
    }
}

/// Converts `expr` only if the whole of it converts.
fn convert_exact(expr: &Expr) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(convert_exact(left)?.and(convert_exact(right)?)),
            Operator::Or => Some(convert_exact(left)?.or(convert_exact(right)?)),
            _ => comparison(left, *op, right),
        },
        Expr::Not(inner) => Some(!convert_exact(inner)?),
        Expr::IsNull(inner) => Some(Reference::new(column(inner)?).is_null()),
        Expr::IsNotNull(inner) => Some(Reference::new(column(inner)?).is_not_null()),
        Expr::InList(list) => {
            let col = column(&list.expr)?;
            let values: Option<Vec<Datum>> = list.list.iter().map(literal).collect();
            let values = values?;
            let p = Reference::new(col).is_in(values);
            Some(if list.negated { !p } else { p })
        }
        _ => None,
    }
}

fn comparison(left: &Expr, op: Operator, right: &Expr) -> Option<Predicate> {
    let (col, value, op) = match (column(left), literal(right)) {
        (Some(c), Some(v)) => (c, v, op),
        _ => (column(right)?, literal(left)?, op.swap()?),
    };
    let r = Reference::new(col);
    Some(match op {
        Operator::Eq => r.equal_to(value),
        Operator::NotEq => r.not_equal_to(value),
        Operator::Lt => r.less_than(value),
        Operator::LtEq => r.less_than_or_equal_to(value),
        Operator::Gt => r.greater_than(value),
        Operator::GtEq => r.greater_than_or_equal_to(value),
        _ => return None,
    })
}

fn column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(c) => Some(c.name.clone()),
        _ => None,
    }
}

fn literal(expr: &Expr) -> Option<Datum> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    Some(match value {
        ScalarValue::Boolean(Some(v)) => Datum::bool(*v),
        ScalarValue::Int8(Some(v)) => Datum::int(*v as i32),
        ScalarValue::Int16(Some(v)) => Datum::int(*v as i32),
        ScalarValue::Int32(Some(v)) => Datum::int(*v),
        ScalarValue::Int64(Some(v)) => Datum::long(*v),
        ScalarValue::Float32(Some(v)) => Datum::float(*v),
        ScalarValue::Float64(Some(v)) => Datum::double(*v),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Datum::string(v),
        ScalarValue::Date32(Some(v)) => Datum::date(*v),
        ScalarValue::TimestampMicrosecond(Some(v), None) => Datum::timestamp_micros(*v),
        ScalarValue::TimestampMicrosecond(Some(v), Some(_)) => Datum::timestamptz_micros(*v),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn converts_comparisons_and_keeps_convertible_conjuncts() {
        let f = col("id").gt(lit(10i64)).and(col("name").like(lit("a%")));
        let p = to_iceberg_predicate(&[f]).unwrap();
        assert_eq!(p.to_string(), "id > 10");
        let p = to_iceberg_predicate(&[lit(5i32).lt_eq(col("x"))]).unwrap();
        assert_eq!(p.to_string(), "x >= 5");
    }

    #[test]
    fn an_unconvertible_disjunct_drops_the_disjunction() {
        let f = col("id").eq(lit(1i64)).or(col("name").like(lit("a%")));
        assert!(to_iceberg_predicate(&[f]).is_none());
    }
}
