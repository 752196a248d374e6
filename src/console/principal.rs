//! Who a console or API request acts for: the user (or token) and its role.

use serde::{Deserialize, Serialize};

/// A role, weakest first. A viewer reads; an operator also runs the day-to-day actions
/// (switchover, standby and online, maintenance, clear, mirror pause/resume/verify/
/// resync); an admin may do everything (configuration, image update, users).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

/// The signed-in user (or API token) a request acts for, and the CSRF token its page
/// forms and scripts send back (`X-CSRF-Token`; empty for a bearer token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub csrf: String,
}
