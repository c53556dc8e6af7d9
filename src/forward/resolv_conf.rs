//! The `nameserver` lines of a resolv.conf file, minus signpost itself.
//!
//! resolv.conf normally points at signpost (`nameserver 127.0.0.1`), so forwarding to what it
//! lists would loop: CoreDNS needs its `loop` plugin for this (coredns#2087) and Unbound refuses
//! localhost by default (`do-not-query-localhost`, `reference/peers.md` §1a).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// RFC 1035 §4.2: resolv.conf carries no port; name servers listen on 53.
const DNS_PORT: u16 = 53;

/// The name servers `text` lists, in order, each on port 53. resolv(5): "nameserver Name server
/// IP address"; `#` and `;` start comments. A link-local IPv6 address with a `%zone` is left out
/// (it cannot be used without its interface).
pub(crate) fn parse(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// Whether `candidate` is one of signpost's own addresses: listed in `own`, or a loopback address
/// while signpost listens on the unspecified address of the same family and port.
pub(crate) fn is_own(candidate: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|listen| {
        *listen == candidate
            || (listen.port() == candidate.port()
                && listen.ip().is_unspecified()
                && listen.is_ipv4() == candidate.is_ipv4()
                && candidate.ip().is_loopback())
    })
}

/// Read `path` and keep the name servers that are not signpost itself.
pub(crate) fn read(path: &Path, own: &[SocketAddr]) -> std::io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    let mut servers = parse(&text);
    servers.retain(|server| {
        let keep = !is_own(*server, own);
        if !keep {
            tracing::info!(path = %path.display(), %server, "left out our own address from resolv.conf");
        }
        keep
    });
    Ok(servers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Reads nameserver lines in order, skipping comments, other keywords and scoped addresses.
    #[test]
    fn parses_nameserver_lines() {
        let text = "# generated\nsearch example.org\nnameserver 10.0.0.2\n nameserver  ::1 # v6\n\
                    ;nameserver 10.9.9.9\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(parse(text), vec![addr("10.0.0.2:53"), addr("[::1]:53")]);
    }

    /// Leaves out signpost's own listen addresses, and loopback when it listens on 0.0.0.0:53.
    #[test]
    fn leaves_out_own_addresses() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "nameserver 127.0.0.1\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver ::1"
        )
        .unwrap();
        let own = [addr("127.0.0.1:53")];
        assert_eq!(
            read(file.path(), &own).unwrap(),
            vec![addr("10.0.0.2:53"), addr("127.0.0.53:53"), addr("[::1]:53")]
        );
        let own = [addr("0.0.0.0:53")];
        assert_eq!(
            read(file.path(), &own).unwrap(),
            vec![addr("10.0.0.2:53"), addr("[::1]:53")]
        );
        let own = [addr("127.0.0.1:5353")];
        assert_eq!(read(file.path(), &own).unwrap().len(), 4);
    }
}
