//! The HTTP/1.1 client under the BMC client (`fence::http`), the `http` health probe
//! and the daemon's image download (`image::job`): one request per connection over
//! plain TCP or TLS (rustls with ring), [`Url`]s split for a request, and
//! which certificates TLS trusts: the Mozilla roots, an operator's CA file, or (by
//! explicit choice) any certificate whose key the server holds.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Which server certificates a TLS client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust<'a> {
    /// Certificates that chain to the Mozilla roots.
    PublicRoots,
    /// Certificates that chain to the CA certificates (PEM) in this file.
    CaFile(&'a Path),
    /// Any certificate (a self-signed one); the server must still hold its key.
    AnyCertificate,
}

/// A TLS client configuration for `trust`; the reason when the CA file is unusable.
pub fn client_config(trust: Trust<'_>) -> Result<Arc<rustls::ClientConfig>, String> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
    // exchange, which BMCs and most probed services do not offer anyway; ring keeps
    // the static image's build free of aws-lc's C toolchain needs.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match trust {
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::PublicRoots => builder
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
        Trust::CaFile(path) => builder
            .with_root_certificates(ca_roots(path)?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file, refused when it holds none.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let unusable = |why: String| format!("CA file {}: {why}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unusable(e.to_string()))? {
        let cert = cert.map_err(|e| unusable(e.to_string()))?;
        roots.add(cert).map_err(|e| unusable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unusable("no certificate in it".into()));
    }
    Ok(roots)
}

/// Where a request goes: host and port, and TLS with this configuration or none.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
}

/// An `http://` or `https://` URL, split for a request: where to connect, the Host
/// header, and the path with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// The host name or address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written (the Host header).
    pub authority: String,
    pub path: String,
}

impl Url {
    /// Parses `url`; the reason when it is not an `http://` or `https://` URL with a host.
    pub fn parse(url: &str) -> Result<Url, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| format!("no host in {url}"))?;
        // An IPv6 literal comes in brackets; connecting and TLS want the bare address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Url {
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    /// A GET request for this URL.
    pub fn get(&self) -> Result<Request<Full<Bytes>>, String> {
        Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request: {e}"))
    }

    /// Where to send a request for this URL, over `tls` for an `https://` one.
    pub fn target<'a>(&'a self, tls: Option<&'a Arc<rustls::ClientConfig>>) -> Target<'a> {
        Target {
            host: &self.host,
            port: self.port,
            tls: if self.tls { tls } else { None },
        }
    }
}

/// Sends `req` on a new connection to `target` and reads the whole answer; the
/// reason (connection, TLS or protocol) when there is none.
pub async fn exchange(
    target: &Target<'_>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let resp = send(target, req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Sends `req` on a new connection to `target` and streams a 2xx answer's body into
/// `out`, calling `progress(bytes so far, Content-Length)` after each piece; the bytes
/// written, or the reason (connection, TLS, protocol, a non-2xx status, a short body,
/// writing `out`).
pub async fn download<W: tokio::io::AsyncWrite + Unpin>(
    target: &Target<'_>,
    req: Request<Full<Bytes>>,
    out: &mut W,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let resp = send(target, req).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let total = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    progress(0, total);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("the answer was cut off after {bytes} bytes: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .await
                .map_err(|e| format!("write: {e}"))?;
            bytes += data.len() as u64;
            progress(bytes, total);
        }
    }
    out.flush().await.map_err(|e| format!("write: {e}"))?;
    match total {
        Some(t) if t != bytes => Err(format!("the answer was cut off after {bytes} of {t} bytes")),
        _ => Ok(bytes),
    }
}

/// Sends `req` on a new connection to `target`; the answer, its body not read yet.
async fn send(
    target: &Target<'_>,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect((target.host, target.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
    let io: Box<dyn Io> = match target.tls {
        Some(config) => {
            let name = ServerName::try_from(target.host.to_string())
                .map_err(|e| format!("`{}`: {e}", target.host))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| tls_reason(&e))?;
            Box::new(TokioIo::new(tls))
        }
        None => Box::new(TokioIo::new(tcp)),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A TLS failure, with a hint when the certificate is the problem (a self-signed one,
/// most often).
fn tls_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        format!(
            "TLS: {text}: the server's certificate is not trusted (give its CA, or accept \
             a self-signed one with insecure = true)"
        )
    } else {
        format!("TLS: {text}")
    }
}

/// A byte stream hyper can drive: TCP or TLS over TCP.
trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// [`Trust::AnyCertificate`]: accepts any server certificate, but still checks that
/// the server holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_split_for_its_request() {
        let u = Url::parse("https://[fd00::1]:8443/rel/tandem.img.zst?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("fd00::1", 8443));
        assert_eq!(u.authority, "[fd00::1]:8443");
        assert_eq!(u.path, "/rel/tandem.img.zst?x=1");
        let u = Url::parse("http://images.example").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 80, "/"));
        assert_eq!(Url::parse("https://h/").unwrap().port, 443);
        assert!(Url::parse("ftp://h/x").unwrap_err().contains("http://"));
        assert!(Url::parse("not a url").is_err());
    }

    /// A server that answers one request with `answer` and closes.
    async fn answer_once(answer: &'static [u8]) -> Url {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/img", l.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        url
    }

    #[tokio::test]
    async fn a_download_streams_the_body_and_refuses_a_short_or_failed_one() {
        let url = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = download(&url.target(None), url.get().unwrap(), &mut out, |b, t| {
            seen.push((b, t))
        })
        .await
        .unwrap();
        assert_eq!((n, out.as_slice()), (5, &b"hello"[..]));
        assert_eq!(seen.first(), Some(&(0, Some(5))));
        assert_eq!(seen.last(), Some(&(5, Some(5))));

        let refusal = |answer: &'static [u8]| async move {
            let url = answer_once(answer).await;
            download(
                &url.target(None),
                url.get().unwrap(),
                &mut Vec::new(),
                |_, _| {},
            )
            .await
            .unwrap_err()
        };
        let e = refusal(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await;
        assert!(e.contains("cut off after 5"), "{e}");
        let e = refusal(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert!(e.contains("404"), "{e}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(Trust::CaFile(&path)).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = client_config(Trust::CaFile(&missing)).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        assert!(client_config(Trust::PublicRoots).is_ok());
        assert!(client_config(Trust::AnyCertificate).is_ok());
    }
}
