use std::fmt;

/// A position in a job file, 1-based, as a user sees it in an editor (before `${param}`
/// substitution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceLoc {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error in a job file, naming the file, line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{loc}: {message}")]
pub struct JobSyntaxError {
    pub file: String,
    pub loc: SourceLoc,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, JobSyntaxError>;
