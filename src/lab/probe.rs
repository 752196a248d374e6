//! HTTP probing of the floating IP from the client namespace, and the tiny HTTP
//! responder used as the service of the keepalived arm (and as a placeholder
//! process when the lab runs without an engine).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::net::{self, check_interrupt};
use super::topology::{identify_node, parse_http_response, SERVICE_PORT};
use super::LabError;

/// Socket address of the demo service on floating IP `vip`.
pub fn service_on(vip: &str) -> SocketAddr {
    let ip: Ipv4Addr = vip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    SocketAddr::from((ip, SERVICE_PORT))
}

/// One HTTP GET `/`: returns (status, body).
pub fn http_get(
    addr: SocketAddr,
    connect: Duration,
    io: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, connect)?;
    s.set_read_timeout(Some(io))?;
    s.set_write_timeout(Some(io))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET / HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    parse_http_response(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// Which node answers on `vip`, asked once from the current namespace.
fn owner_here(vip: &str, names: &[String]) -> Option<String> {
    match http_get(
        service_on(vip),
        Duration::from_millis(300),
        Duration::from_millis(700),
    ) {
        Ok((200, body)) => Some(identify_node(&body, names)),
        _ => None,
    }
}

/// Which node answers on `vip` from the client namespace (one GET).
pub fn vip_owner(client_ns: &str, vip: &str, names: &[String]) -> Result<Option<String>, LabError> {
    let (vip, names) = (vip.to_string(), names.to_vec());
    net::in_netns(client_ns, move || Ok(owner_here(&vip, &names)))
}

/// Poll `vip` from the client namespace until it answers (bounded).
pub fn wait_vip(
    client_ns: &str,
    vip: &str,
    names: &[String],
    timeout: Duration,
) -> Result<Option<String>, LabError> {
    let (vip, names) = (vip.to_string(), names.to_vec());
    net::in_netns(client_ns, move || {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            check_interrupt()?;
            if let Some(o) = owner_here(&vip, &names) {
                return Ok(Some(o));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(None)
    })
}

/// Serve `GET` with the node name until killed (the keepalived arm's demo
/// service). Every request gets `200` and `<name>\n`.
pub fn serve(listen: &str, name: &str) -> Result<(), LabError> {
    let listener =
        TcpListener::bind(listen).map_err(|e| LabError::io(format!("binding {listen}"), e))?;
    info!(listen, name, "responder listening");
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 16 * 1024 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("{name}\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
