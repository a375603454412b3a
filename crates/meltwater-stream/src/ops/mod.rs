//! Operators that are not aggregates: stateless steps and sinks.

pub mod sink;
pub mod stateless;
pub mod values;
