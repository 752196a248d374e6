use super::*;
use crate::event::fields;

const BIG: usize = 1 << 20;

/// The shared sample without its mirror.
fn status() -> Status {
    Status {
        mirrors: Vec::new(),
        failovers: Vec::new(),
        ..Status::sample()
    }
}

/// The shared sample: a primary mirror `vol` resyncing to a sync peer `beta` and an
/// async peer `gamma` that has not reported its disk yet.
fn with_mirrors() -> Status {
    Status {
        failovers: Vec::new(),
        ..Status::sample()
    }
}

fn view() -> MibView {
    MibView::build(&status(), &SystemInfo::default())
}

fn col(table: u32, column: u32, index: &[&str]) -> Vec<u32> {
    let mut v = tandem_oid(&[OBJECTS, table, 1, column]);
    for name in index {
        v.extend(name_index(name));
    }
    v
}

fn string_of(v: &VarBindValue) -> String {
    match v {
        VarBindValue::Value(ObjectSyntax::Simple(SimpleSyntax::String(s))) => {
            String::from_utf8_lossy(s).into_owned()
        }
        other => panic!("not a string: {other:?}"),
    }
}

fn names(vbs: &[VarBind]) -> Vec<Vec<u32>> {
    vbs.iter().map(|vb| vb.name.to_vec()).collect()
}

#[test]
fn get_distinguishes_missing_objects_from_missing_instances() {
    let v = view();
    let owner = col(GROUP_TABLE, 4, &["web"]);
    assert_eq!(string_of(&v.get(&owner)), "alpha");
    assert_eq!(
        v.get(&col(GROUP_TABLE, 4, &["nope"])),
        VarBindValue::NoSuchInstance
    );
    // The object type itself (no instance arcs) is a missing instance too.
    assert_eq!(
        v.get(&tandem_oid(&[OBJECTS, GROUP_TABLE, 1, 4])),
        VarBindValue::NoSuchInstance
    );
    // The mirror tables are defined; this node holds no mirror.
    assert_eq!(
        v.get(&col(MIRROR_TABLE, 2, &["vol"])),
        VarBindValue::NoSuchInstance
    );
    assert_eq!(
        v.get(&col(MIRROR_PEER_TABLE, 3, &["vol", "beta"])),
        VarBindValue::NoSuchInstance
    );
    // Index columns are not accessible; unknown arcs are not objects.
    assert_eq!(
        v.get(&col(GROUP_TABLE, 1, &["web"])),
        VarBindValue::NoSuchObject
    );
    assert_eq!(
        v.get(&tandem_oid(&[OBJECTS, 99, 0])),
        VarBindValue::NoSuchObject
    );
    assert_eq!(
        v.get(&[1, 3, 6, 1, 2, 1, 2, 1, 0]),
        VarBindValue::NoSuchObject
    );
    assert_eq!(string_of(&v.get(&[1, 3, 6, 1, 2, 1, 1, 5, 0])), "alpha");
}

#[test]
fn instances_are_in_lexicographic_order_and_indexed_by_name() {
    let v = view();
    let keys: Vec<&Vec<u32>> = v.values.keys().collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    // "db" (length 2) sorts before "web" (length 3): length-prefixed, not IMPLIED.
    let db = col(GROUP_TABLE, 2, &["db"]);
    let web = col(GROUP_TABLE, 2, &["web"]);
    assert_eq!(v.next_after(&db).unwrap().0, web.as_slice());
    assert_eq!(&db[db.len() - 3..], &[2, u32::from(b'd'), u32::from(b'b')]);
}

#[test]
fn get_next_crosses_column_and_table_boundaries() {
    let v = view();
    // Last row of the group table's state column -> first row of the next column.
    let next = v.get_next(&[col(GROUP_TABLE, 2, &["web"])], BIG).unwrap();
    assert_eq!(next[0].name.to_vec(), col(GROUP_TABLE, 3, &["db"]));
    // Last cell of the group table -> first cell of the resource table.
    let last = col(GROUP_TABLE, 11, &["web"]);
    let next = v.get_next(&[last], BIG).unwrap();
    assert_eq!(
        next[0].name.to_vec(),
        col(RESOURCE_TABLE, 2, &["web", "vip"])
    );
    // The empty mirror table is skipped; the last instance ends the view.
    let vip_last = col(VIP_TABLE, 3, &["web", "vip"]);
    let next = v.get_next(std::slice::from_ref(&vip_last), BIG).unwrap();
    assert_eq!(next[0].value, VarBindValue::EndOfMibView);
    assert_eq!(next[0].name.to_vec(), vip_last);
    // A name before everything gets the first instance (sysDescr.0).
    let first = v.get_next(&[vec![1, 3]], BIG).unwrap();
    assert_eq!(first[0].name.to_vec(), vec![1, 3, 6, 1, 2, 1, 1, 1, 0]);
}

#[test]
fn get_and_get_next_answer_too_big_instead_of_truncating() {
    let v = view();
    let name = vec![1, 3, 6, 1, 2, 1, 1, 1, 0];
    let one = v.get_all(std::slice::from_ref(&name), BIG).unwrap();
    let size = encoded_len(&one[0]);
    assert!(v.get_all(&[name.clone(), name.clone()], 2 * size).is_ok());
    assert_eq!(
        v.get_all(&[name.clone(), name.clone()], 2 * size - 1),
        Err(ResponseTooBig)
    );
    assert_eq!(v.get_next(&[vec![1, 3]], size - 1), Err(ResponseTooBig));
}

#[test]
fn get_bulk_repeats_after_the_non_repeaters() {
    let v = view();
    let sys = vec![1, 3, 6, 1, 2, 1, 1];
    let groups = tandem_oid(&[OBJECTS, GROUP_TABLE, 1, 2]);
    let out = v.get_bulk(&[sys.clone(), groups.clone()], 1, 3, BIG);
    assert_eq!(
        names(&out),
        vec![
            [sys.as_slice(), &[1, 0]].concat(),
            col(GROUP_TABLE, 2, &["db"]),
            col(GROUP_TABLE, 2, &["web"]),
            col(GROUP_TABLE, 3, &["db"]),
        ]
    );
    // Two repeaters interleave row by row.
    let out = v.get_bulk(&[sys.clone(), groups.clone()], 0, 2, BIG);
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].name.to_vec(), [sys.as_slice(), &[1, 0]].concat());
    assert_eq!(out[1].name.to_vec(), col(GROUP_TABLE, 2, &["db"]));
    assert_eq!(out[2].name.to_vec(), [sys.as_slice(), &[2, 0]].concat());
    // Non-repeaters beyond the list are clamped; zero repetitions give only them.
    assert_eq!(v.get_bulk(std::slice::from_ref(&sys), 5, 10, BIG).len(), 1);
    assert_eq!(v.get_bulk(&[sys.clone(), groups], 1, 0, BIG).len(), 1);
    assert!(v.get_bulk(&[], 0, 10, BIG).is_empty());
}

#[test]
fn get_bulk_stops_after_a_row_of_end_of_mib_view() {
    let v = view();
    let near_end = col(VIP_TABLE, 2, &["web", "vip"]);
    let out = v.get_bulk(&[near_end], 0, 50, BIG);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].name.to_vec(), col(VIP_TABLE, 3, &["web", "vip"]));
    assert_eq!(out[1].value, VarBindValue::EndOfMibView);
    // With a second repeater still finding objects, the ended one keeps
    // reporting endOfMibView in every row.
    let out = v.get_bulk(&[col(VIP_TABLE, 3, &["web", "vip"]), vec![1, 3]], 0, 3, BIG);
    assert_eq!(out.len(), 6);
    assert!(out
        .iter()
        .step_by(2)
        .all(|vb| vb.value == VarBindValue::EndOfMibView));
}

#[test]
fn get_bulk_truncates_to_the_size_budget() {
    let v = view();
    let all = v.get_bulk(&[vec![1, 3]], 0, 1000, BIG);
    assert_eq!(all.len(), v.len() + 1, "every instance, then endOfMibView");
    let budget: usize = all[..10].iter().map(encoded_len).sum();
    let cut = v.get_bulk(&[vec![1, 3]], 0, 1000, budget);
    assert_eq!(cut, all[..10].to_vec());
    assert!(v.get_bulk(&[vec![1, 3]], 0, 1000, 3).is_empty());
}

#[test]
fn optional_columns_have_no_instance_when_unknown() {
    let mut s = status();
    s.paths[0].rtt_ms = None;
    let v = MibView::build(&s, &SystemInfo::default());
    assert_eq!(
        v.get(&col(PATH_TABLE, 4, &["beta", "lan"])),
        VarBindValue::NoSuchInstance
    );
    let rtt = view().get(&col(PATH_TABLE, 4, &["beta", "lan"]));
    assert_eq!(rtt, VarBindValue::Value(gauge(250)));
}

#[test]
fn events_map_to_notifications_with_their_objects() {
    let event = Event {
        seq: 77,
        node: "alpha".into(),
        time_ms: 1_700_000_000_123,
        kind: EventKind::PathDown,
        fields: fields([("peer", "beta".into()), ("path", "lan".into())]),
    };
    let n = notification_for(&event).unwrap();
    assert_eq!(n.trap_oid, tandem_oid(&[0, 7]));
    assert_eq!(n.seq, 77);
    let arcs: Vec<u32> = n.varbinds.iter().map(|vb| vb.name.to_vec()[9]).collect();
    assert_eq!(arcs, vec![1, 2, 5, 8]);
    assert_eq!(n.varbinds[0].value, VarBindValue::Value(counter64(77)));
    assert_eq!(string_of(&n.varbinds[3].value), "lan");

    let failover = Event {
        kind: EventKind::FailoverCompleted,
        fields: fields([
            ("group", "web".into()),
            ("from_node", "beta".into()),
            ("reason", "node_lost".into()),
            ("duration_ms", "1234".into()),
        ]),
        ..event.clone()
    };
    let n = notification_for(&failover).unwrap();
    assert_eq!(n.trap_oid, tandem_oid(&[0, 2]));
    assert_eq!(
        string_of(&n.varbinds[3].value),
        "beta",
        "peer from from_node"
    );
    assert_eq!(n.varbinds[5].value, VarBindValue::Value(gauge(1234)));

    let quiet = Event {
        kind: EventKind::GroupStarting,
        ..event
    };
    assert!(notification_for(&quiet).is_none());
}

#[test]
fn date_and_time_is_utc_calendar_time() {
    // 2023-11-14T22:13:20.123Z
    assert_eq!(
        date_and_time(1_700_000_000_123),
        [0x07, 0xe7, 11, 14, 22, 13, 20, 1, b'+', 0, 0]
    );
    // 2024-02-29T00:00:00Z (leap day)
    assert_eq!(
        date_and_time(1_709_164_800_000),
        [0x07, 0xe8, 2, 29, 0, 0, 0, 0, b'+', 0, 0]
    );
}

/// One definition of TANDEM-MIB: its parent, arc, MAX-ACCESS and OBJECTS clause.
struct MibDefinition {
    parent: String,
    arc: u32,
    access: Option<String>,
    objects: Vec<String>,
}

/// Every `name ... ::= { parent arc }` of the MIB file.
fn mib_definitions() -> BTreeMap<String, MibDefinition> {
    let text = include_str!("../../../mibs/TANDEM-MIB.txt");
    let mut defs = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let starts_definition = line.starts_with(|c: char| c.is_ascii_lowercase())
            && !line.starts_with("tandem MODULE-IDENTITY");
        if starts_definition {
            current = line
                .split_whitespace()
                .next()
                .map(|n| (n.to_string(), String::new()));
        }
        if let Some((name, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
            if let Some(assignment) = body.split("::=").nth(1) {
                let inner = assignment.trim().trim_start_matches('{');
                let mut parts = inner.split_whitespace();
                let parent = parts.next().unwrap_or_default().to_string();
                let arc = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
                let access = body
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("MAX-ACCESS"))
                    .map(|a| a.trim().to_string());
                let objects = body
                    .split_once("OBJECTS")
                    .and_then(|(_, rest)| rest.split_once('}'))
                    .map(|(list, _)| {
                        list.trim_start_matches(|c: char| c.is_whitespace() || c == '{')
                            .split(|c: char| c == ',' || c.is_whitespace())
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let def = MibDefinition {
                    parent,
                    arc,
                    access,
                    objects,
                };
                defs.insert(name.clone(), def);
                current = None;
            }
        }
    }
    defs
}

fn resolve(defs: &BTreeMap<String, MibDefinition>, name: &str) -> Vec<u32> {
    if name == "tandem" {
        return ENTERPRISE.to_vec();
    }
    let d = &defs[name];
    let mut oid = resolve(defs, &d.parent);
    oid.push(d.arc);
    oid
}

#[test]
fn the_view_serves_exactly_the_readable_objects_of_the_mib() {
    let defs = mib_definitions();
    let readable: BTreeSet<Vec<u32>> = defs
        .iter()
        .filter(|(_, d)| d.access.as_deref() == Some("read-only"))
        .map(|(name, _)| resolve(&defs, name))
        .collect();
    assert_eq!(readable.len(), 48, "5 cluster scalars and 43 columns");
    let served: BTreeSet<Vec<u32>> = view()
        .object_types
        .into_iter()
        .filter(|t| t.starts_with(ENTERPRISE))
        .collect();
    assert_eq!(served, readable);
}

#[test]
fn notifications_carry_the_objects_the_mib_lists() {
    let defs = mib_definitions();
    let kinds = [
        EventKind::FailoverStarted,
        EventKind::FailoverCompleted,
        EventKind::FailoverFailed,
        EventKind::SwitchoverCompleted,
        EventKind::NodeDown,
        EventKind::NodeUp,
        EventKind::PathDown,
        EventKind::PathUp,
        EventKind::ResourceRestarted,
        EventKind::GroupFailed,
        EventKind::SplitBrainSuspected,
        EventKind::DaemonStarted,
        EventKind::DaemonStopping,
        EventKind::ResyncStarted,
        EventKind::ResyncCompleted,
        EventKind::ResyncFailed,
        EventKind::MirrorDisconnected,
        EventKind::MirrorConnected,
        EventKind::MirrorSplitBrain,
        EventKind::MirrorPromotionRefused,
        EventKind::MirrorPeerOutdated,
        EventKind::VerifyCompleted,
        EventKind::MirrorPromoted,
        EventKind::MirrorDemoted,
        EventKind::QuorumLost,
        EventKind::QuorumGained,
        EventKind::OwnershipCommitted,
        EventKind::FenceSucceeded,
        EventKind::FenceFailed,
        EventKind::WatchdogUnavailable,
        EventKind::WatchdogAvailable,
        EventKind::FastStopFailed,
        EventKind::MirrorIoSuspended,
        EventKind::MirrorIoResumed,
        EventKind::GroupSuspended,
        EventKind::GroupResumed,
        EventKind::ImageUpdateFinished,
        EventKind::ImageUpdateFailed,
        EventKind::ConfigMismatch,
        EventKind::ConfigAgreed,
        EventKind::Audit,
        EventKind::RecoveryPoint,
    ];
    let mut arcs = BTreeSet::new();
    for kind in kinds {
        let event = Event {
            seq: 1,
            node: "a".into(),
            time_ms: 0,
            kind,
            fields: Default::default(),
        };
        let n = notification_for(&event).unwrap();
        assert!(arcs.insert(n.trap_oid.clone()), "{kind:?}: arc used twice");
        let (name, def) = defs
            .iter()
            .find(|(name, _)| resolve(&defs, name) == n.trap_oid)
            .unwrap_or_else(|| panic!("{kind:?}: no NOTIFICATION-TYPE at {:?}", n.trap_oid));
        let listed: Vec<Vec<u32>> = def
            .objects
            .iter()
            .map(|o| [resolve(&defs, o), vec![0]].concat())
            .collect();
        let sent: Vec<Vec<u32>> = n.varbinds.iter().map(|vb| vb.name.to_vec()).collect();
        assert_eq!(sent, listed, "{kind:?} -> {name}");
    }
    // And the other way: every NOTIFICATION-TYPE of the MIB is sent for a kind above.
    let defined: BTreeSet<Vec<u32>> = defs
        .iter()
        .filter(|(_, d)| d.parent == "tandemNotifications")
        .map(|(name, _)| resolve(&defs, name))
        .collect();
    assert_eq!(
        defined, arcs,
        "notifications of the MIB no event kind sends"
    );
}

#[test]
fn fast_stop_failed_carries_group_resource_step_and_reason() {
    let event = Event {
        seq: 41,
        node: "alpha".into(),
        time_ms: 0,
        kind: EventKind::FastStopFailed,
        fields: fields([
            ("group", "web".into()),
            ("step", "freeze".into()),
            ("resource", "nginx".into()),
            ("reason", "cgroup.freeze: Permission denied".into()),
        ]),
    };
    let n = notification_for(&event).unwrap();
    assert_eq!(n.trap_oid, tandem_oid(&[0, 32]));
    let arcs: Vec<u32> = n.varbinds.iter().map(|vb| vb.name.to_vec()[9]).collect();
    assert_eq!(
        arcs,
        vec![1, 2, 6, 7, 15, 3],
        "seq time group resource step reason"
    );
    assert_eq!(n.varbinds[0].value, VarBindValue::Value(counter64(41)));
    assert_eq!(string_of(&n.varbinds[2].value), "web");
    assert_eq!(string_of(&n.varbinds[3].value), "nginx");
    assert_eq!(
        n.varbinds[4].value,
        VarBindValue::Value(integer(3)),
        "freeze"
    );
    assert_eq!(
        string_of(&n.varbinds[5].value),
        "cgroup.freeze: Permission denied"
    );
    let ip = Event {
        fields: fields([("step", "floating_ip".into())]),
        ..event
    };
    let n = notification_for(&ip).unwrap();
    assert_eq!(n.varbinds[4].value, VarBindValue::Value(integer(1)));
}

#[test]
fn every_fast_stop_step_has_its_value_in_the_mib() {
    let mib = include_str!("../../../mibs/TANDEM-MIB.txt");
    let start = mib.find("TandemFastStopStep ::=").expect("the TC");
    let syntax = &mib[start..start + mib[start..].find('}').expect("its SYNTAX")];
    for step in FastStopStep::ALL {
        // snake_case in the event, lowerCamelCase in the MIB.
        let mut label = String::new();
        let mut upper = false;
        for c in step.name().chars() {
            match c {
                '_' => upper = true,
                c if upper => {
                    label.push(c.to_ascii_uppercase());
                    upper = false;
                }
                c => label.push(c),
            }
        }
        let value = fast_stop_step(step);
        assert!(
            syntax.contains(&format!("{label}({value})")),
            "`{}` is sent as {value}, which TandemFastStopStep does not list",
            step.name()
        );
    }
}

/// A secondary's recovery point is two more columns of its mirror row; a mirror with
/// none has neither.
#[test]
fn a_reported_recovery_point_fills_the_mirror_rows_last_two_columns() {
    let v = MibView::build(&with_mirrors(), &SystemInfo::default());
    assert_eq!(
        v.get(&col(MIRROR_TABLE, 9, &["vol"])),
        VarBindValue::NoSuchInstance
    );
    let mut st = with_mirrors();
    st.mirrors[0].recovery_point = Some(crate::mirror::recovery::RecoveryPoint {
        mirror: "vol".into(),
        primary: "alpha".into(),
        lag_bytes: 5 << 30,
        lag_ms: 2500,
        reported_ms: 0,
    });
    let v = MibView::build(&st, &SystemInfo::default());
    let value = |o: ObjectSyntax| VarBindValue::Value(o);
    assert_eq!(
        v.get(&col(MIRROR_TABLE, 9, &["vol"])),
        value(counter64(5 << 30))
    );
    assert_eq!(v.get(&col(MIRROR_TABLE, 10, &["vol"])), value(gauge(2500)));
}

#[test]
fn mirrors_are_rows_by_name_and_peers_rows_by_name_and_node() {
    let v = MibView::build(&with_mirrors(), &SystemInfo::default());
    let get = |table, column, index: &[&str]| v.get(&col(table, column, index));
    let value = |o: ObjectSyntax| VarBindValue::Value(o);
    assert_eq!(get(MIRROR_TABLE, 2, &["vol"]), value(integer(1)), "primary");
    assert_eq!(
        get(MIRROR_TABLE, 3, &["vol"]),
        value(integer(4)),
        "syncSource"
    );
    assert_eq!(get(MIRROR_TABLE, 4, &["vol"]), value(counter64(1 << 30)));
    assert_eq!(
        string_of(&get(MIRROR_TABLE, 5, &["vol"])),
        "00000000000000ab"
    );
    assert_eq!(get(MIRROR_TABLE, 6, &["vol"]), value(truth(true)));
    assert_eq!(get(MIRROR_TABLE, 7, &["vol"]), value(counter64(4096)));
    assert_eq!(get(MIRROR_TABLE, 8, &["vol"]), value(counter64(12288)));
    let beta = ["vol", "beta"];
    assert_eq!(get(MIRROR_PEER_TABLE, 2, &beta), value(integer(1)), "sync");
    assert_eq!(
        get(MIRROR_PEER_TABLE, 3, &beta),
        value(integer(1)),
        "connected"
    );
    assert_eq!(
        get(MIRROR_PEER_TABLE, 4, &beta),
        value(integer(5)),
        "syncTarget"
    );
    assert_eq!(get(MIRROR_PEER_TABLE, 5, &beta), value(counter64(3 << 20)));
    assert_eq!(
        get(MIRROR_PEER_TABLE, 8, &beta),
        value(gauge(25)),
        "1 of 4 MiB"
    );
    assert_eq!(
        get(MIRROR_PEER_TABLE, 9, &beta),
        value(gauge(3)),
        "ETA rounded up"
    );
    assert_eq!(get(MIRROR_PEER_TABLE, 10, &beta), value(counter64(1 << 20)));
    assert_eq!(get(MIRROR_PEER_TABLE, 11, &beta), value(counter64(8192)));
    let gamma = ["vol", "gamma"];
    assert_eq!(
        get(MIRROR_PEER_TABLE, 2, &gamma),
        value(integer(2)),
        "async"
    );
    assert_eq!(
        get(MIRROR_PEER_TABLE, 3, &gamma),
        value(integer(5)),
        "splitBrain"
    );
    assert_eq!(get(MIRROR_PEER_TABLE, 6, &gamma), value(counter64(4096)));
    assert_eq!(get(MIRROR_PEER_TABLE, 7, &gamma), value(gauge(1235)), "ms");
    assert_eq!(
        get(MIRROR_PEER_TABLE, 8, &gamma),
        value(gauge(100)),
        "no resync"
    );
    // Unknown peer disk and no resync: no instance.
    assert_eq!(
        get(MIRROR_PEER_TABLE, 4, &gamma),
        VarBindValue::NoSuchInstance
    );
    assert_eq!(
        get(MIRROR_PEER_TABLE, 9, &gamma),
        VarBindValue::NoSuchInstance
    );
    // A walk goes from the VIP table through the mirror table to the peer table, and
    // the last peer column ends the view.
    let vip_last = col(VIP_TABLE, 3, &["web", "vip"]);
    let next = v.get_next(&[vip_last], BIG).unwrap();
    assert_eq!(next[0].name.to_vec(), col(MIRROR_TABLE, 2, &["vol"]));
    let mirror_last = col(MIRROR_TABLE, 8, &["vol"]);
    let next = v.get_next(&[mirror_last], BIG).unwrap();
    assert_eq!(next[0].name.to_vec(), col(MIRROR_PEER_TABLE, 2, &beta));
    let last = col(MIRROR_PEER_TABLE, 11, &gamma);
    let next = v.get_next(&[last], BIG).unwrap();
    assert_eq!(next[0].value, VarBindValue::EndOfMibView);
}

#[test]
fn mirror_events_carry_mirror_peer_and_resync_facts() {
    let event = Event {
        seq: 9,
        node: "alpha".into(),
        time_ms: 0,
        kind: EventKind::ResyncStarted,
        fields: fields([
            ("mirror", "vol".into()),
            ("peer", "beta".into()),
            ("direction", "source".into()),
            ("full", "true".into()),
            ("bytes", "4194304".into()),
        ]),
    };
    let n = notification_for(&event).unwrap();
    assert_eq!(n.trap_oid, tandem_oid(&[0, 11]));
    let arcs: Vec<u32> = n.varbinds.iter().map(|vb| vb.name.to_vec()[9]).collect();
    assert_eq!(arcs, vec![1, 2, 9, 5, 11, 12, 10]);
    assert_eq!(string_of(&n.varbinds[2].value), "vol");
    assert_eq!(string_of(&n.varbinds[3].value), "beta");
    assert_eq!(string_of(&n.varbinds[4].value), "source");
    assert_eq!(n.varbinds[5].value, VarBindValue::Value(truth(true)));
    assert_eq!(n.varbinds[6].value, VarBindValue::Value(counter64(4 << 20)));
    let promoted = Event {
        kind: EventKind::MirrorPromoted,
        fields: fields([
            ("mirror", "vol".into()),
            ("generation", "00000000000000ac".into()),
        ]),
        ..event
    };
    let n = notification_for(&promoted).unwrap();
    assert_eq!(n.trap_oid, tandem_oid(&[0, 23]));
    assert_eq!(string_of(&n.varbinds[3].value), "00000000000000ac");
    // Pausing and resuming are an administrator's own acts: no notification.
    let paused = Event {
        kind: EventKind::MirrorPaused,
        ..promoted
    };
    assert!(notification_for(&paused).is_none());
}

/// A resource kind the MIB does not enumerate was served as 0, which is not a value of
/// `TandemResourceType` (the `mirror` kind was, before it was added).
#[test]
fn every_resource_kind_has_its_value_in_the_mib() {
    let mib = include_str!("../../../mibs/TANDEM-MIB.txt");
    let start = mib.find("TandemResourceType ::=").expect("the TC");
    let syntax = &mib[start..start + mib[start..].find('}').expect("its SYNTAX")];
    for t in ResourceType::ALL {
        let kind = serde_json::to_value(t).unwrap();
        // SMI labels are lowerCamelCase: `shared_disk` is `sharedDisk`.
        let kind: String = kind
            .as_str()
            .unwrap()
            .split('_')
            .enumerate()
            .map(|(i, w)| match i {
                0 => w.to_string(),
                _ => w[..1].to_uppercase() + &w[1..],
            })
            .collect();
        let value = resource_kind(t);
        assert!(
            syntax.contains(&format!("{kind}({value})")),
            "`{kind}` is served as {value}, which TandemResourceType does not list"
        );
    }
}
