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
