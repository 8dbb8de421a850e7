//! What changed between two configurations, one line per change, for the log of a reload.
//!
//! Responsible for: comparing the resolved configurations (defaults included; secrets never
//! shown, only that one changed) and naming each change by its key; listeners, domains and routes by their address or name, so adding
//! one is not read as every later one changing. Not responsible for: applying anything.

use super::Config;
use serde_json::Value;

/// Tables of which a file has several, and the key that names each.
const NAMED: [(&str, &str); 4] = [
    ("listen", "addr"),
    ("domain", "name"),
    ("route", "domain"),
    ("ldap", "name"),
];

/// Every change from `old` to `new`: `limits.max_recipients: 1000 -> 500`,
/// `domain other.test: added`, `listen 127.0.0.1:25: tls_cert: none -> "/etc/cert.pem"`.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["(the configurations cannot be compared)".into()];
    };
    let mut out = Vec::new();
    let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
    for key in keys {
        let (x, y) = (
            a.get(key).unwrap_or(&Value::Null),
            b.get(key).unwrap_or(&Value::Null),
        );
        match NAMED.iter().find(|(t, _)| t == key) {
            Some((table, id)) => named(table, id, x, y, &mut out),
            None => walk(key, x, y, &mut out),
        }
    }
    // secrets print alike: their change is told without them
    if old.web.token.is_some() && new.web.token.is_some() && old.web.token != new.web.token {
        out.push("web.token: changed (secret)".into());
    }
    for l in &new.ldap {
        let before = old.ldap.iter().find(|o| o.name == l.name);
        if let Some(o) = before
            && o.bind_password.is_some()
            && l.bind_password.is_some()
            && o.bind_password != l.bind_password
        {
            out.push(format!("ldap {}: bind_password: changed (secret)", l.name));
        }
    }
    let numbers = |c: &Config| c.batv.keys.iter().map(|k| k.number).collect::<Vec<_>>();
    if numbers(old) == numbers(new) && old.batv.keys != new.batv.keys {
        out.push("batv.keys: a secret changed".into());
    }
    out
}

fn named(table: &str, id: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let list = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|t| (show_plain(&t[id]), t.clone()))
            .collect()
    };
    let (a, b) = (list(old), list(new));
    for (name, t) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{table} {name}: removed")),
            Some((_, u)) => walk(&format!("{table} {name}:"), t, u, out),
        }
    }
    for (name, _) in b.iter().filter(|(n, _)| !a.iter().any(|(m, _)| m == n)) {
        out.push(format!("{table} {name}: added"));
    }
}

/// Compares two values under `path`; tables key by key, anything else as a whole.
fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let sub = match path.ends_with(':') {
                    true => format!("{path} {k}"),
                    false => format!("{path}.{k}"),
                };
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                walk(&sub, x, y, out);
            }
        }
        _ => out.push(format!("{path}: {} -> {}", show(old), show(new))),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) if s.is_empty() => "none".into(),
        other => other.to_string(),
    }
}

fn show_plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::changes;
    use crate::config::Config;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.example.test\"\nstate_dir = \"/var/lib/backstop\"\n{extra}\n\
             [[listen]]\naddr = \"127.0.0.1:2525\"\n\
             [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:2526\"]\n\
             next_hop = \"maildir:/m\"\n"
        );
        Config::from_toml(&text, Path::new("/")).unwrap()
    }

    #[test]
    fn the_same_file_has_no_changes() {
        assert!(changes(&cfg(""), &cfg("")).is_empty());
    }

    #[test]
    fn a_value_names_its_key_and_both_values() {
        let new = cfg("[limits]\nmax_recipients = 500");
        assert_eq!(
            changes(&cfg(""), &new),
            vec!["limits.max_recipients: 1000 -> 500"]
        );
    }

    #[test]
    fn domains_and_listeners_are_named_not_numbered() {
        let mut new = cfg("");
        let mut other = new.domains[0].clone();
        other.name = backstop_proto::address::Domain::parse("other.test", false).unwrap();
        new.domains.insert(0, other);
        new.listeners[0].tls_cert = Some("/etc/cert.pem".into());
        assert_eq!(
            changes(&cfg(""), &new),
            vec![
                "domain other.test: added",
                "listen 127.0.0.1:2525: tls_cert: none -> \"/etc/cert.pem\"",
            ]
        );
        assert_eq!(changes(&new, &cfg(""))[0], "domain other.test: removed");
    }

    #[test]
    fn a_secret_is_never_shown() {
        let a = cfg("[web]\ntoken = \"0123456789abcdef-old\"");
        let b = cfg("[web]\ntoken = \"0123456789abcdef-new\"");
        let c = cfg("");
        assert_eq!(changes(&a, &b), vec!["web.token: changed (secret)"]);
        assert_eq!(changes(&c, &a), vec!["web.token: none -> \"(secret)\""]);
    }
}
