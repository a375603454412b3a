//! Errors of connector tables: configuration errors raised when a `CREATE TABLE` is
//! turned into a provider, and data errors raised while a source reads.
//!
//! Every message is one line and names what the user has to look at: the table and
//! option for configuration errors, the file (or other record source) and 1-based line
//! for malformed records.
//!
//! Inside DataFusion plans these errors travel as `DataFusionError::External`, so a
//! caller can recover the typed error with `downcast_ref::<ConnectorError>()`.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result of connector operations.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// An error of a connector table.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A required `WITH` option is absent.
    #[error("table '{table}': missing required option '{option}'")]
    MissingOption { table: String, option: String },

    /// `'connector'` names no known connector.
    #[error("table '{table}': unknown connector '{connector}' (known connectors: {known})")]
    UnknownConnector {
        table: String,
        connector: String,
        known: &'static str,
    },

    /// A `WITH` option the connector does not understand.
    #[error(
        "table '{table}': unknown option '{option}' for connector '{connector}' (valid options: {valid})"
    )]
    UnknownOption {
        table: String,
        connector: String,
        option: String,
        valid: String,
    },

    /// A `WITH` option whose value cannot be used.
    #[error("table '{table}': invalid value '{value}' for option '{option}': {reason}")]
    InvalidOption {
        table: String,
        option: String,
        value: String,
        reason: String,
    },

    /// A DDL column type the connector cannot produce.
    #[error(
        "table '{table}': column '{column}' has type {data_type}, which {what} does not support"
    )]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
        /// What rejected the type, e.g. `the csv format`.
        what: String,
    },

    /// The `'path'` of a filesystem table names nothing readable.
    #[error("table '{table}': path '{path}' {detail}")]
    FileNotFound {
        table: String,
        path: String,
        /// `does not exist`, `matches no files`, ...
        detail: String,
    },

    /// A record that cannot be decoded into the table's schema.
    ///
    /// `source_name` is the record's origin (a file path; later a topic partition), `line`
    /// its 1-based line in that source and `column` the column whose value was rejected,
    /// when one was. (The field is not called `source`: thiserror reserves that name for
    /// the underlying error.)
    #[error(
        "table '{table}': malformed record at {source_name} line {line}{}: {message}",
        .column.as_ref().map(|c| format!(", column '{c}'")).unwrap_or_default()
    )]
    MalformedRecord {
        table: String,
        source_name: String,
        line: u64,
        column: Option<String>,
        message: String,
    },

    /// A file whose structure does not fit the DDL (e.g. a parquet file without one of
    /// the table's columns).
    #[error("table '{table}': file '{path}' does not match the table schema: {message}")]
    SchemaMismatch {
        table: String,
        path: String,
        message: String,
    },

    /// Reading a file failed.
    #[error("table '{table}': cannot read '{path}': {message}")]
    Io {
        table: String,
        path: String,
        message: String,
    },

    /// A Kafka message the value format cannot decode.
    #[error(
        "table '{table}': malformed record at topic '{topic}' partition {partition} offset {offset}{}: {message}",
        .column.as_ref().map(|c| format!(", column '{c}'")).unwrap_or_default()
    )]
    MalformedMessage {
        table: String,
        topic: String,
        partition: i32,
        offset: i64,
        column: Option<String>,
        message: String,
    },

    /// A request to the Kafka cluster failed.
    #[error("table '{table}': kafka: {message}")]
    Kafka { table: String, message: String },

    /// Something the connector cannot do (e.g. be read in stream mode).
    #[error("table '{table}': {message}")]
    Unsupported { table: String, message: String },

    /// An Arrow error while building batches (not caused by a single record).
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
}

impl From<ConnectorError> for DataFusionError {
    fn from(e: ConnectorError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_single_line_and_name_their_context() {
        let e = ConnectorError::MalformedRecord {
            table: "bids".into(),
            source_name: "/data/bids.csv".into(),
            line: 7,
            column: Some("price".into()),
            message: "cannot parse 'x' as BIGINT".into(),
        };
        assert_eq!(
            e.to_string(),
            "table 'bids': malformed record at /data/bids.csv line 7, column 'price': cannot parse 'x' as BIGINT"
        );
        let e = ConnectorError::MalformedRecord {
            table: "bids".into(),
            source_name: "/data/bids.csv".into(),
            line: 2,
            column: None,
            message: "expected 3 fields, found 2".into(),
        };
        assert_eq!(
            e.to_string(),
            "table 'bids': malformed record at /data/bids.csv line 2: expected 3 fields, found 2"
        );
        let e = ConnectorError::MissingOption {
            table: "t".into(),
            option: "path".into(),
        };
        assert_eq!(e.to_string(), "table 't': missing required option 'path'");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn converts_to_datafusion_error_and_back() {
        let df: DataFusionError = ConnectorError::MissingOption {
            table: "t".into(),
            option: "format".into(),
        }
        .into();
        let DataFusionError::External(inner) = df else {
            panic!("expected an external error");
        };
        assert!(matches!(
            inner.downcast_ref::<ConnectorError>(),
            Some(ConnectorError::MissingOption { .. })
        ));
    }
}
