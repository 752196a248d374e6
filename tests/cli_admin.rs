//! Admin commands that need no daemon, as an operator runs them: `tandem config init`
//! (the file it writes, its mode, what it refuses) and signed images (`tandem image
//! keygen`, `sign`, and `update` refusing what is not signed by a trusted key), and the
//! console password (`tandem console-password hash|set` from standard input), and the
//! demo service's choice of counter store.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("tandem")
}

fn key_line(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("key = "))
        .expect("a key line")
        .to_string()
}

#[test]
fn config_init_writes_a_private_file_that_config_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tandem.toml");
    let path = file.to_str().unwrap();
    let out = tandem(&[
        "config",
        "init",
        "--nodes",
        "3",
        "--cluster",
        "prod",
        "-o",
        path,
    ]);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds the key");
    let check = tandem(&["config", "check", path]);
    assert!(check.status.success(), "{check:?}");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("cluster `prod`, 3 nodes"), "{said}");
    assert!(
        said.contains("mode quorum"),
        "three nodes decide by majority: {said}"
    );
    // Never over an existing file: the key in it may be in use.
    let written = std::fs::read_to_string(&file).unwrap();
    let again = tandem(&["config", "init", "--nodes", "2", "-o", path]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn config_init_makes_a_fresh_key_each_time_and_refuses_bad_input() {
    let a = tandem(&["config", "init", "--nodes", "2"]);
    let b = tandem(&["config", "init", "--nodes", "2"]);
    assert!(a.status.success() && b.status.success());
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    assert_ne!(key_line(&a), key_line(&b));
    assert!(
        a.contains("tandem witness"),
        "two nodes are told about the witness"
    );
    for bad in [
        &["config", "init", "--nodes", "0"][..],
        &["config", "init", "--nodes", "17"],
        &["config", "init", "--nodes", "2", "--cluster", "no spaces"],
    ] {
        let out = tandem(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
}

#[test]
fn image_update_takes_only_images_signed_by_a_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let keygen = tandem(&["image", "keygen", "-o", &d("release.key")]);
    assert!(keygen.status.success(), "{keygen:?}");
    let public = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    assert_eq!(
        std::fs::read_to_string(d("release.pub")).unwrap().trim(),
        public
    );
    let mode = std::fs::metadata(d("release.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let printed = tandem(&["image", "public-key", "--key", &d("release.key")]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), public);
    assert!(tandem(&["image", "keygen", "-o", &d("other.key")])
        .status
        .success());

    // Not a disk image: enough to see where the signature check stands.
    std::fs::write(d("new.img.zst"), b"an image, as far as signing goes").unwrap();
    std::fs::create_dir(d("esp")).unwrap();
    let update = || {
        tandem(&[
            "image",
            "update",
            &d("new.img.zst"),
            "--esp",
            &d("esp"),
            "--slot",
            "a",
            "--trusted-keys",
            &d("release.pub"),
        ])
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();
    let unsigned = update();
    assert_eq!(unsigned.status.code(), Some(4), "{unsigned:?}");
    assert!(stderr(&unsigned).contains("not signed"), "{unsigned:?}");

    let other = tandem(&["image", "sign", "--key", &d("other.key"), &d("new.img.zst")]);
    assert!(other.status.success(), "{other:?}");
    let untrusted = update();
    assert_eq!(untrusted.status.code(), Some(4), "{untrusted:?}");
    assert!(
        stderr(&untrusted).contains("does not trust"),
        "{untrusted:?}"
    );

    let signed = tandem(&[
        "image",
        "sign",
        "--key",
        &d("release.key"),
        &d("new.img.zst"),
    ]);
    assert!(signed.status.success(), "{signed:?}");
    let good = update();
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("signature good"),
        "{good:?}"
    );
    assert_eq!(
        good.status.code(),
        Some(1),
        "then it is not a disk image: {good:?}"
    );

    std::fs::write(d("new.img.zst"), b"an image, altered after signing").unwrap();
    let altered = update();
    assert_eq!(altered.status.code(), Some(4), "{altered:?}");
    assert!(
        stderr(&altered).contains("not the one that was signed"),
        "{altered:?}"
    );
}

/// `tandem console-password hash|set` with the password on standard input.
fn with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tandem");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn console_password_hash_and_set_read_standard_input() {
    let hash = with_stdin(&["console-password", "hash"], "long enough\n");
    assert!(hash.status.success(), "{hash:?}");
    let line = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(
        line.starts_with("$6$") && !line.contains("long enough"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (file, passwd) = (
        dir.path().join("console-password"),
        dir.path().join("passwd"),
    );
    let set = |input: &str| {
        with_stdin(
            &[
                "console-password",
                "set",
                "--file",
                file.to_str().unwrap(),
                "--passwd",
                passwd.to_str().unwrap(),
            ],
            input,
        )
    };
    let short = set("short\n");
    assert_eq!(short.status.code(), Some(1), "{short:?}");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));
    assert!(!file.exists());
    let ok = set("another long one\n");
    assert!(ok.status.success(), "{ok:?}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.starts_with("$6$"), "{stored}");
    let account = std::fs::read_to_string(&passwd).unwrap();
    assert_eq!(
        account,
        format!("root:{}:0:0:root:/root:/bin/sh\n", stored.trim())
    );
    for p in [&file, &passwd] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

/// A group's command gets TANDEM_NBD_SOCKET from the daemon whenever the group holds
/// one mirror. The demo service over a filesystem on that mirror (`--data-dir`) must
/// still start: the variable once counted as `--nbd-socket` and clap refused the pair,
/// so the appliance's demo service never ran.
#[test]
fn demo_service_with_a_data_dir_starts_beside_the_daemons_nbd_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["demo-service", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("TANDEM_NBD_SOCKET", dir.path().join("nbd.sock"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        up && exited.is_none(),
        "the demo service did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
