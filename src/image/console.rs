//! The appliance's console password: the serial console (ttyS0) and tty1 ask for
//! root's password (busybox `getty` and `login`), which is kept as a SHA-512 crypt
//! hash (`$6$...`, the `sha-crypt` crate; busybox's `login` checks the same format) in
//! `/data/console-password` (mode 0600) on the data partition.
//!
//! At every boot [`boot`] writes that hash into root's line of `/etc/passwd` (mode
//! 0600: root is the appliance's only account). The static busybox's `login` does not
//! read `/etc/shadow`; with the image's own `/etc/passwd` (`x`) no password opens the
//! console, so a boot that cannot set one leaves it locked. The file may be seeded
//! before the first boot like `tandem.toml` (`tandem console-password hash` prints the
//! line); without it, the first boot makes a random password, stores its hash and
//! returns it so that the console shows it once. `tandem console-password set` changes
//! it (both files).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the appliance keeps the hash (the data partition).
pub const HASH_FILE: &str = "/data/console-password";
/// The account file `login` reads.
pub const PASSWD: &str = "/etc/passwd";
/// The shortest password `set` and `hash` take.
pub const MIN_LEN: usize = 8;
/// Length of a generated password.
const GENERATED_LEN: usize = 16;
/// Characters of a generated password: no look-alikes (0/O, 1/l/I), easy to type on
/// a serial console.
const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// What can go wrong with the console password.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a console password hash: {why} (write one with `tandem console-password hash`)")]
    Malformed { path: PathBuf, why: String },
    #[error("the password must have at least {MIN_LEN} characters")]
    TooShort,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConsoleError + '_ {
    move |source| ConsoleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The SHA-512 crypt hash of `password` with a random salt.
pub fn hash(password: &str) -> Result<String, ConsoleError> {
    if password.chars().count() < MIN_LEN {
        return Err(ConsoleError::TooShort);
    }
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| ConsoleError::Hash(format!("{e:?}")))?;
    sha_crypt::sha512_simple(password, &params).map_err(|e| ConsoleError::Hash(format!("{e:?}")))
}

/// A SHA-512 crypt hash, split: `$6$[rounds=N$]SALT$DIGEST`.
struct Parsed<'a> {
    rounds: usize,
    salt: &'a str,
    digest: &'a str,
}

/// Splits `hash`; the reason when it is not a SHA-512 crypt hash.
fn split(hash: &str) -> Result<Parsed<'_>, String> {
    let rest = hash
        .strip_prefix("$6$")
        .ok_or("it must start with `$6$` (SHA-512 crypt)")?;
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let (n, rest) = r.split_once('$').ok_or("no salt after the rounds")?;
            (n.parse().map_err(|_| format!("rounds `{n}`"))?, rest)
        }
        None => (sha_crypt::ROUNDS_DEFAULT, rest),
    };
    let (salt, digest) = rest
        .split_once('$')
        .ok_or("no `$` between salt and digest")?;
    let crypt64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if salt.is_empty() || salt.len() > 16 || salt.contains(|c: char| c.is_whitespace()) {
        return Err("the salt must have 1 to 16 characters".into());
    }
    if digest.len() != 86 || !digest.chars().all(crypt64) {
        return Err("the digest must be 86 characters of crypt's base64".into());
    }
    Ok(Parsed {
        rounds,
        salt,
        digest,
    })
}

/// Whether `password` matches `hash` (compared in constant time); the reason when
/// `hash` is not a SHA-512 crypt hash.
pub fn verify(password: &str, hash: &str) -> Result<bool, String> {
    use subtle::ConstantTimeEq;
    let p = split(hash)?;
    let params = sha_crypt::Sha512Params::new(p.rounds).map_err(|e| format!("rounds: {e:?}"))?;
    let got = sha_crypt::sha512_crypt_b64(password.as_bytes(), p.salt.as_bytes(), &params)
        .map_err(|e| format!("{e:?}"))?;
    Ok(got.as_bytes().ct_eq(p.digest.as_bytes()).into())
}

/// The hash in a seeded `console-password` file: its one line that is not blank or a
/// `#` comment, a SHA-512 crypt hash (`$6$[rounds=N$]SALT$HASH`, as
/// `tandem console-password hash`, `mkpasswd -m sha-512` or `openssl passwd -6` print).
pub fn parse_seed(text: &str) -> Result<String, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("the file holds no hash")?;
    if lines.next().is_some() {
        return Err("more than one hash".into());
    }
    if line.contains(':') {
        return Err("a `:` would break /etc/passwd".into());
    }
    // Checking any password against it parses it all (salt, rounds, digest).
    verify("", line)?;
    Ok(line.to_string())
}

/// A random password of [`GENERATED_LEN`] characters from [`ALPHABET`].
pub fn generate_password() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..GENERATED_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `/etc/passwd` with root's password.
pub fn passwd_text(hash: &str) -> String {
    format!("root:{hash}:0:0:root:/root:/bin/sh\n")
}

/// Writes `text` to `path` with mode 0600, durably: a temporary file beside it,
/// synced, renamed over it.
fn write_private(path: &Path, text: &str) -> Result<(), ConsoleError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// What [`boot`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The hash was there (seeded, or made at an earlier boot).
    Kept,
    /// First boot without a seed: this password was made; show it once.
    Generated(String),
}

/// At boot: root's password in `passwd` from the hash in `file`, made first (a random
/// password) when there is none. A malformed seed is an error: the console then keeps
/// asking for a password no one has, rather than opening without one.
pub fn boot(file: &Path, passwd: &Path) -> Result<Boot, ConsoleError> {
    let (hash, outcome) = match std::fs::read_to_string(file) {
        Ok(text) => {
            let hash = parse_seed(&text).map_err(|why| ConsoleError::Malformed {
                path: file.to_path_buf(),
                why,
            })?;
            (hash, Boot::Kept)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = generate_password();
            let hash = hash(&password)?;
            write_private(file, &format!("{hash}\n"))?;
            (hash, Boot::Generated(password))
        }
        Err(e) => return Err(io_err(file)(e)),
    };
    write_private(passwd, &passwd_text(&hash))?;
    Ok(outcome)
}

/// `tandem console-password set`: the new password's hash in `file` and `passwd`.
pub fn set(password: &str, file: &Path, passwd: &Path) -> Result<(), ConsoleError> {
    let hash = hash(password)?;
    write_private(file, &format!("{hash}\n"))?;
    write_private(passwd, &passwd_text(&hash))
}

/// The console's note at the first boot: the password, once, and that it is required.
pub fn first_boot_note(password: &str) -> String {
    format!(
        "*****************************************************************************\n \
         tandem: the console (ttyS0, tty1) requires a password. Log in as root with:\n\n     \
         {password}\n\n \
         It is shown only this once (kept hashed in {HASH_FILE}). Change it with\n \
         `tandem console-password set` (reads the new one on standard input).\n\
         *****************************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert_eq!(verify("correct horse", &h), Ok(true));
        assert_eq!(verify("correct horsE", &h), Ok(false));
        assert!(matches!(hash("short"), Err(ConsoleError::TooShort)));
        // The hash of the same password differs each time (a random salt).
        assert_ne!(hash("correct horse").unwrap(), h);
    }

    #[test]
    fn a_hash_made_elsewhere_verifies() {
        // busybox `mkpasswd -m sha512 -S abcdefgh secret` (and Python's crypt).
        let h = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.";
        assert_eq!(verify("secret", h), Ok(true));
        assert_eq!(parse_seed(&format!("# seeded\n\n{h}\n")).as_deref(), Ok(h));
    }

    #[test]
    fn a_seed_that_is_not_one_hash_is_refused() {
        let h = hash("correct horse").unwrap();
        for (text, why) in [
            ("", "no hash"),
            ("# only a comment\n", "no hash"),
            ("correct horse\n", "start with"),
            ("$1$abc$def\n", "$6$"),
            ("$6$abc$short\n", "86 characters"),
            ("$6$rounds=x$abc$def\n", "rounds `x`"),
            (&format!("{h}\n{h}\n"), "more than one"),
            (&format!("root:{h}:0:0\n"), "`:`"),
        ] {
            let e = parse_seed(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn first_boot_makes_a_password_once_and_later_boots_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, passwd) = (
            dir.path().join("console-password"),
            dir.path().join("passwd"),
        );
        let Boot::Generated(pw) = boot(&file, &passwd).unwrap() else {
            panic!("no password made")
        };
        assert_eq!(pw.len(), GENERATED_LEN);
        assert!(pw.bytes().all(|c| ALPHABET.contains(&c)), "{pw}");
        let stored = std::fs::read_to_string(&file).unwrap();
        assert!(!stored.contains(&pw), "only the hash is stored");
        assert_eq!(verify(&pw, stored.trim()), Ok(true));
        for p in [&file, &passwd] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let line = std::fs::read_to_string(&passwd).unwrap();
        assert_eq!(
            line,
            format!("root:{}:0:0:root:/root:/bin/sh\n", stored.trim())
        );
        // The next boot keeps it; `set` replaces it in both files.
        assert_eq!(boot(&file, &passwd).unwrap(), Boot::Kept);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), stored);
        set("a new password", &file, &passwd).unwrap();
        let new = std::fs::read_to_string(&file).unwrap();
        assert_eq!(verify("a new password", new.trim()), Ok(true));
        assert!(std::fs::read_to_string(&passwd)
            .unwrap()
            .contains(new.trim()));
        // A broken seed is an error and leaves the account file as it was.
        std::fs::write(&file, "not a hash\n").unwrap();
        assert!(matches!(
            boot(&file, &passwd),
            Err(ConsoleError::Malformed { .. })
        ));
        assert!(std::fs::read_to_string(&passwd)
            .unwrap()
            .contains(new.trim()));
    }

    #[test]
    fn the_first_boot_note_shows_the_password_and_says_it_is_required() {
        let note = first_boot_note("abcDEF234");
        assert!(note.contains("\n     abcDEF234\n"), "{note}");
        assert!(note.contains("requires a password"), "{note}");
    }
}
