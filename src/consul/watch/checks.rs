//! `/v1/health/state/any`: which services a check change touches, and the change itself.
//!
//! One pass over the body gives two things:
//!
//! - [`CheckPrints`]: one 64-bit fingerprint per service (of its service checks' node, check
//!   ID, service ID and status) and per node (of its node checks), without keeping the checks,
//!   so that telling what changed costs a hash pass over the body, not a copy of every check;
//! - the checks that differ from the previous body at the same position ([`Row`]s): Consul
//!   lists checks in a stable order (node, then check ID), so a status change shows up as one
//!   row, while a check added or removed shifts everything after it and the rows are given up.
//!
//! Most catalog changes in a fleet are checks flipping between passing, warning and critical.
//! The rows carry every field of a check the catalog keeps (`CheckID`, `Status`, `ServiceID`,
//! `ModifyIndex`), so a service whose only change is the status of checks it already has is
//! updated from them ([`patch`]), without a `/v1/health/service/<name>` read: the DNS answer
//! changes one agent round trip sooner and the agent serves one request fewer. A patched
//! service must fingerprint exactly as the body says; anything more than a status change (a
//! check or an instance added or removed, rows given up) does not, and the service is fetched.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::{FixedState, RandomState};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[cfg(test)]
use crate::consul::catalog::Check;
use crate::consul::catalog::HealthEntry;

/// Most rows kept from one body: beyond this many differences the body is taken as a reshuffle
/// (a check added or removed early in the list) and every touched service is fetched.
const MAX_ROWS: usize = 4096;

/// Per-service and per-node fingerprints of the checks in one body.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CheckPrints {
    pub(super) services: HashMap<String, u64, RandomState>,
    pub(super) nodes: HashMap<String, u64, RandomState>,
}

/// One check as the state/any body gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    node: String,
    check_id: String,
    service_id: String,
    status: String,
    modify_index: u64,
}

/// Rows of the bodies since the last patch, the latest per check.
pub(super) type Rows = HashMap<(String, String), Row, RandomState>;

/// What one body gave: the fingerprints, and the rows that changed since the previous body
/// (`None` when they were given up).
#[derive(Debug)]
pub(super) struct CheckRead {
    pub(super) prints: CheckPrints,
    pub(super) rows: Option<Vec<Row>>,
}

/// Reads successive state/any bodies, remembering one hash per position of the last one.
#[derive(Debug, Default)]
pub(super) struct CheckReader {
    positions: Vec<u64>,
}

/// A string field borrowed from the body when it has no escapes; `null` reads as "".
#[derive(Default)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

/// One element of the body: what the fingerprints and rows need, borrowed.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckRef<'a> {
    #[serde(borrow, default)]
    node: Text<'a>,
    #[serde(rename = "CheckID", borrow, default)]
    check_id: Text<'a>,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(rename = "ServiceID", borrow, default)]
    service_id: Text<'a>,
    #[serde(borrow, default)]
    service_name: Text<'a>,
    #[serde(default)]
    modify_index: Option<u64>,
}

/// The hashes every fingerprint is a sum of.
fn hasher() -> FixedState {
    FixedState::with_seed(0x5161_6e70_6f73_7400)
}

fn service_check_hash(node: &str, check_id: &str, service_id: &str, status: &str) -> u64 {
    hasher().hash_one((node, check_id, service_id, status))
}

fn node_check_hash(check_id: &str, status: &str) -> u64 {
    hasher().hash_one((check_id, status))
}

// === impl CheckPrints ===

impl CheckPrints {
    /// Fingerprints of `checks` (tests; the feed parses them straight from the body).
    #[cfg(test)]
    pub(super) fn new(checks: &[Check]) -> CheckPrints {
        let mut prints = CheckPrints::default();
        for c in checks {
            prints.add(
                &c.node,
                &c.check_id,
                &c.status,
                &c.service_id,
                &c.service_name,
            );
        }
        prints
    }

    /// Fold one check into its service's or its node's fingerprint. The fold is a sum of
    /// per-check hashes, so the order of checks in the body does not matter.
    fn add(&mut self, node: &str, check_id: &str, status: &str, service_id: &str, service: &str) {
        if service_id.is_empty() {
            bump(&mut self.nodes, node, node_check_hash(check_id, status));
        } else {
            let h = service_check_hash(node, check_id, service_id, status);
            bump(&mut self.services, service, h);
        }
    }

    /// Whether `entries` (all of `service`'s) carry exactly the checks these fingerprints
    /// were made from: their service checks, and every node check of the nodes they are on.
    fn describe(&self, service: &str, entries: &[HealthEntry]) -> bool {
        let mut sum = 0u64;
        for e in entries {
            let mut node_sum = 0u64;
            for c in &e.checks {
                if c.service_id.is_empty() {
                    node_sum = node_sum.wrapping_add(node_check_hash(&c.check_id, &c.status));
                } else {
                    let h = service_check_hash(&e.node.node, &c.check_id, &c.service_id, &c.status);
                    sum = sum.wrapping_add(h);
                }
            }
            if node_sum != self.nodes.get(&e.node.node).copied().unwrap_or(0) {
                return false;
            }
        }
        sum == self.services.get(service).copied().unwrap_or(0)
    }
}

/// Add `h` to the fingerprint of `key`, allocating the key only the first time it is seen.
fn bump(map: &mut HashMap<String, u64, RandomState>, key: &str, h: u64) {
    match map.get_mut(key) {
        Some(v) => *v = v.wrapping_add(h),
        None => {
            map.insert(key.to_string(), h);
        }
    }
}

impl<'de> Deserialize<'de> for CheckPrints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut reader = CheckReader::default();
        Ok(reader.deserialize(d)?.prints)
    }
}

// === impl CheckReader ===

impl CheckReader {
    /// Read one body; the next read compares against it.
    pub(super) fn read(&mut self, body: &[u8]) -> Result<CheckRead, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = self.deserialize(&mut de);
        match read.and_then(|read| de.end().map(|()| read)) {
            Ok(read) => Ok(read),
            Err(e) => {
                // A body that did not parse leaves no positions: the next one has no rows.
                self.positions.clear();
                Err(e)
            }
        }
    }

    fn deserialize<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<CheckRead, D::Error> {
        d.deserialize_any(ReadVisitor(self))
    }
}

struct ReadVisitor<'r>(&'r mut CheckReader);

impl<'de> Visitor<'de> for ReadVisitor<'_> {
    type Value = CheckRead;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of checks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CheckRead, A::Error> {
        let previous = std::mem::take(&mut self.0.positions);
        let mut positions = Vec::with_capacity(previous.len());
        let mut prints = CheckPrints::default();
        let mut rows = Some(Vec::new());
        while let Some(c) = seq.next_element::<CheckRef<'de>>()? {
            let (node, check_id, status) = (&*c.node.0, &*c.check_id.0, &*c.status.0);
            let (service_id, service) = (&*c.service_id.0, &*c.service_name.0);
            prints.add(node, check_id, status, service_id, service);
            let h = hasher().hash_one((node, check_id, service_id, service, status));
            if previous.get(positions.len()) != Some(&h)
                && let Some(list) = &mut rows
            {
                if list.len() < MAX_ROWS {
                    list.push(Row {
                        node: node.to_string(),
                        check_id: check_id.to_string(),
                        service_id: service_id.to_string(),
                        status: status.to_string(),
                        modify_index: c.modify_index.unwrap_or(0),
                    });
                } else {
                    rows = None;
                }
            }
            positions.push(h);
        }
        self.0.positions = positions;
        Ok(CheckRead { prints, rows })
    }

    fn visit_unit<E: de::Error>(self) -> Result<CheckRead, E> {
        self.0.positions.clear();
        Ok(CheckRead {
            prints: CheckPrints::default(),
            rows: None,
        })
    }
}

// === impl Text ===

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed("")))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Keep `rows` (from one body) in `into`, replacing older rows of the same checks.
pub(super) fn keep_rows(into: &mut Rows, rows: Vec<Row>) {
    for row in rows {
        into.insert((row.node.clone(), row.check_id.clone()), row);
    }
}

/// `entries` (all of `service`'s) with the statuses of `rows`, or `None` when that does not
/// give exactly what `prints` (the latest body's) describe and the service must be fetched. A
/// row older than the stored check (`ModifyIndex`) leaves the check as it is.
pub(super) fn patch(
    service: &str,
    entries: &[HealthEntry],
    rows: &Rows,
    prints: &CheckPrints,
) -> Option<Vec<HealthEntry>> {
    let mut key = (String::new(), String::new());
    let patched: Vec<HealthEntry> = entries
        .iter()
        .map(|e| {
            let mut checks = e.checks.clone();
            for c in &mut checks {
                key.0.clone_from(&e.node.node);
                key.1.clone_from(&c.check_id);
                if let Some(row) = rows.get(&key)
                    && row.service_id == c.service_id
                    && row.modify_index >= c.modify_index
                {
                    c.status.clone_from(&row.status);
                    c.modify_index = row.modify_index;
                }
            }
            HealthEntry {
                node: e.node.clone(),
                service: e.service.clone(),
                checks,
            }
        })
        .collect();
    prints.describe(service, &patched).then_some(patched)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::consul::catalog::{Node, Service};

    fn entry(node: &str, id: &str, checks: &[(&str, &str, &str, u64)]) -> HealthEntry {
        HealthEntry {
            node: Arc::new(Node {
                node: node.into(),
                ..Node::default()
            }),
            service: Service {
                id: id.into(),
                service: "web".into(),
                ..Service::default()
            },
            checks: checks
                .iter()
                .map(|(check_id, service_id, status, modify_index)| Check {
                    check_id: (*check_id).into(),
                    service_id: (*service_id).into(),
                    status: (*status).into(),
                    modify_index: *modify_index,
                    ..Check::default()
                })
                .collect(),
        }
    }

    /// A state/any body of `(node, check ID, service ID, status, ModifyIndex)`; the service
    /// name is the service ID up to its `-`.
    fn body(rows: &[(&str, &str, &str, &str, u64)]) -> String {
        let rows: Vec<String> = rows
            .iter()
            .map(|(node, check_id, service_id, status, index)| {
                let name = service_id.split('-').next().unwrap_or("");
                format!(
                    r#"{{"Node":"{node}","CheckID":"{check_id}","Name":"x","Status":"{status}",
                    "Notes":"","Output":"out","ServiceID":"{service_id}","ServiceName":"{name}",
                    "ServiceTags":[],"Type":"ttl","CreateIndex":1,"ModifyIndex":{index}}}"#
                )
            })
            .collect();
        format!("[{}]", rows.join(","))
    }

    /// `web` on n1 and n2, each with the node's serfHealth and its own service check.
    fn web() -> Vec<HealthEntry> {
        let checks = |id| [("serfHealth", "", "passing", 3), (id, "", "passing", 3)];
        let mut entries = vec![
            entry("n1", "web-1", &checks("service:web-1")),
            entry("n2", "web-2", &checks("service:web-2")),
        ];
        entries[0].checks[1].service_id = "web-1".into();
        entries[1].checks[1].service_id = "web-2".into();
        entries
    }

    const BEFORE: [(&str, &str, &str, &str, u64); 5] = [
        ("n1", "serfHealth", "", "passing", 3),
        ("n1", "service:web-1", "web-1", "passing", 3),
        ("n2", "serfHealth", "", "passing", 3),
        ("n2", "service:web-2", "web-2", "passing", 3),
        ("n3", "service:db-1", "db-1", "passing", 3),
    ];

    /// Read `before`, then `after`: the rows of `after` and its fingerprints.
    fn read_pair(
        before: &[(&str, &str, &str, &str, u64)],
        after: &[(&str, &str, &str, &str, u64)],
    ) -> (Rows, CheckPrints) {
        let mut reader = CheckReader::default();
        reader.read(body(before).as_bytes()).unwrap();
        let read = reader.read(body(after).as_bytes()).unwrap();
        let mut rows = Rows::default();
        keep_rows(&mut rows, read.rows.unwrap_or_default());
        (rows, read.prints)
    }

    fn statuses(entries: &[HealthEntry]) -> Vec<Vec<&str>> {
        entries
            .iter()
            .map(|e| e.checks.iter().map(|c| c.status.as_str()).collect())
            .collect()
    }

    /// The entries match the body they were taken from.
    #[test]
    fn fingerprints_describe_matching_entries() {
        let read = CheckReader::default()
            .read(body(&BEFORE).as_bytes())
            .unwrap();
        assert!(read.prints.describe("web", &web()));
        let mut changed = web();
        changed[1].checks[1].status = "critical".into();
        assert!(!read.prints.describe("web", &changed));
    }

    /// Only the checks that changed come back as rows.
    #[test]
    fn rows_are_the_changed_checks() {
        let mut after = BEFORE;
        after[1].3 = "critical";
        after[4].3 = "warning";
        let (rows, _) = read_pair(&BEFORE, &after);
        let mut keys: Vec<_> = rows.keys().map(|(n, c)| format!("{n}/{c}")).collect();
        keys.sort();
        assert_eq!(keys, ["n1/service:web-1", "n3/service:db-1"]);
    }

    /// A service check's status change is applied to that instance only.
    #[test]
    fn status_change_is_applied() {
        let mut after = BEFORE;
        after[1] = ("n1", "service:web-1", "web-1", "critical", 9);
        let (rows, prints) = read_pair(&BEFORE, &after);
        let entries = web();
        let patched = patch("web", &entries, &rows, &prints).unwrap();
        assert_eq!(
            statuses(&patched),
            [["passing", "critical"], ["passing", "passing"]]
        );
        assert_eq!(patched[0].checks[1].modify_index, 9);
        // The node record stays shared with the catalog's.
        assert!(Arc::ptr_eq(&patched[0].node, &entries[0].node));
    }

    /// A node check change reaches every instance on the node.
    #[test]
    fn node_check_change_is_applied() {
        let mut after = BEFORE;
        after[2] = ("n2", "serfHealth", "", "critical", 9);
        let (rows, prints) = read_pair(&BEFORE, &after);
        let patched = patch("web", &web(), &rows, &prints).unwrap();
        assert_eq!(
            statuses(&patched),
            [["passing", "passing"], ["critical", "passing"]]
        );
    }

    /// A check of an instance the entries do not have means a new instance: fetch.
    #[test]
    fn new_instance_is_not_patched() {
        let mut after = BEFORE.to_vec();
        after.push(("n3", "service:web-3", "web-3", "passing", 9));
        let (rows, prints) = read_pair(&BEFORE, &after);
        assert!(patch("web", &web(), &rows, &prints).is_none());
    }

    /// A check gone (an instance deregistered, a node check removed) or added: fetch.
    #[test]
    fn removed_or_added_check_is_not_patched() {
        let gone: Vec<_> = BEFORE
            .iter()
            .filter(|r| r.1 != "service:web-2")
            .copied()
            .collect();
        let (rows, prints) = read_pair(&BEFORE, &gone);
        assert!(patch("web", &web(), &rows, &prints).is_none());
        let mut added = BEFORE.to_vec();
        added.insert(2, ("n1", "extra", "web-1", "passing", 9));
        let (rows, prints) = read_pair(&BEFORE, &added);
        assert!(patch("web", &web(), &rows, &prints).is_none());
        let node_gone: Vec<_> = BEFORE
            .iter()
            .filter(|r| r.0 != "n1" || !r.2.is_empty())
            .copied()
            .collect();
        let (rows, prints) = read_pair(&BEFORE, &node_gone);
        assert!(patch("web", &web(), &rows, &prints).is_none());
    }

    /// A status change after a check was inserted before it (positions shifted) is still
    /// right: patched when the rows tell it, fetched when they were given up.
    #[test]
    fn shifted_positions_never_patch_wrongly() {
        let mut after = BEFORE.to_vec();
        after.insert(0, ("n0", "service:db-2", "db-2", "passing", 9));
        after[2].3 = "critical";
        let (rows, prints) = read_pair(&BEFORE, &after);
        let patched = patch("web", &web(), &rows, &prints).unwrap();
        assert_eq!(
            statuses(&patched),
            [["passing", "critical"], ["passing", "passing"]]
        );
        // Without rows, the same change cannot be patched.
        assert!(patch("web", &web(), &Rows::default(), &prints).is_none());
    }

    /// A row older than the stored check does not turn it back, and the service is fetched.
    #[test]
    fn older_row_does_not_revert() {
        let mut entries = web();
        entries[0].checks[1].status = "critical".into();
        entries[0].checks[1].modify_index = 12;
        let mut after = BEFORE;
        after[1] = ("n1", "service:web-1", "web-1", "passing", 9);
        after[3].3 = "warning";
        let (rows, prints) = read_pair(&BEFORE, &after);
        assert!(patch("web", &entries, &rows, &prints).is_none());
    }

    /// A body that is not a list of checks is an error, and the next body has no rows.
    #[test]
    fn malformed_body_is_an_error() {
        let mut reader = CheckReader::default();
        reader.read(body(&BEFORE).as_bytes()).unwrap();
        assert!(reader.read(b"{\"x\":1}").is_err());
        assert!(reader.read(b"[{\"Node\":1}]").is_err());
        let read = reader.read(body(&BEFORE).as_bytes()).unwrap();
        assert_eq!(read.rows.map(|r| r.len()), Some(BEFORE.len()));
    }

    /// `null` (an agent with no checks) reads as no checks.
    #[test]
    fn null_is_no_checks() {
        let read = CheckReader::default().read(b"null").unwrap();
        assert_eq!(read.prints, CheckPrints::default());
    }
}
