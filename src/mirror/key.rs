//! Object keys and expected hashes as rows give them: pure checks, no I/O.
//!
//! A row's key column holds either a bare key (`jumps/u1/j1.bin`) or an `s3://bucket/key`
//! URL; either way the mirror uses only the key, which is the same on both sides (each
//! store's prefix is added when it is addressed). Keys that could escape a prefix or a
//! directory are refused.

/// The longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// The object key a column value names: the path of an `s3://bucket/key` URL, or the
/// value itself.
pub fn from_column(value: &str) -> &str {
    match value.strip_prefix("s3://") {
        Some(rest) => rest.split_once('/').map(|(_, k)| k).unwrap_or(""),
        None => value,
    }
}

/// Why a key cannot be mirrored, or `None` when it is fine.
pub fn problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("the object key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Some(format!(
            "the object key is {} bytes long (at most {MAX_KEY_BYTES})",
            key.len()
        ));
    }
    if key.starts_with('/') {
        return Some(format!("the object key `{}` starts with `/`: keys are relative to the store's bucket and prefix", shown(key)));
    }
    if key.split('/').any(|seg| seg == ".." || seg == ".") {
        return Some(format!("the object key `{}` has a `..` or `.` segment: it could name a file outside the store's prefix", shown(key)));
    }
    if key.contains('\\') || key.chars().any(char::is_control) {
        return Some(format!(
            "the object key `{}` holds a backslash or a control character",
            shown(key)
        ));
    }
    if key.split('/').any(|seg| seg.is_empty()) {
        return Some(format!(
            "the object key `{}` has an empty path segment (`//` or a trailing `/`)",
            shown(key)
        ));
    }
    if key.contains(crate::mirror::TEMP_MARK) {
        return Some(format!(
            "the object key `{}` contains `{}`, which duplex reserves for unfinished copies",
            shown(key),
            crate::mirror::TEMP_MARK
        ));
    }
    None
}

/// Why an expected hash cannot be used, or `None`.
pub fn hash_problem(hash: &str) -> Option<String> {
    if hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        None
    } else {
        Some(format!(
            "the expected hash `{}` is not a SHA-256 as 64 lower-case hex characters",
            shown(hash)
        ))
    }
}

/// Why an expected size cannot be used, or `None`.
pub fn size_problem(size: i64) -> Option<String> {
    (size < 0).then(|| format!("the expected size {size} is negative"))
}

/// A value for a message: control characters escaped, long values cut.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_give_their_key_and_bare_keys_stay() {
        assert_eq!(
            from_column("s3://duplex-main/jumps/u/1.bin"),
            "jumps/u/1.bin"
        );
        assert_eq!(from_column("jumps/u/1.bin"), "jumps/u/1.bin");
        assert_eq!(from_column("s3://bucket-only"), "");
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        assert!(problem("jumps/u/1.bin").is_none());
        assert!(problem("a/../b").unwrap().contains("`..`"));
        assert!(problem("..").unwrap().contains("`..`"));
        assert!(problem("/etc/passwd").unwrap().contains("starts with `/`"));
        assert!(problem("").unwrap().contains("empty"));
        assert!(problem("a//b").is_some());
        assert!(problem("a\\b").is_some());
        assert!(problem("a\nb").unwrap().contains("a\\nb"));
        assert!(problem(&"k".repeat(1025)).is_some());
    }

    #[test]
    fn hashes_must_be_64_lower_hex() {
        assert!(hash_problem(&"ab".repeat(32)).is_none());
        assert!(hash_problem(&"AB".repeat(32)).is_some());
        assert!(hash_problem("abc").unwrap().contains("64 lower-case hex"));
        assert!(size_problem(-1).is_some());
        assert!(size_problem(0).is_none());
    }
}
