//! The console's certificate and its HTTPS listener. Without `[console] cert` and
//! `key`, the first start makes a self-signed certificate for the node's name and
//! addresses (`console-cert.pem`, `console-key.pem` mode 0600 in the state directory)
//! and later starts reuse it. Its SHA-256 fingerprint is logged and shown by
//! `tandem status`. The listener serves one axum router over TLS (HTTP/1.1); a plain
//! HTTP request on the same port (its first byte is not a TLS handshake's 0x16) gets a
//! `301` to the `https://` address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ConsoleError;
use crate::config::ConsoleConfig;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a connection may take to send its first byte or finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request head may take to arrive on an open connection (idle keep-alive
/// included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most connections the console holds at once (open event streams included); a
/// connection beyond them is closed at once, so a flood cannot exhaust the node's file
/// descriptors or memory.
pub const MAX_CONNECTIONS: usize = 256;

/// The certificate chain and key the console presents.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate, `AA:BB:...`.
    pub fingerprint: String,
}

/// `AA:BB:...`: the SHA-256 of a DER certificate, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    let hash = sha2::Sha256::digest(der);
    let hex: Vec<String> = hash.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The generated certificate and key of a node with this state directory.
pub fn generated_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("console-cert.pem"),
        state_dir.join("console-key.pem"),
    )
}

/// The configured certificate, or the generated one (made now if there is none yet)
/// for `names` (the node's name and addresses).
pub fn load_or_create(
    cfg: &ConsoleConfig,
    state_dir: &Path,
    names: Vec<String>,
) -> Result<Identity, ConsoleError> {
    let (cert, key) = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (c, k) = generated_paths(state_dir);
            if !c.exists() || !k.exists() {
                generate(&c, &k, names)?;
            }
            (c, k)
        }
    };
    let pem = |p: &Path, e: rustls::pki_types::pem::Error| {
        ConsoleError::Certificate(format!("{}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem(&cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| pem(&key, e))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ConsoleError::Certificate(format!("{}: no certificate", cert.display())))?;
    Ok(Identity {
        fingerprint: fingerprint(leaf),
        certs,
        key: key_der,
    })
}

/// A self-signed certificate for `names` (DNS names or IP addresses).
fn generate(cert: &Path, key: &Path, names: Vec<String>) -> Result<(), ConsoleError> {
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ConsoleError::Certificate(format!("generate: {e}")))?;
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| ConsoleError::Io(format!("write {p}"), e)
    };
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    crate::config::secret::replace(key, made.signing_key.serialize_pem().as_bytes())
        .map_err(io(key))?;
    std::fs::write(cert, made.cert.pem()).map_err(io(cert))
}

/// The names a generated certificate is for: the node's name, `localhost`, and each
/// address it is reached at (its heartbeat addresses, the listen address if specific).
pub fn names_for(node: &str, addresses: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut names = vec![node.to_string(), "localhost".to_string()];
    for a in addresses {
        if !a.is_unspecified() && !names.contains(&a.to_string()) {
            names.push(a.to_string());
        }
    }
    names
}

/// Serves `app` over TLS on `listener` until the task is aborted; each request carries
/// its peer's `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: tokio::net::TcpListener, identity: Identity, app: Router) {
    let acceptor = match acceptor(identity) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "console: TLS configuration refused");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, limit = MAX_CONNECTIONS, "console: too many connections; closing new ones");
            }
            drop(tcp);
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                connection(tcp, peer, acceptor, app, slot),
            )
            .await;
        });
    }
}

fn acceptor(identity: Identity) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    // ring, as everywhere in the build (see `net::http::client_config`).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// One connection: TLS, or a redirect for plain HTTP. The handshake runs under the
/// caller's timeout; the HTTP exchange then runs on its own task, for as long as it
/// lasts (event streams), holding the connection's `slot` until it ends.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut first = [0u8; 1];
    if !matches!(tcp.peek(&mut first).await, Ok(1)) {
        return;
    }
    if first[0] != TLS_HANDSHAKE {
        redirect(tcp).await;
        return;
    }
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    tokio::spawn(async move {
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
            });
        // A client that sends a request head slower than this is dropped.
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades()
            .await;
        drop(slot);
    });
}

/// Answers a plain HTTP request with a `301` to the same host and path over HTTPS.
async fn redirect(mut tcp: tokio::net::TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let local = tcp.local_addr().ok();
    let answer = redirect_answer(&String::from_utf8_lossy(&buf), local);
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The `301` for a plain HTTP request head: `Location` is `https://` + its `Host`
/// (else the address it reached) + its path.
fn redirect_answer(head: &str, local: Option<SocketAddr>) -> String {
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with('/') && !p.contains(['\r', '\n']))
        .unwrap_or("/");
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .or_else(|| local.map(|a| a.to_string()))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: https://{host}{path}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_request_is_sent_to_the_same_host_and_path_over_https() {
        let head = "GET /groups/web?x=1 HTTP/1.1\r\nHost: n1:9443\r\n\r\n";
        let a = redirect_answer(head, None);
        assert!(a.starts_with("HTTP/1.1 301 "), "{a}");
        assert!(
            a.contains("\r\nLocation: https://n1:9443/groups/web?x=1\r\n"),
            "{a}"
        );
        let local = SocketAddr::from(([192, 0, 2, 1], 9443));
        let a = redirect_answer("GET / HTTP/1.0\r\n\r\n", Some(local));
        assert!(a.contains("Location: https://192.0.2.1:9443/\r\n"), "{a}");
    }

    #[test]
    fn a_generated_certificate_is_kept_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = ConsoleConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert: None,
            key: None,
        };
        let names = names_for("n1", ["127.0.0.1".parse().unwrap()]);
        assert_eq!(names, ["n1", "localhost", "127.0.0.1"]);
        let first = load_or_create(&cfg, dir.path(), names.clone()).unwrap();
        let again = load_or_create(&cfg, dir.path(), names).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint, "reused");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let (_, key) = generated_paths(dir.path());
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
