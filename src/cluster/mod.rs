//! Cluster membership.
pub mod membership;
pub mod packet;
