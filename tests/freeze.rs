//! The cgroup freezer of `process` resources (needs root and a cgroup v2 or v1
//! freezer; skipped without one): a lost lease's fast stop freezes the process, and
//! the clean stop thaws and stops it and removes its cgroup.

use std::time::Duration;

use tandem::config::ResourceConfig;
use tandem::mirror::node::LocalMirrors;
use tandem::resources::agent::Agent;
use tandem::resources::cgroup;

fn counter(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_frozen_process_makes_no_progress_and_stops_cleanly_with_its_cgroup_removed() {
    let Some(h) = cgroup::hierarchy() else {
        eprintln!("no cgroup freezer on this host: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let stopped = dir.path().join("stopped");
    let script = format!(
        "trap 'echo term > {s}; exit 0' TERM; n=0; while :; do n=$((n+1)); echo $n > {c}; sleep 0.01; done",
        s = stopped.display(),
        c = count.display()
    );
    let cfg: ResourceConfig = toml::from_str(&format!(
        "name = \"counter\"\nkind = \"process\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
    ))
    .unwrap();
    let node = format!("freeze-test-{}", std::process::id());
    let mut agent = Agent::new(&cfg, &LocalMirrors::new(), &node, "grp");
    agent.start(&[]).await.unwrap();
    // Named with the daemon's (here the test's) pid, so two daemons never share it.
    let daemon = format!("{node}.{}", std::process::id());
    let cg_dir = h
        .root
        .join("tandem")
        .join(&daemon)
        .join("grp")
        .join("counter");
    // A loaded machine may take a while to start the shell; and `echo n > count`
    // truncates before it writes, so one read may see it empty.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&count) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let procs = std::fs::read_to_string(cg_dir.join("cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "the process is in its cgroup");
    assert!(counter(&count) > 0, "the process runs");

    // The fast stop freezes it (the resource is not stopped yet).
    assert!(!agent.fast_stop(&[]).await.unwrap());
    let state = match h.freezer {
        cgroup::Freezer::V2 => std::fs::read_to_string(cg_dir.join("cgroup.events")).unwrap(),
        cgroup::Freezer::V1 => std::fs::read_to_string(cg_dir.join("freezer.state")).unwrap(),
    };
    assert!(
        state.contains("frozen 1") || state.trim() == "FROZEN",
        "{state}"
    );
    let frozen_at = counter(&count);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter(&count), frozen_at, "a frozen process made progress");

    // The clean stop thaws it into its SIGTERM handler and removes the cgroup.
    agent.stop(&[]).await.unwrap();
    assert_eq!(std::fs::read_to_string(&stopped).unwrap().trim(), "term");
    assert!(!cg_dir.exists(), "the cgroup is removed");
    assert!(
        !h.root.join("tandem").join(&daemon).exists(),
        "its empty parents too"
    );
}
