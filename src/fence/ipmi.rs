//! Fencing through IPMI over LAN with the `ipmitool` program, the fallback when
//! Redfish fails: `ipmitool -I lanplus -H host -p port -U user -f password_file chassis
//! power off`, then `chassis power status` until it prints `Chassis Power is off`.
//! The argument list and the status parse are pure functions; the program runs under
//! tokio with a time limit per call. The password stays in its file (`-f`), never on
//! the command line.

use std::time::{Duration, Instant};

use tracing::info;

use super::plan::{FenceAction, PowerState};
use super::FenceError;
use crate::config::IpmiConfig;

/// How often `chassis power status` is run while waiting for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The program, looked up on the PATH.
pub const PROGRAM: &str = "ipmitool";

/// A `chassis power` subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    On,
    Status,
}

/// The arguments of `ipmitool` for `power` on the BMC of `cfg`.
pub fn args(cfg: &IpmiConfig, power: Power) -> Vec<String> {
    let verb = match power {
        Power::Off => "off",
        Power::On => "on",
        Power::Status => "status",
    };
    let mut a: Vec<String> = vec!["-I".into(), "lanplus".into()];
    if let Some(c) = cfg.cipher_suite {
        a.extend(["-C".into(), c.to_string()]);
    }
    a.extend([
        "-H".into(),
        cfg.host.clone(),
        "-p".into(),
        cfg.port.to_string(),
    ]);
    a.extend(["-U".into(), cfg.user.clone(), "-f".into()]);
    a.push(cfg.password_file.display().to_string());
    a.extend(["chassis", "power", verb].map(String::from));
    a
}

/// The state in `chassis power status` output (`Chassis Power is on|off`).
pub fn parse_status(stdout: &str) -> Option<PowerState> {
    stdout.lines().find_map(
        |l| match l.trim().strip_prefix("Chassis Power is ")?.trim() {
            "on" => Some(PowerState::On),
            "off" => Some(PowerState::Off),
            _ => Some(PowerState::Unknown),
        },
    )
}

/// Runs `ipmitool` (`program`, normally [`PROGRAM`]) once; its standard output.
async fn ipmitool(
    program: &str,
    cfg: &IpmiConfig,
    power: Power,
    limit: Duration,
) -> Result<String, FenceError> {
    crate::config::secret::check_mode(&cfg.password_file).map_err(|source| {
        FenceError::PasswordFile {
            path: cfg.password_file.clone(),
            source,
        }
    })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args(cfg, power))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| FenceError::Ipmi(format!("ipmitool gave no answer within {limit:?}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FenceError::IpmitoolMissing,
            _ => FenceError::Ipmi(format!("cannot run {program}: {e}")),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(FenceError::Ipmi(format!(
            "`ipmitool chassis power {power:?}` failed ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Carries out `action` through `program`: reads the state, or sends the power
/// command and polls until the state reads as wanted. Returns the state and the time
/// from the command (zero when nothing was sent).
pub async fn run(
    program: &str,
    cfg: &IpmiConfig,
    action: FenceAction,
    timeout: Duration,
) -> Result<(PowerState, Duration), FenceError> {
    let per_call = timeout.min(Duration::from_secs(20));
    let status = || async {
        let out = ipmitool(program, cfg, Power::Status, per_call).await?;
        parse_status(&out).ok_or_else(|| {
            FenceError::Ipmi(format!("no `Chassis Power is` line in: {}", out.trim()))
        })
    };
    let (power, want) = match action {
        FenceAction::Status => return Ok((status().await?, Duration::ZERO)),
        FenceAction::Off => (Power::Off, PowerState::Off),
        FenceAction::On => (Power::On, PowerState::On),
    };
    info!(host = %cfg.host, ?power, "ipmi chassis power");
    let t0 = Instant::now();
    ipmitool(program, cfg, power, per_call).await?;
    super::wait_for_power(want, t0, timeout, POLL_INTERVAL, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IpmiConfig {
        IpmiConfig {
            host: "10.0.0.22".into(),
            port: 623,
            user: "admin".into(),
            password_file: "/etc/tandem/bmc-b.pw".into(),
            cipher_suite: None,
        }
    }

    #[test]
    fn builds_the_lanplus_command_with_the_password_in_a_file() {
        assert_eq!(
            args(&cfg(), Power::Off).join(" "),
            "-I lanplus -H 10.0.0.22 -p 623 -U admin -f /etc/tandem/bmc-b.pw chassis power off"
        );
        let mut c17 = cfg();
        c17.cipher_suite = Some(17);
        assert_eq!(args(&c17, Power::Off)[..4], ["-I", "lanplus", "-C", "17"]);
        let status = args(&cfg(), Power::Status);
        assert_eq!(status[status.len() - 3..], ["chassis", "power", "status"]);
        assert_eq!(
            args(&cfg(), Power::On).last().map(String::as_str),
            Some("on")
        );
        // A host with a space stays one argument (config check refuses it anyway).
        let mut c = cfg();
        c.host = "bmc b".into();
        assert!(args(&c, Power::Off).contains(&"bmc b".to_string()));
    }

    #[test]
    fn parses_chassis_power_status() {
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is wobbly\n"),
            Some(PowerState::Unknown)
        );
        assert_eq!(
            parse_status("Error: Unable to establish IPMI v2 / RMCP+ session\n"),
            None
        );
    }

    #[tokio::test]
    async fn a_missing_ipmitool_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("bmc.pw");
        std::fs::write(&password_file, "secret\n").unwrap();
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(&password_file, mode(0o644)).unwrap();
        let cfg = IpmiConfig {
            password_file,
            ..cfg()
        };
        let status = || {
            run(
                "/nonexistent/ipmitool",
                &cfg,
                FenceAction::Status,
                Duration::from_secs(5),
            )
        };
        // A password file others can read is refused before ipmitool is even tried.
        let r = status().await;
        assert!(
            matches!(&r, Err(FenceError::PasswordFile { source, .. }) if source.to_string().contains("chmod 600")),
            "{r:?}"
        );
        std::fs::set_permissions(&cfg.password_file, mode(0o600)).unwrap();
        let r = status().await;
        assert!(matches!(r, Err(FenceError::IpmitoolMissing)), "{r:?}");
    }
}
