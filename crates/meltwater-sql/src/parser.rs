//! The statement loop: tokenize, rewrite, then parse statement by statement.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{Ident, Statement, TableObject};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{JobSyntaxError, Result, SourceLoc};
use crate::params::{substitute, ParamMap};
use crate::tokens::{rewrite_time_travel, rewrite_window_table_args};
use crate::{CreateTable, Insert, JobFile, JobStatement, LocatedStatement, Watermark};

/// Parses a job file. `params` fill its `${name}` placeholders.
pub fn parse_job(file: &str, text: &str, params: &BTreeMap<String, String>) -> Result<JobFile> {
    let err = |loc: SourceLoc, message: String| JobSyntaxError {
        file: file.to_string(),
        loc,
        message,
    };
    let (text, map) = substitute(text, params).map_err(|e| err(e.loc, e.message))?;
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, &text)
        .tokenize_with_location()
        .map_err(|e| {
            let loc = map.original(SourceLoc {
                line: e.location.line,
                column: e.location.column,
            });
            err(loc, e.message)
        })?;
    let tokens = rewrite_window_table_args(tokens);
    let tokens = rewrite_time_travel(tokens).map_err(|e| {
        let loc = map.original(SourceLoc {
            line: e.at.span.start.line,
            column: e.at.span.start.column,
        });
        err(loc, e.message)
    })?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let ctx = Ctx { file, map: &map };
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        let loc = map.original(SourceLoc {
            line: next.span.start.line,
            column: next.span.start.column,
        });
        let statement = parse_statement(&mut parser).map_err(|e| ctx.error(&parser, e))?;
        statements.push(LocatedStatement { loc, statement });
        let after = parser.peek_token();
        if after.token != Token::EOF && after.token != Token::SemiColon {
            let e = ParserError::ParserError(format!(
                "expected ';' after the statement, found {}",
                after.token
            ));
            return Err(ctx.error(&parser, e));
        }
    }
    Ok(JobFile {
        file: file.to_string(),
        statements,
    })
}

struct Ctx<'a> {
    file: &'a str,
    map: &'a ParamMap,
}

impl Ctx<'_> {
    /// Turns a parser error into a located error. sqlparser appends " at Line: L, Column: C"
    /// to its messages; where it does not, the current token's position is used.
    fn error(&self, parser: &Parser, e: ParserError) -> JobSyntaxError {
        let raw = match e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
            ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
        };
        let (message, loc) = split_location(&raw);
        let loc = loc.unwrap_or_else(|| {
            let t = parser.peek_token();
            SourceLoc {
                line: t.span.start.line,
                column: t.span.start.column,
            }
        });
        JobSyntaxError {
            file: self.file.to_string(),
            loc: self.map.original(loc),
            message,
        }
    }
}

/// Splits sqlparser's " at Line: L, Column: C" suffix off a message.
fn split_location(message: &str) -> (String, Option<SourceLoc>) {
    const MARK: &str = " at Line: ";
    let Some(at) = message.rfind(MARK) else {
        return (message.to_string(), None);
    };
    let rest = &message[at + MARK.len()..];
    let mut parts = rest.splitn(2, ", Column: ");
    let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
    let column = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
    match (line, column) {
        (Some(line), Some(column)) if line > 0 => {
            let msg = message[..at]
                .trim_start_matches("sql parser error: ")
                .to_string();
            (msg, Some(SourceLoc { line, column }))
        }
        _ => (message.to_string(), None),
    }
}

fn parse_statement(parser: &mut Parser) -> std::result::Result<JobStatement, ParserError> {
    let first = parser.peek_token();
    let is_kw = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    if is_kw(&first.token, Keyword::CREATE) {
        // Look past `CREATE [OR REPLACE] [TEMPORARY]` for the object kind.
        let mut n = 1;
        let mut kinds = Vec::new();
        while n < 6 {
            let t = parser.peek_nth_token(n).token;
            kinds.push(t.clone());
            if is_kw(&t, Keyword::TABLE)
                || is_kw(&t, Keyword::DATABASE)
                || is_kw(&t, Keyword::SCHEMA)
                || is_kw(&t, Keyword::VIEW)
            {
                break;
            }
            n += 1;
        }
        let kind = kinds.last().cloned().unwrap_or(Token::EOF);
        if is_kw(&kind, Keyword::TABLE) {
            return parse_create_table(parser).map(JobStatement::CreateTable);
        }
        if is_kw(&kind, Keyword::DATABASE) || is_kw(&kind, Keyword::SCHEMA) {
            parser.expect_keyword(Keyword::CREATE)?;
            parser.next_token();
            let if_not_exists =
                parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = parser.parse_object_name(false)?;
            return Ok(JobStatement::CreateDatabase {
                name,
                if_not_exists,
            });
        }
        if is_kw(&kind, Keyword::VIEW) {
            // `TEMPORARY` is accepted and means nothing more: every view lives for the job.
            return match parser.parse_statement()? {
                Statement::CreateView(v) => Ok(JobStatement::CreateView {
                    name: v.name,
                    columns: v.columns.into_iter().map(|c| c.name).collect(),
                    query: v.query,
                    or_replace: v.or_replace,
                }),
                other => Ok(JobStatement::Other(Box::new(other))),
            };
        }
    }
    if is_kw(&first.token, Keyword::SET) {
        return parse_set(parser);
    }
    match parser.parse_statement()? {
        Statement::Insert(insert) => {
            let table = match insert.table {
                TableObject::TableName(name) => name,
                other => {
                    return Err(ParserError::ParserError(format!(
                        "INSERT into {other} is not supported; name a table"
                    )))
                }
            };
            let source = insert.source.ok_or_else(|| {
                ParserError::ParserError("INSERT needs a query (SELECT or VALUES)".into())
            })?;
            Ok(JobStatement::Insert(Insert {
                table,
                columns: insert.columns,
                source,
                overwrite: insert.overwrite,
            }))
        }
        Statement::Query(q) => Ok(JobStatement::Query(q)),
        other => Ok(JobStatement::Other(Box::new(other))),
    }
}

/// `SET 'key' = 'value'` or `SET key = value`.
fn parse_set(parser: &mut Parser) -> std::result::Result<JobStatement, ParserError> {
    parser.expect_keyword(Keyword::SET)?;
    let key = match parser.peek_token().token {
        Token::SingleQuotedString(s) => {
            parser.next_token();
            s
        }
        _ => parser.parse_object_name(false)?.to_string(),
    };
    parser.expect_token(&Token::Eq)?;
    let t = parser.next_token();
    let value = match t.token {
        Token::SingleQuotedString(s) => s,
        Token::Number(n, _) => n,
        Token::Word(w) => w.value,
        other => return parser.expected("a quoted value", TokenWithSpanOf(other).into()),
    };
    Ok(JobStatement::Set { key, value })
}

/// Wraps a bare token for [`Parser::expected`].
struct TokenWithSpanOf(Token);

impl From<TokenWithSpanOf> for datafusion::sql::sqlparser::tokenizer::TokenWithSpan {
    fn from(t: TokenWithSpanOf) -> Self {
        datafusion::sql::sqlparser::tokenizer::TokenWithSpan::wrap(t.0)
    }
}

/// `CREATE [TEMPORARY] TABLE [IF NOT EXISTS] name (columns, WATERMARK FOR c AS e,
/// PRIMARY KEY (k) NOT ENFORCED) [COMMENT '...'] [PARTITIONED BY (...)] [WITH (...)]`.
fn parse_create_table(parser: &mut Parser) -> std::result::Result<CreateTable, ParserError> {
    parser.expect_keyword(Keyword::CREATE)?;
    let temporary = parser.parse_keyword(Keyword::TEMPORARY);
    parser.expect_keyword(Keyword::TABLE)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    let mut primary_key: Vec<Ident> = Vec::new();
    let mut metadata = Vec::new();
    parser.expect_token(&Token::LParen)?;
    loop {
        if parse_word(parser, "WATERMARK") {
            parser.expect_keyword(Keyword::FOR)?;
            let column = parser.parse_identifier()?;
            parser.expect_keyword(Keyword::AS)?;
            let expr = parser.parse_expr()?;
            if watermark.is_some() {
                return Err(ParserError::ParserError(
                    "a table has at most one WATERMARK".into(),
                ));
            }
            watermark = Some(Watermark { column, expr });
        } else if parser.peek_keyword(Keyword::PRIMARY) || parser.peek_keyword(Keyword::CONSTRAINT)
        {
            if parser.parse_keyword(Keyword::CONSTRAINT) {
                parser.parse_identifier()?;
            }
            parser.expect_keywords(&[Keyword::PRIMARY, Keyword::KEY])?;
            parser.expect_token(&Token::LParen)?;
            let keys = parser.parse_comma_separated(|p| p.parse_identifier())?;
            parser.expect_token(&Token::RParen)?;
            let _not_enforced = parser.parse_keywords(&[Keyword::NOT, Keyword::ENFORCED]);
            if !primary_key.is_empty() {
                return Err(ParserError::ParserError(
                    "a table has at most one PRIMARY KEY".into(),
                ));
            }
            primary_key = keys;
        } else {
            let column = parser.parse_column_def()?;
            let column_pk = column.options.iter().any(|o| {
                matches!(
                    o.option,
                    datafusion::sql::sqlparser::ast::ColumnOption::PrimaryKey(_)
                )
            });
            let _not_enforced = parser.parse_keywords(&[Keyword::NOT, Keyword::ENFORCED]);
            if parse_word(parser, "METADATA") {
                let key = if parser.parse_keyword(Keyword::FROM) {
                    parser.parse_literal_string()?
                } else {
                    column.name.value.clone()
                };
                let is_virtual = parse_word(parser, "VIRTUAL");
                metadata.push(crate::MetadataColumn {
                    column: column.name.clone(),
                    key,
                    is_virtual,
                });
            }
            if column_pk {
                if !primary_key.is_empty() {
                    return Err(ParserError::ParserError(
                        "a table has at most one PRIMARY KEY".into(),
                    ));
                }
                primary_key = vec![column.name.clone()];
            }
            columns.push(column);
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    let mut comment = None;
    let mut partitioned_by = Vec::new();
    let mut options = Vec::new();
    loop {
        if parser.parse_keyword(Keyword::COMMENT) {
            comment = Some(parser.parse_literal_string()?);
        } else if parser.parse_keywords(&[Keyword::PARTITIONED, Keyword::BY]) {
            parser.expect_token(&Token::LParen)?;
            partitioned_by = parser.parse_comma_separated(|p| p.parse_expr())?;
            parser.expect_token(&Token::RParen)?;
        } else if parser.parse_keyword(Keyword::WITH) {
            parser.expect_token(&Token::LParen)?;
            if !parser.consume_token(&Token::RParen) {
                options = parser.parse_comma_separated(|p| {
                    let key = p.parse_literal_string()?;
                    p.expect_token(&Token::Eq)?;
                    let value = p.parse_literal_string()?;
                    Ok((key, value))
                })?;
                parser.expect_token(&Token::RParen)?;
            }
        } else {
            break;
        }
    }
    if columns.is_empty() {
        return Err(ParserError::ParserError(format!(
            "table {name} declares no columns"
        )));
    }
    Ok(CreateTable {
        name,
        if_not_exists,
        temporary,
        columns,
        watermark,
        primary_key,
        partitioned_by,
        options,
        comment,
        metadata,
    })
}

/// Consumes the next token if it is the unquoted word `word` (for words sqlparser has no
/// keyword for).
fn parse_word(parser: &mut Parser, word: &str) -> bool {
    let is = matches!(&parser.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    if is {
        parser.next_token();
    }
    is
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Result<JobFile> {
        parse_job("job.sql", sql, &BTreeMap::new())
    }

    #[test]
    fn create_table_with_watermark_primary_key_and_options() {
        let job = parse(
            "CREATE TABLE bids (\n  auction BIGINT, bidder BIGINT NOT NULL, price BIGINT, date_time TIMESTAMP(3),\n  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND,\n  PRIMARY KEY (auction, bidder) NOT ENFORCED\n) WITH ('connector' = 'kafka', 'topic' = 'bids', 'format' = 'json');",
        )
        .unwrap();
        let JobStatement::CreateTable(t) = &job.statements[0].statement else {
            panic!()
        };
        assert_eq!(t.name.to_string(), "bids");
        assert_eq!(t.columns.len(), 4);
        let wm = t.watermark.as_ref().unwrap();
        assert_eq!(wm.column.value, "date_time");
        assert_eq!(wm.expr.to_string(), "date_time - INTERVAL '5' SECOND");
        assert_eq!(
            t.primary_key
                .iter()
                .map(|i| i.value.as_str())
                .collect::<Vec<_>>(),
            ["auction", "bidder"]
        );
        assert_eq!(t.options_map()["topic"], "bids");
    }

    #[test]
    fn create_iceberg_table_partitioned() {
        let job = parse(
            "CREATE TABLE IF NOT EXISTS lake.db.t (id BIGINT PRIMARY KEY NOT ENFORCED, ts TIMESTAMP(6)) PARTITIONED BY (days(ts), bucket(16, id)) WITH ('write.upsert' = 'true')",
        )
        .unwrap();
        let JobStatement::CreateTable(t) = &job.statements[0].statement else {
            panic!()
        };
        assert!(t.if_not_exists);
        assert_eq!(t.name.to_string(), "lake.db.t");
        assert_eq!(t.primary_key[0].value, "id");
        assert_eq!(
            t.partitioned_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            ["days(ts)", "bucket(16, id)"]
        );
    }

    #[test]
    fn statement_set_views_set_and_overwrite() {
        let job = parse(
            "SET 'execution.checkpointing.interval' = '10 s';\nSET parallelism = 4;\nCREATE TEMPORARY VIEW v AS SELECT 1 AS x;\nINSERT INTO a SELECT * FROM v;\nINSERT OVERWRITE b SELECT * FROM v;\nCREATE DATABASE IF NOT EXISTS lake.db;",
        )
        .unwrap();
        let kinds: Vec<_> = job
            .statements
            .iter()
            .map(|s| match &s.statement {
                JobStatement::Set { key, value } => format!("set {key}={value}"),
                JobStatement::CreateView { name, .. } => format!("view {name}"),
                JobStatement::Insert(i) => format!("insert {} overwrite={}", i.table, i.overwrite),
                JobStatement::CreateDatabase {
                    name,
                    if_not_exists,
                } => format!("db {name} {if_not_exists}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "set execution.checkpointing.interval=10 s",
                "set parallelism=4",
                "view v",
                "insert a overwrite=false",
                "insert b overwrite=true",
                "db lake.db true",
            ]
        );
        assert_eq!(job.statements[3].loc, SourceLoc { line: 4, column: 1 });
    }

    #[test]
    fn window_table_function_parses() {
        let job = parse(
            "INSERT INTO out SELECT window_start, COUNT(*) FROM TABLE(\n  TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
        )
        .unwrap();
        let JobStatement::Insert(i) = &job.statements[0].statement else {
            panic!()
        };
        assert!(
            i.source
                .to_string()
                .contains("TABLE(TUMBLE(bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))"),
            "{}",
            i.source
        );
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let err = parse("SELECT 1;\nSELECT a FROM t WHERE;\n").unwrap_err();
        assert_eq!(err.file, "job.sql");
        assert_eq!(err.loc.line, 2);
        assert!(err.loc.column >= 22, "{err}");
        assert!(err.to_string().starts_with("job.sql:2:"), "{err}");
    }

    #[test]
    fn syntax_error_position_is_before_substitution() {
        let params = BTreeMap::from([("d".to_string(), "'2026-03-01'".to_string())]);
        let err = parse_job("j.sql", "SELECT ${d} FROM t WHERE )", &params).unwrap_err();
        // The `)` is at column 26 in the file as written.
        assert_eq!(
            err.loc,
            SourceLoc {
                line: 1,
                column: 26
            },
            "{err}"
        );
    }

    #[test]
    fn missing_semicolon_between_statements_is_an_error() {
        let err = parse("SET 'a' = 'b' SET 'c' = 'd'").unwrap_err();
        assert_eq!(err.loc.line, 1);
        assert!(err.message.contains("';'"), "{err}");
    }
}
