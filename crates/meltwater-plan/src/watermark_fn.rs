//! `CURRENT_WATERMARK(rowtime)`, as Flink SQL has it: the watermark of the stream at the
//! operator evaluating the expression, `NULL` before the first watermark and always in
//! batch mode (a bounded input has no watermark). With it a job routes or drops late
//! rows itself:
//!
//! ```sql
//! INSERT INTO late_orders SELECT * FROM orders WHERE ts <= CURRENT_WATERMARK(ts);
//! INSERT INTO on_time    SELECT * FROM orders
//!   WHERE CURRENT_WATERMARK(ts) IS NULL OR ts > CURRENT_WATERMARK(ts);
//! ```
//!
//! A stream operator that evaluates expressions (projections and filters) sets the
//! watermark it has seen with [`with_watermark`] around the evaluation; the function
//! reads it from the evaluating thread.

use std::any::Any;
use std::cell::Cell;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

thread_local! {
    static WATERMARK: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Runs `f` with `watermark` (milliseconds since the epoch) as what
/// `CURRENT_WATERMARK` returns on this thread.
pub fn with_watermark<R>(watermark: Option<i64>, f: impl FnOnce() -> R) -> R {
    let before = WATERMARK.with(|w| w.replace(watermark));
    let result = f();
    WATERMARK.with(|w| w.set(before));
    result
}

/// The `current_watermark` function.
pub fn current_watermark() -> ScalarUDF {
    ScalarUDF::new_from_impl(CurrentWatermark {
        signature: Signature::any(1, Volatility::Volatile),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentWatermark {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentWatermark {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "current_watermark"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t @ DataType::Timestamp(_, _)] => Ok(t.clone()),
            [other] => plan_err!(
                "CURRENT_WATERMARK takes the table's time attribute (a TIMESTAMP column), not {other}"
            ),
            _ => plan_err!("CURRENT_WATERMARK takes one argument"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::Timestamp(unit, tz) = args.return_field.data_type() else {
            return plan_err!("CURRENT_WATERMARK takes a TIMESTAMP column");
        };
        let ms = WATERMARK.with(Cell::get);
        let scaled = |per_ms: i64| ms.map(|m| m.saturating_mul(per_ms));
        let tz = tz.clone();
        Ok(ColumnarValue::Scalar(match unit {
            TimeUnit::Second => ScalarValue::TimestampSecond(ms.map(|m| m.div_euclid(1000)), tz),
            TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(ms, tz),
            TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(scaled(1_000), tz),
            TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(scaled(1_000_000), tz),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::{lit, Expr};
    use datafusion::prelude::SessionContext;

    #[test]
    fn null_without_a_watermark_and_the_watermark_inside_with_watermark() {
        let ctx = SessionContext::new();
        let udf = std::sync::Arc::new(current_watermark());
        let ts = lit(ScalarValue::TimestampMillisecond(Some(0), None));
        let expr = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            udf.clone(),
            vec![ts],
        ));
        let physical = ctx
            .state()
            .create_physical_expr(expr, &DFSchema::empty())
            .unwrap();
        let batch = RecordBatch::new_empty(std::sync::Arc::new(
            datafusion::arrow::datatypes::Schema::empty(),
        ));
        let eval = || {
            let v = physical.evaluate(&batch).unwrap().into_array(1).unwrap();
            array_value_to_string(&v, 0).unwrap()
        };
        assert_eq!(eval(), "");
        // 2026-03-01 00:00:05 UTC.
        assert_eq!(
            with_watermark(Some(1_772_323_205_000), eval),
            "2026-03-01T00:00:05"
        );
        assert_eq!(eval(), "", "the watermark is reset after with_watermark");
        let e = udf.return_type(&[DataType::Int64]).unwrap_err().to_string();
        assert!(e.contains("TIMESTAMP column"), "{e}");
    }
}
