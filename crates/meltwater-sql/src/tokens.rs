//! Rewrites on sqlparser's token stream for the constructs it cannot parse.
//!
//! Window table functions take a table argument, `TUMBLE(TABLE bids, DESCRIPTOR(ts), ...)`,
//! and `SESSION` may partition it: `SESSION(TABLE bids PARTITION BY (a, b), ...)`.
//! sqlparser parses neither, so before parsing the `TABLE` keyword inside such a call is
//! dropped and `PARTITION BY keys` becomes a trailing argument `PARTITION_KEYS(keys)`:
//!
//! ```text
//! SESSION(TABLE bids PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '5' MINUTE)
//! SESSION(bids, PARTITION_KEYS(auction), DESCRIPTOR(ts), INTERVAL '5' MINUTE)
//! ```
//!
//! Time travel on a table, `FROM lake.db.orders FOR SYSTEM_VERSION AS OF 42` or `FOR
//! SYSTEM_TIME AS OF TIMESTAMP '2026-03-01 00:00:00'` (UTC), becomes a table name the
//! Iceberg catalog resolves to the table as of that snapshot or time:
//!
//! ```text
//! lake.db.orders FOR SYSTEM_VERSION AS OF 42   lake.db."orders@v42"
//! lake.db.orders FOR SYSTEM_TIME AS OF '...'   lake.db."orders@t1772323200000"
//! ```
//!
//! Synthetic tokens carry the span of the tokens they replace, so errors keep pointing at
//! the user's text.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Word};

/// The window table functions.
pub const WINDOW_FUNCTIONS: [&str; 4] = ["TUMBLE", "HOP", "CUMULATE", "SESSION"];

/// The name of the synthetic argument holding `SESSION`'s partition keys.
pub const PARTITION_KEYS: &str = "PARTITION_KEYS";

fn is_ws(t: &TokenWithSpan) -> bool {
    matches!(t.token, Token::Whitespace(_))
}

fn next_non_ws(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    (from..tokens.len()).find(|&i| !is_ws(&tokens[i]))
}

fn is_word(t: &TokenWithSpan, value: &str) -> bool {
    matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(value))
}

fn word(value: &str, span: &TokenWithSpan) -> TokenWithSpan {
    TokenWithSpan::new(
        Token::Word(Word {
            value: value.to_string(),
            quote_style: None,
            keyword: Keyword::NoKeyword,
        }),
        span.span,
    )
}

fn punct(token: Token, span: &TokenWithSpan) -> TokenWithSpan {
    TokenWithSpan::new(token, span.span)
}

/// A time-travel clause that cannot be read: where, and why.
#[derive(Debug)]
pub struct TimeTravelError {
    pub at: TokenWithSpan,
    pub message: String,
}

/// Applies the time-travel rewrite to a token stream.
pub fn rewrite_time_travel(
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<TokenWithSpan>, TimeTravelError> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let clause = is_word(&tokens[i], "FOR")
            .then(|| next_non_ws(&tokens, i + 1))
            .flatten()
            .filter(|&k| {
                is_word(&tokens[k], "SYSTEM_TIME") || is_word(&tokens[k], "SYSTEM_VERSION")
            })
            .and_then(|k| {
                let as_ = next_non_ws(&tokens, k + 1).filter(|&a| is_word(&tokens[a], "AS"))?;
                let of = next_non_ws(&tokens, as_ + 1).filter(|&o| is_word(&tokens[o], "OF"))?;
                Some((k, of))
            });
        let Some((kind, of)) = clause else {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        };
        let version = is_word(&tokens[kind], "SYSTEM_VERSION");
        let fail = |at: &TokenWithSpan, message: &str| TimeTravelError {
            at: at.clone(),
            message: message.to_string(),
        };
        let table = out
            .iter()
            .rposition(|t| !is_ws(t))
            .filter(|&p| matches!(out[p].token, Token::Word(_)))
            .ok_or_else(|| {
                fail(
                    &tokens[i],
                    "FOR SYSTEM_TIME / SYSTEM_VERSION AS OF follows a table name",
                )
            })?;
        let mut v = next_non_ws(&tokens, of + 1)
            .ok_or_else(|| fail(&tokens[of], "a value is missing after AS OF"))?;
        let suffix = if version {
            match &tokens[v].token {
                Token::Number(n, _) if n.parse::<i64>().is_ok() => format!("v{n}"),
                _ => {
                    return Err(fail(
                        &tokens[v],
                        "FOR SYSTEM_VERSION AS OF takes a snapshot id (a number)",
                    ))
                }
            }
        } else {
            if is_word(&tokens[v], "TIMESTAMP") {
                v = next_non_ws(&tokens, v + 1)
                    .ok_or_else(|| fail(&tokens[v], "a timestamp literal is missing"))?;
            }
            let ms = match &tokens[v].token {
                Token::SingleQuotedString(t) => {
                    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(t)
                        .map(|ns| ns.div_euclid(1_000_000))
                        .map_err(|e| fail(&tokens[v], &format!("'{t}' is not a timestamp: {e}")))?
                }
                Token::Number(n, _) => n.parse::<i64>().map_err(|_| {
                    fail(&tokens[v], "FOR SYSTEM_TIME AS OF takes a timestamp or milliseconds since the epoch")
                })?,
                _ => {
                    return Err(fail(
                        &tokens[v],
                        "FOR SYSTEM_TIME AS OF takes a timestamp literal such as TIMESTAMP '2026-03-01 00:00:00' (UTC)",
                    ))
                }
            };
            format!("t{ms}")
        };
        if let Token::Word(w) = &out[table].token {
            // Unquoted names are lower-cased, as SQL resolution does; the synthetic name is
            // quoted so that it is taken as it is.
            let name = match w.quote_style {
                None => w.value.to_lowercase(),
                Some(_) => w.value.clone(),
            };
            out[table] = TokenWithSpan::new(
                Token::Word(Word {
                    value: format!("{name}@{suffix}"),
                    quote_style: Some('"'),
                    keyword: Keyword::NoKeyword,
                }),
                out[table].span,
            );
        }
        // Drop the whitespace before `FOR` and the clause itself.
        while out.last().is_some_and(is_ws) {
            out.pop();
        }
        i = v + 1;
    }
    Ok(out)
}

/// Applies the window-function rewrite to a token stream.
pub fn rewrite_window_table_args(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let is_window_fn = WINDOW_FUNCTIONS.iter().any(|f| is_word(t, f));
        if is_window_fn {
            if let Some(lp) = next_non_ws(&tokens, i + 1) {
                if tokens[lp].token == Token::LParen {
                    if let Some(kw) = next_non_ws(&tokens, lp + 1) {
                        if is_word(&tokens[kw], "TABLE") {
                            // Copy `FN (` and drop `TABLE` and the space after it.
                            out.extend_from_slice(&tokens[i..=lp]);
                            i = rewrite_table_arg(&tokens, kw + 1, &mut out);
                            continue;
                        }
                    }
                }
            }
        }
        out.push(t.clone());
        i += 1;
    }
    out
}

/// Copies the table name starting at `from` (after `TABLE`), rewriting a following
/// `PARTITION BY` clause; returns the index to continue from.
fn rewrite_table_arg(tokens: &[TokenWithSpan], from: usize, out: &mut Vec<TokenWithSpan>) -> usize {
    let Some(mut i) = next_non_ws(tokens, from) else {
        return tokens.len();
    };
    // The (possibly dotted) table name.
    loop {
        out.push(tokens[i].clone());
        match next_non_ws(tokens, i + 1) {
            Some(p) if tokens[p].token == Token::Period => {
                out.push(tokens[p].clone());
                match next_non_ws(tokens, p + 1) {
                    Some(n) => i = n,
                    None => return tokens.len(),
                }
            }
            _ => break,
        }
    }
    let after_name = i + 1;
    let Some(p) = next_non_ws(tokens, after_name) else {
        return after_name;
    };
    if !is_word(&tokens[p], "PARTITION") {
        return after_name;
    }
    let Some(by) = next_non_ws(tokens, p + 1).filter(|&b| is_word(&tokens[b], "BY")) else {
        return after_name;
    };
    out.push(punct(Token::Comma, &tokens[p]));
    out.push(word(PARTITION_KEYS, &tokens[by]));
    let Some(k) = next_non_ws(tokens, by + 1) else {
        return tokens.len();
    };
    if tokens[k].token == Token::LParen {
        // `PARTITION BY (a, b)`: the parenthesised list becomes the arguments.
        return k;
    }
    // `PARTITION BY a`: wrap the single (possibly dotted) key in parentheses.
    out.push(punct(Token::LParen, &tokens[k]));
    let mut j = k;
    loop {
        out.push(tokens[j].clone());
        match next_non_ws(tokens, j + 1) {
            Some(p) if tokens[p].token == Token::Period => {
                out.push(tokens[p].clone());
                match next_non_ws(tokens, p + 1) {
                    Some(n) => j = n,
                    None => break,
                }
            }
            _ => break,
        }
    }
    out.push(punct(Token::RParen, &tokens[j]));
    j + 1
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    use super::*;

    fn rewrite(sql: &str) -> String {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        rewrite_window_table_args(tokens)
            .iter()
            .map(|t| t.token.to_string())
            .collect()
    }

    fn travel(sql: &str) -> Result<String, String> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        rewrite_time_travel(tokens)
            .map(|t| t.iter().map(|t| t.token.to_string()).collect())
            .map_err(|e| e.message)
    }

    #[test]
    fn time_travel_becomes_a_table_name() {
        assert_eq!(
            travel("SELECT * FROM lake.db.Orders FOR SYSTEM_VERSION AS OF 42 o").unwrap(),
            r#"SELECT * FROM lake.db."orders@v42" o"#
        );
        assert_eq!(
            travel("FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2026-03-01 00:00:00' WHERE x").unwrap(),
            r#"FROM "t@t1772323200000" WHERE x"#
        );
        assert_eq!(
            travel(r#"FROM "Mixed" for system_time as of '2026-03-01T00:00:01Z'"#).unwrap(),
            r#"FROM "Mixed@t1772323201000""#
        );
        // Other uses of FOR are left alone.
        assert_eq!(
            travel("SUBSTRING(s FROM 1 FOR 2)").unwrap(),
            "SUBSTRING(s FROM 1 FOR 2)"
        );
        let e = travel("FROM t FOR SYSTEM_VERSION AS OF 'x'").unwrap_err();
        assert!(e.contains("snapshot id"), "{e}");
        let e = travel("FROM t FOR SYSTEM_TIME AS OF 'yesterday'").unwrap_err();
        assert!(e.contains("'yesterday' is not a timestamp"), "{e}");
    }

    #[test]
    fn drops_table_keyword_in_window_functions() {
        assert_eq!(
            rewrite("FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))"),
            "FROM TABLE(TUMBLE(bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))"
        );
        assert_eq!(rewrite("hop ( table db.bids , x)"), "hop (db.bids , x)");
        // Other functions are left alone.
        assert_eq!(rewrite("FOO(TABLE bids)"), "FOO(TABLE bids)");
    }

    #[test]
    fn session_partition_by_becomes_an_argument() {
        assert_eq!(
            rewrite(
                "SESSION(TABLE bids PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '5' MINUTE)"
            ),
            "SESSION(bids,PARTITION_KEYS(auction), DESCRIPTOR(ts), INTERVAL '5' MINUTE)"
        );
        assert_eq!(
            rewrite("SESSION(TABLE bids PARTITION BY (a, b), DESCRIPTOR(ts), INTERVAL '5' MINUTE)"),
            "SESSION(bids,PARTITION_KEYS(a, b), DESCRIPTOR(ts), INTERVAL '5' MINUTE)"
        );
    }
}
