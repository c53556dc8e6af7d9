//! Longest-suffix routing: each name has exactly one answerer (DESIGN.md, rule 3).
//!
//! The router is built once from the configuration and the static zones; `route` is a short
//! synchronous scan over a handful of suffixes (the Consul domains and the zone origins),
//! longest first. Everything else goes to the forwarder, which picks the upstreams of the
//! longest `[[forward.domain]]` itself.

/// Who answers a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The Consul zone: `domain` is 0 for the primary domain, 1 for the alt domain.
    Consul { domain: usize },
    /// Static zone number `zone`.
    Zone { zone: usize },
    /// A reverse name (`in-addr.arpa`, `ip6.arpa`): answered from the catalog when it knows
    /// the address, forwarded otherwise (`reference/consul-dns.md` §1.7).
    Reverse,
    /// The forwarder.
    Forward,
}

/// The suffix table.
#[derive(Clone, Debug, Default)]
pub struct Router {
    /// (lowercase dotted suffix without the final dot, route), longest first.
    suffixes: Vec<(Box<[u8]>, Route)>,
}

// === impl Router ===

impl Router {
    /// Build from the Consul domains (primary first) and the zone origins, all lowercase dotted
    /// without the final dot.
    pub fn new(consul_domains: &[String], zone_origins: &[String]) -> Router {
        let mut suffixes: Vec<(Box<[u8]>, Route)> = consul_domains
            .iter()
            .enumerate()
            .map(|(domain, d)| (d.as_bytes().into(), Route::Consul { domain }))
            .chain(
                zone_origins
                    .iter()
                    .enumerate()
                    .map(|(zone, o)| (o.as_bytes().into(), Route::Zone { zone })),
            )
            .chain(
                ["in-addr.arpa", "ip6.arpa"]
                    .into_iter()
                    .map(|s| (s.as_bytes().into(), Route::Reverse)),
            )
            .collect();
        // Longest first; on a tie the Consul domain wins (config validation forbids the tie).
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Router { suffixes }
    }

    /// Route `name` (lowercase dotted, no final dot). For the Consul zone the second value is
    /// the name with the domain stripped (`web.service` for `web.service.consul`).
    pub fn route<'a>(&self, name: &'a [u8]) -> (Route, &'a [u8]) {
        for (suffix, route) in &self.suffixes {
            if name == &**suffix {
                return (*route, &[]);
            }
            if name.len() > suffix.len()
                && name.ends_with(suffix)
                && name[name.len() - suffix.len() - 1] == b'.'
            {
                return (*route, &name[..name.len() - suffix.len() - 1]);
            }
        }
        (Route::Forward, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest suffix wins, on label boundaries only.
    #[test]
    fn longest_suffix_on_label_boundaries() {
        let r = Router::new(
            &["consul".into(), "test.consul".into()],
            &["example.org".into()],
        );
        assert_eq!(
            r.route(b"web.service.consul"),
            (Route::Consul { domain: 0 }, &b"web.service"[..])
        );
        assert_eq!(
            r.route(b"n.node.test.consul"),
            (Route::Consul { domain: 1 }, &b"n.node"[..])
        );
        assert_eq!(r.route(b"consul"), (Route::Consul { domain: 0 }, &b""[..]));
        assert_eq!(r.route(b"notconsul").0, Route::Forward);
        assert_eq!(r.route(b"www.example.org").0, Route::Zone { zone: 0 });
        assert_eq!(r.route(b"example.com").0, Route::Forward);
        assert_eq!(r.route(b"").0, Route::Forward);
        assert_eq!(r.route(b"1.0.0.127.in-addr.arpa").0, Route::Reverse);
    }
}
