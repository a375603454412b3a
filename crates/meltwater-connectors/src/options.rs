//! Reading a table's `WITH (...)` options: typed lookups whose errors name the table,
//! the option and the offending value, and the duration syntax Flink users write.

use std::str::FromStr;

use crate::{ConnectorError, Result, TableDef};

/// Typed access to the options of one table definition.
pub(crate) struct OptionReader<'a> {
    pub def: &'a TableDef,
    pub connector: &'static str,
}

impl<'a> OptionReader<'a> {
    pub fn new(def: &'a TableDef, connector: &'static str) -> Self {
        Self { def, connector }
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.def.options.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&'a str> {
        self.get(key).ok_or_else(|| ConnectorError::MissingOption {
            table: self.def.name.clone(),
            option: key.to_string(),
        })
    }

    /// The option parsed with `parse`, whose error text becomes the reason.
    pub fn parse_with<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => parse(value)
                .map(Some)
                .map_err(|reason| self.invalid(key, value, reason)),
        }
    }

    /// The option parsed with [`FromStr`]; `expected` describes valid values.
    pub fn parse<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>> {
        self.parse_with(key, |v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| format!("expected {expected}"))
        })
    }

    pub fn parse_bool(&self, key: &str) -> Result<Option<bool>> {
        self.parse_with(key, parse_bool)
    }

    pub fn invalid(&self, key: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
        ConnectorError::InvalidOption {
            table: self.def.name.clone(),
            option: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn unknown(&self, key: &str, valid: impl Into<String>) -> ConnectorError {
        ConnectorError::UnknownOption {
            table: self.def.name.clone(),
            connector: self.connector.to_string(),
            option: key.to_string(),
            valid: valid.into(),
        }
    }
}

/// `true` / `false`, case-insensitive (Flink's boolean options).
pub(crate) fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected 'true' or 'false'".into())
    }
}

/// A duration in milliseconds, written as Flink writes durations: a count followed by an
/// optional unit (`ms`, `s`, `min`, `h`, `d` and their long forms), with or without a
/// space: `'10 s'`, `'5min'`, `'1 h'`, `'1 d'`. A bare count is milliseconds.
pub fn parse_duration_ms(s: &str) -> std::result::Result<u64, String> {
    const EXPECTED: &str = "expected a duration such as '500 ms', '10 s', '5 min', '1 h', '1 d' or a count of milliseconds";
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(EXPECTED.into());
    }
    let count: u64 = s[..digits].parse().map_err(|_| EXPECTED.to_string())?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    let factor: u64 = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "min" | "mins" | "minute" | "minutes" | "m" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(EXPECTED.into()),
    };
    count
        .checked_mul(factor)
        .ok_or_else(|| "duration is too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10 s"), Ok(10_000));
        assert_eq!(parse_duration_ms("5 min"), Ok(300_000));
        assert_eq!(parse_duration_ms("5min"), Ok(300_000));
        assert_eq!(parse_duration_ms("1 h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1 d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms(" 250 ms "), Ok(250));
        assert!(parse_duration_ms("ten s").is_err());
        assert!(parse_duration_ms("10 fortnights").is_err());
        assert!(parse_duration_ms("-1 s").is_err());
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("false"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }
}
