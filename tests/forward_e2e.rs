//! The forwarder inside the whole signpost, over its real UDP listener: a real dnsmasq as the
//! upstream (relay, cache hits counted in dnsmasq's own query log, the start-up loop check),
//! and 1,000 concurrent identical misses coalesced into one upstream query.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use signpost::config::{Config, Overrides};

use crate::support::dnsmasq::{Dnsmasq, free_port};
use crate::support::fake_consul::FakeConsul;
use crate::support::fake_upstream::{Behaviour, FakeUpstream};
use crate::support::signpost::{Signpost, Via, ask, eventually, lines, require_tool};

fn config(consul: &FakeConsul, upstreams: &[String]) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[consul]\naddress = \"{}\"\n\n[forward]\nupstreams = [{}]\ntimeout = \"1s\"\n",
        consul.url(),
        list.join(", ")
    )
}

fn scrape(body: &str, metric: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(metric) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// With a real dnsmasq as the upstream, an answer is relayed as dnsmasq sent it and a repeat of
/// the same question (any letter case) is answered from signpost's cache: dnsmasq's own query
/// log shows one query (dnsmasq's `--local-ttl` makes its answer cacheable: with the default
/// TTL 0 nothing may be cached, RFC 1035 §3.2.1). REFUSED from dnsmasq reaches the client as SERVFAIL (no usable answer).
#[tokio::test]
async fn dnsmasq_upstream_relay_and_cache_hits() {
    if !require_tool("dnsmasq") {
        return;
    }
    let dnsmasq = Dnsmasq::start(&["--address=/example.test/192.0.2.1", "--local-ttl=300"]);
    let consul = FakeConsul::start().await;
    let sp = Signpost::start(&config(&consul, &[dnsmasq.addr.to_string()])).await;

    for (i, name) in [
        "www.example.test.",
        "WWW.Example.TEST.",
        "www.example.test.",
    ]
    .iter()
    .enumerate()
    {
        let m = sp.query(name, RecordType::A, Via::Udp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
        assert_eq!(m.queries[0].name().to_ascii(), *name, "client's case kept");
        assert_eq!(m.answers.len(), 1);
        assert!(
            lines(&m.answers)[0].ends_with("IN A 192.0.2.1"),
            "{:?}",
            lines(&m.answers)
        );
    }
    let m = sp.query("www.example.test.", RecordType::A, Via::Tcp).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        dnsmasq.queries("A", "www.example.test"),
        1,
        "{:?}",
        dnsmasq.log()
    );

    let m = sp.query("elsewhere.test.", RecordType::A, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let (_, metrics) = sp.get("/metrics").await;
    assert!(
        scrape(&metrics, "signpost_cache_hits_total") >= 3.0,
        "{metrics}"
    );
    sp.stop().await;
}

/// An upstream that forwards back to signpost (a dnsmasq whose server is signpost itself) is
/// found by the start-up loop check and disabled; queries then go straight to the next
/// upstream instead of round the loop.
#[tokio::test]
async fn loop_check_disables_an_upstream_that_forwards_back() {
    if !require_tool("dnsmasq") {
        return;
    }
    let port = free_port();
    let looping = Dnsmasq::start(&[&format!("--server=127.0.0.1#{port}")]);
    let good = Dnsmasq::start(&["--address=/example.test/192.0.2.1"]);
    let consul = FakeConsul::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signpost.toml");
    let upstreams = [looping.addr.to_string(), good.addr.to_string()];
    std::fs::write(&path, config(&consul, &upstreams)).unwrap();
    let overrides = Overrides {
        listen: vec![format!("127.0.0.1:{port}")],
        http: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let running = signpost::app::start(Config::load(Some(&path), &overrides).unwrap())
        .await
        .unwrap();
    let dns = running.dns_addrs[0];

    assert!(
        eventually(Duration::from_secs(3), || async {
            looping
                .log()
                .iter()
                .any(|l| l.contains("signpost-loop-check"))
        })
        .await,
        "the probe went through the looping upstream"
    );
    // The check settles once the probe comes back through dnsmasq.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let start = Instant::now();
        let m = ask(dns, &format!("n{i}.example.test."), RecordType::A, Via::Udp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(lines(&m.answers)[0].ends_with("192.0.2.1"));
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(
        looping.queries("A", "n0.example.test"),
        0,
        "{:?}",
        looping.log()
    );
    running.stop().await;
}

/// 1,000 clients asking the same uncached name at once through signpost's UDP listener make
/// one upstream query, and each gets the answer with its own socket and ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_identical_misses_one_upstream_query() {
    let upstream = FakeUpstream::with(
        Behaviour::Slow(Duration::from_millis(300)),
        Ipv4Addr::new(10, 0, 0, 7),
    )
    .await;
    let consul = FakeConsul::start().await;
    let sp = Signpost::start(&config(&consul, &[upstream.addr.to_string()])).await;
    let dns = sp.dns;
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn(
                async move { ask(dns, "burst.example.org.", RecordType::A, Via::Udp).await },
            )
        })
        .collect();
    for client in clients {
        let m = client.await.unwrap();
        assert_eq!(lines(&m.answers), ["burst.example.org. 300 IN A 10.0.0.7"]);
    }
    assert_eq!(upstream.queries(), 1);
    sp.stop().await;
}
