//! Lint of the Grafana dashboards and the alert rules in `dashboards/`, no cluster
//! needed: Grafana's conventions (a datasource variable, `cluster` and `instance`
//! variables in every query, `$__rate_interval` for rates, a unit and a description on
//! every panel, the current schema version; mirror and NBD series filtered by the
//! `mirror` variable), every `dashboards/*.json` is checked, every PromQL expression
//! parses, and
//! `promtool check rules` / `promtool test rules` pass. That every panel returns data
//! from a real Prometheus is `prometheus_returns_data_for_every_panel` in `tests/lab.rs`.

#[path = "common/dashboards.rs"]
mod dashboards;

use std::process::Command;

use promql_parser::label::MatchOp;

/// Grafana 12's dashboard schema version.
const SCHEMA_VERSION: u64 = 41;

#[test]
fn dashboards_follow_grafana_conventions() {
    let mut problems = Vec::new();
    for (file, d) in dashboards::load() {
        if d["schemaVersion"].as_u64() != Some(SCHEMA_VERSION) {
            problems.push(format!("{file}: schemaVersion is not {SCHEMA_VERSION}"));
        }
        if d["uid"].as_str().unwrap_or("").is_empty() {
            problems.push(format!("{file}: no uid"));
        }
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
        match var("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problems.push(format!("{file}: no Prometheus datasource variable")),
        }
        for name in ["cluster", "instance"] {
            match var(name) {
                Some(v) if v["type"] == "query" => {}
                _ => problems.push(format!("{file}: no `{name}` query variable")),
            }
        }
        let text = d.to_string();
        if text.contains("tandem_mirror_") || text.contains("tandem_nbd_") {
            match var("mirror") {
                Some(v) if v["type"] == "query" && v["allValue"] == ".*" => {}
                _ => problems.push(format!("{file}: mirror panels but no `mirror` variable")),
            }
        }
        for p in dashboards::panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("");
            if p["description"].as_str().unwrap_or("").trim().is_empty() {
                problems.push(format!("{file}: panel `{title}` has no description"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("")
                .is_empty()
            {
                problems.push(format!("{file}: panel `{title}` has no unit"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: panel `{title}` does not use $datasource"));
            }
            if p["targets"].as_array().is_none_or(|t| t.is_empty()) {
                problems.push(format!("{file}: panel `{title}` has no query"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_query_parses_and_filters_by_cluster_and_instance() {
    let mut problems = Vec::new();
    let queries = dashboards::all_queries();
    assert!(queries.len() >= 10, "too few queries: {queries:?}");
    for file in ["tandem-overview.json", "tandem-mirror.json"] {
        assert!(
            queries.iter().any(|q| q.dashboard == file),
            "no queries from {file}"
        );
    }
    for q in &queries {
        let at = format!("{} {}", q.dashboard, q.place);
        let uses_range_fn = ["rate(", "increase(", "irate(", "_over_time("]
            .iter()
            .any(|f| q.expr.contains(f));
        if uses_range_fn
            && !(q.expr.contains("[$__rate_interval]") || q.expr.contains("[$__range]"))
        {
            problems.push(format!("{at}: a range function without [$__rate_interval]"));
        }
        if q.expr.contains("[$__interval]") {
            problems.push(format!(
                "{at}: [$__interval] in a range; use $__rate_interval"
            ));
        }
        let expr = dashboards::substitute(&q.expr, "lab", "1m", "1h");
        let parsed = match dashboards::parse(&expr) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{at}: does not parse: {e}\n    {expr}"));
                continue;
            }
        };
        for s in dashboards::selectors(&parsed) {
            let name = s.name.clone().unwrap_or_default();
            if !name.starts_with("tandem_") {
                problems.push(format!("{at}: selects `{name}`, not a tandem_ metric"));
            }
            for (label, value) in [("cluster", "lab"), ("instance", ".*")] {
                let ok =
                    s.matchers.matchers.iter().any(|m| {
                        m.name == label && matches!(m.op, MatchOp::Re(_)) && m.value == value
                    });
                if !ok {
                    problems.push(format!("{at}: `{name}` lacks {label}=~\"${label}\""));
                }
            }
            // Mirror series by mirror, NBD series by export (named after the mirror).
            let per_mirror = if name.starts_with("tandem_mirror_") {
                Some("mirror")
            } else if name.starts_with("tandem_nbd_") {
                Some("export")
            } else {
                None
            };
            if let Some(label) = per_mirror {
                let ok =
                    s.matchers.matchers.iter().any(|m| {
                        m.name == label && matches!(m.op, MatchOp::Re(_)) && m.value == ".*"
                    });
                if !ok {
                    problems.push(format!("{at}: `{name}` lacks {label}=~\"$mirror\""));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dashboards::dir())
        .output()
        .expect("promtool is installed (scripts/deps.sh installs prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules: {said}");
    let (ok, said) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool test rules: {said}"
    );
    // Every alert has a unit test that expects it to fire, and a summary and a
    // description that say what to do.
    let rules = std::fs::read_to_string(dashboards::dir().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dashboards::dir().join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - exp_labels"
            )),
            "alert {a} has no unit test that expects it to fire"
        );
        assert!(
            tests.contains(&format!("alertname: {a}\n        exp_alerts: []")),
            "alert {a} has no unit test that expects it to stay quiet"
        );
    }
    assert_eq!(
        rules.matches("summary:").count(),
        rules.matches("- alert:").count()
    );
    assert_eq!(
        rules.matches("description:").count(),
        rules.matches("- alert:").count()
    );
}
