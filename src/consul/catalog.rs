//! The immutable catalog snapshot: everything signpost knows about Consul at one index.
//!
//! A `Catalog` is built by the watcher (or the `file:` source), wrapped in an `Arc` and published
//! on a `tokio::sync::watch` channel. The answer table, the SRV data file, the templates and the
//! gauges all read the same value, so they cannot disagree (DESIGN.md, rule 2).
//!
//! The entry types mirror Consul's `/v1/health/service/<name>` JSON (`reference/consul-dns.md`
//! §7.1). Consul omits or nulls several fields (`Port` when 0, `Meta`, `TaggedAddresses`,
//! `Weights`), so every optional field tolerates both.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// One service instance as `/v1/health/service/<name>` returns it: the node, the service
/// registration and the checks that apply to it (node checks plus its own).
///
/// The node is shared: the watcher gives every instance on a node the same `Arc<Node>` (the
/// one in [`Catalog::nodes`]), so that 50,000 instances on 2,000 nodes hold 2,000 node records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    pub node: Arc<Node>,
    pub service: Service,
    #[serde(default, deserialize_with = "null_default")]
    pub checks: Vec<Check>,
}

/// A catalog node (`Node` in Consul's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    pub node: String,
    #[serde(default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(default, deserialize_with = "null_default")]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
}

/// A service registration (`Service` in Consul's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// "" means "use the node's address".
    #[serde(default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    /// Omitted by Consul when 0.
    #[serde(default, deserialize_with = "null_default")]
    pub port: u16,
    /// Null for services registered through the catalog endpoint.
    #[serde(default)]
    pub weights: Option<Weights>,
}

/// A tagged service address (`{"Address": "...", "Port": 0}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    #[serde(default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(default, deserialize_with = "null_default")]
    pub port: u16,
}

/// SRV weights advertised by check state (`reference/consul-dns.md` §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    #[serde(default)]
    pub passing: u16,
    #[serde(default)]
    pub warning: u16,
}

/// A health check that applies to an instance. `service_id == ""` is a node check.
///
/// Only what DNS and the feed use is kept: `Output`, `Notes`, `Definition` and the like are
/// not parsed, and `Node`, `Name` and `ServiceName` are skipped on parse (the entry's node
/// and service say the same; one copy per check per instance was a measurable share of the
/// catalog at 50,000 instances). They stay fields for code that builds checks itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    #[serde(default, skip_deserializing)]
    pub node: String,
    #[serde(rename = "CheckID", default, deserialize_with = "null_default")]
    pub check_id: String,
    #[serde(default, skip_deserializing)]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(rename = "ServiceID", default, deserialize_with = "null_default")]
    pub service_id: String,
    #[serde(default, skip_deserializing)]
    pub service_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub modify_index: u64,
}

/// Aggregated check state of an instance, worst first wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

/// A prepared query definition as `GET /v1/query` returns it (`reference/consul-dns.md` §6.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PreparedQuery {
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default)]
    pub template: Option<QueryTemplate>,
    #[serde(default)]
    pub service: QueryService,
    #[serde(rename = "DNS", default)]
    pub dns: Option<QueryDns>,
}

/// `Template` of a prepared query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryTemplate {
    #[serde(rename = "Type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub regexp: String,
    #[serde(default)]
    pub remove_empty_tags: bool,
}

/// `Service` of a prepared query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryService {
    #[serde(default, deserialize_with = "null_default")]
    pub service: String,
    #[serde(default)]
    pub failover: Option<serde_json::Value>,
    #[serde(rename = "IgnoreCheckIDs", default, deserialize_with = "null_default")]
    pub ignore_check_ids: Vec<String>,
    #[serde(default)]
    pub only_passing: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub service_meta: BTreeMap<String, String>,
}

/// `DNS` of a prepared query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryDns {
    #[serde(rename = "TTL", default, deserialize_with = "null_default")]
    pub ttl: String,
}

/// One consistent view of the Consul catalog. Cheap to clone: services are shared per name, so
/// a watcher that refetches one service builds the next snapshot without copying the others.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The local datacenter (the agent's, unless configured).
    pub datacenter: String,
    /// The agent's node name, used for `_agent` in prepared queries.
    pub node_name: String,
    /// The highest `X-Consul-Index` this snapshot was built from.
    pub index: u64,
    /// Every service by its registered name, with every instance, critical ones included;
    /// health filtering is the answerers' job. Instances are sorted by node, port, ID.
    pub services: BTreeMap<String, Arc<[HealthEntry]>>,
    /// Catalog nodes by name, for `<node>.node` lookups and PTR. The same `Arc`s as the
    /// entries' `node` where the watcher could share them.
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// Prepared query definitions.
    pub queries: Arc<[PreparedQuery]>,
}

// === impl HealthEntry ===

impl HealthEntry {
    /// The instance's aggregated check state: critical if any check is critical, else warning
    /// if any is warning, else passing. An instance with no checks is passing (`reference/
    /// consul-dns.md` §3.1). Unknown status strings count as warning, never as passing.
    pub fn health(&self) -> Health {
        self.health_ignoring(&[])
    }

    /// Like [`HealthEntry::health`], skipping checks whose ID is in `ignore` (prepared
    /// queries' `IgnoreCheckIDs`).
    pub fn health_ignoring(&self, ignore: &[String]) -> Health {
        let mut worst = Health::Passing;
        for check in &self.checks {
            if ignore.iter().any(|id| id == &check.check_id) {
                continue;
            }
            let h = match check.status.as_str() {
                "passing" => Health::Passing,
                "critical" => Health::Critical,
                _ => Health::Warning,
            };
            worst = worst.max(h);
        }
        worst
    }

    /// The address clients should use: the service address, or the node's when it is empty.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }

    /// Whether the instance carries any of `filter_tags` (already lowercased),
    /// compared case-insensitively like Consul's tag lookups.
    pub fn has_any_tag(&self, filter_tags: &[String]) -> bool {
        self.service
            .tags
            .iter()
            .any(|t| filter_tags.iter().any(|f| t.eq_ignore_ascii_case(f)))
    }
}

/// Sort instances the way the SRV data contract and the tests expect: node, then port, then ID.
pub fn sort_entries(entries: &mut [HealthEntry]) {
    entries.sort_by(|a, b| {
        (&a.node.node, a.service.port, &a.service.id).cmp(&(
            &b.node.node,
            b.service.port,
            &b.service.id,
        ))
    });
}

// === impl Catalog ===

impl Catalog {
    /// Number of instances in each health state, for the `consul_instances{state}` gauge.
    pub fn instance_counts(&self) -> [(Health, usize); 3] {
        let mut counts = [0usize; 3];
        for entries in self.services.values() {
            for e in entries.iter() {
                counts[e.health() as usize] += 1;
            }
        }
        [
            (Health::Passing, counts[0]),
            (Health::Warning, counts[1]),
            (Health::Critical, counts[2]),
        ]
    }

    /// Fill `nodes` from the nodes the service entries mention, keeping nodes already known.
    pub fn index_nodes_from_services(&mut self) {
        for entries in self.services.values() {
            for e in entries.iter() {
                // Look up before cloning the name: at tens of thousands of instances on known
                // nodes, the clones were a measurable share of each rebuild.
                if !self.nodes.contains_key(&e.node.node) {
                    self.nodes.insert(e.node.node.clone(), Arc::clone(&e.node));
                }
            }
        }
    }
}

/// Deserialize `null` as the type's default: Consul writes `null` for empty maps and lists.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/v1/health/service/web` body with Consul's nulls and omitted fields parses.
    #[test]
    fn parses_consul_entry_with_nulls() {
        let body = r#"[{"Node":{"ID":"a","Node":"n1","Address":"10.0.0.1","Datacenter":"dc1",
            "TaggedAddresses":null,"Meta":null,"CreateIndex":1,"ModifyIndex":2},
            "Service":{"ID":"web1","Service":"web","Tags":null,"Address":"","Meta":null,
            "Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false},
            "Checks":[{"Node":"n1","CheckID":"serfHealth","Status":"passing","ServiceID":""},
                      {"Node":"n1","CheckID":"service:web1","Status":"warning","ServiceID":"web1"}]}]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.service.port, 0);
        assert!(e.service.tags.is_empty());
        assert_eq!(e.address(), "10.0.0.1");
        assert_eq!(e.health(), Health::Warning);
        assert_eq!(e.health_ignoring(&["service:web1".into()]), Health::Passing);
    }

    #[test]
    fn critical_beats_warning_and_filter_tags_ignore_case() {
        let mut e = HealthEntry {
            node: Arc::new(Node::default()),
            service: Service {
                tags: vec!["NoDNS".into()],
                ..Service::default()
            },
            checks: vec![],
        };
        assert_eq!(e.health(), Health::Passing);
        for status in ["warning", "critical", "passing"] {
            e.checks.push(Check {
                status: status.into(),
                ..Check::default()
            });
        }
        assert_eq!(e.health(), Health::Critical);
        assert!(e.has_any_tag(&["nodns".into()]));
        assert!(!e.has_any_tag(&["standby".into()]));
    }
}
