//! The resource hierarchy of a group: `depends_on` edges ordered into a start order
//! (dependencies first) and the reverse stop order.

use std::collections::BTreeMap;

use crate::config::GroupConfig;

/// `depends_on` forms a cycle through the named resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("dependency cycle through resource `{0}`")]
pub struct CycleError(pub String);

/// Indices of the group's resources in start order: each after everything it depends
/// on; ties keep the order of the file. Unknown dependencies are ignored here
/// (validation reports them).
pub fn start_order(group: &GroupConfig) -> Result<Vec<usize>, CycleError> {
    let index: BTreeMap<&str, usize> = group
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut mark = vec![0u8; group.resources.len()];
    let mut order = Vec::with_capacity(group.resources.len());
    fn visit(
        i: usize,
        group: &GroupConfig,
        index: &BTreeMap<&str, usize>,
        mark: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), CycleError> {
        match mark[i] {
            2 => return Ok(()),
            1 => return Err(CycleError(group.resources[i].name.clone())),
            _ => {}
        }
        mark[i] = 1;
        for d in &group.resources[i].depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                visit(j, group, index, mark, order)?;
            }
        }
        mark[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..group.resources.len() {
        visit(i, group, &index, &mut mark, &mut order)?;
    }
    Ok(order)
}

/// Indices of `resource` and everything that depends on it (directly or not), in
/// start order. Restarting a resource restarts these, stopping top-down first.
pub fn dependents_closure(group: &GroupConfig, order: &[usize], resource: usize) -> Vec<usize> {
    let mut affected = vec![false; group.resources.len()];
    affected[resource] = true;
    // In start order every dependency comes before its dependents, so one pass suffices.
    for &i in order {
        if group.resources[i].depends_on.iter().any(|d| {
            group
                .resources
                .iter()
                .position(|r| &r.name == d)
                .is_some_and(|j| affected[j])
        }) {
            affected[i] = true;
        }
    }
    order.iter().copied().filter(|&i| affected[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn group(res: &str) -> GroupConfig {
        let text = format!(
            "[cluster]\nname=\"t\"\nkey=\"0123456789abcdef\"\n[heartbeat]\npaths=[\"h\"]\n[[node]]\nname=\"a\"\npriority=1\naddresses={{h=\"10.0.0.1\"}}\n[[group]]\nname=\"g\"\n{res}"
        );
        Config::parse(&text).unwrap().groups.remove(0)
    }

    fn res(name: &str, deps: &[&str]) -> String {
        format!(
            "[[group.resource]]\nname=\"{name}\"\nkind=\"process\"\ncommand=[\"true\"]\ndepends_on={deps:?}\n"
        )
    }

    #[test]
    fn dependencies_start_first_and_stop_last() {
        // scanner depends on mail, mail on vip: declared in the "wrong" order.
        let g = group(&(res("scanner", &["mail"]) + &res("mail", &["vip"]) + &res("vip", &[])));
        let order = start_order(&g).unwrap();
        let names: Vec<_> = order
            .iter()
            .map(|&i| g.resources[i].name.as_str())
            .collect();
        assert_eq!(names, ["vip", "mail", "scanner"]);
    }

    #[test]
    fn closure_covers_dependents_only() {
        let g = group(
            &(res("vip", &[])
                + &res("mail", &["vip"])
                + &res("scanner", &["mail"])
                + &res("other", &[])),
        );
        let order = start_order(&g).unwrap();
        let mail = 1;
        let names: Vec<_> = dependents_closure(&g, &order, mail)
            .iter()
            .map(|&i| g.resources[i].name.as_str())
            .collect();
        assert_eq!(names, ["mail", "scanner"]);
    }
}
