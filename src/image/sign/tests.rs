//! Signing and verifying images, and every way a signature can fail.

use std::os::unix::fs::PermissionsExt;

use super::*;

struct Keys {
    _dir: tempfile::TempDir,
    image: PathBuf,
    secret: PathBuf,
    public: PathBuf,
    other_secret: PathBuf,
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("tandem.img.zst");
    std::fs::write(&image, vec![7u8; 3 << 20]).unwrap();
    let (secret, public) = generate_key();
    let (other, _) = generate_key();
    write_private(&d.join("release.key"), &format!("{secret}\n"));
    write_private(&d.join("other.key"), &other);
    std::fs::write(
        d.join("update.pub"),
        format!("# release key\n{public}  # since 2026\n\n"),
    )
    .unwrap();
    Keys {
        image,
        secret: d.join("release.key"),
        public: d.join("update.pub"),
        other_secret: d.join("other.key"),
        _dir: dir,
    }
}

#[test]
fn a_signed_image_verifies_and_an_unsigned_one_is_refused() {
    let k = keys();
    let trusted = trusted_keys(&k.public).unwrap();
    assert!(matches!(
        verify(&k.image, &trusted),
        Err(SignError::Unsigned(_))
    ));
    let sig = sign(&k.image, &k.secret).unwrap();
    assert_eq!(sig, signature_path(&k.image));
    assert_eq!(verify(&k.image, &trusted).unwrap(), trusted[0]);
}

#[test]
fn an_altered_image_or_signature_is_refused() {
    let k = keys();
    let trusted = trusted_keys(&k.public).unwrap();
    let sig_path = sign(&k.image, &k.secret).unwrap();
    let good = std::fs::read_to_string(&sig_path).unwrap();

    // One byte of the image changed.
    let mut bytes = std::fs::read(&k.image).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(&k.image, &bytes).unwrap();
    assert!(matches!(
        verify(&k.image, &trusted),
        Err(SignError::DigestMismatch(_))
    ));
    // The digest line rewritten to match the altered image.
    let mut forged = SignatureFile::parse(&good).unwrap();
    forged.sha256 = digest_file(&k.image).unwrap();
    std::fs::write(&sig_path, forged.render()).unwrap();
    assert!(matches!(
        verify(&k.image, &trusted),
        Err(SignError::BadSignature)
    ));
    // Signed properly, but by a key this node does not trust.
    sign(&k.image, &k.other_secret).unwrap();
    let e = verify(&k.image, &trusted).unwrap_err();
    assert!(matches!(e, SignError::UntrustedKey(_)), "{e}");
}

#[test]
fn signature_files_round_trip_and_malformed_ones_say_why() {
    let sig = SignatureFile {
        key: [1; 32],
        sha256: [2; 32],
        signature: [3; 64],
    };
    assert_eq!(SignatureFile::parse(&sig.render()).unwrap(), sig);
    let good = sig.render();
    for (text, why) in [
        (String::new(), "first line"),
        (good.replace("v1", "v2"), "first line"),
        (good.replace("sha256", "md5"), "unknown field"),
        (good.replace("key 01", "key 0"), "key"),
        (
            good.replace("\nsignature ", "\nsignature 00"),
            "wrong length",
        ),
        (format!("{good}key {}\n", hex::encode([1; 32])), "twice"),
        (
            good.lines().take(3).collect::<Vec<_>>().join("\n"),
            "no `signature`",
        ),
    ] {
        let e = SignatureFile::parse(&text).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
}

#[test]
fn keys_are_checked_before_use() {
    let k = keys();
    std::fs::set_permissions(&k.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = sign(&k.image, &k.secret).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    write_private(&k.secret, "not hex");
    assert!(matches!(
        sign(&k.image, &k.secret),
        Err(SignError::BadKey { .. })
    ));
    std::fs::write(&k.public, "# nothing yet\n").unwrap();
    assert!(matches!(
        trusted_keys(&k.public),
        Err(SignError::NoTrustedKey(_))
    ));
    std::fs::write(&k.public, "abcd\n").unwrap();
    assert!(matches!(
        trusted_keys(&k.public),
        Err(SignError::BadKey { .. })
    ));
}
