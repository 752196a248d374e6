//! Pure, sans-IO fixed-newstyle negotiation: the greeting, the client flags, option
//! parsing and the replies to each option. The I/O layer feeds it option headers and
//! payloads and writes back whatever bytes it returns.

use super::proto::*;
use super::NbdError;

/// Longest option payload the server reads; longer ones are skipped and refused.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest string (export name, description, meta context query), as in the spec.
pub const MAX_STRING: usize = 4096;
/// Length of an option header (`IHAVEOPT`, option, length).
pub const OPTION_HEADER_LEN: usize = 16;

/// The export a server offers, as negotiation needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
}

impl ExportInfo {
    /// Transmission flags advertised for this export.
    pub fn transmission_flags(&self) -> u16 {
        let common = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            common | TFLAG_READ_ONLY
        } else {
            common | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
        }
    }

    /// The empty name selects the default (and only) export.
    fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }
}

/// The server's first bytes: magic, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Client flags: returns whether the client asked for NO_ZEROES. Clients that do not
/// speak fixed newstyle, or set flags we do not know, are refused.
pub fn decode_client_flags(b: [u8; 4]) -> Result<bool, NbdError> {
    let flags = u32::from_be_bytes(b);
    if flags & CLIENT_FIXED_NEWSTYLE == 0
        || flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0
    {
        return Err(NbdError::ClientFlags(flags));
    }
    Ok(flags & CLIENT_NO_ZEROES != 0)
}

/// Decodes an option header into (option, payload length).
pub fn decode_option_header(b: &[u8]) -> Result<(u32, u32), NbdError> {
    let h: &[u8; OPTION_HEADER_LEN] = b
        .get(..OPTION_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(NbdError::Truncated {
            what: "option header",
            need: OPTION_HEADER_LEN,
            got: b.len(),
        })?;
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&h[..8]);
    let magic = u64::from_be_bytes(magic);
    if magic != IHAVEOPT {
        return Err(NbdError::BadOptionMagic(magic));
    }
    Ok((
        u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
    ))
}

/// A parsed option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    Info {
        name: String,
        requests: Vec<u16>,
    },
    Go {
        name: String,
        requests: Vec<u16>,
    },
    StructuredReply,
    ListMetaContext {
        export: String,
        queries: Vec<String>,
    },
    SetMetaContext {
        export: String,
        queries: Vec<String>,
    },
    Unsupported(u32),
}

/// Reads big-endian fields and length-prefixed strings from an option payload.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("option payload is truncated");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, len: usize) -> Result<String, &'static str> {
        if len > MAX_STRING {
            return Err("string longer than 4096 bytes");
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "string is not UTF-8")
    }
    fn prefixed_string(&mut self) -> Result<String, &'static str> {
        let len = self.u32()? as usize;
        self.string(len)
    }
    fn end(&self) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the option payload")
        }
    }
}

/// Parses one option's payload. `Err` is a message for NBD_REP_ERR_INVALID.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, &'static str> {
    let mut c = Cursor { buf: data };
    let parsed = match option {
        OPT_EXPORT_NAME => {
            let len = data.len();
            ClientOption::ExportName(c.string(len)?)
        }
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST => ClientOption::List,
        OPT_STRUCTURED_REPLY => ClientOption::StructuredReply,
        OPT_INFO | OPT_GO => {
            let name = c.prefixed_string()?;
            let n = c.u16()?;
            let requests = (0..n).map(|_| c.u16()).collect::<Result<Vec<_>, _>>()?;
            if option == OPT_GO {
                ClientOption::Go { name, requests }
            } else {
                ClientOption::Info { name, requests }
            }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let export = c.prefixed_string()?;
            let n = c.u32()?;
            // Each query needs at least its 4-byte length, which bounds n by the payload.
            if n as usize > c.buf.len() / 4 {
                return Err("more meta context queries than the payload holds");
            }
            let queries = (0..n)
                .map(|_| c.prefixed_string())
                .collect::<Result<Vec<_>, _>>()?;
            if option == OPT_SET_META_CONTEXT {
                ClientOption::SetMetaContext { export, queries }
            } else {
                ClientOption::ListMetaContext { export, queries }
            }
        }
        other => return Ok(ClientOption::Unsupported(other)),
    };
    // Options without a payload must have none.
    if matches!(
        parsed,
        ClientOption::Abort | ClientOption::List | ClientOption::StructuredReply
    ) && !data.is_empty()
    {
        return Err("this option takes no payload");
    }
    c.end()?;
    Ok(parsed)
}

/// What the connection does after an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next option.
    Options,
    /// Enter transmission with these session properties.
    Transmission(Session),
    /// Close the connection (after writing the reply, if any).
    Close,
}

/// Properties of an established session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub structured_replies: bool,
    pub base_allocation: bool,
}

/// The negotiation state of one connection.
#[derive(Debug, Clone)]
pub struct Negotiation {
    export: ExportInfo,
    no_zeroes: bool,
    structured_replies: bool,
    base_allocation: bool,
}

fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

impl Negotiation {
    /// Starts negotiating `export` with a client that sent `no_zeroes`.
    pub fn new(export: ExportInfo, no_zeroes: bool) -> Negotiation {
        Negotiation {
            export,
            no_zeroes,
            structured_replies: false,
            base_allocation: false,
        }
    }

    /// The reply to an option whose payload was too long to read (it was skipped).
    pub fn oversized(&self, option: u32, out: &mut Vec<u8>) -> Next {
        put_option_reply(out, option, REP_ERR_TOO_BIG, b"option payload too long");
        Next::Options
    }

    /// Handles one option (code and raw payload), appending the reply bytes to `out`.
    pub fn handle(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Next {
        let parsed = match parse_option(option, data) {
            Ok(p) => p,
            // An EXPORT_NAME cannot be answered with an error: the spec says disconnect.
            Err(_) if option == OPT_EXPORT_NAME => return Next::Close,
            Err(msg) => {
                put_option_reply(out, option, REP_ERR_INVALID, msg.as_bytes());
                return Next::Options;
            }
        };
        match parsed {
            ClientOption::ExportName(name) => {
                if !self.export.matches(&name) {
                    return Next::Close;
                }
                out.extend_from_slice(&self.export.size.to_be_bytes());
                out.extend_from_slice(&self.export.transmission_flags().to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                // Structured replies need NBD_OPT_GO; old clients get simple replies.
                Next::Transmission(self.session())
            }
            ClientOption::Abort => {
                put_option_reply(out, option, REP_ACK, &[]);
                Next::Close
            }
            ClientOption::List => {
                let mut d = Vec::with_capacity(4 + self.export.name.len());
                d.extend_from_slice(&(self.export.name.len() as u32).to_be_bytes());
                d.extend_from_slice(self.export.name.as_bytes());
                d.extend_from_slice(self.export.description.as_bytes());
                put_option_reply(out, option, REP_SERVER, &d);
                put_option_reply(out, option, REP_ACK, &[]);
                Next::Options
            }
            ClientOption::StructuredReply => {
                self.structured_replies = true;
                put_option_reply(out, option, REP_ACK, &[]);
                Next::Options
            }
            ClientOption::Info { name, requests } | ClientOption::Go { name, requests } => {
                if !self.export.matches(&name) {
                    put_option_reply(out, option, REP_ERR_UNKNOWN, b"no such export");
                    return Next::Options;
                }
                self.put_info(option, &requests, out);
                put_option_reply(out, option, REP_ACK, &[]);
                if option == OPT_GO {
                    Next::Transmission(self.session())
                } else {
                    Next::Options
                }
            }
            ClientOption::ListMetaContext { export, queries }
            | ClientOption::SetMetaContext { export, queries } => {
                let set = option == OPT_SET_META_CONTEXT;
                if set && !self.structured_replies {
                    put_option_reply(
                        out,
                        option,
                        REP_ERR_INVALID,
                        b"meta contexts need structured replies",
                    );
                    return Next::Options;
                }
                if !self.export.matches(&export) {
                    put_option_reply(out, option, REP_ERR_UNKNOWN, b"no such export");
                    return Next::Options;
                }
                let selected = if set {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
                };
                if set {
                    self.base_allocation = selected;
                }
                if selected {
                    let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    put_option_reply(out, option, REP_META_CONTEXT, &d);
                }
                put_option_reply(out, option, REP_ACK, &[]);
                Next::Options
            }
            ClientOption::Unsupported(code) => {
                put_option_reply(out, code, REP_ERR_UNSUP, b"option not supported");
                Next::Options
            }
        }
    }

    fn session(&self) -> Session {
        Session {
            structured_replies: self.structured_replies,
            base_allocation: self.structured_replies && self.base_allocation,
        }
    }

    fn put_info(&self, option: u32, requests: &[u16], out: &mut Vec<u8>) {
        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
        d.extend_from_slice(&self.export.size.to_be_bytes());
        d.extend_from_slice(&self.export.transmission_flags().to_be_bytes());
        put_option_reply(out, option, REP_INFO, &d);

        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        put_option_reply(out, option, REP_INFO, &d);

        if requests.contains(&INFO_NAME) {
            let mut d = INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(self.export.name.as_bytes());
            put_option_reply(out, option, REP_INFO, &d);
        }
        if requests.contains(&INFO_DESCRIPTION) && !self.export.description.is_empty() {
            let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(self.export.description.as_bytes());
            put_option_reply(out, option, REP_INFO, &d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> ExportInfo {
        ExportInfo {
            name: "disk".into(),
            description: "test disk".into(),
            size: 1 << 20,
            read_only: false,
        }
    }

    fn go_payload(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    /// Splits option replies into (option, reply type, payload).
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            assert_eq!(&b[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
            let opt = u32::from_be_bytes(b[8..12].try_into().unwrap());
            let typ = u32::from_be_bytes(b[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            v.push((opt, typ, b[20..20 + len].to_vec()));
            b = &b[20 + len..];
        }
        v
    }

    #[test]
    fn greeting_and_client_flags() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert!(decode_client_flags([0, 0, 0, 3]).unwrap());
        assert!(!decode_client_flags([0, 0, 0, 1]).unwrap());
        assert!(decode_client_flags([0, 0, 0, 0]).is_err());
        assert!(decode_client_flags([0, 0, 0, 5]).is_err());
    }

    #[test]
    fn go_with_info_requests() {
        let mut n = Negotiation::new(export(), true);
        let mut out = Vec::new();
        let next = n.handle(
            OPT_GO,
            &go_payload("disk", &[INFO_NAME, INFO_DESCRIPTION]),
            &mut out,
        );
        assert_eq!(
            next,
            Next::Transmission(Session {
                structured_replies: false,
                base_allocation: false
            })
        );
        let r = replies(&out);
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].1, REP_INFO);
        assert_eq!(&r[0].2[..2], &INFO_EXPORT.to_be_bytes());
        assert_eq!(&r[0].2[2..10], &(1u64 << 20).to_be_bytes());
        assert_eq!(&r[1].2[..2], &INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(&r[2].2[2..], b"disk");
        assert_eq!(&r[3].2[2..], b"test disk");
        assert_eq!(r[4].1, REP_ACK);
    }

    #[test]
    fn unknown_export_and_unknown_option_keep_the_connection() {
        let mut n = Negotiation::new(export(), true);
        let mut out = Vec::new();
        assert_eq!(
            n.handle(OPT_GO, &go_payload("nope", &[]), &mut out),
            Next::Options
        );
        assert_eq!(replies(&out)[0].1, REP_ERR_UNKNOWN);
        out.clear();
        assert_eq!(n.handle(0x4242, b"whatever", &mut out), Next::Options);
        assert_eq!(
            replies(&out)[0],
            (0x4242, REP_ERR_UNSUP, b"option not supported".to_vec())
        );
        out.clear();
        assert!(matches!(
            n.handle(OPT_GO, &go_payload("", &[]), &mut out),
            Next::Transmission(_)
        ));
    }

    #[test]
    fn export_name_old_style() {
        let mut n = Negotiation::new(export(), false);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle(OPT_EXPORT_NAME, b"disk", &mut out),
            Next::Transmission(_)
        ));
        assert_eq!(out.len(), 8 + 2 + 124);
        assert_eq!(
            n.handle(OPT_EXPORT_NAME, b"other", &mut Vec::new()),
            Next::Close
        );
    }

    #[test]
    fn meta_context_needs_structured_replies() {
        let mut n = Negotiation::new(export(), true);
        let mut q = (4u32).to_be_bytes().to_vec();
        q.extend_from_slice(b"disk");
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        q.extend_from_slice(BASE_ALLOCATION.as_bytes());
        let mut out = Vec::new();
        n.handle(OPT_SET_META_CONTEXT, &q, &mut out);
        assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
        out.clear();
        n.handle(OPT_STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        n.handle(OPT_SET_META_CONTEXT, &q, &mut out);
        let r = replies(&out);
        assert_eq!(r[0].1, REP_META_CONTEXT);
        assert_eq!(&r[0].2[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(r[1].1, REP_ACK);
        assert_eq!(
            n.handle(OPT_GO, &go_payload("disk", &[]), &mut Vec::new()),
            Next::Transmission(Session {
                structured_replies: true,
                base_allocation: true
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn any_option_bytes_get_a_reply_or_a_close(option in 0u32..16, data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut n = Negotiation::new(export(), true);
            let mut out = Vec::new();
            let next = n.handle(option, &data, &mut out);
            // Every option except EXPORT_NAME is answered, even when it closes.
            if option != OPT_EXPORT_NAME {
                proptest::prop_assert!(!replies(&out).is_empty());
            } else if next == Next::Close {
                proptest::prop_assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn malformed_payloads_are_invalid_not_panics() {
        let mut n = Negotiation::new(export(), true);
        for (opt, data) in [
            (OPT_GO, &[0u8, 0, 0, 9, b'a'][..]),
            (OPT_LIST, &[1u8][..]),
            (
                OPT_LIST_META_CONTEXT,
                &[0u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..],
            ),
            (OPT_INFO, &[0u8, 0, 0, 0, 0, 1][..]),
        ] {
            let mut out = Vec::new();
            assert_eq!(n.handle(opt, data, &mut out), Next::Options);
            assert_eq!(replies(&out)[0].1, REP_ERR_INVALID, "option {opt}");
        }
        assert!(matches!(
            decode_option_header(&[0u8; 16]),
            Err(NbdError::BadOptionMagic(0))
        ));
    }
}
