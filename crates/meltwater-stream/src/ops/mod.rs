//! Operators that are not aggregates: stateless steps, joins and sinks.

pub mod join;
pub mod sink;
pub mod stateless;
pub mod values;
