//! Prepared queries answered from the local catalog (`reference/consul-dns.md` §6).
//!
//! Definitions come from `GET /v1/query` (polled by the watcher). `<x>.query.<domain>` resolves
//! like Consul's `PreparedQueryResolve`: by ID, then exact name (case-insensitive), then the
//! longest matching template prefix (`name_prefix_match`, the empty name matching everything).
//! A template's `Service` fields are interpolated (`${name.full}`, `${name.prefix}`,
//! `${name.suffix}`, `${match(N)}`) and the instances filtered by health (`OnlyPassing`,
//! `IgnoreCheckIDs`), `NodeMeta`, `ServiceMeta` and `Tags` (`!tag` excludes), and always by
//! signpost's `filter_tags`, so `nodns` standbys never answer a prepared query either.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use regex::Regex;

use crate::consul::catalog::{Health, HealthEntry, PreparedQuery};

/// Compiled definitions.
#[derive(Debug, Default)]
pub struct Queries {
    defs: Vec<PreparedQuery>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    /// (lowercase prefix, definition, compiled `Regexp`), longest prefix first.
    templates: Vec<(String, usize, Option<Regex>)>,
}

/// A definition rendered for one name: what to select and how long answers live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The definition's ID.
    pub id: String,
    /// Lowercase service name.
    pub service: String,
    /// Lowercase; `!tag` means "must not have".
    pub tags: Vec<String>,
    pub only_passing: bool,
    pub ignore_check_ids: Vec<String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_meta: BTreeMap<String, String>,
    /// `DNS.TTL` in seconds, when set and valid.
    pub ttl: Option<u32>,
    /// Whether the definition has failover targets: when nothing answers locally, the agent's
    /// `/execute` is asked (`consul::failover`).
    pub has_failover: bool,
    /// Whether the definition came from a template (rendered per name, not precomputable).
    pub template: bool,
}

// === impl Queries ===

impl Queries {
    pub fn new(defs: &[PreparedQuery]) -> Queries {
        let mut q = Queries {
            defs: defs.to_vec(),
            ..Queries::default()
        };
        for (i, def) in defs.iter().enumerate() {
            if !def.id.is_empty() {
                q.by_id.insert(def.id.to_ascii_lowercase(), i);
            }
            match &def.template {
                Some(t) if t.kind.is_empty() || t.kind == "name_prefix_match" => {
                    let regex = if t.regexp.is_empty() {
                        None
                    } else {
                        match Regex::new(&t.regexp) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                tracing::warn!(query = %def.name, error = %e, "prepared query template regexp does not compile; skipped");
                                continue;
                            }
                        }
                    };
                    q.templates.push((def.name.to_ascii_lowercase(), i, regex));
                }
                Some(_) => {}
                None if !def.name.is_empty() => {
                    q.by_name.insert(def.name.to_ascii_lowercase(), i);
                }
                None => {}
            }
        }
        q.templates
            .sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        q
    }

    /// The definitions that are not templates, rendered, with every name they answer to (ID
    /// and name, lowercase).
    pub fn fixed(&self) -> impl Iterator<Item = (Vec<String>, Rendered)> + '_ {
        self.defs.iter().filter(|d| d.template.is_none()).map(|d| {
            let mut names = vec![d.id.to_ascii_lowercase()];
            if !d.name.is_empty() {
                names.push(d.name.to_ascii_lowercase());
            }
            names.retain(|n| !n.is_empty());
            (names, render(d, "", "", &[]))
        })
    }

    /// Resolve `name` (lowercase, as DNS lowercases it before interpolation).
    pub fn resolve(&self, name: &str) -> Option<Rendered> {
        if let Some(&i) = self.by_id.get(name).or_else(|| self.by_name.get(name)) {
            let def = &self.defs[i];
            if def.template.is_some() {
                // Consul: asking a template by ID is an error; DNS answers it as not found.
                return None;
            }
            return Some(render(def, name, "", &[]));
        }
        let (prefix, i, regex) = self
            .templates
            .iter()
            .find(|(prefix, _, _)| name.starts_with(prefix.as_str()))?;
        let matches: Vec<String> = match regex {
            Some(r) => r
                .captures(name)
                .map(|c| {
                    c.iter()
                        .map(|m| m.map_or(String::new(), |m| m.as_str().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut rendered = render(&self.defs[*i], name, prefix, &matches);
        rendered.template = true;
        Some(rendered)
    }
}

/// Interpolate a definition for `full` (`${name.full}`), whose template prefix is `prefix`.
fn render(def: &PreparedQuery, full: &str, prefix: &str, matches: &[String]) -> Rendered {
    let interpolate = |s: &str| interpolate(s, full, prefix, matches);
    let remove_empty = def.template.as_ref().is_some_and(|t| t.remove_empty_tags);
    let tags = def
        .service
        .tags
        .iter()
        .map(|t| interpolate(t).to_ascii_lowercase())
        .filter(|t| !(remove_empty && t.is_empty()))
        .collect();
    let ttl = def
        .dns
        .as_ref()
        .filter(|d| !d.ttl.is_empty())
        .and_then(|d| parse_go_duration(&d.ttl))
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    let has_failover = def.service.failover.as_ref().is_some_and(|f| {
        let n = f.get("NearestN").and_then(|v| v.as_u64()).unwrap_or(0);
        let non_empty = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_array())
                .is_some_and(|a| !a.is_empty())
        };
        n > 0 || non_empty("Datacenters") || non_empty("Targets")
    });
    Rendered {
        id: def.id.clone(),
        service: interpolate(&def.service.service).to_ascii_lowercase(),
        tags,
        only_passing: def.service.only_passing,
        ignore_check_ids: def.service.ignore_check_ids.clone(),
        node_meta: interpolate_map(&def.service.node_meta, &interpolate),
        service_meta: interpolate_map(&def.service.service_meta, &interpolate),
        ttl,
        has_failover,
        template: false,
    }
}

fn interpolate_map(
    m: &BTreeMap<String, String>,
    f: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (f(k), f(v))).collect()
}

/// HIL interpolation of the variables Consul offers templates (§6.2).
fn interpolate(s: &str, full: &str, prefix: &str, matches: &[String]) -> String {
    if !s.contains("${") {
        return s.to_owned();
    }
    let suffix = full.strip_prefix(prefix).unwrap_or(full);
    let mut out = s
        .replace("${name.full}", full)
        .replace("${name.prefix}", prefix)
        .replace("${name.suffix}", suffix);
    while let Some(start) = out.find("${match(") {
        let Some(len) = out[start..].find(")}") else {
            break;
        };
        let index: usize = out[start + 8..start + len]
            .trim()
            .parse()
            .unwrap_or(usize::MAX);
        let value = matches.get(index).cloned().unwrap_or_default();
        out.replace_range(start..start + len + 2, &value);
    }
    out
}

/// Whether `entry` answers the rendered query: health (ignoring `IgnoreCheckIDs`; critical is
/// out, and with `OnlyPassing` warning too), node and service meta (all keys equal), tags (all
/// plain tags present, no `!tag` present, case-insensitive), and never a filter-tagged one.
pub fn selects(entry: &HealthEntry, q: &Rendered, filter_tags: &[String]) -> bool {
    let health_ok = match entry.health_ignoring(&q.ignore_check_ids) {
        Health::Passing => true,
        Health::Warning => !q.only_passing,
        Health::Critical => false,
    };
    let meta_ok = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    let tags_ok = q.tags.iter().all(|t| match t.strip_prefix('!') {
        Some(not) => !entry.has_any_tag(&[not.to_owned()]),
        None => entry.has_any_tag(std::slice::from_ref(t)),
    });
    health_ok
        && meta_ok(&q.node_meta, &entry.node.meta)
        && meta_ok(&q.service_meta, &entry.service.meta)
        && tags_ok
        && !entry.has_any_tag(filter_tags)
}

/// Go's `time.ParseDuration` for the forms Consul writes (`10s`, `1m30s`, `500ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * unit).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::catalog::{QueryDns, QueryService, QueryTemplate};

    fn def(id: &str, name: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: QueryService {
                service: service.into(),
                ..QueryService::default()
            },
            ..PreparedQuery::default()
        }
    }

    /// ID, then exact name, then the longest template prefix, with interpolation.
    #[test]
    fn resolution_order_and_templates() {
        let mut geo = def("t1", "geo-db-", "mysql-${match(1)}");
        geo.template = Some(QueryTemplate {
            kind: "name_prefix_match".into(),
            regexp: "^geo-db-(.*?)-([^\\-]+?)$".into(),
            remove_empty_tags: false,
        });
        geo.service.tags = vec!["${match(2)}".into(), "!nodns".into()];
        let mut catch_all = def("t2", "", "${name.full}");
        catch_all.template = Some(QueryTemplate::default());
        let mut fixed = def("8f3a-uuid", "Some.Query", "db");
        fixed.dns = Some(QueryDns { ttl: "3s".into() });
        let q = Queries::new(&[geo, catch_all, fixed]);

        let r = q.resolve("8f3a-uuid").unwrap();
        assert_eq!((r.service.as_str(), r.ttl), ("db", Some(3)));
        assert_eq!(q.resolve("some.query").unwrap().service, "db");
        let r = q.resolve("geo-db-customer-primary").unwrap();
        assert_eq!(r.service, "mysql-customer");
        assert_eq!(r.tags, ["primary", "!nodns"]);
        assert!(r.template);
        assert_eq!(q.resolve("redis").unwrap().service, "redis", "catch-all");
        assert!(
            q.resolve("t1").is_none(),
            "a template by ID is not answered"
        );
        assert_eq!(q.fixed().count(), 1);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("ten"), None);
    }

    /// `!tag`, meta and the filter tags all exclude.
    #[test]
    fn selection_filters() {
        let mut e = HealthEntry {
            node: Default::default(),
            service: Default::default(),
            checks: vec![],
        };
        e.service.tags = vec!["Primary".into()];
        std::sync::Arc::make_mut(&mut e.node)
            .meta
            .insert("az".into(), "a".into());
        let mut q = render(&def("", "q", "db"), "q", "", &[]);
        q.tags = vec!["primary".into()];
        assert!(selects(&e, &q, &[]));
        q.node_meta.insert("az".into(), "b".into());
        assert!(!selects(&e, &q, &[]));
        q.node_meta.clear();
        q.tags = vec!["!primary".into()];
        assert!(!selects(&e, &q, &[]));
        q.tags.clear();
        assert!(
            !selects(&e, &q, &["primary".into()]),
            "filter tags always apply"
        );
    }
}
