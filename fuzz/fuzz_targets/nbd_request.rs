//! Fuzz target: the NBD server's pure decoders must never panic on client bytes.
//!
//! The input is read twice: as transmission-phase request headers (decoded and
//! checked against a small export), and as a stream of options fed through the
//! fixed-newstyle negotiation, exactly as the server reads them from a socket.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::mirror::nbd::handshake::{
    decode_option_header, parse_option, ExportInfo, Negotiation, Next, MAX_OPTION_LEN,
    OPTION_HEADER_LEN,
};
use tandem::mirror::nbd::proto::{decode_request, Command, SessionLimits, REQUEST_LEN};

fuzz_target!(|data: &[u8]| {
    // 1. Request headers.
    let limits = SessionLimits {
        size: 1 << 20,
        read_only: data.first().is_some_and(|b| b & 1 != 0),
        structured_replies: true,
        base_allocation: true,
    };
    for header in data.chunks(REQUEST_LEN) {
        if let Ok(req) = decode_request(header) {
            assert_eq!(header.len(), REQUEST_LEN);
            let ranged = !matches!(req.command, Command::Flush | Command::Disconnect);
            if req.check(&limits).is_ok() && ranged {
                // Whatever range passes the check lies inside the export.
                let end = req.offset.checked_add(u64::from(req.length));
                assert!(end.is_some_and(|end| end <= limits.size));
            }
        }
    }

    // 2. Option haggling.
    let export = ExportInfo {
        name: "disk".into(),
        description: "fuzz".into(),
        size: 1 << 20,
        read_only: false,
    };
    let mut negotiation = Negotiation::new(export, true);
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok((option, len)) = decode_option_header(rest) {
        rest = &rest[OPTION_HEADER_LEN..];
        out.clear();
        let next = if len > MAX_OPTION_LEN {
            negotiation.oversized(option, &mut out)
        } else {
            let take = (len as usize).min(rest.len());
            let (payload, tail) = rest.split_at(take);
            rest = tail;
            let _ = parse_option(option, payload);
            negotiation.handle(option, payload, &mut out)
        };
        if next != Next::Options {
            break;
        }
    }
    // Option payloads without headers, for every option code in the first byte.
    if let Some((&code, payload)) = data.split_first() {
        let _ = parse_option(u32::from(code % 12), payload);
    }
});
