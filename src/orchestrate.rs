//! Runs one action per machine as a graph built from `depends_on`, up to N
//! at a time. The only place that knows about more than one machine.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use crate::envfile::Config;
use crate::ui::{Outcome, Reporter};

/// Which way dependencies point for this command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A machine goes after what it depends on (`up`, `provision`).
    DependenciesFirst,
    /// A machine goes after what depends on it (`halt`, `destroy`).
    DependantsFirst,
}

/// The machines of one command and which must finish before which.
#[derive(Debug)]
pub struct Graph {
    names: Vec<String>,
    /// `before[i]`: the nodes that must finish, successfully, before node i.
    before: Vec<Vec<usize>>,
}

impl Graph {
    /// The graph over `selected` machines (edges between them only).
    pub fn new(config: &Config, selected: &[String], order: Order) -> Self {
        let names: Vec<String> = selected.to_vec();
        let index = |n: &str| names.iter().position(|s| s == n);
        let mut before = vec![Vec::new(); names.len()];
        for (i, name) in names.iter().enumerate() {
            for dep in &config.machines[name].depends_on {
                if let Some(j) = index(dep) {
                    match order {
                        Order::DependenciesFirst => before[i].push(j),
                        Order::DependantsFirst => before[j].push(i),
                    }
                }
            }
        }
        Self { names, before }
    }

    /// Build a graph from explicit edges (`after` waits for `first`).
    #[cfg(test)]
    pub fn from_edges(names: &[&str], edges: &[(&str, &str)]) -> Self {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let pos = |n: &str| names.iter().position(|s| s == n).expect("known node");
        let mut before = vec![Vec::new(); names.len()];
        for (after, first) in edges {
            before[pos(after)].push(pos(first));
        }
        Self { names, before }
    }
}

/// Run `action` for every machine of `graph`, at most `jobs` at once. A
/// machine whose predecessor failed or was skipped is skipped. Returns each
/// machine's outcome in the graph's order.
pub fn run<F>(
    graph: &Graph,
    jobs: usize,
    reporter: &dyn Reporter,
    action: F,
) -> Vec<(String, Outcome)>
where
    F: Fn(&str) -> Result<String, String> + Sync,
{
    let n = graph.names.len();
    let jobs = jobs.max(1);
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending: Vec<usize> = vec![0; n];
    for (i, preds) in graph.before.iter().enumerate() {
        pending[i] = preds.len();
        for &p in preds {
            after[p].push(i);
        }
    }
    let mut blocked_by: Vec<Option<(usize, bool)>> = vec![None; n];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| pending[i] == 0).collect();

    let (tx, rx) = mpsc::channel::<(usize, Result<String, String>)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            while running < jobs {
                let Some(i) = ready.pop_front() else { break };
                let tx = tx.clone();
                let name = graph.names[i].as_str();
                let action = &action;
                scope.spawn(move || {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| action(name)))
                        .unwrap_or_else(|_| Err("internal error: the action panicked".into()));
                    let _ = tx.send((i, result));
                });
                running += 1;
            }
            if running == 0 {
                break;
            }
            let (i, result) = rx.recv().expect("a worker always reports");
            running -= 1;
            let outcome = match result {
                Ok(summary) => Outcome::Done { summary },
                Err(error) => Outcome::Failed { error },
            };
            reporter.finished(&graph.names[i], &outcome);
            let ok = outcome.is_done();
            outcomes[i] = Some(outcome);

            // Release or skip what waited for i; skips spread onwards.
            let mut work = vec![(i, ok)];
            while let Some((done, done_ok)) = work.pop() {
                for &s in &after[done] {
                    if !done_ok && blocked_by[s].is_none() {
                        let failed = matches!(outcomes[done], Some(Outcome::Failed { .. }));
                        blocked_by[s] = Some((done, failed));
                    }
                    pending[s] -= 1;
                    if pending[s] > 0 {
                        continue;
                    }
                    match blocked_by[s] {
                        None => ready.push_back(s),
                        Some((b, failed)) => {
                            let how = if failed { "failed" } else { "was skipped" };
                            let outcome = Outcome::Skipped {
                                reason: format!("`{}` {how}", graph.names[b]),
                            };
                            reporter.finished(&graph.names[s], &outcome);
                            outcomes[s] = Some(outcome);
                            work.push((s, false));
                        }
                    }
                }
            }
        }
    });
    graph
        .names
        .iter()
        .cloned()
        .zip(outcomes.into_iter().map(|o| o.expect("every node ends")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    struct Quiet;
    impl Reporter for Quiet {
        fn step(&self, _: &str, _: &str) {}
        fn line(&self, _: &str, _: crate::ui::Stream, _: &str) {}
        fn finished(&self, _: &str, _: &Outcome) {}
        fn note(&self, _: &str) {}
        fn result(&self, _: bool, _: &[(String, Outcome)]) {}
    }

    #[test]
    fn dependencies_run_first() {
        let g = Graph::from_edges(&["web", "db", "cache"], &[("web", "db"), ("web", "cache")]);
        let log = Mutex::new(Vec::new());
        let out = run(&g, 4, &Quiet, |m| {
            log.lock().unwrap().push(m.to_owned());
            Ok("up".into())
        });
        let log = log.into_inner().unwrap();
        assert_eq!(log.last().unwrap(), "web");
        assert!(out.iter().all(|(_, o)| o.is_done()));
    }

    #[test]
    fn failure_skips_dependants_transitively() {
        let g = Graph::from_edges(
            &["db", "api", "web", "other"],
            &[("api", "db"), ("web", "api")],
        );
        let out = run(&g, 2, &Quiet, |m| {
            if m == "db" {
                Err("boom".into())
            } else {
                Ok("ok".into())
            }
        });
        assert!(matches!(&out[0].1, Outcome::Failed { error } if error == "boom"));
        assert_eq!(
            out[1].1,
            Outcome::Skipped {
                reason: "`db` failed".into()
            }
        );
        assert_eq!(
            out[2].1,
            Outcome::Skipped {
                reason: "`api` was skipped".into()
            }
        );
        assert!(out[3].1.is_done());
    }

    #[test]
    fn jobs_limit_parallelism() {
        let g = Graph::from_edges(&["a", "b", "c", "d"], &[]);
        let now = Mutex::new(0usize);
        let peak = Mutex::new(0usize);
        let t = Instant::now();
        run(&g, 2, &Quiet, |_| {
            {
                let mut n = now.lock().unwrap();
                *n += 1;
                let mut p = peak.lock().unwrap();
                *p = (*p).max(*n);
            }
            std::thread::sleep(Duration::from_millis(50));
            *now.lock().unwrap() -= 1;
            Ok(String::new())
        });
        assert_eq!(*peak.lock().unwrap(), 2);
        assert!(t.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn panics_become_failures() {
        let g = Graph::from_edges(&["a", "b"], &[("b", "a")]);
        let out = run(&g, 1, &Quiet, |m| {
            if m == "a" {
                panic!("bad")
            }
            Ok(String::new())
        });
        assert!(matches!(out[0].1, Outcome::Failed { .. }));
        assert!(matches!(out[1].1, Outcome::Skipped { .. }));
    }
}
