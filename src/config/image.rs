//! `[image]`: where this node's appliance boot slots are, for `POST /v1/image/update`
//! (the daemon's side of `tandem image update URL`). Every key has the appliance's
//! default, so the section is needed only elsewhere (tests, a non-standard ESP).

use std::path::PathBuf;

use serde::Deserialize;

/// `[image]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The mounted ESP holding the boot slots.
    #[serde(default = "default_esp")]
    pub esp: PathBuf,
    /// The public keys trusted for updates (hex, one per line).
    #[serde(default = "default_trusted_keys")]
    pub trusted_keys: PathBuf,
    /// The running slot (`a` or `b`); by default `tandem.slot=` of the kernel command
    /// line.
    #[serde(default)]
    pub slot: Option<crate::image::Slot>,
    /// CA certificates (PEM) trusted for `https://` image URLs, instead of the
    /// Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_esp() -> PathBuf {
    PathBuf::from(crate::image::DEFAULT_ESP)
}

fn default_trusted_keys() -> PathBuf {
    PathBuf::from(crate::image::sign::TRUSTED_KEYS)
}

impl Default for ImageConfig {
    fn default() -> ImageConfig {
        ImageConfig {
            esp: default_esp(),
            trusted_keys: default_trusted_keys(),
            slot: None,
            ca_file: None,
        }
    }
}
