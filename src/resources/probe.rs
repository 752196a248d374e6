//! Health probes: TCP connect, HTTP GET with an expected status, SMTP banner + EHLO,
//! and a command that must exit 0. Each runs under a timeout and returns a reason on
//! failure.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::agent::run_command;
use super::ResourceError;
use crate::config::ProbeConfig;

/// Runs one probe; `Ok(())` means healthy.
pub async fn run(
    probe: &ProbeConfig,
    timeout: Duration,
    env: &[(String, String)],
) -> Result<(), ResourceError> {
    let fut = async {
        match probe {
            ProbeConfig::Tcp { address } => TcpStream::connect(address)
                .await
                .map(|_| ())
                .map_err(|e| ResourceError::Check(format!("tcp connect {address}: {e}"))),
            ProbeConfig::Http { url, expect_status } => http_get(url, *expect_status).await,
            ProbeConfig::Smtp { address, helo } => smtp(*address, helo).await,
            ProbeConfig::Exec { command } => run_command(command, timeout, env).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ResourceError::Check(format!(
            "probe timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn http_get(url: &str, expect: u16) -> Result<(), ResourceError> {
    let check = |m: String| ResourceError::Check(m);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| check(format!("bad url {url}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| check(format!("no host in {url}")))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| check(format!("connect {host}:{port}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| check(format!("http handshake: {e}")))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| check(format!("request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| check(format!("GET {url}: {e}")))?;
    if resp.status().as_u16() == expect {
        Ok(())
    } else {
        Err(check(format!(
            "GET {url}: status {} (expected {expect})",
            resp.status().as_u16()
        )))
    }
}

/// RFC 5321 s4.2: a 220 greeting, then EHLO answered by 250 (possibly multi-line).
async fn smtp(address: std::net::SocketAddr, helo: &str) -> Result<(), ResourceError> {
    let check = |m: String| ResourceError::Check(m);
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| check(format!("smtp connect {address}: {e}")))?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let reply = read_smtp_reply(&mut r).await?;
    if reply != 220 {
        return Err(check(format!("smtp banner code {reply}, expected 220")));
    }
    w.write_all(format!("EHLO {helo}\r\n").as_bytes())
        .await
        .map_err(|e| check(format!("smtp write: {e}")))?;
    let reply = read_smtp_reply(&mut r).await?;
    let _ = w.write_all(b"QUIT\r\n").await;
    if reply != 250 {
        return Err(check(format!("smtp EHLO code {reply}, expected 250")));
    }
    Ok(())
}

async fn read_smtp_reply<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<u16, ResourceError> {
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|e| ResourceError::Check(format!("smtp read: {e}")))?;
        if n == 0 {
            return Err(ResourceError::Check("smtp: connection closed".into()));
        }
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ResourceError::Check(format!("smtp: bad reply {line:?}")))?;
        // "250-..." continues, "250 ..." ends a multi-line reply.
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn smtp_probe_accepts_a_real_dialogue_and_rejects_a_bad_banner() {
        for (banner, ok) in [("220 mail ready\r\n", true), ("554 go away\r\n", false)] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(banner.as_bytes()).await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"250-mail hello\r\n250-PIPELINING\r\n250 OK\r\n")
                    .await;
                let _ = s.read(&mut buf).await;
            });
            let r = run(
                &ProbeConfig::Smtp {
                    address: addr,
                    helo: "t".into(),
                },
                Duration::from_secs(2),
                &[],
            )
            .await;
            assert_eq!(r.is_ok(), ok, "{banner:?}: {r:?}");
        }
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(run(
            &ProbeConfig::Tcp { address: addr },
            Duration::from_secs(1),
            &[]
        )
        .await
        .is_ok());
        drop(l);
        assert!(run(
            &ProbeConfig::Tcp { address: addr },
            Duration::from_secs(1),
            &[]
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn http_probe_checks_status() {
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .route(
                "/bad",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no")
                }),
            );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        let probe = |p: &str| ProbeConfig::Http {
            url: format!("http://{addr}{p}"),
            expect_status: 200,
        };
        assert!(run(&probe("/ok"), Duration::from_secs(2), &[])
            .await
            .is_ok());
        let e = run(&probe("/bad"), Duration::from_secs(2), &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    }

    #[tokio::test]
    async fn exec_probe_times_out() {
        let e = run(
            &ProbeConfig::Exec {
                command: vec!["sleep".into(), "5".into()],
            },
            Duration::from_millis(200),
            &[],
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
