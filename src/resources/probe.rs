//! Health probes: TCP connect, HTTP GET with an expected status (HTTPS over rustls
//! for `https://` URLs), SMTP banner + EHLO, and a command that must exit 0. Each runs under a timeout and returns a reason on
//! failure.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::agent::run_command;
use super::ResourceError;
use crate::config::ProbeConfig;
use crate::net::http::{client_config, exchange, Trust, Url};

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
            ProbeConfig::Http {
                url,
                expect_status,
                ca_file,
                insecure,
            } => http_get(url, *expect_status, ca_file.as_deref(), *insecure).await,
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

/// GET `url` (over TLS for `https://`, trusting as configured); healthy when the
/// answer has status `expect`.
async fn http_get(
    url: &str,
    expect: u16,
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<(), ResourceError> {
    let check = |m: String| ResourceError::Check(m);
    let u = Url::parse(url).map_err(check)?;
    let tls = match u.tls {
        true => Some(tls_config(ca_file, insecure).map_err(check)?),
        false => None,
    };
    let req = u.get().map_err(check)?;
    let target = u.target(tls.as_ref());
    let (status, _) = exchange(&target, req)
        .await
        .map_err(|e| check(format!("GET {url}: {e}")))?;
    if status.as_u16() == expect {
        Ok(())
    } else {
        Err(check(format!(
            "GET {url}: status {} (expected {expect})",
            status.as_u16()
        )))
    }
}

/// The TLS client configuration of an `https://` probe: the Mozilla roots and the
/// accept-any configuration are built once; a CA file is read at every probe, so a
/// renewed CA needs no restart.
fn tls_config(ca_file: Option<&Path>, insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    static PUBLIC: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    static ANY: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    match (ca_file, insecure) {
        (Some(path), _) => client_config(Trust::CaFile(path)),
        (None, true) => ANY
            .get_or_init(|| client_config(Trust::AnyCertificate))
            .clone(),
        (None, false) => PUBLIC
            .get_or_init(|| client_config(Trust::PublicRoots))
            .clone(),
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
    use std::path::PathBuf;
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
            ca_file: None,
            insecure: false,
        };
        assert!(run(&probe("/ok"), Duration::from_secs(2), &[])
            .await
            .is_ok());
        let e = run(&probe("/bad"), Duration::from_secs(2), &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    }

    /// `https://` probes speak TLS to a real TLS server (`openssl s_server -www`) with a
    /// certificate from a private CA: refused as untrusted by default (they went out as
    /// plain HTTP before), healthy with that CA as `ca_file` or with `insecure`.
    #[tokio::test]
    async fn https_probe_speaks_tls_and_verifies_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (scripts/deps.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ]
            .into_iter()
            .chain([
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            ])
            .chain(["-subj", "/CN=probe test CA"])
            .collect::<Vec<_>>(),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ]
            .into_iter()
            .chain([
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .collect::<Vec<_>>(),
        );
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            &[
                "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            ]
            .into_iter()
            .chain(["-CAcreateserial", "-out", "srv.crt", "-days", "2"])
            .chain(["-extfile", "san.ext"])
            .collect::<Vec<_>>(),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accept = format!("127.0.0.1:{port}");
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &accept])
            .args(["-cert", "srv.crt", "-key", "srv.key"])
            .current_dir(d)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        for _ in 0..100 {
            if TcpStream::connect(&accept).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let probe = |scheme: &str, ca_file: Option<PathBuf>, insecure: bool| ProbeConfig::Http {
            url: format!("{scheme}://127.0.0.1:{port}/"),
            expect_status: 200,
            ca_file,
            insecure,
        };
        let t = Duration::from_secs(5);
        let untrusted = run(&probe("https", None, false), t, &[]).await;
        let with_ca = run(&probe("https", Some(d.join("ca.crt")), false), t, &[]).await;
        let any = run(&probe("https", None, true), t, &[]).await;
        let plain = run(&probe("http", None, false), t, &[]).await;
        let _ = server.kill();
        let _ = server.wait();
        let e = untrusted.unwrap_err().to_string();
        assert!(e.contains("not trusted"), "{e}");
        with_ca.unwrap();
        any.unwrap();
        assert!(plain.is_err(), "plain HTTP to a TLS port passed");
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
