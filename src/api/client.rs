//! The CLI's HTTP client for the control API, over the Unix socket or TCP.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::control::ControlError;

/// Where the daemon's API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: Option<String> },
}

/// Sends one request; returns the decoded JSON body, or the API's error message.
pub async fn call<T: DeserializeOwned>(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, ApiError> {
    let body = call_bytes(ep, method, path, body).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Decode(e.to_string()))
}

/// Sends one request whose body is `text` as it is (`PUT /v1/config` takes the TOML);
/// returns the decoded JSON answer, or the API's error message.
pub async fn call_text<T: DeserializeOwned>(
    ep: &Endpoint,
    method: &str,
    path: &str,
    text: String,
) -> Result<T, ApiError> {
    let body = Some((Bytes::from(text), "text/plain; charset=utf-8"));
    let resp = send(ep, method, path, body).await?;
    let bytes = read_body(resp).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
}

/// A JSON body and its content type.
fn json_body(body: Option<serde_json::Value>) -> Result<Option<(Bytes, &'static str)>, ApiError> {
    body.map(|b| {
        serde_json::to_vec(&b)
            .map(|v| (Bytes::from(v), "application/json"))
            .map_err(|e| ApiError::Http(e.to_string()))
    })
    .transpose()
}

async fn read_body(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ApiError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?
        .to_bytes())
}

/// Sends one request; returns the body's bytes as they are (a split-brain dump), or
/// the API's error message.
pub async fn call_bytes(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Vec<u8>, ApiError> {
    let resp = send(ep, method, path, json_body(body)?).await?;
    Ok(read_body(resp).await?.to_vec())
}

/// `GET path` of a streamed answer (NDJSON, `/v1/events/stream`): calls `line` with
/// each complete line as it arrives, until the daemon ends the stream or `line` says
/// stop (false).
pub async fn stream_lines(
    ep: &Endpoint,
    path: &str,
    mut line: impl FnMut(&[u8]) -> bool,
) -> Result<(), ApiError> {
    let mut body = send(ep, "GET", path, None).await?.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(end + 1);
            let keep_on = line(&pending[..end]);
            pending = rest;
            if !keep_on {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sends one request; the answer when it succeeded (its body not read yet), else the
/// API's error message.
async fn send(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<(Bytes, &'static str)>,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    let (io, host, token) = match ep {
        Endpoint::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| ApiError::Connect(p.display().to_string(), e))?;
            (
                Box::new(TokioIo::new(s)) as Box<dyn IoStream>,
                "localhost".to_string(),
                None,
            )
        }
        Endpoint::Tcp { addr, token } => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| ApiError::Connect(addr.clone(), e))?;
            (
                Box::new(TokioIo::new(s)) as Box<dyn IoStream>,
                addr.clone(),
                token.clone(),
            )
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let bytes = match body {
        Some((b, content_type)) => {
            req = req.header(hyper::header::CONTENT_TYPE, content_type);
            b
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(bytes))
        .map_err(|e| ApiError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_body(resp).await?;
    let msg = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(
        match ControlError::from_http(status.as_u16(), msg.clone()) {
            Some(e) => ApiError::Control(e),
            None => ApiError::Status(msg),
        },
    )
}

/// A byte stream hyper can drive.
pub trait IoStream: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> IoStream for T {}
