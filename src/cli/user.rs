//! `tandem user ...` and `tandem token ...`: the web console's users and the API's
//! tokens, edited in the node's `users.json` (`console::users`) directly; the daemon
//! reads the file at each login and each token request, so no reload is needed.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::Config;
use crate::console::gate::role_name;
use crate::console::principal::Role;
use crate::console::users::{store_path, UserStore, UsersError};

/// `tandem user ...`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a console user with a role; the password is asked for twice on a
    /// terminal, or read as one line with --password-stdin.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the users and their roles.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a user; their console sessions end at their next request.
    Remove {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `tandem token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Add an API token with a role and print its secret (shown this once).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the tokens and their roles (never their secrets).
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a token: requests with it are refused from now on.
    Remove {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Errors of the user and token commands.
#[derive(Debug, thiserror::Error)]
pub enum UserCmdError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("{0}")]
    Password(String),
}

fn store_of(config: &Path) -> Result<PathBuf, UserCmdError> {
    Ok(store_path(&Config::load(config)?.cluster.state_dir))
}

/// Runs a user command; `password` reads the password (`true`: from standard input).
pub fn user(
    cmd: UserCmd,
    password: impl FnOnce(bool) -> Result<String, String>,
) -> Result<String, UserCmdError> {
    match cmd {
        UserCmd::Add {
            name,
            role,
            password_stdin,
            config,
        } => {
            let path = store_of(&config)?;
            let pw = password(password_stdin).map_err(UserCmdError::Password)?;
            Ok(edit_store(&path, |s| {
                s.add_user(&name, role, &pw)
                    .map(|()| format!("user `{name}` added ({})\n", role_name(role)))
            })?)
        }
        UserCmd::List { config } => {
            let s = UserStore::load(&store_of(&config)?)?;
            Ok(listing(&s.users()))
        }
        UserCmd::Remove { name, config } => Ok(edit_store(&store_of(&config)?, |s| {
            s.remove_user(&name)
                .map(|()| format!("user `{name}` removed\n"))
        })?),
    }
}

/// Runs a token command.
pub fn token(cmd: TokenCmd) -> Result<String, UserCmdError> {
    match cmd {
        TokenCmd::Add { name, role, config } => Ok(edit_store(&store_of(&config)?, |s| {
            s.add_token(&name, role).map(|secret| {
                format!(
                    "{secret}\n# token `{name}` ({}): shown this once; send it as \
                     `Authorization: Bearer <token>`\n",
                    role_name(role)
                )
            })
        })?),
        TokenCmd::List { config } => {
            let s = UserStore::load(&store_of(&config)?)?;
            Ok(listing(&s.tokens()))
        }
        TokenCmd::Remove { name, config } => Ok(edit_store(&store_of(&config)?, |s| {
            s.remove_token(&name)
                .map(|()| format!("token `{name}` removed\n"))
        })?),
    }
}

fn edit_store(
    path: &Path,
    edit: impl FnOnce(&mut UserStore) -> Result<String, UsersError>,
) -> Result<String, UsersError> {
    let mut store = UserStore::load(path)?;
    let out = edit(&mut store)?;
    store.save(path)?;
    Ok(out)
}

/// `NAME  ROLE` lines, the names padded to one width.
fn listing(rows: &[(String, Role)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(n, r)| format!("{n:width$}  {}\n", role_name(*r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_are_added_listed_and_removed_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tandem.toml");
        let text = format!(
            "[cluster]\nname = \"t\"\nkey = \"0123456789abcdef\"\nstate_dir = \"{}\"\n\
             [[node]]\nname = \"a\"\npriority = 1\naddresses = {{ hb1 = \"10.0.0.1\" }}\n\
             [heartbeat]\npaths = [\"hb1\"]\n",
            dir.path().display()
        );
        std::fs::write(&cfg, text).unwrap();
        let add = UserCmd::Add {
            name: "ann".into(),
            role: Role::Operator,
            password_stdin: true,
            config: cfg.clone(),
        };
        let out = user(add, |stdin| {
            assert!(stdin);
            Ok("correct horse".into())
        })
        .unwrap();
        assert_eq!(out, "user `ann` added (operator)\n");
        let list = UserCmd::List {
            config: cfg.clone(),
        };
        assert_eq!(user(list, |_| unreachable!()).unwrap(), "ann  operator\n");
        let secret = token(TokenCmd::Add {
            name: "nagios".into(),
            role: Role::Viewer,
            config: cfg.clone(),
        })
        .unwrap();
        let secret = secret.lines().next().unwrap();
        let store = UserStore::load(&store_path(dir.path())).unwrap();
        assert_eq!(
            store.check_password("ann", "correct horse"),
            Some(Role::Operator)
        );
        assert_eq!(store.token_principal(secret).unwrap().role, Role::Viewer);
        let tl = token(TokenCmd::List {
            config: cfg.clone(),
        })
        .unwrap();
        assert_eq!(tl, "nagios  viewer\n");
        let rm = UserCmd::Remove {
            name: "ann".into(),
            config: cfg.clone(),
        };
        user(rm, |_| unreachable!()).unwrap();
        let again = UserCmd::Remove {
            name: "ann".into(),
            config: cfg,
        };
        assert!(matches!(
            user(again, |_| unreachable!()),
            Err(UserCmdError::Users(UsersError::NotFound(_)))
        ));
    }
}
