//! libpq connection strings in `keyword=value` form, as a subscription stores them:
//! read one into its pairs and write it back, so one value (the password, when it is
//! rotated) can be replaced without touching the others.

use super::conninfo_value;

/// The `keyword=value` pairs of `s`, in order; `None` when `s` is not in that form (for
/// example a `postgresql://` URI) or is malformed.
pub fn parse(s: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if key.is_empty() || key.contains(':') || chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Write `pairs` as a connection string, every value quoted.
pub fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of `key` in `pairs` (the last one wins, as in libpq).
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `pairs` with `key` set to `value` (replacing every occurrence, or added at the end).
pub fn set(pairs: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != key).cloned().collect();
    out.push((key.to_string(), value.to_string()));
    out
}

/// Whether `a` and `b` ask for the same connection: the same keywords with the same
/// values, whatever their order and quoting. Strings that cannot be parsed are compared
/// as they are.
pub fn same(a: &str, b: &str) -> bool {
    let as_map =
        |p: Vec<(String, String)>| p.into_iter().collect::<std::collections::BTreeMap<_, _>>();
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => as_map(x) == as_map(y),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quoted_unquoted_and_escaped_values_are_read() {
        let p =
            parse(r"host='db.example' port=5432 password='it\'s a \\ secret' sslmode = require")
                .unwrap();
        assert_eq!(
            p,
            pairs(&[
                ("host", "db.example"),
                ("port", "5432"),
                ("password", r"it's a \ secret"),
                ("sslmode", "require"),
            ])
        );
        assert_eq!(get(&p, "password"), Some(r"it's a \ secret"));
        assert_eq!(get(&p, "user"), None);
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let p = pairs(&[("host", "h"), ("password", "p' w\\d")]);
        assert_eq!(parse(&render(&p)).unwrap(), p);
    }

    #[test]
    fn setting_a_value_replaces_it_and_keeps_the_rest() {
        let p = parse("host='h' password='old' sslmode='verify-full'").unwrap();
        let q = set(&p, "password", "new");
        assert_eq!(get(&q, "password"), Some("new"));
        assert_eq!(get(&q, "sslmode"), Some("verify-full"));
        assert_eq!(q.iter().filter(|(k, _)| k == "password").count(), 1);
    }

    #[test]
    fn the_same_connection_is_recognised_whatever_the_quoting_and_order() {
        assert!(same(
            "host='h' port=5432 password='p'",
            "port='5432'  password=p host=h"
        ));
        assert!(!same("host='h' password='p'", "host='h' password='q'"));
        assert!(!same("host='h'", "host='h' sslmode='require'"));
    }

    #[test]
    fn uris_and_broken_strings_are_not_taken_apart() {
        assert_eq!(parse("postgresql://u:p@h/db"), None);
        assert_eq!(parse("host='unterminated"), None);
        assert_eq!(parse("novalue"), None);
        assert_eq!(parse("").unwrap(), Vec::new());
    }
}
