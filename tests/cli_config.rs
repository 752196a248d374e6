//! `tandem config init` as an operator runs it: the file it writes, its mode, and
//! what it refuses.

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
