//! Server-side routing: ordered rules that pick a queue (and maybe a priority)
//! for a task by its kind and headers.

use std::collections::BTreeMap;

/// One `[[routes]]` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Glob over the task kind: `*` matches any run of characters, `?` one.
    pub kind: String,
    /// Headers that must all be present with exactly these values.
    pub headers: BTreeMap<String, String>,
    pub queue: String,
    pub priority: Option<u8>,
    /// Semaphores added to every task the rule routes.
    pub semaphores: Vec<String>,
}

impl Route {
    pub fn matches(&self, kind: &str, headers: &BTreeMap<String, String>) -> bool {
        glob_match(&self.kind, kind) && self.headers.iter().all(|(k, v)| headers.get(k) == Some(v))
    }
}

/// The first rule that matches, if any.
pub fn route<'a>(routes: &'a [Route], kind: &str, headers: &BTreeMap<String, String>) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(kind, headers))
}

/// Glob matching with `*` and `?`, iterative with single backtracking (linear
/// in practice, no recursion).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Where an enqueue would go, and why (the routing dry-run).
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub queue: String,
    pub priority: u8,
    /// The matching rule's index in `[[routes]]`; `None` for no match or an
    /// explicit queue.
    pub route_index: Option<usize>,
    /// One line for a person.
    pub text: String,
}

/// What queue and priority an enqueue with `queue` (maybe empty), `kind`
/// and `headers` and no priority of its own would get under `policies`.
pub fn explain(
    policies: &super::queue::Policies,
    queue: &str,
    kind: &str,
    headers: &BTreeMap<String, String>,
) -> Explanation {
    let default_priority = |q: &str| policies.get(q).default_priority;
    if !queue.is_empty() {
        return Explanation {
            queue: queue.to_owned(),
            priority: default_priority(queue),
            route_index: None,
            text: format!(
                "explicit queue {queue:?}: routes are not consulted; priority is the queue's default"
            ),
        };
    }
    let routes = policies.routes();
    match routes.iter().position(|r| r.matches(kind, headers)) {
        Some(i) => {
            let r = &routes[i];
            let (priority, from) = match r.priority {
                Some(p) => (p, "the route's priority"),
                None => (default_priority(&r.queue), "the queue's default priority"),
            };
            Explanation {
                queue: r.queue.clone(),
                priority,
                route_index: Some(i),
                text: format!(
                    "route {i} (kind {:?}{}) matched: queue {:?}, {from}",
                    r.kind,
                    if r.headers.is_empty() { String::new() } else { format!(", headers {:?}", r.headers) },
                    r.queue
                ),
            }
        }
        None => Explanation {
            queue: super::queue::DEFAULT_QUEUE.to_owned(),
            priority: default_priority(super::queue::DEFAULT_QUEUE),
            route_index: None,
            text: format!("no route matched kind {kind:?} among {} rules: the default queue", routes.len()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("email.*", "email.send"));
        assert!(glob_match("email.*", "email."));
        assert!(!glob_match("email.*", "emails.send"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.resize.*", "img.resize.large"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    fn rule(kind: &str, headers: &[(&str, &str)], queue: &str) -> Route {
        Route {
            kind: kind.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            queue: queue.into(),
            priority: None,
            semaphores: Vec::new(),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_headers_must_match() {
        let routes =
            vec![rule("email.*", &[("tenant", "acme")], "acme-emails"), rule("email.*", &[], "emails")];
        let acme: BTreeMap<_, _> = [("tenant".to_string(), "acme".to_string())].into();
        let other: BTreeMap<_, _> = [("tenant".to_string(), "other".to_string())].into();
        assert_eq!(route(&routes, "email.send", &acme).unwrap().queue, "acme-emails");
        assert_eq!(route(&routes, "email.send", &other).unwrap().queue, "emails");
        assert!(route(&routes, "sms.send", &acme).is_none());
    }

    #[test]
    fn explain_names_the_rule_the_queue_and_where_the_priority_comes_from() {
        use crate::core::queue::{Policies, QueuePolicy};
        let mut urgent = rule("email.*", &[("tenant", "acme")], "acme-emails");
        urgent.priority = Some(7);
        let emails = QueuePolicy { default_priority: 3, ..QueuePolicy::default() };
        let policies =
            Policies::new(BTreeMap::from([("emails".to_string(), emails)]), QueuePolicy::default())
                .with_routes(vec![urgent, rule("email.*", &[], "emails")]);
        let acme: BTreeMap<_, _> = [("tenant".to_string(), "acme".to_string())].into();
        let e = explain(&policies, "", "email.send", &acme);
        assert_eq!((e.queue.as_str(), e.priority, e.route_index), ("acme-emails", 7, Some(0)));
        let e = explain(&policies, "", "email.send", &BTreeMap::new());
        assert_eq!((e.queue.as_str(), e.priority, e.route_index), ("emails", 3, Some(1)));
        assert!(e.text.contains("default priority"), "{}", e.text);
        let e = explain(&policies, "", "sms.send", &BTreeMap::new());
        assert_eq!((e.queue.as_str(), e.route_index), ("default", None));
        let e = explain(&policies, "emails", "email.send", &acme);
        assert_eq!((e.queue.as_str(), e.priority, e.route_index), ("emails", 3, None));
    }
}
