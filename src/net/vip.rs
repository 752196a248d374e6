//! Pure (sans-IO) reconciliation of one virtual IP address.
//!
//! Given what the address *should* be doing ([`VipSpec`] + `want_up`) and
//! what the kernel currently shows ([`Observed`]), [`reconcile`] returns the
//! list of actions that converge the two, plus a summary [`VipOutcome`].
//!
//! Rules when the VIP should be up:
//! * it lives on exactly one interface;
//! * a current holder whose link is usable (admin up + carrier) keeps it
//!   (no churn, even if a more preferred interface is usable);
//! * otherwise it goes to the first usable interface in preference order
//!   ("IP local recovery": move to a backup NIC on the same host and
//!   re-announce) and the outcome is [`VipOutcome::Moved`] if some other
//!   interface held it before;
//! * it is removed from every other interface (unusable or not listed);
//! * with no usable interface the outcome is
//!   [`VipOutcome::NoUsableInterface`] (the caller fails the group over) and
//!   the address is removed everywhere so it cannot linger on a dead link.
//!
//! When it should be down it is removed from every holder.
//!
//! Actions are ordered: all `Remove`s first, then `Add`, then `Announce`
//! (every `Add` is followed by an `Announce` on the same interface).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::netlink::LinkState;

/// Desired placement of one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub addr: IpAddr,
    pub prefix: u8,
    /// Candidate interfaces: preferred first, then backups.
    pub interfaces: Vec<String>,
}

/// The part of a link's state that matters for VIP placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkHealth {
    pub admin_up: bool,
    pub carrier: bool,
}

impl LinkHealth {
    /// Admin up and carrier present.
    pub fn usable(&self) -> bool {
        self.admin_up && self.carrier
    }
}

impl From<&LinkState> for LinkHealth {
    fn from(s: &LinkState) -> Self {
        LinkHealth {
            admin_up: s.exists && s.admin_up,
            carrier: s.exists && s.carrier,
        }
    }
}

/// What the kernel currently shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Health per interface name; an interface missing from the map is
    /// treated as absent (unusable).
    pub links: BTreeMap<String, LinkHealth>,
    /// Interfaces currently holding the address (order irrelevant,
    /// duplicates tolerated).
    pub holders: Vec<String>,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipAction {
    Add { ifname: String },
    Remove { ifname: String },
    Announce { ifname: String },
}

/// Summary of the reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipOutcome {
    /// Converged without relocating (includes plain add and plain removal).
    Ok,
    /// The address moved from one interface to another (local recovery).
    Moved { from: String, to: String },
    /// The VIP should be up but no candidate interface is usable.
    NoUsableInterface,
}

/// Compute the actions that bring `observed` in line with `spec`/`want_up`.
/// Pure and total: any input yields a well-formed answer.
pub fn reconcile(
    spec: &VipSpec,
    want_up: bool,
    observed: &Observed,
) -> (Vec<VipAction>, VipOutcome) {
    // Deduplicate while preserving order.
    let mut holders: Vec<&str> = Vec::new();
    for h in &observed.holders {
        if !holders.contains(&h.as_str()) {
            holders.push(h);
        }
    }
    let mut candidates: Vec<&str> = Vec::new();
    for i in &spec.interfaces {
        if !candidates.contains(&i.as_str()) {
            candidates.push(i);
        }
    }
    let usable = |name: &str| observed.links.get(name).is_some_and(LinkHealth::usable);
    let remove_all_but = |keep: Option<&str>| -> Vec<VipAction> {
        holders
            .iter()
            .filter(|h| Some(**h) != keep)
            .map(|h| VipAction::Remove {
                ifname: (*h).to_owned(),
            })
            .collect()
    };

    if !want_up {
        return (remove_all_but(None), VipOutcome::Ok);
    }

    // A usable holder among the candidates keeps the address; if several
    // hold it, the most preferred one wins.
    if let Some(keep) = candidates
        .iter()
        .copied()
        .find(|c| holders.contains(c) && usable(c))
    {
        return (remove_all_but(Some(keep)), VipOutcome::Ok);
    }

    let Some(target) = candidates.iter().copied().find(|c| usable(c)) else {
        return (remove_all_but(None), VipOutcome::NoUsableInterface);
    };

    let mut actions = remove_all_but(None);
    actions.push(VipAction::Add {
        ifname: target.to_owned(),
    });
    actions.push(VipAction::Announce {
        ifname: target.to_owned(),
    });
    // Report the most preferred previous holder as the origin; a holder
    // outside the candidate list counts if it is the only one.
    let from = candidates
        .iter()
        .copied()
        .find(|c| holders.contains(c))
        .or_else(|| holders.first().copied());
    let outcome = match from {
        Some(from) => VipOutcome::Moved {
            from: from.to_owned(),
            to: target.to_owned(),
        },
        None => VipOutcome::Ok,
    };
    (actions, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: LinkHealth = LinkHealth {
        admin_up: true,
        carrier: true,
    };
    const NOCARRIER: LinkHealth = LinkHealth {
        admin_up: true,
        carrier: false,
    };
    const ADMINDOWN: LinkHealth = LinkHealth {
        admin_up: false,
        carrier: false,
    };
    /// Carrier without admin up cannot happen on Linux, but must still be
    /// treated as unusable.
    const ODD: LinkHealth = LinkHealth {
        admin_up: false,
        carrier: true,
    };

    fn spec(ifs: &[&str]) -> VipSpec {
        VipSpec {
            addr: "192.0.2.10".parse().unwrap(),
            prefix: 24,
            interfaces: ifs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn obs(links: &[(&str, LinkHealth)], holders: &[&str]) -> Observed {
        Observed {
            links: links.iter().map(|(n, h)| (n.to_string(), *h)).collect(),
            holders: holders.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn add(i: &str) -> VipAction {
        VipAction::Add { ifname: i.into() }
    }
    fn rm(i: &str) -> VipAction {
        VipAction::Remove { ifname: i.into() }
    }
    fn ann(i: &str) -> VipAction {
        VipAction::Announce { ifname: i.into() }
    }
    fn moved(f: &str, t: &str) -> VipOutcome {
        VipOutcome::Moved {
            from: f.into(),
            to: t.into(),
        }
    }

    struct Case {
        name: &'static str,
        ifs: &'static [&'static str],
        want_up: bool,
        links: &'static [(&'static str, LinkHealth)],
        holders: &'static [&'static str],
        actions: Vec<VipAction>,
        outcome: VipOutcome,
    }

    #[test]
    fn table() {
        use VipOutcome::{NoUsableInterface as NoIf, Ok as Fine};
        let cases = vec![
            Case {
                name: "fresh add on preferred",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", UP), ("eth1", UP)],
                holders: &[],
                actions: vec![add("eth0"), ann("eth0")],
                outcome: Fine,
            },
            Case {
                name: "fresh add skips dead preferred",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", UP)],
                holders: &[],
                actions: vec![add("eth1"), ann("eth1")],
                outcome: Fine,
            },
            Case {
                name: "fresh add skips missing preferred",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth1", UP)],
                holders: &[],
                actions: vec![add("eth1"), ann("eth1")],
                outcome: Fine,
            },
            Case {
                name: "steady state on preferred",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", UP), ("eth1", UP)],
                holders: &["eth0"],
                actions: vec![],
                outcome: Fine,
            },
            Case {
                name: "stays on usable backup (no failback churn)",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", UP), ("eth1", UP)],
                holders: &["eth1"],
                actions: vec![],
                outcome: Fine,
            },
            Case {
                name: "local recovery: carrier lost",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0"), add("eth1"), ann("eth1")],
                outcome: moved("eth0", "eth1"),
            },
            Case {
                name: "local recovery: admin down",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", ADMINDOWN), ("eth1", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0"), add("eth1"), ann("eth1")],
                outcome: moved("eth0", "eth1"),
            },
            Case {
                name: "local recovery: holder vanished from links",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth1", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0"), add("eth1"), ann("eth1")],
                outcome: moved("eth0", "eth1"),
            },
            Case {
                name: "local recovery back to preferred when backup dies",
                ifs: &["eth0", "eth1", "eth2"],
                want_up: true,
                links: &[("eth0", UP), ("eth1", NOCARRIER), ("eth2", UP)],
                holders: &["eth1"],
                actions: vec![rm("eth1"), add("eth0"), ann("eth0")],
                outcome: moved("eth1", "eth0"),
            },
            Case {
                name: "third choice",
                ifs: &["eth0", "eth1", "eth2"],
                want_up: true,
                links: &[("eth0", ADMINDOWN), ("eth1", NOCARRIER), ("eth2", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0"), add("eth2"), ann("eth2")],
                outcome: moved("eth0", "eth2"),
            },
            Case {
                name: "carrier without admin is unusable",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", ODD), ("eth1", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0"), add("eth1"), ann("eth1")],
                outcome: moved("eth0", "eth1"),
            },
            Case {
                name: "no usable interface, held on dead link",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", ADMINDOWN)],
                holders: &["eth0"],
                actions: vec![rm("eth0")],
                outcome: NoIf,
            },
            Case {
                name: "no usable interface, not held",
                ifs: &["eth0"],
                want_up: true,
                links: &[("eth0", NOCARRIER)],
                holders: &[],
                actions: vec![],
                outcome: NoIf,
            },
            Case {
                name: "empty interface list",
                ifs: &[],
                want_up: true,
                links: &[("eth0", UP)],
                holders: &[],
                actions: vec![],
                outcome: NoIf,
            },
            Case {
                name: "empty interface list, stray holder removed",
                ifs: &[],
                want_up: true,
                links: &[("eth0", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0")],
                outcome: NoIf,
            },
            Case {
                name: "duplicate holders: keep usable one, drop dead one",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", UP)],
                holders: &["eth0", "eth1"],
                actions: vec![rm("eth0")],
                outcome: Fine,
            },
            Case {
                name: "both usable holders: keep most preferred",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", UP), ("eth1", UP)],
                holders: &["eth1", "eth0"],
                actions: vec![rm("eth1")],
                outcome: Fine,
            },
            Case {
                name: "stray holder outside the spec is removed",
                ifs: &["eth0"],
                want_up: true,
                links: &[("eth0", UP), ("dummy9", UP)],
                holders: &["eth0", "dummy9"],
                actions: vec![rm("dummy9")],
                outcome: Fine,
            },
            Case {
                name: "only stray holder: move onto spec interface",
                ifs: &["eth0"],
                want_up: true,
                links: &[("eth0", UP), ("dummy9", UP)],
                holders: &["dummy9"],
                actions: vec![rm("dummy9"), add("eth0"), ann("eth0")],
                outcome: moved("dummy9", "eth0"),
            },
            Case {
                name: "two dead holders: from = most preferred",
                ifs: &["eth0", "eth1", "eth2"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", NOCARRIER), ("eth2", UP)],
                holders: &["eth1", "eth0"],
                actions: vec![rm("eth1"), rm("eth0"), add("eth2"), ann("eth2")],
                outcome: moved("eth0", "eth2"),
            },
            Case {
                name: "repeated holder entries are collapsed",
                ifs: &["eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", UP)],
                holders: &["eth0", "eth0"],
                actions: vec![rm("eth0"), add("eth1"), ann("eth1")],
                outcome: moved("eth0", "eth1"),
            },
            Case {
                name: "duplicate spec interfaces",
                ifs: &["eth0", "eth0", "eth1"],
                want_up: true,
                links: &[("eth0", NOCARRIER), ("eth1", UP)],
                holders: &[],
                actions: vec![add("eth1"), ann("eth1")],
                outcome: Fine,
            },
            Case {
                name: "down: remove from holder",
                ifs: &["eth0", "eth1"],
                want_up: false,
                links: &[("eth0", UP), ("eth1", UP)],
                holders: &["eth0"],
                actions: vec![rm("eth0")],
                outcome: Fine,
            },
            Case {
                name: "down: remove everywhere incl. stray and dead",
                ifs: &["eth0", "eth1"],
                want_up: false,
                links: &[("eth0", NOCARRIER)],
                holders: &["eth0", "eth1", "dummy9"],
                actions: vec![rm("eth0"), rm("eth1"), rm("dummy9")],
                outcome: Fine,
            },
            Case {
                name: "down: nothing held",
                ifs: &["eth0"],
                want_up: false,
                links: &[],
                holders: &[],
                actions: vec![],
                outcome: Fine,
            },
            Case {
                name: "down with no usable links is still Ok",
                ifs: &["eth0"],
                want_up: false,
                links: &[("eth0", ADMINDOWN)],
                holders: &["eth0"],
                actions: vec![rm("eth0")],
                outcome: Fine,
            },
        ];
        for c in cases {
            let (actions, outcome) = reconcile(&spec(c.ifs), c.want_up, &obs(c.links, c.holders));
            assert_eq!(actions, c.actions, "actions for case {:?}", c.name);
            assert_eq!(outcome, c.outcome, "outcome for case {:?}", c.name);
        }
    }

    /// Exhaustive check of the invariants over every combination of 3
    /// candidate interfaces x 4 link states (incl. absent) x holder subsets
    /// (incl. a stray one) x want_up.
    #[test]
    fn invariants_exhaustive() {
        let names = ["eth0", "eth1", "eth2"];
        let states = [None, Some(UP), Some(NOCARRIER), Some(ADMINDOWN)];
        let all_holders = ["eth0", "eth1", "eth2", "stray0"];
        let sp = spec(&names);
        let mut checked = 0;
        for code in 0..states.len().pow(3) {
            let mut links = BTreeMap::new();
            let mut c = code;
            for n in names {
                if let Some(h) = states[c % states.len()] {
                    links.insert(n.to_string(), h);
                }
                c /= states.len();
            }
            links.insert("stray0".to_string(), UP);
            for mask in 0u32..16 {
                let holders: Vec<String> = all_holders
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| n.to_string())
                    .collect();
                let o = Observed {
                    links: links.clone(),
                    holders: holders.clone(),
                };
                for want_up in [true, false] {
                    check_invariants(&sp, want_up, &o);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 64 * 16 * 2);
    }

    fn check_invariants(sp: &VipSpec, want_up: bool, o: &Observed) {
        let (actions, outcome) = reconcile(sp, want_up, o);
        let ctx = format!("want_up={want_up} {o:?} -> {actions:?} {outcome:?}");
        // Apply the actions to the holder set.
        let mut after: Vec<String> = o.holders.clone();
        let mut first_add = None;
        for (i, a) in actions.iter().enumerate() {
            match a {
                VipAction::Remove { ifname } => {
                    assert!(after.contains(ifname), "remove of non-holder: {ctx}");
                    assert!(first_add.is_none(), "remove after add: {ctx}");
                    after.retain(|h| h != ifname);
                }
                VipAction::Add { ifname } => {
                    assert!(!after.contains(ifname), "add to holder: {ctx}");
                    assert_eq!(
                        actions.get(i + 1),
                        Some(&VipAction::Announce {
                            ifname: ifname.clone()
                        }),
                        "add without announce: {ctx}"
                    );
                    first_add = Some(ifname.clone());
                    after.push(ifname.clone());
                }
                VipAction::Announce { ifname } => {
                    assert_eq!(first_add.as_ref(), Some(ifname), "stray announce: {ctx}");
                }
            }
        }
        let usable = |n: &str| o.links.get(n).is_some_and(LinkHealth::usable);
        let any_usable = sp.interfaces.iter().any(|i| usable(i));
        if !want_up {
            assert!(after.is_empty(), "{ctx}");
            assert_eq!(outcome, VipOutcome::Ok, "{ctx}");
            return;
        }
        if !any_usable {
            assert_eq!(outcome, VipOutcome::NoUsableInterface, "{ctx}");
            assert!(after.is_empty(), "{ctx}");
            return;
        }
        assert_eq!(after.len(), 1, "exactly one holder: {ctx}");
        let h = &after[0];
        assert!(sp.interfaces.contains(h) && usable(h), "{ctx}");
        let held_usable = o
            .holders
            .iter()
            .any(|x| sp.interfaces.contains(x) && usable(x));
        if held_usable {
            assert!(
                o.holders.contains(h),
                "kept an existing usable holder: {ctx}"
            );
            assert_eq!(outcome, VipOutcome::Ok, "{ctx}");
        } else {
            let first = sp.interfaces.iter().find(|i| usable(i)).unwrap();
            assert_eq!(h, first, "first usable in preference order: {ctx}");
            match &outcome {
                VipOutcome::Moved { from, to } => {
                    assert!(o.holders.contains(from), "{ctx}");
                    assert_eq!(to, h, "{ctx}");
                }
                VipOutcome::Ok => assert!(o.holders.is_empty(), "{ctx}"),
                VipOutcome::NoUsableInterface => panic!("{ctx}"),
            }
        }
    }

    #[test]
    fn link_health_from_state() {
        let st = LinkState {
            exists: true,
            admin_up: true,
            carrier: true,
            index: 3,
            mac: None,
        };
        assert!(LinkHealth::from(&st).usable());
        let gone = LinkState {
            exists: false,
            ..st
        };
        assert!(!LinkHealth::from(&gone).usable());
    }
}
