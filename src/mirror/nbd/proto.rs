//! NBD wire constants and the pure transmission-phase codec: request headers in,
//! simple and structured reply headers out. Numbers follow the NetworkBlockDevice
//! `doc/proto.md`.

use super::NbdError;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply chunks.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// Block status flags of `base:allocation`.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errno values on the wire.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The meta context this server offers, and the id it has on the wire.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Largest request payload (and read reply) the server accepts: 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Block sizes advertised with NBD_INFO_BLOCK_SIZE.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;

/// Length of a request header on the wire.
pub const REQUEST_LEN: usize = 28;

/// A transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    /// A command this server does not implement (answered with EINVAL).
    Other(u16),
}

impl Command {
    fn from_wire(v: u16) -> Command {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Other(other),
        }
    }

    /// Command flags that are meaningful with this command.
    fn allowed_flags(self) -> u16 {
        match self {
            Command::Read => CMD_FLAG_DF,
            Command::Write | Command::Trim => CMD_FLAG_FUA,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            Command::BlockStatus => CMD_FLAG_REQ_ONE,
            Command::Disconnect | Command::Flush | Command::Other(_) => 0,
        }
    }
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// What the negotiated session allows, for validating requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub size: u64,
    pub read_only: bool,
    pub structured_replies: bool,
    pub base_allocation: bool,
}

/// Decodes a 28-byte request header. Only framing errors fail here (they end the
/// connection); whether the request makes sense is [`Request::check`]'s business.
pub fn decode_request(buf: &[u8]) -> Result<Request, NbdError> {
    let b: &[u8; REQUEST_LEN] = buf
        .get(..REQUEST_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(NbdError::Truncated {
            what: "request header",
            need: REQUEST_LEN,
            got: buf.len(),
        })?;
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadRequestMagic(magic));
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&b[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&b[16..24]);
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: Command::from_wire(u16::from_be_bytes([b[6], b[7]])),
        cookie: u64::from_be_bytes(cookie),
        offset: u64::from_be_bytes(offset),
        length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    /// Checks the request against the session; `Err` carries the errno to reply with.
    pub fn check(&self, s: &SessionLimits) -> Result<(), u32> {
        if self.flags & !self.command.allowed_flags() != 0 {
            return Err(EINVAL);
        }
        match self.command {
            Command::Other(_) => return Err(EINVAL),
            Command::Disconnect | Command::Flush => return Ok(()),
            Command::BlockStatus if !(s.structured_replies && s.base_allocation) => {
                return Err(EINVAL)
            }
            Command::Read | Command::Write if self.length > MAX_PAYLOAD => return Err(EOVERFLOW),
            Command::Write | Command::Trim | Command::WriteZeroes if s.read_only => {
                return Err(EPERM)
            }
            _ => {}
        }
        if self.length == 0 && self.command == Command::BlockStatus {
            return Err(EINVAL);
        }
        match self.offset.checked_add(u64::from(self.length)) {
            Some(end) if end <= s.size => Ok(()),
            _ => Err(EINVAL),
        }
    }
}

/// Appends a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured reply chunk header for a payload of `len` bytes.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends a final NBD_REPLY_TYPE_ERROR chunk with a human-readable message.
pub fn put_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u16, cmd: u16, offset: u64, len: u32) -> Vec<u8> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    const LIMITS: SessionLimits = SessionLimits {
        size: 1 << 20,
        read_only: false,
        structured_replies: true,
        base_allocation: true,
    };

    #[test]
    fn decodes_a_write() {
        let r = decode_request(&header(CMD_FLAG_FUA, 1, 4096, 512)).unwrap();
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_FUA,
                command: Command::Write,
                cookie: 0x1122_3344_5566_7788,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(r.payload_len(), 512);
        assert_eq!(r.check(&LIMITS), Ok(()));
    }

    #[test]
    fn framing_errors() {
        let mut b = header(0, 0, 0, 1);
        assert!(matches!(
            decode_request(&b[..27]),
            Err(NbdError::Truncated {
                need: 28,
                got: 27,
                ..
            })
        ));
        b[0] ^= 0xff;
        assert!(matches!(
            decode_request(&b),
            Err(NbdError::BadRequestMagic(_))
        ));
    }

    #[test]
    fn semantic_errors_are_errnos() {
        let check = |flags, cmd, off, len, l: &SessionLimits| {
            decode_request(&header(flags, cmd, off, len))
                .unwrap()
                .check(l)
        };
        // Past the end, and offset + length overflowing u64.
        assert_eq!(check(0, 0, (1 << 20) - 1, 2, &LIMITS), Err(EINVAL));
        assert_eq!(check(0, 4, u64::MAX, 2, &LIMITS), Err(EINVAL));
        assert_eq!(check(0, 0, (1 << 20) - 1, 1, &LIMITS), Ok(()));
        // Too big to buffer.
        assert_eq!(check(0, 0, 0, MAX_PAYLOAD + 1, &LIMITS), Err(EOVERFLOW));
        // Unknown command and flags that do not belong to the command.
        assert_eq!(check(0, 99, 0, 0, &LIMITS), Err(EINVAL));
        assert_eq!(check(CMD_FLAG_NO_HOLE, 1, 0, 1, &LIMITS), Err(EINVAL));
        // Writes on a read-only export.
        let ro = SessionLimits {
            read_only: true,
            ..LIMITS
        };
        assert_eq!(check(0, 1, 0, 1, &ro), Err(EPERM));
        assert_eq!(check(0, 6, 0, 1, &ro), Err(EPERM));
        assert_eq!(check(0, 0, 0, 1, &ro), Ok(()));
        // Block status needs the negotiated context.
        let plain = SessionLimits {
            base_allocation: false,
            ..LIMITS
        };
        assert_eq!(check(0, 7, 0, 1, &plain), Err(EINVAL));
        assert_eq!(check(CMD_FLAG_REQ_ONE, 7, 0, 1, &LIMITS), Ok(()));
    }

    #[test]
    fn error_chunk_layout() {
        let mut out = Vec::new();
        put_error_chunk(&mut out, 7, EINVAL, "bad");
        assert_eq!(out.len(), 20 + 6 + 3);
        assert_eq!(&out[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&out[16..20], &9u32.to_be_bytes());
        assert_eq!(&out[20..24], &EINVAL.to_be_bytes());
    }
}
