//! Notifications against real local receivers: an HTTP webhook receiver (axum) and a minimal
//! SMTP sink, both bound to 127.0.0.1:0 and stopped by the test that started them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use duplex::notify::{Notification, Notifier, NotifySettings, Outcome, Severity};
use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Upper bound for anything a test waits for; a broken test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);
const WEBHOOK_TOKEN: &str = "T0DUPLEX/B0DUPLEX/s3cr3t-webhook-token";
const SMTP_USER: &str = "alice";
const SMTP_PASSWORD: &str = "s3cr3t-smtp-pass";

// ---------------------------------------------------------------------------------------
// Webhook receiver

/// An HTTP server that records every JSON body POSTed under `/services/...` and answers
/// with a fixed status.
struct WebhookReceiver {
    addr: SocketAddr,
    bodies: mpsc::UnboundedReceiver<(String, Value)>,
    received: Arc<Mutex<usize>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct ReceiverState {
    status: StatusCode,
    bodies: mpsc::UnboundedSender<(String, Value)>,
    received: Arc<Mutex<usize>>,
}

async fn record(
    State(state): State<ReceiverState>,
    Path(path): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, &'static str) {
    if let Ok(mut n) = state.received.lock() {
        *n += 1;
    }
    let _ = state.bodies.send((path, body));
    let text = if state.status.is_success() {
        "ok"
    } else {
        "receiver is broken on purpose"
    };
    (state.status, text)
}

impl WebhookReceiver {
    async fn start(status: StatusCode) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("webhook receiver address");
        let (tx, bodies) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(0));
        let app = Router::new()
            .route("/services/{*path}", post(record))
            .with_state(ReceiverState {
                status,
                bodies: tx,
                received: received.clone(),
            });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        WebhookReceiver {
            addr,
            bodies,
            received,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/services/{WEBHOOK_TOKEN}", self.addr)
    }

    /// The next body received, with the path it was posted to.
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(DEADLINE, self.bodies.recv())
            .await
            .expect("webhook receiver got nothing in time")
            .expect("webhook receiver stopped")
    }

    fn received(&self) -> usize {
        *self.received.lock().expect("receiver counter")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("webhook receiver did not stop in time")
                .expect("webhook receiver panicked");
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// SMTP sink

/// One message as the SMTP sink received it.
#[derive(Debug)]
struct Mail {
    /// Decoded `AUTH PLAIN` response (`\0user\0password`), if the client authenticated.
    auth: Option<String>,
    mail_from: String,
    rcpt_to: Vec<String>,
    /// Headers and body, dot-unstuffed, without the final `.` line.
    data: String,
}

impl Mail {
    /// A header's value, unfolded.
    fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = self.data.split_once("\r\n\r\n")?;
        let unfolded = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.replace("\r\n", "\n"))
            .unwrap_or_default()
    }
}

/// Speaks just enough SMTP for one client at a time: greeting, EHLO (offering AUTH PLAIN),
/// AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
struct SmtpSink {
    addr: SocketAddr,
    mails: mpsc::UnboundedReceiver<Mail>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP sink");
        let addr = listener.local_addr().expect("SMTP sink address");
        let (tx, mails) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts the sessions.
            let mut sessions = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                sessions.spawn(smtp_session(stream, tx.clone()));
            }
        });
        SmtpSink { addr, mails, task }
    }

    fn url(&self) -> String {
        format!(
            "smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{}",
            self.addr.port()
        )
    }

    async fn next(&mut self) -> Mail {
        tokio::time::timeout(DEADLINE, self.mails.recv())
            .await
            .expect("SMTP sink got no message in time")
            .expect("SMTP sink stopped")
    }

    async fn stop(self) {
        self.task.abort();
        let _ = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("SMTP sink did not stop in time");
    }
}

async fn smtp_session(stream: TcpStream, mails: mpsc::UnboundedSender<Mail>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut auth = None;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    if write.write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250-sink.test\r\n250 AUTH PLAIN\r\n",
            "AUTH" => {
                auth = command
                    .split_whitespace()
                    .nth(2)
                    .and_then(base64_decode)
                    .and_then(|raw| String::from_utf8(raw).ok());
                b"235 2.7.0 accepted\r\n"
            }
            "MAIL" => {
                mail_from = command.get(10..).unwrap_or_default().to_owned();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" => {
                rcpt_to.push(command.get(8..).unwrap_or_default().to_owned());
                b"250 2.1.5 ok\r\n"
            }
            "DATA" => {
                if write.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let _ = mails.send(Mail {
                    auth: auth.clone(),
                    mail_from: std::mem::take(&mut mail_from),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                b"250 2.0.0 queued\r\n"
            }
            "RSET" | "NOOP" => b"250 ok\r\n",
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 command not implemented\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Helpers

fn slot_missing() -> Notification {
    Notification {
        kind: "slot_missing".into(),
        severity: Severity::Critical,
        instance: "main".into(),
        title: "Slot duplex_main is missing".into(),
        message: "The replication slot was dropped; cloud no longer receives changes.".into(),
        runbook: Some("runbooks/replication-slot-dropped.md".into()),
        cleared: false,
    }
}

fn webhook_settings(url: String) -> NotifySettings {
    NotifySettings {
        webhook_url: Some(SecretString::from(url)),
        timeout: Duration::from_secs(5),
        ..NotifySettings::default()
    }
}

async fn notify(notifier: &Notifier, n: &Notification) -> Outcome {
    tokio::time::timeout(DEADLINE, notifier.notify(n))
        .await
        .expect("notify did not return in time")
}

fn text_of(body: &Value) -> String {
    body.get("text")
        .and_then(Value::as_str)
        .expect("webhook body has a text field")
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn critical_alert_reaches_webhook_and_email_with_severity_instance_title_and_runbook() {
    let mut receiver = WebhookReceiver::start(StatusCode::OK).await;
    let mut sink = SmtpSink::start().await;
    let notifier = Notifier::new(NotifySettings {
        webhook_url: Some(SecretString::from(receiver.url())),
        smtp_url: Some(SecretString::from(sink.url())),
        email_from: Some("duplex <duplex@example.com>".into()),
        email_to: vec!["ops@example.com".into(), "dba@example.com".into()],
        timeout: Duration::from_secs(5),
        ..NotifySettings::default()
    })
    .expect("valid settings");
    assert!(notifier.is_configured());

    let outcome = notify(&notifier, &slot_missing()).await;
    assert_eq!(outcome.sent, vec!["webhook", "email"], "{outcome:?}");
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(outcome.suppressed, None);

    let (path, body) = receiver.next().await;
    assert_eq!(path, WEBHOOK_TOKEN);
    assert_eq!(body.get("username").and_then(Value::as_str), Some("duplex"));
    let text = text_of(&body);
    for expected in [
        "CRITICAL",
        "main",
        "Slot duplex_main is missing",
        "runbooks/replication-slot-dropped.md",
        "cloud no longer receives changes",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from {text:?}"
        );
    }

    let mail = sink.next().await;
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[duplex CRITICAL] main: Slot duplex_main is missing")
    );
    assert_eq!(mail.mail_from, "<duplex@example.com>");
    assert_eq!(
        mail.rcpt_to,
        vec![
            "<ops@example.com>".to_owned(),
            "<dba@example.com>".to_owned()
        ]
    );
    let to = mail.header("To").unwrap_or_default();
    assert!(
        to.contains("ops@example.com") && to.contains("dba@example.com"),
        "{to}"
    );
    let body = mail.body();
    assert!(body.contains("cloud no longer receives changes"), "{body}");
    assert!(
        body.contains("Runbook: runbooks/replication-slot-dropped.md"),
        "{body}"
    );
    assert_eq!(
        mail.auth.as_deref(),
        Some(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}").as_str()),
        "the relay must receive the credentials from smtp_url"
    );

    receiver.stop().await;
    sink.stop().await;
}

#[tokio::test]
async fn repeat_within_rate_limit_is_suppressed_and_sent_again_after_it_passes() {
    let mut receiver = WebhookReceiver::start(StatusCode::OK).await;
    let notifier = Notifier::new(NotifySettings {
        rate_limit: Duration::from_secs(2),
        ..webhook_settings(receiver.url())
    })
    .expect("valid settings");

    let first = notify(&notifier, &slot_missing()).await;
    assert_eq!(first.sent, vec!["webhook"], "{first:?}");
    receiver.next().await;

    let repeat = notify(&notifier, &slot_missing()).await;
    assert!(repeat.sent.is_empty(), "{repeat:?}");
    let reason = repeat.suppressed.unwrap_or_default();
    assert!(
        reason.contains("rate limited") && reason.contains("slot_missing"),
        "{reason}"
    );
    // notify() returns after the sinks answered, so a request would already have arrived.
    assert_eq!(receiver.received(), 1);

    let other_kind = Notification {
        kind: "replication_lag".into(),
        ..slot_missing()
    };
    assert_eq!(notify(&notifier, &other_kind).await.sent, vec!["webhook"]);
    receiver.next().await;

    let started = Instant::now();
    loop {
        let outcome = notify(&notifier, &slot_missing()).await;
        if outcome.delivered() {
            break;
        }
        assert!(outcome.suppressed.is_some(), "{outcome:?}");
        assert!(
            started.elapsed() < DEADLINE,
            "still suppressed after {DEADLINE:?}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, body) = receiver.next().await;
    assert!(text_of(&body).contains("Slot duplex_main is missing"));
    assert_eq!(receiver.received(), 3);

    receiver.stop().await;
}

#[tokio::test]
async fn clearing_is_sent_once_right_after_the_raise_despite_the_rate_limit() {
    let mut receiver = WebhookReceiver::start(StatusCode::OK).await;
    let notifier = Notifier::new(webhook_settings(receiver.url())).expect("valid settings");

    assert!(notify(&notifier, &slot_missing()).await.delivered());
    receiver.next().await;

    let cleared = Notification {
        severity: Severity::Info,
        title: "Slot duplex_main is back".into(),
        message: "Replication resumed.".into(),
        cleared: true,
        ..slot_missing()
    };
    let outcome = notify(&notifier, &cleared).await;
    assert_eq!(outcome.sent, vec!["webhook"], "{outcome:?}");
    let text = text_of(&receiver.next().await.1);
    assert!(
        text.contains("CLEARED") && text.contains("Slot duplex_main is back"),
        "{text}"
    );

    let again = notify(&notifier, &cleared).await;
    assert!(again.suppressed.is_some(), "{again:?}");
    assert_eq!(receiver.received(), 2);

    receiver.stop().await;
}

#[tokio::test]
async fn warning_is_sent_only_with_include_warnings() {
    let mut receiver = WebhookReceiver::start(StatusCode::OK).await;
    let lag = Notification {
        kind: "replication_lag".into(),
        severity: Severity::Warning,
        title: "Replication lag is 4 minutes".into(),
        runbook: None,
        ..slot_missing()
    };

    let strict = Notifier::new(webhook_settings(receiver.url())).expect("valid settings");
    let outcome = notify(&strict, &lag).await;
    assert!(outcome.sent.is_empty(), "{outcome:?}");
    let reason = outcome.suppressed.unwrap_or_default();
    assert!(reason.contains("include_warnings"), "{reason}");
    assert_eq!(receiver.received(), 0);

    let lenient = Notifier::new(NotifySettings {
        include_warnings: true,
        ..webhook_settings(receiver.url())
    })
    .expect("valid settings");
    assert_eq!(notify(&lenient, &lag).await.sent, vec!["webhook"]);
    let text = text_of(&receiver.next().await.1);
    assert!(
        text.contains("WARNING") && text.contains("Replication lag is 4 minutes"),
        "{text}"
    );

    receiver.stop().await;
}

#[tokio::test]
async fn receiver_answering_500_gives_an_error_naming_the_status_and_is_retried() {
    let receiver = WebhookReceiver::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    let notifier = Notifier::new(webhook_settings(receiver.url())).expect("valid settings");

    let outcome = notify(&notifier, &slot_missing()).await;
    assert!(outcome.sent.is_empty(), "{outcome:?}");
    assert_eq!(outcome.errors.len(), 1, "{outcome:?}");
    let error = &outcome.errors[0];
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(!error.contains("s3cr3t"), "{error}");

    // A failed send does not use up the rate limit: the next call tries again.
    let retry = notify(&notifier, &slot_missing()).await;
    assert_eq!(retry.suppressed, None, "{retry:?}");
    assert_eq!(receiver.received(), 2);

    receiver.stop().await;
}

#[tokio::test]
async fn silent_smtp_relay_times_out_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    // Accepts connections and never greets.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let notifier = Notifier::new(NotifySettings {
        smtp_url: Some(SecretString::from(format!(
            "smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"
        ))),
        email_from: Some("duplex@example.com".into()),
        email_to: vec!["ops@example.com".into()],
        timeout: Duration::from_millis(300),
        ..NotifySettings::default()
    })
    .expect("valid settings");

    let outcome = notify(&notifier, &slot_missing()).await;
    assert!(outcome.sent.is_empty(), "{outcome:?}");
    let error = outcome.errors.join("; ");
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!error.contains(SMTP_PASSWORD), "{error}");

    silent.abort();
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output_or_errors() {
    // A port nothing listens on: bind, note it, release it.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let settings = NotifySettings {
        webhook_url: Some(SecretString::from(format!(
            "http://{closed}/services/{WEBHOOK_TOKEN}"
        ))),
        smtp_url: Some(SecretString::from(format!(
            "smtp://{SMTP_USER}:{SMTP_PASSWORD}@{closed}"
        ))),
        email_from: Some("duplex@example.com".into()),
        email_to: vec!["ops@example.com".into()],
        timeout: Duration::from_secs(5),
        ..NotifySettings::default()
    };
    let settings_debug = format!("{settings:?}");
    let notifier = Notifier::new(settings.clone()).expect("valid settings");
    let notifier_debug = format!("{notifier:?}");
    let outcome = notify(&notifier, &slot_missing()).await;
    assert_eq!(outcome.errors.len(), 2, "{outcome:?}");

    let invalid = Notifier::new(NotifySettings {
        webhook_url: Some(SecretString::from(format!(
            "ftp://{closed}/{WEBHOOK_TOKEN}"
        ))),
        smtp_url: Some(SecretString::from(format!(
            "smtp://{SMTP_USER}:{SMTP_PASSWORD}@{closed}?tls=maybe"
        ))),
        ..settings
    })
    .expect_err("invalid settings are refused")
    .to_string();
    assert!(
        invalid.contains("webhook_url") && invalid.contains("smtp_url"),
        "{invalid}"
    );

    for (what, text) in [
        ("settings Debug", settings_debug.as_str()),
        ("notifier Debug", notifier_debug.as_str()),
        ("send errors", outcome.errors.join("; ").as_str()),
        ("settings error", invalid.as_str()),
    ] {
        assert!(!text.contains("s3cr3t"), "{what} leaks a secret: {text}");
        assert!(
            !text.contains(WEBHOOK_TOKEN),
            "{what} leaks the webhook path: {text}"
        );
    }
    assert!(settings_debug.contains("127.0.0.1"), "{settings_debug}");
}

#[tokio::test]
async fn unconfigured_notifier_says_why_nothing_was_sent() {
    let notifier = Notifier::new(NotifySettings::default()).expect("empty settings are valid");
    assert!(!notifier.is_configured());
    let outcome = notify(&notifier, &slot_missing()).await;
    assert!(outcome.sent.is_empty() && outcome.errors.is_empty());
    assert_eq!(
        outcome.suppressed.as_deref(),
        Some("no notification sink is configured")
    );
}
