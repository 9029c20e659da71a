//! The connection state machine: CONNECTED, DEGRADED, DISCONNECTED, RECONNECTING, with a
//! reconnect backoff while disconnected. Pure logic: the monitor feeds it observations and
//! records the transitions it returns.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How early a cycle may come and still count as on time for a reconnect attempt.
const TICK_SLACK: Duration = Duration::from_millis(100);

/// How this side sees its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Reachable and both directions replicating with lag under the threshold.
    Connected,
    /// Reachable, but lag is high, a slot is inactive or a subscription stopped.
    Degraded,
    /// The peer does not answer.
    Disconnected,
    /// Trying to reach the peer again (also the state before the first observation).
    Reconnecting,
}

impl ConnectionState {
    /// Upper-case name as logged and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "CONNECTED",
            ConnectionState::Degraded => "DEGRADED",
            ConnectionState::Disconnected => "DISCONNECTED",
            ConnectionState::Reconnecting => "RECONNECTING",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [ConnectionState; 4] = [
        ConnectionState::Connected,
        ConnectionState::Degraded,
        ConnectionState::Disconnected,
        ConnectionState::Reconnecting,
    ];
}

/// One change of state, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: ConnectionState,
    /// After.
    pub to: ConnectionState,
    /// A sentence for the log.
    pub reason: String,
}

/// Reconnect timing.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delays in order (default 30 s, 1 min, 2 min, 5 min, 10 min).
    pub schedule: Vec<Duration>,
    /// Delay once the schedule is used up (default 1 h).
    pub max: Duration,
    /// Random spread as a fraction of the delay (default 0.1).
    pub jitter: f64,
}

impl Backoff {
    /// Delay before reconnect attempt number `attempt` (0-based), before jitter: the
    /// schedule's entry, then `max` once the schedule is used up, never more than `max`.
    pub fn base_delay(&self, attempt: usize) -> Duration {
        self.schedule
            .get(attempt)
            .copied()
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// `base_delay` spread by up to ±`jitter`, using `unit` in [0, 1) as the random draw.
    pub fn delay(&self, attempt: usize, unit: f64) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let spread = base * self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::try_from_secs_f64((base + spread).max(0.0)).unwrap_or(self.max)
    }
}

/// What one monitor cycle saw of the peer.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The peer did not answer.
    Unreachable(String),
    /// The peer answered; `problems` lists why it is not healthy (empty when healthy).
    Reachable {
        /// Reasons for DEGRADED.
        problems: Vec<String>,
    },
}

/// The machine.
#[derive(Debug)]
pub struct Machine {
    state: ConnectionState,
    backoff: Backoff,
    attempt: usize,
    next_attempt: Option<Instant>,
    disconnected_since: Option<Instant>,
}

impl Machine {
    /// Starts in RECONNECTING: nothing has been observed yet.
    pub fn new(backoff: Backoff) -> Self {
        Machine {
            state: ConnectionState::Reconnecting,
            backoff,
            attempt: 0,
            next_attempt: None,
            disconnected_since: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// Since when the peer has been unreachable, if it is.
    pub fn disconnected_since(&self) -> Option<Instant> {
        self.disconnected_since
    }

    /// When the next reconnect attempt is due, while DISCONNECTED.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// Whether the monitor should try to reach the peer now. Always true unless
    /// DISCONNECTED and the backoff delay has not passed.
    pub fn should_attempt(&self, now: Instant) -> bool {
        match (self.state, self.next_attempt) {
            // Cycles are timed by an interval: allow for a tick that fires a hair early.
            (ConnectionState::Disconnected, Some(at)) => now + TICK_SLACK >= at,
            _ => true,
        }
    }

    /// The peer was already unreachable before this process started (read back from the
    /// log), so the outage keeps its real start.
    pub fn restore_disconnected_since(&mut self, since: Instant) {
        self.disconnected_since = Some(since);
    }

    /// Make the next reconnect attempt due now (an operator asked for a cycle).
    pub fn expedite(&mut self, now: Instant) {
        if self.state == ConnectionState::Disconnected {
            self.next_attempt = Some(now);
        }
    }

    /// DISCONNECTED -> RECONNECTING, when an attempt is due.
    pub fn begin_attempt(&mut self, now: Instant) -> Option<Transition> {
        if self.state == ConnectionState::Disconnected && self.should_attempt(now) {
            Some(self.go(
                ConnectionState::Reconnecting,
                format!("reconnect attempt {}", self.attempt + 1),
            ))
        } else {
            None
        }
    }

    /// Feed one observation; returns the transition it caused, if any. `unit` is a random
    /// draw in [0, 1) for the backoff jitter.
    pub fn observe(&mut self, obs: &Observation, now: Instant, unit: f64) -> Option<Transition> {
        match obs {
            Observation::Unreachable(why) => {
                let was = self.state;
                if was != ConnectionState::Disconnected {
                    if was != ConnectionState::Reconnecting || self.disconnected_since.is_none() {
                        self.disconnected_since = Some(now);
                        self.attempt = 0;
                    } else {
                        self.attempt += 1;
                    }
                }
                if was == ConnectionState::Disconnected {
                    // Still waiting for the next attempt: keep its time.
                    return None;
                }
                let delay = self.backoff.delay(self.attempt, unit);
                // Checked: an `Instant` plus a duration past its range panics.
                self.next_attempt = now.checked_add(delay).or(Some(now));
                Some(self.go(
                    ConnectionState::Disconnected,
                    format!("peer unreachable: {why}"),
                ))
            }
            Observation::Reachable { problems } => {
                self.disconnected_since = None;
                self.next_attempt = None;
                self.attempt = 0;
                let to = if problems.is_empty() {
                    ConnectionState::Connected
                } else {
                    ConnectionState::Degraded
                };
                (to != self.state).then(|| {
                    let reason = if problems.is_empty() {
                        "peer reachable and both directions replicating".to_string()
                    } else {
                        problems.join("; ")
                    };
                    self.go(to, reason)
                })
            }
        }
    }

    fn go(&mut self, to: ConnectionState, reason: String) -> Transition {
        let t = Transition {
            from: self.state,
            to,
            reason,
        };
        self.state = to;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            schedule: [30, 60, 120, 300, 600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }

    #[test]
    fn backoff_follows_the_schedule_then_caps_at_one_hour() {
        let b = backoff();
        let secs: Vec<u64> = (0..8).map(|i| b.base_delay(i).as_secs()).collect();
        assert_eq!(secs, vec![30, 60, 120, 300, 600, 3600, 3600, 3600]);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let b = backoff();
        assert_eq!(b.delay(0, 0.5), Duration::from_secs(30));
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(27));
        assert!(b.delay(5, 0.999_999) <= Duration::from_secs(3960));
        assert!(b.delay(5, 0.0) >= Duration::from_secs(3240));
    }

    #[test]
    fn losing_the_peer_disconnects_and_backs_off_until_it_answers() {
        let mut m = Machine::new(backoff());
        let t0 = Instant::now();
        let ok = Observation::Reachable { problems: vec![] };
        let down = Observation::Unreachable("connection refused".into());
        assert_eq!(
            m.observe(&ok, t0, 0.5).unwrap().to,
            ConnectionState::Connected
        );
        let t = m.observe(&down, t0, 0.5).unwrap();
        assert_eq!(
            (t.from, t.to),
            (ConnectionState::Connected, ConnectionState::Disconnected)
        );
        assert!(!m.should_attempt(t0 + Duration::from_secs(29)));
        // Cycles that only wait do not postpone the attempt.
        assert!(m
            .observe(&down, t0 + Duration::from_secs(10), 0.5)
            .is_none());
        assert_eq!(m.next_attempt(), Some(t0 + Duration::from_secs(30)));
        assert!(m.begin_attempt(t0 + Duration::from_secs(29)).is_none());
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(
            m.begin_attempt(t30).unwrap().to,
            ConnectionState::Reconnecting
        );
        // The attempt fails: the next one waits for the second delay.
        assert_eq!(
            m.observe(&down, t30, 0.5).unwrap().to,
            ConnectionState::Disconnected
        );
        assert_eq!(m.next_attempt(), Some(t30 + Duration::from_secs(60)));
        assert_eq!(m.disconnected_since(), Some(t0));
        let t90 = t30 + Duration::from_secs(60);
        m.begin_attempt(t90).unwrap();
        let t = m.observe(&ok, t90, 0.5).unwrap();
        assert_eq!(
            (t.from, t.to),
            (ConnectionState::Reconnecting, ConnectionState::Connected)
        );
        assert_eq!(m.disconnected_since(), None);
    }

    #[test]
    fn problems_degrade_and_clearing_them_reconnects() {
        let mut m = Machine::new(backoff());
        let now = Instant::now();
        let t = m
            .observe(
                &Observation::Reachable {
                    problems: vec!["slot inactive".into()],
                },
                now,
                0.5,
            )
            .unwrap();
        assert_eq!(t.to, ConnectionState::Degraded);
        assert_eq!(t.reason, "slot inactive");
        assert!(m
            .observe(
                &Observation::Reachable {
                    problems: vec!["slot inactive".into()]
                },
                now,
                0.5
            )
            .is_none());
        assert_eq!(
            m.observe(&Observation::Reachable { problems: vec![] }, now, 0.5)
                .unwrap()
                .to,
            ConnectionState::Connected
        );
    }
}
