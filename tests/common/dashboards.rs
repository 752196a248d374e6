//! Shared by the dashboard lint (`tests/dashboards.rs`) and the real-Prometheus lab test
//! (`tests/lab.rs`): the Grafana dashboards in `dashboards/`, their PromQL expressions
//! with Grafana's variables substituted, and the metric selectors each expression uses.
//!
//! [`all_queries`] covers every dashboard (the lint checks them all). [`queries`], which
//! the lab evaluates against a real Prometheus, leaves out the dashboards listed in
//! [`NEED_A_MIRROR`]: their panels have data only once the lab cluster runs a mirror,
//! and then the lab switches to `all_queries()` (or `queries_of("tandem-mirror.json")`).

use std::path::{Path, PathBuf};

use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;

/// One PromQL expression of a dashboard: a panel target or an annotation.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    /// "panel 3 `Title` A" or "annotation `Failovers`".
    pub place: String,
    /// As written in the JSON, with `$cluster`, `$__rate_interval`, ...
    pub expr: String,
}

/// Dashboards whose panels show data only on a cluster that replicates a volume.
pub const NEED_A_MIRROR: &[&str] = &["tandem-mirror.json"];

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Every `dashboards/*.json`, parsed, with its file name.
pub fn load() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("dashboards/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            json,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards found");
    out
}

/// Every panel of a dashboard, including those nested in rows.
pub fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for q in p["panels"].as_array().into_iter().flatten() {
            out.push(q);
        }
    }
    out
}

/// Every PromQL expression of the dashboards a cluster without mirrors fills: all but
/// [`NEED_A_MIRROR`].
#[allow(dead_code)] // tests/lab.rs
pub fn queries() -> Vec<Query> {
    all_queries()
        .into_iter()
        .filter(|q| !NEED_A_MIRROR.contains(&q.dashboard.as_str()))
        .collect()
}

/// Every PromQL expression of one dashboard file (`tandem-mirror.json`).
#[allow(dead_code)] // for tests/lab.rs once the lab runs a mirror
pub fn queries_of(file: &str) -> Vec<Query> {
    let out: Vec<Query> = all_queries()
        .into_iter()
        .filter(|q| q.dashboard == file)
        .collect();
    assert!(!out.is_empty(), "no queries in dashboards/{file}");
    out
}

/// Every PromQL expression of every dashboard.
pub fn all_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for (file, d) in load() {
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(Query {
                        dashboard: file.clone(),
                        place: format!(
                            "panel {} `{}` {}",
                            p["id"],
                            p["title"].as_str().unwrap_or(""),
                            t["refId"].as_str().unwrap_or("")
                        ),
                        expr: e.to_string(),
                    });
                }
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(e) = a["expr"].as_str() {
                out.push(Query {
                    dashboard: file.clone(),
                    place: format!("annotation `{}`", a["name"].as_str().unwrap_or("")),
                    expr: e.to_string(),
                });
            }
        }
    }
    out
}

/// `expr` with Grafana's variables replaced the way Grafana would for one cluster and
/// every instance and mirror (`All` is `.*`).
pub fn substitute(expr: &str, cluster: &str, rate_interval: &str, range: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range)
        .replace("$__interval", "15s")
        .replace("$cluster", cluster)
        .replace("$instance", ".*")
        .replace("$mirror", ".*")
}

/// Parses `expr` (variables already substituted).
pub fn parse(expr: &str) -> Result<Expr, String> {
    parser::parse(expr)
}

struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = String;
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        match e {
            Expr::VectorSelector(v) => self.0.push(v.clone()),
            Expr::MatrixSelector(m) => self.0.push(m.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// The vector selectors (metric name and matchers) an expression reads.
pub fn selectors(e: &Expr) -> Vec<VectorSelector> {
    let mut v = Selectors(Vec::new());
    walk_expr(&mut v, e).expect("the visitor never fails");
    v.0
}
