//! Fuzz target: the SNMPv3 USM (`tandem::snmp::usm`) must never panic on arbitrary
//! datagrams, on the agent side (`Usm::receive`) nor on the notifier side
//! (`decode_reply`).
//!
//! Run with `cargo +nightly fuzz run snmp_usm` (or `scripts/fuzz-smoke.sh`). Besides
//! raw bytes, the target wraps the input in a valid v3 header as the cleartext scoped
//! PDU of a noAuthNoPriv user, and as the encrypted scoped PDU of an authPriv user
//! with a correct MAC, so the fuzzer also reaches the parsers behind the USM checks.

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use tandem::config::{AuthProtocol, PrivProtocol, UsmUserConfig};
use tandem::snmp::usm::{decode_reply, localize_key, password_to_key, Usm, UsmUser};

const ENGINE_ID: &[u8] = b"\x80\x00\x7e\xd9\x04fuzz";
const AUTH_PASSWORD: &str = "fuzz-auth-password";
const BOOTS: u8 = 1;
/// Placeholder of the SHA-256 MAC (24 octets) before signing.
const MAC_PLACEHOLDER: [u8; 24] = [0xa5; 24];

struct Fixture {
    usm: Mutex<Usm>,
    now: Instant,
    notifier_keys: tandem::snmp::usm::LocalizedUser,
    auth_key: Vec<u8>,
}

fn users() -> Vec<UsmUserConfig> {
    vec![
        UsmUserConfig {
            name: "ops".into(),
            auth: Some(AuthProtocol::Sha256),
            auth_password: Some(AUTH_PASSWORD.into()),
            privacy: Some(PrivProtocol::Aes128),
            priv_password: Some("fuzz-priv-password".into()),
        },
        UsmUserConfig {
            name: "guest".into(),
            auth: None,
            auth_password: None,
            privacy: None,
            priv_password: None,
        },
    ]
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let users = users();
        let usm = Usm::new(ENGINE_ID.to_vec(), u32::from(BOOTS), &users, true).unwrap();
        let ku = password_to_key(AuthProtocol::Sha256, AUTH_PASSWORD.as_bytes());
        Fixture {
            usm: Mutex::new(usm),
            now: Instant::now(),
            notifier_keys: UsmUser::from_config(&users[0]).unwrap().localize(ENGINE_ID),
            auth_key: localize_key(AuthProtocol::Sha256, &ku, ENGINE_ID),
        }
    })
}

/// BER TLV with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A v3 message around `scoped` (already a scopedPDU TLV or an encrypted OCTET STRING).
fn message(flags: u8, user: &[u8], auth: &[u8], salt: &[u8], scoped: &[u8]) -> Vec<u8> {
    let header = [
        tlv(0x02, &[0x01]),
        tlv(0x02, &[0x00, 0xff, 0xe3]),
        tlv(0x04, &[flags]),
        tlv(0x02, &[0x03]),
    ]
    .concat();
    let usm = [
        tlv(0x04, ENGINE_ID),
        tlv(0x02, &[BOOTS]),
        tlv(0x02, &[0x00]),
        tlv(0x04, user),
        tlv(0x04, auth),
        tlv(0x04, salt),
    ]
    .concat();
    let body = [
        tlv(0x02, &[0x03]),
        tlv(0x30, &header),
        tlv(0x04, &tlv(0x30, &usm)),
        scoped.to_vec(),
    ]
    .concat();
    tlv(0x30, &body)
}

/// Replaces the MAC placeholder with the real HMAC-SHA-256-192 of the message.
fn sign(mut msg: Vec<u8>, key: &[u8]) -> Vec<u8> {
    let at = msg
        .windows(MAC_PLACEHOLDER.len())
        .position(|w| w == MAC_PLACEHOLDER)
        .expect("placeholder present");
    msg[at..at + MAC_PLACEHOLDER.len()].fill(0);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(&msg);
    let full = mac.finalize().into_bytes();
    msg[at..at + MAC_PLACEHOLDER.len()].copy_from_slice(&full[..MAC_PLACEHOLDER.len()]);
    msg
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut usm = f.usm.lock().unwrap_or_else(|p| p.into_inner());

    // 1. Raw datagram, on both sides.
    let _ = usm.receive(data, f.now);
    let _ = decode_reply(data, None);
    let _ = decode_reply(data, Some(&f.notifier_keys));

    // 2. The input as the cleartext scopedPDU of the noAuthNoPriv user.
    let clear = message(0x04, b"guest", b"", b"", data);
    let _ = usm.receive(&clear, f.now);

    // 3. The input as the encrypted scopedPDU of the authPriv user, correctly signed:
    //    reaches decryption and the decoder of the decrypted bytes.
    let salt = data.get(..8).unwrap_or(&[0u8; 8][..]);
    let encrypted = message(0x07, b"ops", &MAC_PLACEHOLDER, salt, &tlv(0x04, data));
    let signed = sign(encrypted, &f.auth_key);
    let _ = usm.receive(&signed, f.now);
    let _ = decode_reply(&signed, Some(&f.notifier_keys));
});
