//! Shared by the SNMP tests (`tests/snmp.rs`) and the lab's trap test (`tests/lab.rs`):
//! the MIB search options for net-snmp tools and snmptrapd.
//!
//! The SMIv2 base modules (SNMPv2-SMI, -TC, -CONF, SNMPv2-MIB) are not in Debian's
//! free packages: they come from the `net-snmp` npm package, fetched once into
//! `target/snmp-mibs/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Pinned so the base modules never change under the tests.
const NPM_PACKAGE: &str = "net-snmp@3.29.2";

/// The directory holding the SMIv2 base modules (`*.mib`), fetched once per clone.
pub fn base_mibs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(REPO).join("target/snmp-mibs");
        let mibs = root.join("package/lib/mibs");
        if !mibs.join("SNMPv2-SMI.mib").exists() {
            std::fs::create_dir_all(&root).unwrap();
            let out = Command::new("npm")
                .args(["pack", "--silent", NPM_PACKAGE])
                .current_dir(&root)
                .output()
                .expect("npm (scripts/deps.sh installs it)");
            assert!(out.status.success(), "npm pack: {out:?}");
            let tarball = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let ok = Command::new("tar")
                .args(["xzf", &tarball, "package/lib/mibs"])
                .current_dir(&root)
                .status()
                .unwrap();
            assert!(ok.success(), "cannot extract {tarball}");
        }
        mibs
    })
}

/// `-M` and `-m` for net-snmp tools and snmptrapd: TANDEM-MIB and the base modules.
pub fn mib_args() -> Vec<String> {
    vec![
        "-M".into(),
        format!("+{REPO}/mibs:{}", base_mibs().display()),
        "-m".into(),
        "+TANDEM-MIB".into(),
    ]
}
