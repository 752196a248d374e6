//! The quorum datagram: consensus messages and lease traffic between voters.
//!
//! (Stub: the codec is being written; see the module header once it lands.)

/// One quorum datagram. The same datagram (same `seq`) goes out on every heartbeat
/// path at once; receivers drop the copies after the first (see [`Dedup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPacket {
    /// Cluster name; a mismatch is [`WireError::WrongCluster`].
    pub cluster: String,
    /// Sender voter name.
    pub from: String,
    /// Digest of the sorted voter names the sender uses (ids are positions in that
    /// list): a mismatch means the two configs disagree, and the packet is dropped.
    pub voters_digest: u64,
    /// Random per sender start.
    pub boot_id: u64,
    /// Per sender boot, strictly increasing per datagram (not per path).
    pub seq: u64,
    /// Sender's monotonic clock in ms when sent.
    pub sent_ms: u64,
    pub msgs: Vec<QuorumMsg>,
}

/// One message inside a quorum datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumMsg {
    /// A raft-rs message (`eraftpb::Message`, protobuf-encoded).
    Raft(Vec<u8>),
    /// An owner renews its leases: (group, epoch) pairs, stamped with the datagram's
    /// `sent_ms`.
    Renew(Vec<GroupEpoch>),
    /// A voter acknowledges renewals: (group, epoch, the renewal's `sent_ms` on the
    /// owner's clock).
    Ack(Vec<LeaseAck>),
    /// A voter's report, for every group in its applied register.
    Report(Vec<LeaseReport>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEpoch {
    pub group: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAck {
    pub group: String,
    pub epoch: u64,
    pub renewal_sent_ms: u64,
}

/// What a voter tells the others about one group, on its own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReport {
    pub group: String,
    /// The epoch of the group in the voter's applied register.
    pub epoch: u64,
    /// How long since the voter last acknowledged a renewal of that epoch.
    pub since_current_ms: u64,
    /// How long since the voter last acknowledged a renewal of any lower epoch.
    pub quiet_ms: u64,
}
