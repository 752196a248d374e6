//! Heartbeat transport: one UDP socket per heartbeat path, bound to this node's address
//! on that path, so every path is a separate route. Each path runs in its own task:
//! it (re)binds until the address exists, sends what the main loop hands it, and
//! decodes what arrives. Decoding and authentication happen here, at the edge; a bad
//! packet becomes a counted rejection, never an error that stops anything.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::cluster::packet::{self, Heartbeat};
use crate::quorum::wire::{self, QuorumPacket, MAX_DATAGRAM};

/// A decoded datagram: a heartbeat, or quorum traffic.
pub enum Datagram {
    Heartbeat(Box<Heartbeat>),
    Quorum(Box<QuorumPacket>),
}

/// A received datagram after decoding, or why it was dropped.
pub struct Received {
    pub path: u8,
    pub from: SocketAddr,
    pub result: Result<Datagram, &'static str>,
}

/// Decodes a datagram by its magic: quorum traffic or a heartbeat.
pub fn decode(buf: &[u8], key: &[u8], cluster: &str) -> Result<Datagram, &'static str> {
    if buf.starts_with(b"TDQM") {
        wire::decode(buf, key, cluster)
            .map(|p| Datagram::Quorum(Box::new(p)))
            .map_err(|e| e.reason())
    } else if buf.len() > packet::MAX_PACKET {
        Err("too_large")
    } else {
        packet::decode(buf, key, cluster)
            .map(|hb| Datagram::Heartbeat(Box::new(hb)))
            .map_err(|e| e.reason())
    }
}

/// An outgoing datagram.
pub struct Outgoing {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Starts the task of one path; returns the sender for its outgoing packets.
pub fn spawn_path(
    path: u8,
    local: IpAddr,
    port: u16,
    key: Arc<Vec<u8>>,
    cluster: Arc<String>,
    received: mpsc::Sender<Received>,
) -> mpsc::Sender<Outgoing> {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    tokio::spawn(async move {
        let bind = SocketAddr::new(local, port);
        let sock = loop {
            match UdpSocket::bind(bind).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(path, %bind, error = %e, "cannot bind heartbeat path yet; retrying");
                    // Drain what piles up meanwhile: those heartbeats are lost anyway.
                    while rx.try_recv().is_ok() {}
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tracing::info!(path, %bind, "heartbeat path bound");
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    if let Err(e) = sock.send_to(&out.bytes, out.to).await {
                        tracing::trace!(path, to = %out.to, error = %e, "heartbeat send failed");
                    }
                }
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let result = if n > MAX_DATAGRAM {
                        Err("too_large")
                    } else {
                        decode(&buf[..n], &key, &cluster)
                    };
                    if received.send(Received { path, from, result }).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tx
}
