//! Slack-compatible incoming webhook: `POST {"text": ..., "username": "duplex"}`.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{body, headline, redact, Error, Notification};

/// How much of an error response body is kept for the error message.
const MAX_ERROR_BODY: usize = 300;

/// Posts notifications to one webhook URL. The URL is a secret; only its host is shown.
pub(super) struct WebhookSink {
    client: reqwest::Client,
    url: SecretString,
    host: String,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("host", &self.host)
            .field("url", &"[redacted]")
            .finish()
    }
}

/// The JSON body: `text` is what Slack, Mattermost and Rocket.Chat display.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    username: &'a str,
}

impl WebhookSink {
    /// Validates the URL (http or https, with a host) and builds an HTTP client using rustls.
    pub(super) fn new(url: &SecretString, timeout: Duration) -> Result<Self, Error> {
        let parsed = match url::Url::parse(url.expose_secret()) {
            Ok(parsed) => parsed,
            Err(e) => {
                return Err(Error::InvalidSettings(vec![format!(
                    "webhook_url is not a valid URL ({e})"
                )]))
            }
        };
        let mut problems = Vec::new();
        if !matches!(parsed.scheme(), "https" | "http") {
            problems.push(format!(
                "webhook_url must start with https:// (or http:// for a local relay), not {}://",
                parsed.scheme()
            ));
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            problems.push("webhook_url has no host".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::InvalidSettings(problems));
        }

        let client = reqwest::Client::builder()
            .user_agent(concat!("duplex/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            // A redirect would be unexpected from a webhook; report it rather than follow it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Setup {
                sink: "webhook",
                reason: describe(e),
            })?;
        Ok(WebhookSink {
            client,
            url: url.clone(),
            host,
        })
    }

    /// Host of the webhook URL, safe to show.
    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// Posts one notification; any non-2xx answer is an error naming the status.
    pub(super) async fn send(&self, n: &Notification) -> Result<(), Error> {
        let payload = Payload {
            text: slack_text(n),
            username: "duplex",
        };
        let mut response = self
            .client
            .post(self.url.expose_secret())
            .json(&payload)
            .send()
            .await
            .map_err(|e| Error::WebhookRequest {
                host: self.host.clone(),
                reason: self.redacted(&describe(e)),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }

        // Services explain rejections in the body ("invalid_payload", "no_service"); keep the
        // start of it, but a failure to read it must not hide the status.
        let mut raw = Vec::new();
        while raw.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let mut excerpt = super::one_line(&text);
        if let Some((cut, _)) = excerpt.char_indices().nth(MAX_ERROR_BODY) {
            excerpt.truncate(cut);
            excerpt.push('…');
        }
        Err(Error::WebhookStatus {
            host: self.host.clone(),
            status,
            body: self.redacted(&excerpt),
        })
    }

    /// Removes the URL and its path (the credential) from text that may quote them.
    fn redacted(&self, text: &str) -> String {
        let url = self.url.expose_secret();
        let path = url::Url::parse(url)
            .map(|u| u.path().trim_matches('/').to_owned())
            .unwrap_or_default();
        redact(text, &[url, &path])
    }
}

/// The message text: headline in bold, then the shared body, escaped for Slack.
fn slack_text(n: &Notification) -> String {
    let icon = if n.cleared {
        ":white_check_mark:"
    } else {
        match n.severity {
            super::Severity::Critical => ":rotating_light:",
            super::Severity::Failed => ":x:",
            super::Severity::Warning => ":warning:",
            super::Severity::Info => ":information_source:",
        }
    };
    format!(
        "{icon} *{}*\n{}",
        slack_escape(&headline(n)),
        slack_escape(&body(n))
    )
}

/// Slack's formatting treats `&`, `<` and `>` as control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The error and its causes on one line, without the request URL.
fn describe(e: reqwest::Error) -> String {
    crate::text::chain(&e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Severity;

    #[test]
    fn text_escapes_slack_control_characters() {
        let n = Notification {
            kind: "lag".into(),
            severity: Severity::Failed,
            instance: "cloud".into(),
            title: "lag > 5 min & rising".into(),
            message: "see <dashboard>".into(),
            runbook: None,
            cleared: false,
        };
        let text = slack_text(&n);
        assert!(
            text.starts_with(":x: *[duplex FAILED] cloud: lag &gt; 5 min &amp; rising*\n"),
            "{text}"
        );
        assert!(text.contains("see &lt;dashboard&gt;"), "{text}");
    }
}
