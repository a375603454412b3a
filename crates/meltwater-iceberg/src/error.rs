/// Errors of Iceberg catalogs, tables and commits.
#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    #[error("iceberg catalog '{catalog}': {message}")]
    Catalog { catalog: String, message: String },
    #[error("iceberg table {table}: {message}")]
    Table { table: String, message: String },
    #[error("{context}: {source}")]
    Iceberg {
        context: String,
        #[source]
        source: Box<iceberg::Error>,
    },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

pub type Result<T> = std::result::Result<T, IcebergError>;

/// Adds context to `iceberg::Error`s.
pub(crate) trait IcebergContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IcebergContext<T> for iceberg::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| IcebergError::Iceberg {
            context: context(),
            source: Box::new(source),
        })
    }
}

impl From<IcebergError> for datafusion::error::DataFusionError {
    fn from(e: IcebergError) -> Self {
        match e {
            IcebergError::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for IcebergError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        IcebergError::DataFusion(e.into())
    }
}
