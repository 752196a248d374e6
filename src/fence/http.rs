//! A small HTTP/1.1 client for a BMC over `net::http`: one connection per request
//! (BMCs often close after each answer), plain TCP or TLS (the Mozilla roots; or any
//! certificate when `insecure`), HTTP Basic authentication (RFC 7617), a time limit per
//! request, JSON bodies. Statuses are mapped to [`FenceError`]s here.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method as HttpMethod, Request, StatusCode};
use rustls::pki_types::ServerName;

use super::FenceError;
use crate::config::BmcUrl;
use crate::net::http::{client_config, exchange, Target, Trust};

/// A BMC's HTTP endpoint with its credentials.
pub struct Bmc {
    url: BmcUrl,
    /// `Basic <base64(user:password)>`.
    auth: String,
    tls: Option<Arc<rustls::ClientConfig>>,
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
            ServerName::try_from(url.host.as_str())
                .map_err(|e| FenceError::Url(format!("`{}`: {e}", url.host)))?;
            let trust = if insecure {
                Trust::AnyCertificate
            } else {
                Trust::PublicRoots
            };
            Some(client_config(trust).map_err(FenceError::Url)?)
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
        let target = Target {
            host: &self.url.host,
            port: self.url.port,
            tls: self.tls.as_ref(),
        };
        exchange(&target, req).await.map_err(unreachable)
    }
}

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
