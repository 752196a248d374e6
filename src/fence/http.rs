//! A small HTTP/1.1 client for a BMC: one connection per request (BMCs often close
//! after each answer), plain TCP or TLS (rustls, ring, the Mozilla roots; or any
//! certificate when `insecure`), HTTP Basic authentication (RFC 7617), a time limit per
//! request, JSON bodies. Statuses are mapped to [`FenceError`]s here.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method as HttpMethod, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::FenceError;
use crate::config::BmcUrl;

/// A BMC's HTTP endpoint with its credentials.
pub struct Bmc {
    url: BmcUrl,
    /// `Basic <base64(user:password)>`.
    auth: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    request_timeout: Duration,
}

impl Bmc {
    /// An endpoint for `url` (`http://` or `https://host[:port]`).
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        insecure: bool,
        request_timeout: Duration,
    ) -> Result<Bmc, FenceError> {
        let url = BmcUrl::parse(url).map_err(FenceError::Url)?;
        let tls = if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| FenceError::Url(format!("`{}`: {e}", url.host)))?;
            Some((tls_config(insecure)?, name))
        } else {
            None
        };
        Ok(Bmc {
            auth: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            url,
            tls,
            request_timeout,
        })
    }

    /// The endpoint as `https://host:port`, for messages.
    pub fn origin(&self) -> String {
        let scheme = if self.url.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.url.authority())
    }

    /// GET `path`; the JSON body.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, FenceError> {
        let body = self.request(HttpMethod::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|e| FenceError::Protocol {
            path: path.to_string(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// POST a JSON body to `path`; any 2xx answer is success.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), FenceError> {
        self.request(HttpMethod::POST, path, Some(body)).await?;
        Ok(())
    }

    async fn request(
        &self,
        method: HttpMethod,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, FenceError> {
        let exchange = self.exchange(method, path, body);
        let (status, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| FenceError::Unreachable {
                url: self.origin(),
                reason: format!("no answer within {:?}", self.request_timeout),
            })??;
        check_status(status, path, &self.origin(), &body)?;
        Ok(body)
    }

    async fn exchange(
        &self,
        method: HttpMethod,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), FenceError> {
        let unreachable = |reason: String| FenceError::Unreachable {
            url: self.origin(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let io: Box<dyn Io> = match &self.tls {
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unreachable(tls_reason(&e)))?;
                Box::new(TokioIo::new(tls))
            }
            None => Box::new(TokioIo::new(tcp)),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.url.authority())
            .header(hyper::header::AUTHORIZATION, &self.auth)
            .header(hyper::header::ACCEPT, "application/json");
        let bytes = match body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| FenceError::Url(format!("`{path}`: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

/// A TLS failure, with a hint when the certificate is the problem (a BMC's
/// self-signed one, most often).
fn tls_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        format!("TLS: {text}: the BMC's certificate is not trusted (a self-signed one needs insecure = true)")
    } else {
        format!("TLS: {text}")
    }
}

/// A byte stream hyper can drive: TCP or TLS over TCP.
trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// A non-2xx answer as an error: 401/403 are wrong credentials, 404 an unknown path.
fn check_status(
    status: StatusCode,
    path: &str,
    origin: &str,
    body: &[u8],
) -> Result<(), FenceError> {
    if status.is_success() {
        return Ok(());
    }
    match status.as_u16() {
        401 | 403 => Err(FenceError::Unauthorized {
            url: origin.to_string(),
            status: status.as_u16(),
        }),
        404 => Err(FenceError::NotFound {
            path: path.to_string(),
        }),
        s => Err(FenceError::Status {
            path: path.to_string(),
            status: s,
            message: redfish_message(body),
        }),
    }
}

/// The message of a Redfish error body (`{"error": {"message": ...}}`), else the
/// start of the body.
pub(crate) fn redfish_message(body: &[u8]) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string);
    msg.unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, FenceError> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
    // exchange, which BMCs do not offer anyway; ring keeps the static image's build
    // free of aws-lc's C toolchain needs.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FenceError::Url(format!("TLS: {e}")))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `insecure = true`: accepts any server certificate (a BMC's self-signed one), but
/// still checks that the server holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
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
        cert: &rustls::pki_types::CertificateDer<'_>,
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

/// Standard base64 with padding (RFC 4648 s4), for the Basic credentials.
pub(crate) fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 s10.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        // RFC 7617 s2's example.
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn statuses_become_errors() {
        let o = "http://bmc:80";
        assert!(check_status(StatusCode::NO_CONTENT, "/x", o, b"").is_ok());
        assert!(matches!(
            check_status(StatusCode::UNAUTHORIZED, "/x", o, b""),
            Err(FenceError::Unauthorized { status: 401, .. })
        ));
        assert!(matches!(
            check_status(StatusCode::NOT_FOUND, "/x", o, b""),
            Err(FenceError::NotFound { .. })
        ));
        let body = br#"{"error":{"code":"Base.1.0.GeneralError","message":"busy"}}"#;
        match check_status(StatusCode::SERVICE_UNAVAILABLE, "/x", o, body) {
            Err(FenceError::Status {
                status: 503,
                message,
                ..
            }) => assert_eq!(message, "busy"),
            other => panic!("{other:?}"),
        }
    }
}
