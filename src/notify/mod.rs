//! Operator notifications: a Slack-compatible webhook and e-mail over SMTP.
//!
//! [`Notifier`] owns the configured sinks and a per-kind rate limiter. The daemon calls
//! [`Notifier::notify`] whenever a condition holds (every tick is fine): the notifier decides
//! whether the operator hears about it, and reports what it did in an [`Outcome`]. It never
//! logs; the caller logs the outcome once.
//!
//! Secrets (the webhook URL, the SMTP password) live in [`SecretString`]s and never appear in
//! `Debug` output or error messages.

mod email;
mod limiter;
mod webhook;
pub mod worker;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use self::email::EmailSink;
use self::limiter::{Decision, RateLimiter};
use self::webhook::WebhookSink;
pub use crate::config::NotificationSettings as NotifySettings;
pub use crate::model::Severity;
use crate::text::chain;

/// One alert (or the end of one) as the operator will read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// Alert kind, e.g. `"slot_missing"`, `"replication_lag"`: the rate-limit key.
    pub kind: String,
    /// How bad it is; decides whether it is sent at all.
    pub severity: Severity,
    /// Which duplex raised it: `"main"` or `"cloud"`.
    pub instance: String,
    /// One line; line breaks are replaced by spaces when sent.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// Path of the runbook to follow, e.g. `"runbooks/replication-slot-dropped.md"`.
    pub runbook: Option<String>,
    /// `true` when this announces that the condition ended.
    pub cleared: bool,
}

/// What went wrong while configuring or using a sink. Messages name hosts and status codes,
/// never the webhook URL or the SMTP credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are unusable; every problem found is listed. Needs an operator: fix the
    /// configuration.
    #[error("invalid notification settings: {}", .0.join("; "))]
    InvalidSettings(Vec<String>),
    /// The HTTP client or TLS setup could not be built (local problem, not configuration).
    #[error("could not set up the {sink} client: {reason}")]
    Setup {
        /// `"webhook"` or `"email"`.
        sink: &'static str,
        /// What failed.
        reason: String,
    },
    /// The webhook answered with a non-2xx status. Transient for 5xx; a 4xx usually means
    /// the webhook was revoked or the payload rejected.
    #[error("webhook at {host} answered HTTP {status}{}", body_suffix(.body))]
    WebhookStatus {
        /// Host of the webhook URL.
        host: String,
        /// HTTP status, e.g. `500 Internal Server Error`.
        status: reqwest::StatusCode,
        /// Start of the response body (redacted), possibly empty.
        body: String,
    },
    /// The webhook could not be reached (connection, TLS, protocol). Transient.
    #[error("webhook request to {host} failed: {reason}")]
    WebhookRequest {
        /// Host of the webhook URL.
        host: String,
        /// What failed, without the URL.
        reason: String,
    },
    /// The e-mail could not be composed (e.g. an address the mail library rejects).
    #[error("could not compose the e-mail: {0}")]
    EmailMessage(String),
    /// The SMTP relay refused the message or could not be reached.
    #[error("e-mail via {server} failed: {reason}")]
    Smtp {
        /// `host:port` of the relay.
        server: String,
        /// What failed, without credentials.
        reason: String,
    },
    /// A send did not finish within [`NotifySettings::timeout`]. Transient.
    #[error("{sink} send to {server} timed out after {timeout:?}")]
    Timeout {
        /// `"webhook"` or `"email"`.
        sink: &'static str,
        /// Host (webhook) or `host:port` (SMTP relay).
        server: String,
        /// The configured per-send timeout.
        timeout: Duration,
    },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// What [`Notifier::notify`] did with one notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sinks that accepted the notification: `"webhook"`, `"email"`.
    pub sent: Vec<&'static str>,
    /// Why nothing was sent (severity filtered out, rate limited, no sink configured).
    pub suppressed: Option<String>,
    /// One message per sink that failed, naming the sink.
    pub errors: Vec<String>,
}

impl Outcome {
    /// `true` if at least one sink accepted the notification.
    pub fn delivered(&self) -> bool {
        !self.sent.is_empty()
    }
}

/// Sends [`Notification`]s to the configured sinks, filtered by severity and rate-limited
/// per kind. Cheap to clone: clones share the sinks and the rate limiter. Holds no task;
/// nothing to stop.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    webhook: Option<WebhookSink>,
    email: Option<EmailSink>,
    include_warnings: bool,
    timeout: Duration,
    limiter: Mutex<RateLimiter>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("webhook", &self.inner.webhook)
            .field("email", &self.inner.email)
            .field("include_warnings", &self.inner.include_warnings)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Validates the settings and builds the sinks. Reports every problem at once in
    /// [`Error::InvalidSettings`]; no network access happens here.
    pub fn new(settings: NotifySettings) -> Result<Notifier, Error> {
        let mut problems = Vec::new();
        if settings.timeout.is_zero() {
            problems.push("timeout must be greater than zero".to_owned());
        }
        let webhook = match &settings.webhook_url {
            Some(url) => match WebhookSink::new(url, settings.timeout) {
                Ok(sink) => Some(sink),
                Err(Error::InvalidSettings(mut p)) => {
                    problems.append(&mut p);
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let email = match EmailSink::new(
            settings.smtp_url.as_ref(),
            settings.email_from.as_deref(),
            &settings.email_to,
            settings.timeout,
        ) {
            Ok(sink) => sink,
            Err(Error::InvalidSettings(mut p)) => {
                problems.append(&mut p);
                None
            }
            Err(e) => return Err(e),
        };
        if !problems.is_empty() {
            return Err(Error::InvalidSettings(problems));
        }
        Ok(Notifier {
            inner: Arc::new(Inner {
                webhook,
                email,
                include_warnings: settings.include_warnings,
                timeout: settings.timeout,
                limiter: Mutex::new(RateLimiter::new(
                    settings.rate_limit,
                    if settings.include_warnings {
                        Severity::Warning
                    } else {
                        Severity::Failed
                    },
                )),
            }),
        })
    }

    /// `true` if at least one sink (webhook or e-mail) is configured.
    pub fn is_configured(&self) -> bool {
        self.inner.webhook.is_some() || self.inner.email.is_some()
    }

    /// Sends `n` to every configured sink, unless it is filtered out or rate-limited:
    ///
    /// - Only FAILED and CRITICAL are sent (WARNING too with `include_warnings`); INFO only
    ///   as a clearing.
    /// - A kind is sent at most once per `rate_limit`, except that the first clearing after a
    ///   sent raise always goes out, and a raise more severe than the one last sent for its
    ///   kind (e.g. FAILED then CRITICAL) is not held back.
    /// - If every sink fails, the attempt does not count towards the rate limit, so the next
    ///   call retries.
    ///
    /// Sinks are tried concurrently, each bounded by `timeout`. Never panics, never logs.
    pub async fn notify(&self, n: &Notification) -> Outcome {
        if !self.is_configured() {
            return Outcome {
                suppressed: Some("no notification sink is configured".to_owned()),
                ..Outcome::default()
            };
        }
        let ticket = match self.limiter().decide(n, Instant::now()) {
            Decision::Send(ticket) => ticket,
            Decision::Suppress(reason) => {
                return Outcome {
                    suppressed: Some(reason),
                    ..Outcome::default()
                }
            }
        };

        let timeout = self.inner.timeout;
        let webhook = async {
            match &self.inner.webhook {
                Some(sink) => Some(
                    tokio::time::timeout(timeout, sink.send(n))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Timeout {
                                sink: "webhook",
                                server: sink.host().to_owned(),
                                timeout,
                            })
                        }),
                ),
                None => None,
            }
        };
        let email = async {
            match &self.inner.email {
                Some(sink) => Some(
                    tokio::time::timeout(timeout, sink.send(n))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Timeout {
                                sink: "email",
                                server: sink.server().to_owned(),
                                timeout,
                            })
                        }),
                ),
                None => None,
            }
        };
        let (webhook, email) = tokio::join!(webhook, email);

        let mut outcome = Outcome::default();
        for (name, result) in [("webhook", webhook), ("email", email)] {
            match result {
                Some(Ok(())) => outcome.sent.push(name),
                Some(Err(e)) => outcome.errors.push(e.to_string()),
                None => {}
            }
        }
        if outcome.sent.is_empty() {
            self.limiter().rollback(ticket);
        }
        outcome
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        // The limiter's state stays consistent even if a holder panicked: every update is a
        // single map insert.
        self.inner
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `[duplex CRITICAL] main: <title>`, or `[duplex CLEARED] ...` for a clearing; one line.
fn headline(n: &Notification) -> String {
    let label = if n.cleared {
        "CLEARED"
    } else {
        n.severity.as_str()
    };
    format!(
        "[duplex {label}] {}: {}",
        one_line(&n.instance),
        one_line(&n.title)
    )
}

/// The text body shared by both sinks: message, then severity, kind and runbook.
fn body(n: &Notification) -> String {
    let mut text = String::new();
    if n.cleared {
        text.push_str(&format!(
            "The condition has ended (it was {}).\n\n",
            n.severity
        ));
    }
    text.push_str(n.message.trim_end());
    text.push_str("\n\n");
    text.push_str(&format!(
        "Severity: {}\nInstance: {}\nKind: {}\n",
        n.severity,
        one_line(&n.instance),
        one_line(&n.kind)
    ));
    if let Some(runbook) = &n.runbook {
        text.push_str(&format!("Runbook: {}\n", one_line(runbook)));
    }
    text
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces every occurrence of a secret in `text` (error messages from libraries, response
/// bodies) with `[redacted]`.
fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short fragments ("/", "a") would shred the message and protect nothing.
        if secret.len() >= 4 {
            out = out.replace(secret, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn notification() -> Notification {
        Notification {
            kind: "slot_missing".into(),
            severity: Severity::Critical,
            instance: "main".into(),
            title: "Replication slot\nduplex_main is missing".into(),
            message: "The slot was dropped.".into(),
            runbook: Some("runbooks/replication-slot-dropped.md".into()),
            cleared: false,
        }
    }

    #[test]
    fn headline_is_one_line_with_severity_and_instance() {
        assert_eq!(
            headline(&notification()),
            "[duplex CRITICAL] main: Replication slot duplex_main is missing"
        );
        let cleared = Notification {
            cleared: true,
            ..notification()
        };
        assert_eq!(
            headline(&cleared),
            "[duplex CLEARED] main: Replication slot duplex_main is missing"
        );
    }

    #[test]
    fn body_names_message_severity_and_runbook() {
        let text = body(&notification());
        assert!(text.starts_with("The slot was dropped.\n\n"), "{text}");
        assert!(text.contains("Severity: CRITICAL\n"), "{text}");
        assert!(
            text.contains("Runbook: runbooks/replication-slot-dropped.md\n"),
            "{text}"
        );
    }

    #[test]
    fn severities_are_ordered_and_serialize_upper_case() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Failed);
        assert!(Severity::Failed < Severity::Critical);
        assert_eq!(
            serde_json::to_string(&Severity::Critical).ok().as_deref(),
            Some("\"CRITICAL\"")
        );
    }

    #[test]
    fn settings_debug_shows_hosts_only() {
        let settings = NotifySettings {
            webhook_url: Some(SecretString::from(
                "https://hooks.example.com/services/T0/B0/tok3n",
            )),
            smtp_url: Some(SecretString::from("smtps://bob:pa55word@mail.example.com")),
            ..NotifySettings::default()
        };
        let debug = format!("{settings:?}");
        assert!(
            debug.contains("https://hooks.example.com/[redacted]"),
            "{debug}"
        );
        assert!(
            debug.contains("smtps://mail.example.com/[redacted]"),
            "{debug}"
        );
        assert!(!debug.contains("tok3n") && !debug.contains("pa55word") && !debug.contains("bob"));
    }

    #[test]
    fn invalid_settings_list_every_problem_without_secrets() {
        let settings = NotifySettings {
            webhook_url: Some(SecretString::from("ftp://hooks.example.com/tok3n")),
            smtp_url: Some(SecretString::from(
                "smtp://bob:pa55word@mail.example.com?tls=maybe",
            )),
            email_from: Some("not an address".into()),
            email_to: vec![],
            ..NotifySettings::default()
        };
        let err = Notifier::new(settings).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("webhook_url"), "{err}");
        assert!(
            err.contains("tls=maybe") || err.contains("'maybe'"),
            "{err}"
        );
        assert!(err.contains("email_from"), "{err}");
        assert!(err.contains("email_to"), "{err}");
        assert!(!err.contains("tok3n") && !err.contains("pa55word"), "{err}");
    }

    #[test]
    fn redact_replaces_secrets_but_not_tiny_fragments() {
        assert_eq!(
            redact("POST /services/abcd failed", &["/services/abcd", "/"]),
            "POST [redacted] failed"
        );
    }
}
