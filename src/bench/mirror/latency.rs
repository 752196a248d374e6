//! The latency rows of `tandem bench mirror`: QD1 4 KiB random writes with `fio`'s `nbd`
//! engine (`sync=1`, time-based), completion-latency p50 and p99 from its JSON report;
//! and the replication link's round trip, a one-byte TCP ping-pong between the two
//! namespaces (`TCP_NODELAY`), the median of a few hundred rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::BenchError;
use crate::lab::LabError;

/// Completion latency of QD1 4 KiB writes.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    /// Writes completed.
    pub ios: u64,
}

/// Runs fio against the NBD export on `socket` for `secs` seconds.
pub fn fio_qd1(socket: &Path, secs: u64) -> Result<Latency, BenchError> {
    let out = Command::new("fio")
        .args([
            "--name=qd1",
            "--ioengine=nbd",
            &format!("--uri=nbd+unix:///?socket={}", socket.display()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=1",
            "--sync=1",
            "--time_based",
            &format!("--runtime={secs}s"),
            "--output-format=json",
        ])
        .output()
        .map_err(|source| BenchError::Spawn {
            tool: "fio",
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Fio {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_fio(&out.stdout)
}

/// The write clat percentiles of fio's JSON report (the nbd engine prints a line
/// before it, so parsing starts at the first `{`).
fn parse_fio(stdout: &[u8]) -> Result<Latency, BenchError> {
    let start = stdout
        .iter()
        .position(|&b| b == b'{')
        .ok_or(BenchError::FioReport("no JSON object"))?;
    let report: serde_json::Value =
        serde_json::from_slice(&stdout[start..]).map_err(BenchError::FioJson)?;
    let write = &report["jobs"][0]["write"];
    let ns = |key: &'static str| {
        write["clat_ns"]["percentile"][key]
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or(BenchError::FioReport(key))
    };
    Ok(Latency {
        p50: ns("50.000000")?,
        p99: ns("99.000000")?,
        ios: write["total_ios"]
            .as_u64()
            .ok_or(BenchError::FioReport("total_ios"))?,
    })
}

/// The median round trip of `rounds` one-byte exchanges from namespace `from` to an
/// echo server at `to` in namespace `to_ns`.
pub fn tcp_rtt(
    from: &str,
    to_ns: &str,
    to: SocketAddr,
    rounds: u32,
) -> Result<Duration, BenchError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = crate::lab::net::spawn_in_netns(to_ns, move || {
        let listener = TcpListener::bind(to).map_err(|e| lab_io("binding the echo server", e));
        let _ = ready_tx.send(());
        echo(listener?, rounds).map_err(|e| lab_io("the echo server", e))
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    let client = crate::lab::net::spawn_in_netns(from, move || {
        ping_pong(to, rounds).map_err(|e| lab_io("the ping-pong client", e))
    });
    let rtts = client.join();
    let served = server.join();
    let mut rtts = rtts
        .map_err(|_| BenchError::Rtt(LabError::Invalid("the client panicked".into())))?
        .map_err(BenchError::Rtt)?;
    served
        .map_err(|_| BenchError::Rtt(LabError::Invalid("the server panicked".into())))?
        .map_err(BenchError::Rtt)?;
    rtts.sort();
    Ok(rtts[rtts.len() / 2])
}

fn lab_io(context: &str, source: std::io::Error) -> LabError {
    LabError::Io {
        context: context.into(),
        source,
    }
}

fn echo(listener: TcpListener, rounds: u32) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    };
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    for _ in 0..rounds {
        s.read_exact(&mut b)?;
        s.write_all(&b)?;
    }
    Ok(())
}

fn ping_pong(to: SocketAddr, rounds: u32) -> std::io::Result<Vec<Duration>> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [7u8; 1];
    let mut rtts = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let start = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        rtts.push(start.elapsed());
    }
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json_after_the_engine_banner() {
        let out = br#"fio: connected to NBD server
{"jobs": [{"jobname": "qd1", "write": {"total_ios": 1234,
  "clat_ns": {"percentile": {"50.000000": 9920, "99.000000": 144384}}}}]}"#;
        let l = parse_fio(out).expect("parses");
        assert_eq!(l.p50, Duration::from_nanos(9920));
        assert_eq!(l.p99, Duration::from_nanos(144384));
        assert_eq!(l.ios, 1234);
        assert!(matches!(
            parse_fio(b"{\"jobs\": []}"),
            Err(BenchError::FioReport("50.000000"))
        ));
    }
}
