//! `[snmp]`: the SNMP agent (v2c communities, v3 USM users) and notification receivers.
//!
//! Secrets are never logged. Cross-field rules live in [`SnmpConfig::validate`]; each
//! error names its key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, parse_cidr, ConfigError};

/// `[snmp]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpConfig {
    /// UDP address of the agent.
    #[serde(default = "default_snmp_listen")]
    pub listen: SocketAddr,
    /// snmpEngineID as hex; by default derived from the cluster and node names
    /// (RFC 3411 text format under the enterprise number).
    #[serde(default)]
    pub engine_id: Option<String>,
    /// sysContact.0
    #[serde(default)]
    pub contact: String,
    /// sysLocation.0
    #[serde(default)]
    pub location: String,
    /// Accept SNMPv3 noAuthNoPriv requests (off by default).
    #[serde(default)]
    pub allow_no_auth_no_priv: bool,
    /// SNMPv2c read-only communities.
    #[serde(rename = "community", default)]
    pub communities: Vec<CommunityConfig>,
    /// SNMPv3 USM users.
    #[serde(rename = "user", default)]
    pub users: Vec<UsmUserConfig>,
    /// Where traps and informs go.
    #[serde(rename = "receiver", default)]
    pub receivers: Vec<ReceiverConfig>,
}

impl Default for SnmpConfig {
    /// An agent on the standard port with no community, user or receiver.
    fn default() -> Self {
        SnmpConfig {
            listen: default_snmp_listen(),
            engine_id: None,
            contact: String::new(),
            location: String::new(),
            allow_no_auth_no_priv: false,
            communities: Vec::new(),
            users: Vec::new(),
            receivers: Vec::new(),
        }
    }
}

fn default_snmp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 161))
}

/// `[[snmp.community]]`: a read-only v2c community.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunityConfig {
    pub name: String,
    /// Source network (CIDR) allowed to use this community.
    #[serde(default = "default_community_source")]
    pub source: String,
}

fn default_community_source() -> String {
    "127.0.0.0/8".into()
}

/// Authentication protocol of a USM user (RFC 3414, RFC 7860).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthProtocol {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Privacy protocol of a USM user (RFC 3826).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivProtocol {
    Aes128,
}

/// `[[snmp.user]]`: an SNMPv3 USM user (read-only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsmUserConfig {
    pub name: String,
    /// None means noAuthNoPriv, allowed only with `allow_no_auth_no_priv`.
    #[serde(default)]
    pub auth: Option<AuthProtocol>,
    #[serde(default)]
    pub auth_password: Option<String>,
    #[serde(default)]
    pub privacy: Option<PrivProtocol>,
    #[serde(default)]
    pub priv_password: Option<String>,
}

/// How a receiver gets notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverForm {
    V2cTrap,
    V2cInform,
    V3Trap,
    V3Inform,
}

/// `[[snmp.receiver]]`: one notification receiver (an NMS running snmptrapd).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// UDP address, usually port 162.
    pub address: SocketAddr,
    pub form: ReceiverForm,
    /// v2c forms: the community.
    #[serde(default)]
    pub community: Option<String>,
    /// v3 forms: the name of a `[[snmp.user]]` (authPriv).
    #[serde(default)]
    pub user: Option<String>,
    /// Notifications kept for this receiver while it does not acknowledge; the oldest
    /// is dropped (and counted) beyond this.
    #[serde(default = "default_receiver_queue")]
    pub queue: usize,
    /// First inform retransmission timeout; doubles up to `max_timeout`.
    #[serde(with = "humantime_serde", default = "default_inform_timeout")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde", default = "default_inform_max_timeout")]
    pub max_timeout: Duration,
}

fn default_receiver_queue() -> usize {
    10_000
}
fn default_inform_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_inform_max_timeout() -> Duration {
    Duration::from_secs(8)
}

impl SnmpConfig {
    /// Cross-field rules of `[snmp]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.engine_id {
            let ok = e.len() >= 10
                && e.len() <= 64
                && e.len() % 2 == 0
                && e.chars().all(|c| c.is_ascii_hexdigit());
            if !ok {
                return Err(invalid(
                    "snmp.engine_id",
                    "must be 5 to 32 bytes written as hex",
                ));
            }
        }
        for (i, c) in self.communities.iter().enumerate() {
            let key = format!("snmp.community[{i}]");
            if c.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            parse_cidr(&c.source).map_err(|r| invalid(format!("{key}.source"), r))?;
        }
        for (i, u) in self.users.iter().enumerate() {
            self.check_user(i, u)?;
        }
        for (i, r) in self.receivers.iter().enumerate() {
            self.check_receiver(i, r)?;
        }
        Ok(())
    }

    /// `[[snmp.user]]` number `i`: a unique name, and passwords that match its
    /// security level.
    fn check_user(&self, i: usize, u: &UsmUserConfig) -> Result<(), ConfigError> {
        let key = format!("snmp.user[{i}]");
        if u.name.is_empty() || u.name.len() > 32 {
            return Err(invalid(format!("{key}.name"), "must be 1 to 32 characters"));
        }
        if self.users[..i].iter().any(|o| o.name == u.name) {
            return Err(invalid(format!("{key}.name"), "duplicate user"));
        }
        match (u.auth, &u.auth_password) {
            (Some(_), Some(p)) if p.len() >= 8 => {}
            (Some(_), _) => {
                return Err(invalid(
                    format!("{key}.auth_password"),
                    "required, at least 8 characters (RFC 3414)",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(format!("{key}.auth"), "set with auth_password"))
            }
            (None, None) if !self.allow_no_auth_no_priv => {
                return Err(invalid(
                    format!("{key}.auth"),
                    "required unless snmp.allow_no_auth_no_priv = true",
                ))
            }
            (None, None) => {}
        }
        match (u.privacy, &u.priv_password) {
            (Some(_), _) if u.auth.is_none() => {
                return Err(invalid(format!("{key}.privacy"), "privacy needs auth"))
            }
            (Some(_), Some(p)) if p.len() >= 8 => {}
            (Some(_), _) => {
                return Err(invalid(
                    format!("{key}.priv_password"),
                    "required, at least 8 characters",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(format!("{key}.privacy"), "set with priv_password"))
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// `[[snmp.receiver]]` number `i`: the community or user its form needs, a queue
    /// and its timeouts.
    fn check_receiver(&self, i: usize, r: &ReceiverConfig) -> Result<(), ConfigError> {
        let key = format!("snmp.receiver[{i}]");
        match r.form {
            ReceiverForm::V2cTrap | ReceiverForm::V2cInform => {
                if r.community.as_deref().unwrap_or("").is_empty() {
                    return Err(invalid(format!("{key}.community"), "required for v2c"));
                }
            }
            ReceiverForm::V3Trap | ReceiverForm::V3Inform => {
                let name = r.user.as_deref().unwrap_or("");
                let Some(u) = self.users.iter().find(|u| u.name == name) else {
                    return Err(invalid(
                        format!("{key}.user"),
                        "must name a [[snmp.user]] for v3",
                    ));
                };
                if u.auth.is_none() || u.privacy.is_none() {
                    return Err(invalid(
                        format!("{key}.user"),
                        "v3 notifications need a user with auth and privacy",
                    ));
                }
            }
        }
        if r.queue == 0 {
            return Err(invalid(format!("{key}.queue"), "must be at least 1"));
        }
        if r.timeout.is_zero() || r.max_timeout < r.timeout {
            return Err(invalid(
                format!("{key}.timeout"),
                "must be positive and at most max_timeout",
            ));
        }
        Ok(())
    }
}
