//! E-mail over SMTP (lettre, tokio, rustls): one plain-text message per notification.

use std::fmt;
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{body, chain, headline, redact, Error, Notification};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://`: no TLS (local relays only).
    Plain,
    /// `smtp://...?tls=starttls`: STARTTLS, refused if the relay does not offer it.
    StartTls,
    /// `smtp://...?tls=opportunistic`: STARTTLS when offered, plain otherwise.
    Opportunistic,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// The parts of `smtp_url`, checked.
struct SmtpUrl {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, SecretString)>,
}

/// Sends notifications through one SMTP relay to a fixed list of recipients.
pub(super) struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, safe to show.
    server: String,
    security: Security,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Kept only to scrub it from error messages.
    password: Option<SecretString>,
}

impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSink")
            .field("server", &self.server)
            .field("security", &self.security)
            .field(
                "credentials",
                &if self.password.is_some() {
                    "[redacted]"
                } else {
                    "none"
                },
            )
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EmailSink {
    /// Validates the e-mail settings as a whole. `Ok(None)` when e-mail is not configured;
    /// every problem is reported in one [`Error::InvalidSettings`].
    pub(super) fn new(
        smtp_url: Option<&SecretString>,
        from: Option<&str>,
        to: &[String],
        timeout: Duration,
    ) -> Result<Option<Self>, Error> {
        let Some(smtp_url) = smtp_url else {
            if from.is_some() || !to.is_empty() {
                return Err(Error::InvalidSettings(vec![
                    "email_from/email_to are set but smtp_url is not".to_owned(),
                ]));
            }
            return Ok(None);
        };

        let mut problems = Vec::new();
        let url = parse_smtp_url(smtp_url, &mut problems);
        let from = match from {
            None => {
                problems.push("email_from is required when smtp_url is set".to_owned());
                None
            }
            Some(from) => parse_mailbox("email_from", from, &mut problems),
        };
        if to.is_empty() {
            problems.push("email_to needs at least one address when smtp_url is set".to_owned());
        }
        let to: Vec<Mailbox> = to
            .iter()
            .filter_map(|address| parse_mailbox("email_to", address, &mut problems))
            .collect();
        let (Some(url), Some(from), true) = (url, from, problems.is_empty()) else {
            return Err(Error::InvalidSettings(problems));
        };

        let setup = |e: lettre::transport::smtp::Error| Error::Setup {
            sink: "email",
            reason: chain(&e),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host)
            .port(url.port)
            .timeout(Some(timeout));
        builder = match url.security {
            Security::Plain => builder.tls(Tls::None),
            Security::StartTls => builder.tls(Tls::Required(
                TlsParameters::new(url.host.clone()).map_err(setup)?,
            )),
            Security::Opportunistic => builder.tls(Tls::Opportunistic(
                TlsParameters::new(url.host.clone()).map_err(setup)?,
            )),
            Security::Implicit => builder.tls(Tls::Wrapper(
                TlsParameters::new(url.host.clone()).map_err(setup)?,
            )),
        };
        let password = match url.credentials {
            Some((user, password)) => {
                builder = builder
                    .credentials(Credentials::new(user, password.expose_secret().to_owned()));
                Some(password)
            }
            None => None,
        };
        let server = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        Ok(Some(EmailSink {
            transport: builder.build(),
            server,
            security: url.security,
            from,
            to,
            password,
        }))
    }

    /// `host:port` of the relay, safe to show.
    pub(super) fn server(&self) -> &str {
        &self.server
    }

    /// Sends one message to every recipient; the relay's refusal is an error.
    pub(super) async fn send(&self, n: &Notification) -> Result<(), Error> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(headline(n));
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .header(ContentType::TEXT_PLAIN)
            .body(body(n))
            .map_err(|e| Error::EmailMessage(chain(&e)))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| Error::Smtp {
                server: self.server.clone(),
                reason: match &self.password {
                    Some(password) => redact(&chain(&e), &[password.expose_secret()]),
                    None => chain(&e),
                },
            })?;
        Ok(())
    }
}

fn parse_mailbox(field: &str, address: &str, problems: &mut Vec<String>) -> Option<Mailbox> {
    match address.trim().parse::<Mailbox>() {
        Ok(mailbox) => Some(mailbox),
        Err(e) => {
            problems.push(format!(
                "{field} {address:?} is not a valid e-mail address ({e})"
            ));
            None
        }
    }
}

/// Checks `smtp_url`; problems never quote the URL, which may hold a password.
fn parse_smtp_url(secret: &SecretString, problems: &mut Vec<String>) -> Option<SmtpUrl> {
    let url = match url::Url::parse(secret.expose_secret()) {
        Ok(url) => url,
        Err(e) => {
            problems.push(format!("smtp_url is not a valid URL ({e})"));
            return None;
        }
    };
    let before = problems.len();

    let mut tls = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "tls" => tls = Some(value.into_owned()),
            other => problems.push(format!(
                "smtp_url has an unknown parameter '{other}' (only tls=starttls is understood)"
            )),
        }
    }
    let security = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => Security::Plain,
        ("smtp", Some("starttls" | "required")) => Security::StartTls,
        ("smtp", Some("opportunistic")) => Security::Opportunistic,
        ("smtp", Some(other)) => {
            problems.push(format!(
                "smtp_url has tls='{other}'; use tls=starttls, or smtps:// for implicit TLS"
            ));
            Security::Plain
        }
        ("smtps", None) => Security::Implicit,
        ("smtps", Some(_)) => {
            problems.push(
                "smtp_url: smtps:// already means implicit TLS; remove the tls parameter"
                    .to_owned(),
            );
            Security::Implicit
        }
        (scheme, _) => {
            problems.push(format!(
                "smtp_url must start with smtp:// or smtps://, not {scheme}://"
            ));
            Security::Plain
        }
    };

    let host = match url.host() {
        Some(url::Host::Domain(domain)) if !domain.is_empty() => Some(domain.to_owned()),
        Some(url::Host::Ipv4(ip)) => Some(ip.to_string()),
        Some(url::Host::Ipv6(ip)) => Some(ip.to_string()),
        _ => {
            problems.push("smtp_url has no host".to_owned());
            None
        }
    };
    let port = url.port().unwrap_or(match security {
        Security::Plain => 25,
        Security::StartTls | Security::Opportunistic => 587,
        Security::Implicit => 465,
    });

    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        ("", Some(_)) => {
            problems.push("smtp_url has a password but no user name".to_owned());
            None
        }
        (_, None) => {
            problems.push("smtp_url has a user name but no password".to_owned());
            None
        }
        (user, Some(password)) => match (percent_decode(user), percent_decode(password)) {
            (Some(user), Some(password)) => Some((user, SecretString::from(password))),
            _ => {
                problems.push(
                    "smtp_url user name or password is not valid UTF-8 after percent-decoding"
                        .to_owned(),
                );
                None
            }
        },
    };

    match host {
        Some(host) if problems.len() == before => Some(SmtpUrl {
            host,
            port,
            security,
            credentials,
        }),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SmtpUrl, Vec<String>> {
        let mut problems = Vec::new();
        match parse_smtp_url(&SecretString::from(url), &mut problems) {
            Some(url) if problems.is_empty() => Ok(url),
            _ => Err(problems),
        }
    }

    #[test]
    fn schemes_choose_security_and_default_port() {
        let plain = parse("smtp://relay.local").map_err(|p| p.join("; "));
        assert!(matches!(
            plain,
            Ok(SmtpUrl {
                port: 25,
                security: Security::Plain,
                ..
            })
        ));
        let starttls = parse("smtp://u:p@mail.example.com?tls=starttls");
        assert!(matches!(
            starttls,
            Ok(SmtpUrl {
                port: 587,
                security: Security::StartTls,
                credentials: Some(_),
                ..
            })
        ));
        let implicit = parse("smtps://u:p@mail.example.com:2465");
        assert!(matches!(
            implicit,
            Ok(SmtpUrl {
                port: 2465,
                security: Security::Implicit,
                ..
            })
        ));
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = parse("smtps://me%40example.com:p%40ss%2Fw0rd@mail.example.com");
        let Ok(SmtpUrl {
            credentials: Some((user, password)),
            ..
        }) = url
        else {
            panic!("credentials expected");
        };
        assert_eq!(user, "me@example.com");
        assert_eq!(password.expose_secret(), "p@ss/w0rd");
    }

    #[test]
    fn problems_are_named_without_quoting_the_password() {
        for (url, expected) in [
            ("http://u:s3cret@mail.example.com", "smtp:// or smtps://"),
            ("smtp://u:s3cret@mail.example.com?tls=yes", "tls='yes'"),
            (
                "smtps://u:s3cret@mail.example.com?tls=starttls",
                "remove the tls",
            ),
            ("smtp://u@mail.example.com", "no password"),
            ("smtp://:s3cret@mail.example.com", "no user name"),
            ("smtp://u:s3cret@mail.example.com?foo=1", "'foo'"),
        ] {
            let problems = parse(url).err().unwrap_or_default().join("; ");
            assert!(problems.contains(expected), "{url}: {problems}");
            assert!(!problems.contains("s3cret"), "{url}: {problems}");
        }
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), Some("a%2".to_owned()));
        assert_eq!(percent_decode("100%zz"), Some("100%zz".to_owned()));
        assert_eq!(percent_decode("%ff"), None);
    }
}
