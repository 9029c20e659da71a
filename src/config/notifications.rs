//! `[notifications]`: webhook and e-mail sinks for CRITICAL and FAILED alerts. The one
//! settings type of notifications: `notify::Notifier` takes it as it is.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Serialize, Serializer};

use super::keys::{as_secs, Key, Problems, Section, DAY};

pub(super) const WEBHOOK_URL: Key = Key::env("notifications.webhook_url", "DUPLEX_WEBHOOK_URL");
pub(super) const SMTP_URL: Key = Key::env("notifications.smtp_url", "DUPLEX_SMTP_URL");
pub(super) const EMAIL_FROM: Key = Key::env("notifications.email_from", "DUPLEX_EMAIL_FROM");
pub(super) const EMAIL_TO: Key = Key::env("notifications.email_to", "DUPLEX_EMAIL_TO");
const INCLUDE_WARNINGS: Key = Key::file("notifications.include_warnings");
const RATE_LIMIT: Key = Key::file("notifications.rate_limit_secs");
const KEYS: &[Key] = &[
    WEBHOOK_URL,
    SMTP_URL,
    EMAIL_FROM,
    EMAIL_TO,
    INCLUDE_WARNINGS,
    RATE_LIMIT,
];

/// Where and when to send notifications.
///
/// `Debug` shows only the scheme and host of the URLs, never the webhook path or the SMTP
/// credentials.
#[derive(Clone, Serialize)]
pub struct NotificationSettings {
    /// Slack-compatible incoming webhook (`https://...`; `http://` is accepted for local
    /// relays). A secret: the URL path is the credential. Default: none.
    /// `DUPLEX_WEBHOOK_URL`.
    #[serde(serialize_with = "redacted")]
    pub webhook_url: Option<SecretString>,
    /// SMTP relay: `smtp://[user:pass@]host[:port]` (plain, for local relays; port 25),
    /// `smtp://...?tls=starttls` (STARTTLS required; port 587) or `smtps://...` (implicit TLS;
    /// port 465). User and password are percent-decoded. Default: none. `DUPLEX_SMTP_URL`.
    #[serde(serialize_with = "redacted")]
    pub smtp_url: Option<SecretString>,
    /// Sender address, e.g. `"duplex <duplex@example.com>"`. Required with `smtp_url`.
    /// Default: none.
    pub email_from: Option<String>,
    /// Recipient addresses. At least one is required with `smtp_url`. Default: empty.
    pub email_to: Vec<String>,
    /// Also send WARNING notifications. Default: `false` (only FAILED and CRITICAL).
    pub include_warnings: bool,
    /// `rate_limit_secs`: minimum time between two notifications of the same kind.
    /// Default: 15 minutes.
    #[serde(rename = "rate_limit_secs", serialize_with = "as_secs")]
    pub rate_limit: Duration,
    /// Deadline for one send to one sink, connection included. Default: 10 seconds (not
    /// configurable).
    #[serde(skip)]
    pub timeout: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            webhook_url: None,
            smtp_url: None,
            email_from: None,
            email_to: Vec::new(),
            include_warnings: false,
            rate_limit: Duration::from_secs(15 * 60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for NotificationSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationSettings")
            .field("webhook_url", &self.webhook_url.as_ref().map(redacted_url))
            .field("smtp_url", &self.smtp_url.as_ref().map(redacted_url))
            .field("email_from", &self.email_from)
            .field("email_to", &self.email_to)
            .field("include_warnings", &self.include_warnings)
            .field("rate_limit", &self.rate_limit)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://host:port/[redacted]` for a secret URL, or a placeholder if it does not parse.
fn redacted_url(secret: &SecretString) -> String {
    use secrecy::ExposeSecret;
    match url::Url::parse(secret.expose_secret()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/[redacted]", u.scheme()),
            (Some(host), None) => format!("{}://{host}/[redacted]", u.scheme()),
            _ => "[redacted]".to_owned(),
        },
        Err(_) => "[redacted, not a URL]".to_owned(),
    }
}

fn redacted<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

impl NotificationSettings {
    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        let mut n = Section::table(top, "notifications", KEYS, problems);
        let secret = |n: &mut Section<'_>, key: &Key| {
            n.string(key)
                .filter(|s| !s.trim().is_empty())
                .map(SecretString::from)
        };
        NotificationSettings {
            webhook_url: secret(&mut n, &WEBHOOK_URL),
            smtp_url: secret(&mut n, &SMTP_URL),
            email_from: n.string(&EMAIL_FROM),
            email_to: n.list(&EMAIL_TO).unwrap_or_default(),
            include_warnings: n.bool(&INCLUDE_WARNINGS, false),
            rate_limit: n.secs(&RATE_LIMIT, 900, 7 * DAY),
            ..NotificationSettings::default()
        }
    }
}
