//! Per-kind rate limiting and severity filtering: pure logic, clock passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Notification, Severity};

/// What the limiter decided for one notification.
#[derive(Debug)]
pub(super) enum Decision {
    /// Send it; hand the ticket back to [`RateLimiter::rollback`] if every sink fails.
    Send(Ticket),
    /// Do not send it, for this reason (shown to the caller in `Outcome::suppressed`).
    Suppress(String),
}

/// A reservation made by [`RateLimiter::decide`], undone by [`RateLimiter::rollback`].
#[derive(Debug)]
pub(super) struct Ticket {
    kind: String,
    seq: u64,
    previous: Option<KindState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KindState {
    /// When a notification of this kind was last sent.
    last_sent: Instant,
    /// Severity of the last raise sent, while it has not been cleared.
    raised: Option<Severity>,
    /// Identifies the reservation that wrote this state.
    seq: u64,
}

/// Remembers, per kind, when it was last sent and whether a raise is outstanding.
#[derive(Debug)]
pub(super) struct RateLimiter {
    rate_limit: Duration,
    min_severity: Severity,
    kinds: HashMap<String, KindState>,
    next_seq: u64,
}

impl RateLimiter {
    /// `min_severity`: the lowest severity sent as a raise.
    pub(super) fn new(rate_limit: Duration, min_severity: Severity) -> Self {
        RateLimiter {
            rate_limit,
            min_severity,
            kinds: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Decides whether `n` goes out at `now`, and if so records it as sent.
    pub(super) fn decide(&mut self, n: &Notification, now: Instant) -> Decision {
        let state = self.kinds.get(&n.kind).copied();
        let raised = state.and_then(|s| s.raised);

        // The first clearing after a sent raise always goes out, whatever its severity:
        // otherwise the operator's last word on the kind would be "broken".
        let clears_a_sent_raise = n.cleared && raised.is_some();
        if !clears_a_sent_raise {
            if n.severity < self.min_severity {
                let reason = match n.severity {
                    Severity::Info => "INFO notifications are sent only to clear a sent alert",
                    _ => "WARNING notifications are not sent (include_warnings is off)",
                };
                return Decision::Suppress(reason.to_owned());
            }
            if let Some(state) = state {
                let elapsed = now.saturating_duration_since(state.last_sent);
                let escalates = !n.cleared && raised.is_some_and(|r| n.severity > r);
                if elapsed < self.rate_limit && !escalates {
                    return Decision::Suppress(format!(
                        "rate limited: '{}' was last sent {} ago; the limit is one per {}",
                        n.kind,
                        human(elapsed),
                        human(self.rate_limit)
                    ));
                }
            }
        }

        self.next_seq += 1;
        let seq = self.next_seq;
        let new_raised = if n.cleared {
            None
        } else {
            Some(raised.map_or(n.severity, |r| r.max(n.severity)))
        };
        self.kinds.insert(
            n.kind.clone(),
            KindState {
                last_sent: now,
                raised: new_raised,
                seq,
            },
        );
        Decision::Send(Ticket {
            kind: n.kind.clone(),
            seq,
            previous: state,
        })
    }

    /// Undoes the reservation of a notification no sink accepted, so the next call retries.
    /// Does nothing if a later notification of the same kind has been recorded since.
    pub(super) fn rollback(&mut self, ticket: Ticket) {
        if self.kinds.get(&ticket.kind).map(|s| s.seq) != Some(ticket.seq) {
            return;
        }
        match ticket.previous {
            Some(previous) => {
                self.kinds.insert(ticket.kind, previous);
            }
            None => {
                self.kinds.remove(&ticket.kind);
            }
        }
    }
}

/// `"14m 3s"`, `"2s"`, `"300ms"`: short and readable in an outcome message.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(15 * 60);

    fn raise(kind: &str, severity: Severity) -> Notification {
        Notification {
            kind: kind.into(),
            severity,
            instance: "main".into(),
            title: "t".into(),
            message: "m".into(),
            runbook: None,
            cleared: false,
        }
    }

    fn clear(kind: &str, severity: Severity) -> Notification {
        Notification {
            cleared: true,
            ..raise(kind, severity)
        }
    }

    fn sends(limiter: &mut RateLimiter, n: &Notification, at: Instant) -> bool {
        matches!(limiter.decide(n, at), Decision::Send(_))
    }

    fn reason(limiter: &mut RateLimiter, n: &Notification, at: Instant) -> String {
        match limiter.decide(n, at) {
            Decision::Suppress(reason) => reason,
            Decision::Send(_) => "sent".into(),
        }
    }

    #[test]
    fn same_kind_is_sent_once_per_limit_and_other_kinds_are_independent() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(LIMIT, Severity::Failed);
        assert!(sends(&mut l, &raise("lag", Severity::Failed), t0));
        let why = reason(&mut l, &raise("lag", Severity::Failed), t0 + LIMIT / 2);
        assert!(
            why.contains("rate limited") && why.contains("'lag'"),
            "{why}"
        );
        assert!(sends(
            &mut l,
            &raise("slot", Severity::Failed),
            t0 + LIMIT / 2
        ));
        assert!(sends(&mut l, &raise("lag", Severity::Failed), t0 + LIMIT));
    }

    #[test]
    fn warnings_and_info_are_filtered_by_threshold() {
        let t0 = Instant::now();
        let mut strict = RateLimiter::new(LIMIT, Severity::Failed);
        let why = reason(&mut strict, &raise("lag", Severity::Warning), t0);
        assert!(why.contains("include_warnings"), "{why}");
        let why = reason(&mut strict, &raise("lag", Severity::Info), t0);
        assert!(why.contains("INFO"), "{why}");
        let mut lenient = RateLimiter::new(LIMIT, Severity::Warning);
        assert!(sends(&mut lenient, &raise("lag", Severity::Warning), t0));
    }

    #[test]
    fn first_clearing_after_a_raise_always_goes_out_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = RateLimiter::new(LIMIT, Severity::Failed);
        assert!(sends(&mut l, &raise("slot", Severity::Critical), t0));
        assert!(sends(&mut l, &clear("slot", Severity::Info), t0 + s));
        let why = reason(&mut l, &clear("slot", Severity::Info), t0 + 2 * s);
        assert!(why.contains("INFO"), "{why}");
        let why = reason(&mut l, &clear("slot", Severity::Critical), t0 + 2 * s);
        assert!(why.contains("rate limited"), "{why}");
    }

    #[test]
    fn clearing_without_a_sent_raise_follows_the_normal_rules() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(LIMIT, Severity::Failed);
        assert!(!sends(&mut l, &clear("slot", Severity::Info), t0));
        assert!(sends(&mut l, &clear("slot", Severity::Failed), t0));
    }

    #[test]
    fn escalation_is_not_held_back_but_repeats_are() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = RateLimiter::new(LIMIT, Severity::Failed);
        assert!(sends(&mut l, &raise("lag", Severity::Failed), t0));
        assert!(sends(&mut l, &raise("lag", Severity::Critical), t0 + s));
        assert!(!sends(
            &mut l,
            &raise("lag", Severity::Critical),
            t0 + 2 * s
        ));
        assert!(!sends(&mut l, &raise("lag", Severity::Failed), t0 + 3 * s));
    }

    #[test]
    fn rollback_restores_the_previous_state_unless_superseded() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = RateLimiter::new(LIMIT, Severity::Failed);
        let Decision::Send(ticket) = l.decide(&raise("lag", Severity::Failed), t0) else {
            panic!("first raise must be sent");
        };
        l.rollback(ticket);
        assert!(sends(&mut l, &raise("lag", Severity::Failed), t0 + s));

        let Decision::Send(stale) = l.decide(&raise("slot", Severity::Failed), t0) else {
            panic!("first raise must be sent");
        };
        assert!(sends(&mut l, &raise("slot", Severity::Critical), t0 + s));
        l.rollback(stale);
        assert!(!sends(
            &mut l,
            &raise("slot", Severity::Critical),
            t0 + 2 * s
        ));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(300)), "300ms");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(15 * 60 + 3)), "15m 3s");
        assert_eq!(human(Duration::from_secs(7500)), "2h 5m");
    }
}
