//! Aggregates over streams (window and updating).
