//! The web console: HTTPS pages served by the daemon on every node, with users, roles
//! and sessions; everything a page does goes through the control API.

pub mod pages;
pub mod principal;
