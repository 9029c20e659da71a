//! `duplex-healthcheck`: the container's HEALTHCHECK probe. It asks the `duplex run`
//! beside it for `GET /health/sync` and exits 0 on 200, 1 on anything else (Docker's
//! "unhealthy"), printing the status line and body so `docker inspect` shows the reason.
//!
//! Why a probe of its own: the runtime image is distroless (no shell, no curl or wget),
//! and `duplex` has no command that asks its own API for `/health/sync` (`duplex status`
//! reads the databases instead). Standard library only, built with plain `rustc` in the
//! Dockerfile's build stage, so it adds no dependency.
//!
//! The address is the first argument, else `DUPLEX_HTTP_ADDR`, else `127.0.0.1:8787`,
//! the daemon's default. An unspecified address (`0.0.0.0:8787`, `[::]:8787`: the daemon
//! listens on every interface of the container) is asked on loopback. Plain HTTP only: an
//! API given a certificate (`DUPLEX_TLS_CERT`) answers HTTPS alone, and this probe then
//! reports it unhealthy.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_ADDR: &str = "127.0.0.1:8787";
const TIMEOUT: Duration = Duration::from_secs(4);
/// Enough for the health body (a few hundred bytes); a longer answer is cut, not awaited.
const MAX_RESPONSE: u64 = 64 * 1024;

fn target() -> Result<SocketAddr, String> {
    let given = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DUPLEX_HTTP_ADDR").ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let mut addr: SocketAddr = given
        .trim()
        .parse()
        .map_err(|e| format!("DUPLEX_HTTP_ADDR={given:?} is not an address:port ({e})"))?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    Ok(addr)
}

fn probe(addr: SocketAddr) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("no answer from duplex at {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET /health/sync HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: sending the request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr} answered something that is not HTTP: {status_line:?}"))?;
    Ok((code, format!("{status_line} {}", body.trim())))
}

fn main() -> ExitCode {
    let result = target().and_then(probe);
    match result {
        Ok((200, answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok((_, answer)) => {
            println!("{answer}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}
