//! Updating streams (DESIGN.md §5): the op column and row kinds, shared with the
//! connectors (a `debezium-json` source emits an updating stream).

pub use meltwater_connectors::changelog::*;
