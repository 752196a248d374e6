//! Signed images: an ed25519 signature (ed25519-dalek) over the SHA-256 of the image
//! file as distributed, in a detached `IMAGE.sig` next to it. The appliance trusts the
//! public keys in `/etc/tandem/update.pub` (put there by `image/build.sh --sign KEY`)
//! and `tandem image update` refuses an image without a signature by one of them.
//!
//! `.sig` format (text, one field per line, unknown lines refused):
//! `tandem-image-signature v1`, `key <public key, hex>`, `sha256 <hex>`,
//! `signature <hex>`. The signed message is [`CONTEXT`] followed by the digest, so a
//! signature over anything else never verifies as an image signature.

use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// Domain separation of the signed message.
pub const CONTEXT: &[u8] = b"tandem image signature v1\0";
/// Where the appliance keeps the public keys it trusts for updates.
pub const TRUSTED_KEYS: &str = "/etc/tandem/update.pub";
const MAGIC: &str = "tandem-image-signature v1";

/// Why an image's signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0}: not signed (no {0}.sig next to it); images are signed with image/build.sh --sign KEY"
    )]
    Unsigned(PathBuf),
    #[error("{path}: not a signature file: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("{path}: not a key file: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("no trusted public key in {0}: this node accepts no update (build with image/build.sh --sign KEY)")]
    NoTrustedKey(PathBuf),
    #[error("signed by key {0}, which this node does not trust")]
    UntrustedKey(String),
    #[error("{0}: the file is not the one that was signed (its SHA-256 differs)")]
    DigestMismatch(PathBuf),
    #[error("the signature does not verify: the image or its .sig was altered")]
    BadSignature,
}

impl SignError {
    /// The image itself is refused (unsigned, or not by a trusted key, or altered), as
    /// opposed to this node being unable to check (its key file, an I/O error).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SignError::Unsigned(_)
                | SignError::Malformed { .. }
                | SignError::UntrustedKey(_)
                | SignError::DigestMismatch(_)
                | SignError::BadSignature
        )
    }
}

/// A parsed `.sig` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    pub key: [u8; 32],
    pub sha256: [u8; 32],
    pub signature: [u8; 64],
}

impl SignatureFile {
    /// Parses `.sig` text; the reason when it is not one.
    pub fn parse(text: &str) -> Result<SignatureFile, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(MAGIC) {
            return Err(format!("the first line must be `{MAGIC}`"));
        }
        let (mut key, mut sha256, mut signature) = (None, None, None);
        for line in lines {
            let (field, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("`{line}` is not `FIELD VALUE`"))?;
            let slot: &mut Option<Vec<u8>> = match field {
                "key" => &mut key,
                "sha256" => &mut sha256,
                "signature" => &mut signature,
                other => return Err(format!("unknown field `{other}`")),
            };
            if slot.is_some() {
                return Err(format!("`{field}` given twice"));
            }
            *slot = Some(hex::decode(value.trim()).map_err(|e| format!("{field}: {e}"))?);
        }
        Ok(SignatureFile {
            key: fixed(key, "key")?,
            sha256: fixed(sha256, "sha256")?,
            signature: fixed(signature, "signature")?,
        })
    }

    /// The `.sig` text.
    pub fn render(&self) -> String {
        format!(
            "{MAGIC}\nkey {}\nsha256 {}\nsignature {}\n",
            hex::encode(self.key),
            hex::encode(self.sha256),
            hex::encode(self.signature)
        )
    }
}

/// A field's bytes as a fixed-size array: the reason when missing or of another length.
fn fixed<const N: usize>(v: Option<Vec<u8>>, field: &str) -> Result<[u8; N], String> {
    v.ok_or_else(|| format!("no `{field}` line"))?
        .try_into()
        .map_err(|_| format!("`{field}` has the wrong length"))
}

/// `IMAGE.sig`.
pub fn signature_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// A new signing key: the 32-byte secret as hex (for a file of mode 0600) and the
/// public key as hex.
pub fn generate_key() -> (String, String) {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = SigningKey::from_bytes(&seed);
    (
        hex::encode(seed),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

/// The secret key in `key_file` (hex, mode 0600).
fn signing_key(key_file: &Path) -> Result<SigningKey, SignError> {
    let secret = crate::config::secret::read(key_file).map_err(|source| SignError::Io {
        path: key_file.to_path_buf(),
        source,
    })?;
    let seed: [u8; 32] = hex::decode(&secret)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| SignError::BadKey {
            path: key_file.to_path_buf(),
            why: "expected 64 hex digits (tandem image keygen writes one)".into(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key (hex) of the secret key in `key_file`.
pub fn public_key(key_file: &Path) -> Result<String, SignError> {
    Ok(hex::encode(
        signing_key(key_file)?.verifying_key().to_bytes(),
    ))
}

/// Signs `image` with the secret key in `key_file` (hex, mode 0600); writes and
/// returns `IMAGE.sig`.
pub fn sign(image: &Path, key_file: &Path) -> Result<PathBuf, SignError> {
    let key = signing_key(key_file)?;
    let sha256 = digest_file(image)?;
    let sig = SignatureFile {
        key: key.verifying_key().to_bytes(),
        sha256,
        signature: key.sign(&message(&sha256)).to_bytes(),
    };
    let out = signature_path(image);
    std::fs::write(&out, sig.render()).map_err(|source| SignError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// The public keys (hex, one per line, `#` comments) in `path`.
pub fn trusted_keys(path: &Path) -> Result<Vec<VerifyingKey>, SignError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |why: String| SignError::BadKey {
        path: path.to_path_buf(),
        why,
    };
    let mut keys = Vec::new();
    for line in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
    {
        if line.is_empty() {
            continue;
        }
        let bytes: [u8; 32] = hex::decode(line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("`{line}` is not 64 hex digits")))?;
        keys.push(VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?);
    }
    if keys.is_empty() {
        return Err(SignError::NoTrustedKey(path.to_path_buf()));
    }
    Ok(keys)
}

/// Checks that `image` carries a valid signature (in `IMAGE.sig`) by one of
/// `trusted`; the public key that signed it.
pub fn verify(image: &Path, trusted: &[VerifyingKey]) -> Result<VerifyingKey, SignError> {
    let sig_path = signature_path(image);
    let text = match std::fs::read_to_string(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignError::Unsigned(image.to_path_buf()))
        }
        Err(source) => {
            return Err(SignError::Io {
                path: sig_path,
                source,
            })
        }
    };
    let sig = SignatureFile::parse(&text).map_err(|why| SignError::Malformed {
        path: sig_path.clone(),
        why,
    })?;
    let key = trusted
        .iter()
        .find(|k| k.to_bytes() == sig.key)
        .ok_or_else(|| SignError::UntrustedKey(hex::encode(sig.key)))?;
    key.verify(
        &message(&sig.sha256),
        &Signature::from_bytes(&sig.signature),
    )
    .map_err(|_| SignError::BadSignature)?;
    if digest_file(image)? != sig.sha256 {
        return Err(SignError::DigestMismatch(image.to_path_buf()));
    }
    Ok(*key)
}

fn message(sha256: &[u8; 32]) -> Vec<u8> {
    [CONTEXT, sha256].concat()
}

fn digest_file(path: &Path) -> Result<[u8; 32], SignError> {
    let io = |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests;
