//! Start signpost in-process on loopback ports chosen by the kernel, and talk to it.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use signpost::app::Running;
use signpost::config::{Config, Overrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A running signpost with its own temporary directory (config, catalog files).
pub(crate) struct Signpost {
    running: Option<Running>,
    pub(crate) dns: SocketAddr,
    pub(crate) http: SocketAddr,
    _dir: tempfile::TempDir,
}

/// How a test query travels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Via {
    Udp,
    /// UDP with an EDNS OPT advertising this size.
    UdpEdns(u16),
    Tcp,
}

impl Signpost {
    /// Start with `toml` as the config file (in a fresh directory), DNS and HTTP on
    /// `127.0.0.1:0`.
    pub(crate) async fn start(toml: &str) -> Signpost {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, toml).await
    }

    /// Like [`Signpost::start`] in a directory the test prepared (for `file:` catalogs).
    pub(crate) async fn start_in(dir: tempfile::TempDir, toml: &str) -> Signpost {
        let path = dir.path().join("signpost.toml");
        std::fs::write(&path, toml).expect("write config");
        let overrides = Overrides {
            listen: vec!["127.0.0.1:0".into()],
            http: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).expect("valid config");
        let running = signpost::app::start(config).await.expect("signpost starts");
        Signpost {
            dns: running.dns_addrs[0],
            http: running.http_addr.expect("http enabled"),
            running: Some(running),
            _dir: dir,
        }
    }

    /// Wait (at most 10 s) until `/ready` answers 200.
    pub(crate) async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.get("/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("signpost not ready within 10 s");
    }

    /// GET `path` from the HTTP endpoint: (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        let resp = reqwest::get(&url).await.expect("http request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// Ask `name` `rtype` and return the parsed reply.
    pub(crate) async fn query(&self, name: &str, rtype: RecordType, via: Via) -> Message {
        ask(self.dns, name, rtype, via).await
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A query message in wire form with ID 0x5150, RD set, the name's letter case kept.
pub(crate) fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x5150;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).expect("name"), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    let mut bytes = m.to_vec().expect("encode");
    // hickory writes question names in lowercase; put the caller's case back.
    let mut pos = 12;
    for label in name.split('.').filter(|l| !l.is_empty()) {
        bytes[pos + 1..pos + 1 + label.len()].copy_from_slice(label.as_bytes());
        pos += 1 + label.len();
    }
    bytes
}

/// Send one query to `server` and parse the reply (5 s timeout).
pub(crate) async fn ask(server: SocketAddr, name: &str, rtype: RecordType, via: Via) -> Message {
    let (bytes, tcp) = match via {
        Via::Udp => (query_bytes(name, rtype, None), false),
        Via::UdpEdns(size) => (query_bytes(name, rtype, Some(size)), false),
        Via::Tcp => (query_bytes(name, rtype, None), true),
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        if tcp {
            let mut s = TcpStream::connect(server).await.expect("tcp connect");
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed).await.expect("tcp write");
            let len = s.read_u16().await.expect("tcp length");
            let mut buf = vec![0; len as usize];
            s.read_exact(&mut buf).await.expect("tcp read");
            buf
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
            s.send_to(&bytes, server).await.expect("udp send");
            let mut buf = vec![0; 65_535];
            let (n, _) = s.recv_from(&mut buf).await.expect("udp recv");
            buf.truncate(n);
            buf
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no reply to {name} {rtype} via {via:?}"));
    Message::from_vec(&reply).expect("reply parses")
}

/// The answer section as sorted zone-file lines, whitespace folded.
pub(crate) fn lines(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| {
            r.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

/// Whether `tool` is on PATH. Missing: skip (false) unless `SIGNPOST_REQUIRE_TOOLS` is set, in
/// which case the test fails, so CI can never skip silently.
pub(crate) fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if !found {
        assert!(
            std::env::var_os("SIGNPOST_REQUIRE_TOOLS").is_none(),
            "{tool} is required (SIGNPOST_REQUIRE_TOOLS is set) but not on PATH"
        );
        eprintln!("skipping: {tool} not installed");
    }
    found
}

/// Poll `f` every 20 ms until it returns true or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
