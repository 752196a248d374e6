//! Unit tests of the wait decisions: progress between samples, each operation's
//! outcome from two snapshots of a link, and the outcomes of several links as one.

use super::*;
use crate::mirror::status::{ResyncDirection, ResyncStatus, VerifyStatus};

/// A connected link, in sync, no resync or verify ever run.
fn link() -> MirrorPeerStatus {
    let mut p = crate::status::Status::sample().mirrors[0].peers[0].clone();
    p.node = "b".into();
    p.connection = LinkState::Connected;
    p.out_of_sync_bytes = 0;
    p.resync = None;
    p.verify = None;
    p.resyncs_completed = 0;
    p
}

fn resyncing(done: u64, total: u64) -> MirrorPeerStatus {
    let mut p = link();
    p.out_of_sync_bytes = total - done;
    p.resync = Some(ResyncStatus {
        direction: ResyncDirection::Source,
        full: true,
        total_bytes: total,
        done_bytes: done,
        bytes_per_second: 0.0,
        eta_seconds: None,
        started_ms: 1,
    });
    p
}

#[test]
fn progress_gives_percent_rate_and_eta() {
    let a = Sample {
        at_ms: 1000,
        done: 10_000_000,
        total: 100_000_000,
    };
    let b = Sample {
        at_ms: 3000,
        done: 30_000_000,
        ..a
    };
    let p = progress(Some(a), b);
    assert_eq!(p.percent, 30.0);
    assert_eq!(p.bytes_per_second, Some(10_000_000.0));
    assert_eq!(p.eta_seconds, Some(7.0));
    assert_eq!(progress_text(&p), "30.0% 10.0 MB/s ETA 7 s");
    // No earlier sample, or one of another run (more done than now): no rate.
    assert_eq!(progress(None, b).bytes_per_second, None);
    assert_eq!(progress(Some(b), a).bytes_per_second, None);
    assert_eq!(progress(None, b).eta_seconds, None);
    // Nothing to do is all done; no progress in the interval is no ETA.
    let empty = Sample {
        at_ms: 5,
        done: 0,
        total: 0,
    };
    assert_eq!(progress(None, empty).percent, 100.0);
    assert_eq!(
        progress(Some(b), Sample { at_ms: 4000, ..b }).eta_seconds,
        None
    );
}

#[test]
fn a_resync_is_done_only_once_a_new_one_completed_and_nothing_is_out_of_sync() {
    let before = link();
    // Not started yet: the same counter, nothing running.
    assert_eq!(
        wait_outcome(MirrorOp::Resync, &before, &link()),
        Outcome::Pending(None)
    );
    assert_eq!(
        wait_outcome(MirrorOp::Resync, &before, &resyncing(25, 100)),
        Outcome::Pending(Some((25, 100)))
    );
    let mut after = link();
    after.resyncs_completed = 1;
    assert!(matches!(
        wait_outcome(MirrorOp::Resync, &before, &after),
        Outcome::Done(_)
    ));
    after.out_of_sync_bytes = 4096;
    assert_eq!(
        wait_outcome(MirrorOp::Resync, &before, &after),
        Outcome::Pending(None)
    );
    // The peer went away mid-resync.
    let mut dropped = resyncing(25, 100);
    dropped.connection = LinkState::Connecting;
    assert_eq!(
        wait_outcome(MirrorOp::Resync, &before, &dropped),
        Outcome::Failed("the link to `b` is connecting before the resync finished".into())
    );
}

#[test]
fn a_verify_is_done_when_a_newer_one_finished() {
    let verify = |running: bool, started_ms: u64| VerifyStatus {
        running,
        checked_bytes: 50,
        total_bytes: 200,
        out_of_sync_bytes: 4096,
        started_ms,
        finished_ms: (!running).then_some(started_ms + 10),
    };
    let mut before = link();
    before.verify = Some(verify(false, 100));
    assert_eq!(
        wait_outcome(MirrorOp::Verify, &before, &before),
        Outcome::Pending(None),
        "the last verify is not this one"
    );
    let mut now = link();
    now.verify = Some(verify(true, 500));
    assert_eq!(
        wait_outcome(MirrorOp::Verify, &before, &now),
        Outcome::Pending(Some((50, 200)))
    );
    now.verify = Some(verify(false, 500));
    assert_eq!(
        wait_outcome(MirrorOp::Verify, &before, &now),
        Outcome::Done("`b` verified, 4096 bytes out of sync".into())
    );
}

#[test]
fn a_connect_is_done_when_connected_and_fails_on_a_split_brain() {
    let mut before = link();
    before.connection = LinkState::Disconnected;
    assert_eq!(
        wait_outcome(MirrorOp::Connect, &before, &before),
        Outcome::Pending(None)
    );
    assert!(matches!(
        wait_outcome(MirrorOp::Connect, &before, &link()),
        Outcome::Done(_)
    ));
    let mut split = link();
    split.connection = LinkState::SplitBrain;
    assert_eq!(
        wait_outcome(MirrorOp::Connect, &before, &split),
        Outcome::Failed("the link to `b` is split_brain".into())
    );
}

#[test]
fn combine_fails_on_any_failure_and_is_done_only_when_all_are() {
    let done = Outcome::Done("x".into());
    let failed = Outcome::Failed("f".into());
    assert_eq!(
        combine(vec![done.clone(), failed.clone(), Outcome::Pending(None)]),
        failed
    );
    assert_eq!(
        combine(vec![done.clone(), Outcome::Done("y".into())]),
        Outcome::Done("x, y".into())
    );
    assert_eq!(
        combine(vec![
            done,
            Outcome::Pending(Some((1, 10))),
            Outcome::Pending(None),
            Outcome::Pending(Some((2, 10)))
        ]),
        Outcome::Pending(Some((3, 20)))
    );
}

#[test]
fn group_states_name_each_node_and_its_state() {
    let states = BTreeMap::from([
        ("a".to_string(), LocalGroupState::Stopping),
        ("b".to_string(), LocalGroupState::Stopped),
    ]);
    assert_eq!(group_states(&states), "a stopping, b stopped");
}

#[test]
fn standby_waits_until_every_group_is_handed_over() {
    use LocalGroupState::{Running, Starting, Stopped, Stopping};
    let mut s = Status::sample();
    s.groups.truncate(1);
    let set = |s: &mut Status, owner: &str, alpha: LocalGroupState, beta: LocalGroupState| {
        let g = &mut s.groups[0];
        g.owner = Some(owner.into());
        g.states = [("alpha".to_string(), alpha), ("beta".to_string(), beta)].into();
    };
    let name = s.groups[0].name.clone();
    // alpha still runs it, is stopping it, or beta (the new owner) is starting it.
    for (owner, alpha, beta) in [
        ("alpha", Running, Stopped),
        ("beta", Stopping, Stopped),
        ("beta", Stopped, Starting),
    ] {
        set(&mut s, owner, alpha, beta);
        assert_eq!(
            groups_to_hand_off("alpha", &s),
            std::slice::from_ref(&name),
            "{alpha:?} {beta:?}"
        );
    }
    // Handed over: beta runs it; or nobody can take it (beta stays stopped).
    set(&mut s, "beta", Stopped, Running);
    assert!(groups_to_hand_off("alpha", &s).is_empty());
    set(&mut s, "alpha", Stopped, Stopped);
    assert!(groups_to_hand_off("alpha", &s).is_empty());
    // Seen from beta, which now runs it, the same group is still to hand over.
    set(&mut s, "beta", Stopped, Running);
    assert_eq!(groups_to_hand_off("beta", &s), [name]);
}

#[test]
fn an_image_update_shows_its_download_then_its_steps_until_it_ends() {
    use crate::image::job::{UpdateProgress, UpdateState};
    use crate::image::Slot;
    let mut p = UpdateProgress {
        state: UpdateState::Downloading,
        bytes: 300,
        total: Some(1200),
        slot: Some(Slot::B),
        ..UpdateProgress::default()
    };
    assert_eq!(image_step(&p), ImageStep::Work(300, 1200));
    p.total = None;
    assert_eq!(
        image_step(&p),
        ImageStep::Note("downloading, 300 bytes".into())
    );
    p.state = UpdateState::Verifying;
    assert_eq!(
        image_step(&p),
        ImageStep::Note("checking the signature".into())
    );
    p.state = UpdateState::Writing;
    assert_eq!(image_step(&p), ImageStep::Note("writing slot b".into()));
    for end in [UpdateState::Done, UpdateState::Failed, UpdateState::Idle] {
        p.state = end;
        assert_eq!(image_step(&p), ImageStep::Ended);
    }
}
