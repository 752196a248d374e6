//! The console's users and API tokens: `users.json` in the state directory (mode 0600,
//! written atomically). A user has an argon2id password hash (PHC string) and a role;
//! a token has a role and only the SHA-256 of its secret, which `tandem token add`
//! prints once. The CLI edits the file; the daemon reads it at each login and at each
//! request that carries a token, so a change holds at once without a reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::principal::{Principal, Role};

/// Errors of the user store.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not a user store: {1}")]
    Parse(String, serde_json::Error),
    #[error("`{0}` already exists")]
    Exists(String),
    #[error("no `{0}`")]
    NotFound(String),
    #[error("invalid name `{0}`: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadName(String),
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("password hash: {0}")]
    Hash(String),
}

/// The shortest password `tandem user add` takes.
pub const MIN_PASSWORD: usize = 8;

/// A token's secret starts with this, so it is recognisable in a script.
const TOKEN_PREFIX: &str = "tdm_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    role: Role,
    /// argon2id, PHC string format.
    hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    role: Role,
    /// SHA-256 of the secret, hex.
    sha256: String,
}

/// The contents of `users.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserStore {
    #[serde(default)]
    users: BTreeMap<String, User>,
    #[serde(default)]
    tokens: BTreeMap<String, Token>,
}

/// Where the store of a node with this state directory lives.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("users.json")
}

fn check_name(name: &str) -> Result<(), UsersError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    ok.then_some(())
        .ok_or_else(|| UsersError::BadName(name.to_string()))
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

impl UserStore {
    /// Reads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<UserStore, UsersError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| UsersError::Parse(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserStore::default()),
            Err(e) => Err(UsersError::Io(format!("read {}", path.display()), e)),
        }
    }

    /// Writes the store atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |e| UsersError::Io(format!("write {}", path.display()), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::config::secret::replace(path, &json).map_err(io)
    }

    /// Adds a user with an argon2id hash of `password`.
    pub fn add_user(&mut self, name: &str, role: Role, password: &str) -> Result<(), UsersError> {
        check_name(name)?;
        if self.users.contains_key(name) {
            return Err(UsersError::Exists(name.to_string()));
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(UsersError::ShortPassword);
        }
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| UsersError::Hash(e.to_string()))?;
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UsersError::Hash(e.to_string()))?
            .to_string();
        self.users.insert(name.to_string(), User { role, hash });
        Ok(())
    }

    /// Removes a user.
    pub fn remove_user(&mut self, name: &str) -> Result<(), UsersError> {
        self.users
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| UsersError::NotFound(name.to_string()))
    }

    /// Each user's name and role, by name.
    pub fn users(&self) -> Vec<(String, Role)> {
        self.users
            .iter()
            .map(|(n, u)| (n.clone(), u.role))
            .collect()
    }

    /// A user's role, if there is such a user.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.users.get(name).map(|u| u.role)
    }

    /// The user's role if `password` is theirs. An unknown user costs a hash too, so
    /// the answer's time does not tell which names exist.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Role> {
        let user = self.users.get(name);
        let hash = user.map_or(DUMMY_HASH, |u| u.hash.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|_| ok).map(|u| u.role)
    }

    /// Adds a token and returns its secret (shown once; only its SHA-256 is kept).
    pub fn add_token(&mut self, name: &str, role: Role) -> Result<String, UsersError> {
        check_name(name)?;
        if self.tokens.contains_key(name) {
            return Err(UsersError::Exists(name.to_string()));
        }
        let secret = format!("{TOKEN_PREFIX}{}", super::session::new_secret());
        let sha256 = sha256_hex(&secret);
        self.tokens.insert(name.to_string(), Token { role, sha256 });
        Ok(secret)
    }

    /// Removes a token.
    pub fn remove_token(&mut self, name: &str) -> Result<(), UsersError> {
        self.tokens
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| UsersError::NotFound(name.to_string()))
    }

    /// Each token's name and role, by name.
    pub fn tokens(&self) -> Vec<(String, Role)> {
        self.tokens
            .iter()
            .map(|(n, t)| (n.clone(), t.role))
            .collect()
    }

    /// Who a bearer token's secret acts for (`token NAME`), if it is a stored token.
    pub fn token_principal(&self, secret: &str) -> Option<Principal> {
        use subtle::ConstantTimeEq;
        let digest = sha256_hex(secret);
        self.tokens
            .iter()
            .find(|(_, t)| bool::from(t.sha256.as_bytes().ct_eq(digest.as_bytes())))
            .map(|(name, t)| Principal {
                name: format!("token {name}"),
                role: t.role,
                csrf: String::new(),
            })
    }
}

/// An argon2id hash of a random password, verified against for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Xr0P4y2u9JQOQv+0pWzIbtbmOy2kbzLhD0cYJzM3Kxw";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_logs_in_with_their_password_only() {
        let mut s = UserStore::default();
        s.add_user("ann", Role::Operator, "correct horse").unwrap();
        assert_eq!(
            s.check_password("ann", "correct horse"),
            Some(Role::Operator)
        );
        assert_eq!(s.check_password("ann", "wrong horse"), None);
        assert_eq!(s.check_password("bob", "correct horse"), None);
        assert!(s.users["ann"].hash.starts_with("$argon2id$"));
        assert!(matches!(
            s.add_user("ann", Role::Admin, "another one"),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            s.add_user("bob", Role::Admin, "short"),
            Err(UsersError::ShortPassword)
        ));
        assert!(matches!(
            s.add_user("a b", Role::Admin, "long enough"),
            Err(UsersError::BadName(_))
        ));
        s.remove_user("ann").unwrap();
        assert_eq!(s.check_password("ann", "correct horse"), None);
    }

    #[test]
    fn a_token_is_kept_as_its_digest_and_acts_with_its_role() {
        let mut s = UserStore::default();
        let secret = s.add_token("nagios", Role::Viewer).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(&secret), "the secret is not stored");
        let p = s.token_principal(&secret).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("token nagios", Role::Viewer));
        assert!(s.token_principal("tdm_wrong").is_none());
        assert_eq!(s.tokens(), [("nagios".to_string(), Role::Viewer)]);
        s.remove_token("nagios").unwrap();
        assert!(s.token_principal(&secret).is_none());
    }

    #[test]
    fn the_store_is_written_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        assert_eq!(UserStore::load(&path).unwrap(), UserStore::default());
        let mut s = UserStore::default();
        s.add_user("ann", Role::Admin, "correct horse").unwrap();
        s.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(UserStore::load(&path).unwrap(), s);
    }

    #[test]
    fn the_dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
