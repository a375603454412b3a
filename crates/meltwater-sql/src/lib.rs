//! Job files: the SQL a Meltwater job is written in.
//!
//! A job file is a list of statements in the dialect Flink SQL users know (DESIGN.md §2):
//! connector tables with `WATERMARK FOR` and `PRIMARY KEY ... NOT ENFORCED`, views, `SET`,
//! `INSERT INTO` / `INSERT OVERWRITE`, and queries that use the window table functions
//! `TUMBLE`, `HOP`, `CUMULATE` and `SESSION` in the `TABLE(TUMBLE(TABLE t, ...))` form.
//!
//! Parsing runs on sqlparser's token stream, so every error names the file, line and
//! column as the user wrote them (before `${param}` substitution). sqlparser cannot parse
//! `WATERMARK FOR` in a column list nor `TABLE t` inside a table function's arguments;
//! this crate parses `CREATE TABLE` itself with the parser's primitives and rewrites the
//! window functions' arguments on the token stream (see [`tokens`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use meltwater_sql::{parse_job, JobStatement};
//!
//! let job = parse_job(
//!     "job.sql",
//!     "CREATE TABLE t (id BIGINT) WITH ('connector' = 'datagen');\n\
//!      INSERT INTO lake.db.out SELECT id FROM t WHERE id > ${min};",
//!     &BTreeMap::from([("min".to_string(), "10".to_string())]),
//! )
//! .unwrap();
//! assert!(matches!(job.statements[0].statement, JobStatement::CreateTable(_)));
//! assert!(matches!(job.statements[1].statement, JobStatement::Insert(_)));
//! ```

mod error;
pub mod params;
mod parser;
pub mod tokens;

use std::collections::BTreeMap;

pub use datafusion::sql::sqlparser;
use datafusion::sql::sqlparser::ast::{ColumnDef, Expr, Ident, ObjectName, Query, Statement};

pub use error::{JobSyntaxError, Result, SourceLoc};
pub use parser::parse_job;

/// A parsed job file.
#[derive(Debug, Clone)]
pub struct JobFile {
    /// The file name as given (used in messages).
    pub file: String,
    pub statements: Vec<LocatedStatement>,
}

impl JobFile {
    /// An error at `loc` in this file.
    pub fn error_at(&self, loc: SourceLoc, message: impl Into<String>) -> JobSyntaxError {
        JobSyntaxError {
            file: self.file.clone(),
            loc,
            message: message.into(),
        }
    }

    /// The `INSERT` statements, in file order.
    pub fn inserts(&self) -> impl Iterator<Item = (&Insert, SourceLoc)> {
        self.statements.iter().filter_map(|s| match &s.statement {
            JobStatement::Insert(i) => Some((i, s.loc)),
            _ => None,
        })
    }
}

/// A statement with the position of its first token.
#[derive(Debug, Clone)]
pub struct LocatedStatement {
    pub loc: SourceLoc,
    pub statement: JobStatement,
}

/// The statements a job file may hold.
// A job has a handful of statements: boxing the large variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum JobStatement {
    /// `CREATE [TEMPORARY] TABLE ...`: a connector table, or a table in an Iceberg catalog.
    CreateTable(CreateTable),
    /// `CREATE [TEMPORARY] VIEW name [(cols)] AS query`.
    CreateView {
        name: ObjectName,
        columns: Vec<Ident>,
        query: Box<Query>,
        or_replace: bool,
    },
    /// `CREATE DATABASE [IF NOT EXISTS] catalog.namespace`.
    CreateDatabase {
        name: ObjectName,
        if_not_exists: bool,
    },
    /// `SET 'key' = 'value'`.
    Set { key: String, value: String },
    /// `INSERT INTO` / `INSERT OVERWRITE`.
    Insert(Insert),
    /// A query on its own (used by tests and `explain`).
    Query(Box<Query>),
    /// Any other statement sqlparser knows; the planner says whether it is supported.
    Other(Box<Statement>),
}

/// `CREATE TABLE`, with the Flink-style clauses.
#[derive(Debug, Clone)]
pub struct CreateTable {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub temporary: bool,
    pub columns: Vec<ColumnDef>,
    pub watermark: Option<Watermark>,
    /// Primary key columns (`PRIMARY KEY (a, b) NOT ENFORCED` or a column's `PRIMARY KEY`).
    pub primary_key: Vec<Ident>,
    /// `PARTITIONED BY (days(ts), bucket(16, id), category)`: Iceberg partition transforms.
    pub partitioned_by: Vec<Expr>,
    /// `WITH ('k' = 'v', ...)`, in order.
    pub options: Vec<(String, String)>,
    pub comment: Option<String>,
    /// Columns declared `METADATA [FROM 'key'] [VIRTUAL]` (Flink's metadata columns: a
    /// connector fills them from what it knows of each record, e.g. a Kafka offset).
    pub metadata: Vec<MetadataColumn>,
}

/// `name TYPE METADATA [FROM 'key'] [VIRTUAL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataColumn {
    pub column: Ident,
    /// The connector's metadata key; the column's name when `FROM` is absent.
    pub key: String,
    /// A virtual column is read but never written by a sink.
    pub is_virtual: bool,
}

impl CreateTable {
    /// The `WITH` options as a map (later keys win).
    pub fn options_map(&self) -> BTreeMap<String, String> {
        self.options.iter().cloned().collect()
    }
}

/// `WATERMARK FOR column AS expression`.
#[derive(Debug, Clone)]
pub struct Watermark {
    pub column: Ident,
    pub expr: Expr,
}

/// `INSERT INTO t [(cols)] query` or `INSERT OVERWRITE [TABLE] t query`.
#[derive(Debug, Clone)]
pub struct Insert {
    pub table: ObjectName,
    pub columns: Vec<Ident>,
    pub source: Box<Query>,
    pub overwrite: bool,
}
