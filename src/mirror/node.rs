//! The mirrors one node holds: opened from `[[mirror]]` at daemon start (every copy
//! starts as secondary and connects to its peers), each with the NBD front end that its
//! `mirror` resource serves while this node is primary, and its write-rate history
//! ([`RateLog`], for `tandem mirror plan`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, OnNoQuorum, ResourceKind};
use crate::event::EventLog;
use crate::mirror::nbd::metrics::NbdMetrics;
use crate::mirror::nbd::ServerConfig;
use crate::mirror::rate_log::RateLog;
use crate::mirror::replica::{Mirror, MirrorError, MirrorSpec};
use crate::mirror::status::MirrorStatus;

/// One mirror this node holds a copy of.
#[derive(Clone)]
pub struct LocalMirror {
    pub mirror: Arc<Mirror>,
    /// Where the primary serves the volume.
    pub nbd: ServerConfig,
    /// The group and resource that own the volume, if any.
    pub owner: Option<(String, String)>,
    /// What a lost lease's fast stop does with its writes.
    pub on_no_quorum: OnNoQuorum,
    /// The application's writes per minute, sampled while the daemon runs.
    pub rates: Arc<RateLog>,
}

/// Every mirror of this node, by name.
pub type LocalMirrors = BTreeMap<String, LocalMirror>;

/// The NBD Unix socket of a mirror when the config names none.
pub fn default_socket(state_dir: &Path, name: &str) -> std::path::PathBuf {
    state_dir.join(format!("nbd-{name}.sock"))
}

/// Opens every mirror `local` holds a copy of.
pub async fn open_all(
    cfg: &Config,
    local: &str,
    key: &[u8],
    events: &EventLog,
    nbd_metrics: &dyn Fn(&str) -> Arc<NbdMetrics>,
) -> Result<LocalMirrors, MirrorError> {
    let mut out = LocalMirrors::new();
    for m in &cfg.mirrors {
        if !m.addresses.contains_key(local) {
            continue;
        }
        let mut spec = MirrorSpec::from_config(m, cfg, local, key)?;
        spec.fencing = true;
        let rates = Arc::new(RateLog::open(&spec.meta_dir, &m.name));
        let mirror = Mirror::open(spec, events.clone()).await?;
        rates.start(Arc::clone(&mirror));
        for (peer, link) in m.links_of(local) {
            mirror.set_pause_schedule(peer, link.pause_during.clone());
        }
        let owner = cfg.groups.iter().find_map(|g| {
            g.resources.iter().find_map(|r| match &r.kind {
                ResourceKind::Mirror { mirror } if mirror == &m.name => {
                    Some((g.name.clone(), r.name.clone()))
                }
                _ => None,
            })
        });
        let nbd = ServerConfig {
            name: m.name.clone(),
            description: format!("Tandem mirror {}", m.name),
            unix: Some(
                m.nbd_socket
                    .clone()
                    .unwrap_or_else(|| default_socket(&cfg.cluster.state_dir, &m.name)),
            ),
            tcp: m.nbd_tcp,
            metrics: Some(nbd_metrics(&m.name)),
        };
        out.insert(
            m.name.clone(),
            LocalMirror {
                mirror,
                nbd,
                owner,
                on_no_quorum: m.on_no_quorum,
                rates,
            },
        );
    }
    Ok(out)
}

/// The status of every mirror, with its owning group and resource.
pub fn statuses(mirrors: &LocalMirrors) -> Vec<MirrorStatus> {
    mirrors
        .values()
        .map(|m| {
            let mut s = m.mirror.status();
            if let Some((g, r)) = &m.owner {
                s.group = Some(g.clone());
                s.resource = Some(r.clone());
            }
            s
        })
        .collect()
}
