//! Secrets that never leave through `Display`, `Debug` or `Serialize`: connection URLs
//! with their password kept apart ([`SecretUrl`]) and plain secrets ([`Secret`]).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// A connection URL whose password never leaves through `Display`, `Debug` or `Serialize`.
#[derive(Clone)]
pub struct SecretUrl {
    url: url::Url,
    password: Option<SecretString>,
}

impl SecretUrl {
    /// Parse `raw`, keeping the password apart from the printable URL.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
        let mut password = url.password().map(|p| {
            let decoded = percent_decode(p);
            SecretString::from(decoded)
        });
        if password.is_some() {
            let _ = url.set_password(Some("********"));
        }
        // libpq also takes `?password=` (and `sslpassword=`): keep them out of the URL too.
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs
            .iter()
            .any(|(k, _)| k == "password" || k == "sslpassword")
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            for (k, v) in &pairs {
                if k == "password" || k == "sslpassword" {
                    if k == "password" && password.is_none() {
                        password = Some(SecretString::from(v.clone()));
                    }
                    query.append_pair(k, "********");
                } else {
                    query.append_pair(k, v);
                }
            }
        }
        Ok(SecretUrl { url, password })
    }

    /// The URL with its password replaced by `********`.
    pub fn redacted(&self) -> String {
        self.url.to_string()
    }

    /// The parsed URL (password redacted).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The password, for building a client connection. Never log the result.
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.expose_secret())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A secret string that serializes as `********`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wrap `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret itself. Never log the result.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}
