//! One `.slt` file's session: the job text its records build up, planned per record.
//!
//! A job file is a list of statements planned together, so the session keeps the file's
//! DDL and plans every record as a job of *that DDL plus the record's statement*:
//!
//! - `CREATE TABLE` (connector tables), `CREATE VIEW`, `SET`: planned (so `statement
//!   error` sees option and type errors), then kept for the records after it.
//! - `CREATE TABLE` in an Iceberg catalog, `CREATE DATABASE`: planned once, which creates
//!   the table or namespace in the file's catalog; not kept (catalog tables need no DDL).
//! - `INSERT INTO` / `INSERT OVERWRITE`: the mode runs the job's inserts and commits
//!   them; later records read the table. `statement count N` checks the rows written.
//! - a query: the mode runs it and returns its rows (see [`crate::rows`]).
//!
//! Every job gets the parameters `${slt_dir}` (the directory of the `.slt` file, for its
//! data files) and `${tmp}` (the file's temp directory, which also holds the embedded
//! Iceberg catalog `lake`: `${tmp}/catalog.db`, `${tmp}/warehouse`).
//!
//! Parallelism is 4 unless the file `SET`s `'parallelism.default'`: the same on every
//! machine, and enough to exercise repartitioning and merging of partial results.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use meltwater_iceberg::IcebergCatalogConfig;
use meltwater_plan::{plan_job, JobOptions, PlannedJob};
use meltwater_sql::{parse_job, JobFile, JobStatement};
use sqllogictest::{AsyncDB, DBOutput};

use crate::modes::ModeRunner;
use crate::rows::{to_rows, SltType};

/// The embedded Iceberg catalog every file has.
pub const CATALOG: &str = "lake";
/// The engine name, a label `skipif` / `onlyif` records can name besides the mode.
pub const ENGINE: &str = "meltwater";
/// Parallelism unless a file sets `'parallelism.default'`.
pub const DEFAULT_PARALLELISM: usize = 4;

/// An error of a record: the engine's message (`file:line:column: message`).
#[derive(Debug, Clone)]
pub struct SltError(pub String);

impl fmt::Display for SltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

/// What a record's statement does to the session.
enum Kind {
    Query,
    Insert,
    /// Creates something in the Iceberg catalog; not kept in the job text.
    CatalogDdl,
    /// Kept in the job text of later records.
    SessionDdl {
        sets_parallelism: bool,
    },
}

pub struct SltSession {
    runner: Arc<dyn ModeRunner>,
    /// The name jobs are given, for messages: `<file>.slt` → `<file>.slt.sql`.
    job_name: String,
    job_id: String,
    params: BTreeMap<String, String>,
    catalogs: Vec<IcebergCatalogConfig>,
    /// The statements kept so far, without their `;`.
    ddl: Vec<String>,
    sets_parallelism: bool,
    runs: u64,
}

impl SltSession {
    /// A session for the file `name` (relative to `integration/slt`) in directory `dir`,
    /// with `tmp` as its scratch and catalog directory.
    pub fn new(runner: Arc<dyn ModeRunner>, name: &str, dir: &Path, tmp: &Path) -> Self {
        let params = BTreeMap::from([
            ("slt_dir".to_string(), dir.display().to_string()),
            ("tmp".to_string(), tmp.display().to_string()),
        ]);
        let catalogs = vec![IcebergCatalogConfig::sqlite(
            CATALOG,
            tmp,
            Path::new("catalog.db"),
            Path::new("warehouse"),
            None,
        )];
        let stem = name.trim_end_matches(".slt").replace('/', "-");
        Self {
            job_id: format!("slt-{stem}-{}", runner.mode()),
            runner,
            job_name: format!("{name}.sql"),
            params,
            catalogs,
            ddl: Vec::new(),
            sets_parallelism: false,
            runs: 0,
        }
    }

    fn parse(&self, text: &str) -> Result<JobFile, SltError> {
        parse_job(&self.job_name, text, &self.params).map_err(|e| SltError(e.to_string()))
    }

    /// Classifies a record's statement (parsed on its own).
    fn kind(&self, sql: &str) -> Result<Kind, SltError> {
        let job = self.parse(sql)?;
        let [statement] = job.statements.as_slice() else {
            return Err(SltError(format!(
                "a record holds exactly one statement, this one holds {}",
                job.statements.len()
            )));
        };
        Ok(match &statement.statement {
            JobStatement::Query(_) => Kind::Query,
            JobStatement::Insert(_) => Kind::Insert,
            JobStatement::CreateDatabase { .. } => Kind::CatalogDdl,
            JobStatement::CreateTable(t)
                if t.name.0.len() == 3
                    && self
                        .catalogs
                        .iter()
                        .any(|c| t.name.0[0].to_string().eq_ignore_ascii_case(&c.name)) =>
            {
                Kind::CatalogDdl
            }
            JobStatement::Set { key, .. } => Kind::SessionDdl {
                sets_parallelism: key == "parallelism.default",
            },
            _ => Kind::SessionDdl {
                sets_parallelism: false,
            },
        })
    }

    /// Plans the kept DDL followed by `sql`.
    async fn plan(&mut self, sql: &str, sets_parallelism: bool) -> Result<PlannedJob, SltError> {
        let mut text = String::new();
        for statement in self.ddl.iter().map(String::as_str).chain([sql]) {
            text.push_str(statement);
            text.push_str(";\n\n");
        }
        let job = self.parse(&text)?;
        self.runs += 1;
        let options = JobOptions {
            mode: self.runner.mode(),
            job_id: Some(self.job_id.clone()),
            run_id: format!("{}-{}", self.job_id, self.runs),
            parallelism: (!(self.sets_parallelism || sets_parallelism))
                .then_some(DEFAULT_PARALLELISM),
            catalogs: self.catalogs.clone(),
            kafka: Vec::new(),
            create_tables: true,
            memory_limit: None,
            spill_dir: None,
        };
        plan_job(&job, &options)
            .await
            .map_err(|e| SltError(e.to_string()))
    }
}

#[async_trait]
impl AsyncDB for SltSession {
    type Error = SltError;
    type ColumnType = SltType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<SltType>, SltError> {
        let sql = sql.trim().trim_end_matches(';').trim_end();
        match self.kind(sql)? {
            Kind::Query => {
                let job = self.plan(sql, false).await?;
                let query = job
                    .queries
                    .last()
                    .ok_or_else(|| SltError("the query was not planned".into()))?;
                let types = query
                    .plan
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| SltType::of(f.data_type()))
                    .collect();
                let batches = self.runner.query(&job, query).await.map_err(SltError)?;
                let (_, rows) = to_rows(&batches).map_err(SltError)?;
                Ok(DBOutput::Rows { types, rows })
            }
            Kind::Insert => {
                let job = self.plan(sql, false).await?;
                let rows = self.runner.run_inserts(&job).await.map_err(SltError)?;
                Ok(DBOutput::StatementComplete(rows))
            }
            Kind::CatalogDdl => {
                self.plan(sql, false).await?;
                Ok(DBOutput::StatementComplete(0))
            }
            Kind::SessionDdl { sets_parallelism } => {
                self.plan(sql, sets_parallelism).await?;
                self.ddl.push(sql.to_string());
                self.sets_parallelism |= sets_parallelism;
                Ok(DBOutput::StatementComplete(0))
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        ENGINE
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}
