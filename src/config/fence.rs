//! `[node.fence]`: how to power a node off (fence it) through its BMC, Redfish first
//! and IPMI (`ipmitool`) second. Optional, per node; `tandem fence` uses it, and
//! `tandem config check` validates it. The fencing logic is in `src/fence/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[node.fence]`: at least one of `redfish` and `ipmi`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceConfig {
    /// `[node.fence.redfish]`: the BMC's Redfish service (tried first).
    #[serde(default)]
    pub redfish: Option<RedfishConfig>,
    /// `[node.fence.ipmi]`: IPMI over LAN through `ipmitool` (the fallback).
    #[serde(default)]
    pub ipmi: Option<IpmiConfig>,
    /// A node fencing THIS node while this node owns groups waits this long first,
    /// so that in a fence race the owner's side shoots first (Pacemaker's
    /// `priority-fencing-delay`). A manual `tandem fence` does not wait.
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    /// How long one method may take, from the power-off request until the BMC reports
    /// the power off; then the next method is tried.
    #[serde(with = "humantime_serde", default = "default_fence_timeout")]
    pub timeout: Duration,
}

/// `[node.fence.redfish]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedfishConfig {
    /// The BMC's base URL, `https://10.0.0.21` (or `http://`; a port may follow).
    pub url: String,
    /// The ComputerSystem's id (`/redfish/v1/Systems/<id>`); absent: the first member
    /// of `/redfish/v1/Systems`.
    #[serde(default)]
    pub system: Option<String>,
    pub user: String,
    /// Either `password` or `password_file` (its contents, trimmed).
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Accept any TLS certificate, such as the self-signed one most BMCs ship with.
    /// The connection is still encrypted but not authenticated.
    #[serde(default)]
    pub insecure: bool,
}

/// `[node.fence.ipmi]`: `ipmitool -I lanplus -H host -p port -U user -f password_file`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiConfig {
    pub host: String,
    #[serde(default = "default_ipmi_port")]
    pub port: u16,
    pub user: String,
    /// The password, in a file (`ipmitool -f`): never on a command line.
    pub password_file: PathBuf,
    /// The RMCP+ cipher suite (`ipmitool -C`, 0 to 17, e.g. 17 or 3); absent: ipmitool
    /// asks the BMC (Get Channel Cipher Suites), which costs a time-out on BMCs that
    /// do not answer it.
    #[serde(default)]
    pub cipher_suite: Option<u8>,
}

fn default_fence_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_ipmi_port() -> u16 {
    623
}

impl FenceConfig {
    /// Checks the section of node `key` (`node[i].fence`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.redfish.is_none() && self.ipmi.is_none() {
            return Err(invalid(key, "set `redfish`, `ipmi` or both"));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(600) {
            return Err(invalid(format!("{key}.timeout"), "must be 1s to 10min"));
        }
        if self.delay > Duration::from_secs(300) {
            return Err(invalid(format!("{key}.delay"), "must be at most 5min"));
        }
        if let Some(r) = &self.redfish {
            r.validate(&format!("{key}.redfish"))?;
        }
        if let Some(i) = &self.ipmi {
            i.validate(&format!("{key}.ipmi"))?;
        }
        Ok(())
    }
}

impl RedfishConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        BmcUrl::parse(&self.url).map_err(|e| invalid(format!("{key}.url"), e))?;
        if let Some(s) = &self.system {
            let ok = !s.is_empty() && !s.contains(['/', '?', '#', ' ']);
            if !ok {
                return Err(invalid(format!("{key}.system"), "not a system id"));
            }
        }
        check_user(&self.user, &format!("{key}.user"))?;
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{key}.password"),
                "set either password or password_file, not both",
            )),
            (None, None) => Err(invalid(
                format!("{key}.password"),
                "missing: set password or password_file",
            )),
            (Some(p), None) if p.is_empty() => {
                Err(invalid(format!("{key}.password"), "must not be empty"))
            }
            (None, Some(f)) => check_file(f, &format!("{key}.password_file")),
            _ => Ok(()),
        }
    }
}

impl IpmiConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let ok = !self.host.is_empty()
            && !self.host.starts_with('-')
            && !self.host.contains(char::is_whitespace);
        if !ok {
            return Err(invalid(format!("{key}.host"), "not a host name or address"));
        }
        if self.port == 0 {
            return Err(invalid(format!("{key}.port"), "must not be 0"));
        }
        if self.cipher_suite.is_some_and(|c| c > 17) {
            return Err(invalid(format!("{key}.cipher_suite"), "must be 0 to 17"));
        }
        check_user(&self.user, &format!("{key}.user"))?;
        check_file(&self.password_file, &format!("{key}.password_file"))
    }
}

/// A BMC user: not empty, and not something `ipmitool` would read as an option.
fn check_user(user: &str, key: &str) -> Result<(), ConfigError> {
    if user.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if user.starts_with('-') || user.contains(['\n', '\r', ':']) {
        return Err(invalid(
            key,
            "must not start with `-` or hold `:` or a newline",
        ));
    }
    Ok(())
}

fn check_file(path: &Path, key: &str) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(invalid(key, "must be an absolute path"));
    }
    Ok(())
}

/// A BMC's base URL, split: `https://host:port`, nothing after the authority but `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcUrl {
    pub tls: bool,
    /// The host name or address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
}

impl BmcUrl {
    /// Parses `http://host[:port][/]` or `https://...`; the reason when it is not one.
    pub fn parse(url: &str) -> Result<BmcUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "`{url}` must be a scheme and a host (and port) only, such as https://10.0.0.21"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("`{authority}` is not HOST or HOST:PORT"))?;
        Ok(BmcUrl { tls, host, port })
    }

    /// `host:port` for a Host header and for connecting (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(a: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok().filter(|p| *p != 0)?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return (!host.is_empty()).then(|| (host.to_string(), port));
    }
    let (host, port) = match a.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok().filter(|p| *p != 0)?),
        None => (a, default_port),
    };
    (!host.is_empty() && !host.contains(':')).then(|| (host.to_string(), port))
}
