//! The admin token check: `Authorization: Bearer <token>` with the scheme in any case
//! (RFC 9110 §11.1), compared in constant time, and a per-client limit on failed attempts
//! so the token cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts a client address may make per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window [`MAX_FAILURES`] counts in; a client over the limit waits until it ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at most. When full, a failed attempt from an address not yet
/// tracked is refused as rate-limited: memory stays bounded however many addresses an
/// attacker uses, and a right token is still accepted from anywhere.
pub const MAX_TRACKED: usize = 4096;

/// The token of an `Authorization` header value, when its scheme is `Bearer` (any case)
/// followed by one or more spaces and a non-empty token.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// Compare digests rather than the strings, so neither where they differ nor the token's
/// length shows in the time taken.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The key a client is counted under: its IPv4 address, or the /64 network of an IPv6
/// one (a single host usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed attempts per client in the current window.
#[derive(Debug, Default)]
pub struct FailedAttempts {
    clients: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl FailedAttempts {
    /// `Some(wait)` while `ip` has used up its attempts: refuse it without looking at the
    /// token, and tell it to come back after `wait`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let w = clients.get(&client_key(ip))?;
        let ends = w.started.checked_add(FAILURE_WINDOW)?;
        (w.failures >= MAX_FAILURES && now < ends).then(|| ends.duration_since(now))
    }

    /// Count one failed attempt of `ip` and return its failures in the window. `Err(wait)`
    /// when the attempt could not be counted because every slot is taken by other
    /// clients: answer it as rate-limited.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Result<u32, Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = client_key(ip);
        if !clients.contains_key(&key) && clients.len() >= MAX_TRACKED {
            clients.retain(|_, w| now.saturating_duration_since(w.started) < FAILURE_WINDOW);
            if clients.len() >= MAX_TRACKED {
                return Err(FAILURE_WINDOW);
            }
        }
        let w = clients.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(w.started) >= FAILURE_WINDOW {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        Ok(w.failures)
    }

    /// How many client addresses are tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR   abc",
            " Bearer abc ",
        ] {
            assert_eq!(bearer(v), Some("abc"), "{v:?}");
        }
        for v in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearerabc",
            "",
            "Token abc",
        ] {
            assert_eq!(bearer(v), None, "{v:?}");
        }
    }

    #[test]
    fn token_comparison_needs_an_exact_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn a_client_is_blocked_after_ten_failures_until_the_window_ends() {
        let f = FailedAttempts::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            f.fail(ip, t0).unwrap();
        }
        assert_eq!(f.blocked(ip, t0), None);
        f.fail(ip, t0).unwrap();
        let wait = f.blocked(ip, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(wait, Duration::from_secs(40));
        assert_eq!(f.blocked(other, t0), None, "another client is not blocked");
        assert_eq!(f.blocked(ip, t0 + FAILURE_WINDOW), None, "the window ended");
        // A new window starts with the next failure.
        f.fail(ip, t0 + FAILURE_WINDOW).unwrap();
        assert_eq!(f.blocked(ip, t0 + FAILURE_WINDOW), None);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_network() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn memory_stays_bounded_and_a_full_table_refuses_new_failures() {
        let f = FailedAttempts::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            f.fail(IpAddr::from(i.to_be_bytes()), t0).unwrap();
        }
        assert_eq!(f.tracked(), MAX_TRACKED);
        let newcomer = IpAddr::from([250, 0, 0, 1]);
        assert!(f.fail(newcomer, t0).is_err());
        assert_eq!(f.tracked(), MAX_TRACKED);
        // Once the old windows ended, their slots are reused.
        f.fail(newcomer, t0 + FAILURE_WINDOW).unwrap();
        assert_eq!(f.tracked(), 1);
    }
}
