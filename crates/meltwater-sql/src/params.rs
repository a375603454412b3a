//! `${name}` parameters, filled from `--param name=value` before the job is tokenized.
//!
//! Substitution changes column positions on the lines it touches, so it keeps a map of
//! every edit; [`ParamMap::original`] turns a position in the substituted text back into
//! the position the user wrote, so errors point into the file as it is on disk.

use std::collections::BTreeMap;

use crate::error::SourceLoc;

/// One `${name}` replaced on a line.
#[derive(Debug, Clone)]
struct Edit {
    /// 1-based column of the first character of the value in the substituted line.
    out_start: u64,
    /// Length (in chars) of the value as inserted.
    out_len: u64,
    /// 1-based column of `$` in the original line.
    orig_start: u64,
    /// Length (in chars) of `${name}` in the original line.
    orig_len: u64,
}

/// Maps positions in the substituted text back to the original file.
#[derive(Debug, Default, Clone)]
pub struct ParamMap {
    /// Edits per substituted line (1-based line → edits in column order). Values may not
    /// contain newlines, so lines keep their numbers.
    edits: BTreeMap<u64, Vec<Edit>>,
}

impl ParamMap {
    /// The original position of `loc` in the substituted text.
    pub fn original(&self, loc: SourceLoc) -> SourceLoc {
        let Some(edits) = self.edits.get(&loc.line) else {
            return loc;
        };
        let mut delta: i64 = 0;
        for e in edits {
            if loc.column < e.out_start {
                break;
            }
            if loc.column < e.out_start + e.out_len {
                // Inside a substituted value: point at the `${` that produced it.
                return SourceLoc {
                    line: loc.line,
                    column: e.orig_start,
                };
            }
            delta += e.orig_len as i64 - e.out_len as i64;
        }
        SourceLoc {
            line: loc.line,
            column: (loc.column as i64 + delta).max(1) as u64,
        }
    }
}

/// A `${name}` with no value, or a value that cannot be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub loc: SourceLoc,
    pub message: String,
}

/// Replaces every `${name}` outside `--` comments by its value.
///
/// Names are `[A-Za-z0-9_.-]+`. A `${` with no closing `}` on its line, or a name with no
/// value, is an error at the `$`.
pub fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<(String, ParamMap), ParamError> {
    let mut out = String::with_capacity(text.len());
    let mut map = ParamMap::default();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx as u64 + 1;
        let chars: Vec<char> = line.chars().collect();
        let mut out_col: u64 = 1;
        let mut i = 0usize;
        let mut in_string = false;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                in_string = !in_string;
            }
            if !in_string && c == '-' && chars.get(i + 1) == Some(&'-') {
                // The rest of the line is a comment: copied as it is.
                out.extend(&chars[i..]);
                break;
            }
            if c == '$' && chars.get(i + 1) == Some(&'{') {
                let orig_col = i as u64 + 1;
                let close = chars[i + 2..].iter().position(|&c| c == '}');
                let Some(close) = close else {
                    return Err(ParamError {
                        loc: SourceLoc {
                            line: line_no,
                            column: orig_col,
                        },
                        message: "unterminated parameter: '${' without a closing '}'".into(),
                    });
                };
                let name: String = chars[i + 2..i + 2 + close].iter().collect();
                let valid = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !valid {
                    return Err(ParamError {
                        loc: SourceLoc {
                            line: line_no,
                            column: orig_col,
                        },
                        message: format!("invalid parameter name '{name}'"),
                    });
                }
                let Some(value) = params.get(&name) else {
                    return Err(ParamError {
                        loc: SourceLoc {
                            line: line_no,
                            column: orig_col,
                        },
                        message: format!(
                            "parameter '{name}' has no value; pass --param {name}=VALUE"
                        ),
                    });
                };
                if value.contains('\n') {
                    return Err(ParamError {
                        loc: SourceLoc {
                            line: line_no,
                            column: orig_col,
                        },
                        message: format!("the value of parameter '{name}' contains a newline"),
                    });
                }
                let out_len = value.chars().count() as u64;
                let orig_len = close as u64 + 3;
                map.edits.entry(line_no).or_default().push(Edit {
                    out_start: out_col,
                    out_len,
                    orig_start: orig_col,
                    orig_len,
                });
                out.push_str(value);
                out_col += out_len;
                i += close + 3;
                continue;
            }
            out.push(c);
            out_col += 1;
            i += 1;
        }
    }
    Ok((out, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_and_maps_positions_back() {
        let text = "SELECT 1\nWHERE d = '${date}' AND x = ${n} AND y = bad\n";
        let (out, map) = substitute(text, &params(&[("date", "2026-03-01"), ("n", "7")])).unwrap();
        assert_eq!(
            out,
            "SELECT 1\nWHERE d = '2026-03-01' AND x = 7 AND y = bad\n"
        );
        // `bad` is at column 45 of the output line; in the original it is at column 46.
        let out_col = out.lines().nth(1).unwrap().find("bad").unwrap() as u64 + 1;
        let orig_col = text.lines().nth(1).unwrap().find("bad").unwrap() as u64 + 1;
        assert_eq!(
            map.original(SourceLoc {
                line: 2,
                column: out_col
            })
            .column,
            orig_col
        );
        // Inside the value: the `$` of `${date}`.
        assert_eq!(
            map.original(SourceLoc {
                line: 2,
                column: 13
            })
            .column,
            12
        );
        // Other lines are untouched.
        assert_eq!(map.original(SourceLoc { line: 1, column: 3 }).column, 3);
    }

    #[test]
    fn missing_parameter_names_its_position() {
        let err = substitute("a\n  x = ${day}", &BTreeMap::new()).unwrap_err();
        assert_eq!(err.loc, SourceLoc { line: 2, column: 7 });
        assert!(err.message.contains("--param day=VALUE"), "{}", err.message);
    }

    #[test]
    fn comments_are_not_substituted() {
        let (out, _) = substitute("-- uses ${date}\nSELECT 1", &BTreeMap::new()).unwrap();
        assert_eq!(out, "-- uses ${date}\nSELECT 1");
    }

    #[test]
    fn unterminated_parameter_is_an_error() {
        let err = substitute("x = ${date", &params(&[("date", "1")])).unwrap_err();
        assert_eq!(err.loc, SourceLoc { line: 1, column: 5 });
    }
}
