//! Local data through the whole signpost: a zone in `zones.dir` and a hosts file
//! (`zones.hosts`) answered authoritatively, reloaded when the files change, the previous data
//! kept when a change breaks a file; names the hosts file does not list (the rest of a private
//! reverse zone included) still go upstream.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::fake_consul::FakeConsul;
use crate::support::fake_upstream::{Answer, FakeUpstream};
use crate::support::signpost::{Signpost, Via, eventually, lines};

const ZONE: &str = "$ORIGIN corp.test.\n$TTL 60\n\
    @ IN SOA ns1 hostmaster 1 3600 600 86400 30\n\
    @ IN NS ns1\n\
    ns1 IN A 192.0.2.53\n\
    www IN A 192.0.2.80\n";

fn write(dir: &Path, file: &str, text: &str) {
    // Write beside and rename, as editors and config management do: the poller never reads a
    // half-written file.
    let tmp = dir.join(format!(".{}.tmp", file.replace('/', "_")));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

async fn start(upstream: &FakeUpstream, consul: &FakeConsul) -> (Signpost, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("zones")).unwrap();
    write(&root, "zones/corp.test.zone", ZONE);
    write(
        &root,
        "hosts",
        "10.0.0.5 db.internal db\nfd00::5 db.internal\n",
    );
    let toml = format!(
        "[consul]\naddress = \"{}\"\n\n[forward]\nupstreams = [\"{}\"]\ntimeout = \"1s\"\n\n\
         [zones]\ndir = \"zones\"\nhosts = \"hosts\"\n",
        consul.url(),
        upstream.addr
    );
    (Signpost::start_in(dir, &toml).await, root)
}

/// Hosts names get A, AAAA and PTR answers with AA set (NODATA for other types); an address the
/// file does not list, in the same private reverse zone, is forwarded.
#[tokio::test]
async fn hosts_file_answers_and_the_rest_is_forwarded() {
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 99), 60)).await;
    let consul = FakeConsul::start().await;
    let (sp, _root) = start(&upstream, &consul).await;

    let m = sp.query("DB.internal.", RecordType::A, Via::Udp).await;
    assert!(m.metadata.authoritative);
    assert_eq!(lines(&m.answers), ["db.internal. 0 IN A 10.0.0.5"]);
    let m = sp.query("db.internal.", RecordType::AAAA, Via::Tcp).await;
    assert_eq!(lines(&m.answers), ["db.internal. 0 IN AAAA fd00::5"]);
    let m = sp.query("db.", RecordType::MX, Via::Udp).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = sp
        .query("5.0.0.10.in-addr.arpa.", RecordType::PTR, Via::Udp)
        .await;
    assert_eq!(
        lines(&m.answers),
        ["5.0.0.10.in-addr.arpa. 0 IN PTR db.internal."]
    );
    assert_eq!(upstream.queries(), 0);
    sp.query("6.0.0.10.in-addr.arpa.", RecordType::PTR, Via::Udp)
        .await;
    assert_eq!(upstream.queries(), 1, "unlisted private PTR is forwarded");
    sp.stop().await;
}

/// A changed hosts file or zone file is picked up within a few seconds; a broken one keeps the
/// previous data in service.
#[tokio::test]
async fn local_data_reloads_and_survives_a_broken_file() {
    let upstream = FakeUpstream::start(Answer::a(Ipv4Addr::new(192, 0, 2, 99), 60)).await;
    let consul = FakeConsul::start().await;
    let (sp, root) = start(&upstream, &consul).await;
    let a = |name: &'static str| {
        let sp = &sp;
        async move { lines(&sp.query(name, RecordType::A, Via::Udp).await.answers) }
    };
    assert_eq!(
        a("www.corp.test.").await,
        ["www.corp.test. 60 IN A 192.0.2.80"]
    );

    write(&root, "hosts", "10.0.0.9 db.internal\n");
    write(
        &root,
        "zones/corp.test.zone",
        &ZONE.replace("192.0.2.80", "192.0.2.81"),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            a("db.internal.").await == ["db.internal. 0 IN A 10.0.0.9"]
                && a("www.corp.test.").await == ["www.corp.test. 60 IN A 192.0.2.81"]
        })
        .await,
        "reloaded"
    );

    write(
        &root,
        "hosts",
        "10.0.0.10 db.internal\nnot-an-address oops\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(a("db.internal.").await, ["db.internal. 0 IN A 10.0.0.9"]);

    write(&root, "hosts", "10.0.0.11 db.internal\n");
    write(
        &root,
        "zones/corp.test.zone",
        "$ORIGIN corp.test.\nwww IN A\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The data is loaded whole: a broken zone holds back the good hosts change too.
    assert_eq!(a("db.internal.").await, ["db.internal. 0 IN A 10.0.0.9"]);
    assert_eq!(
        a("www.corp.test.").await,
        ["www.corp.test. 60 IN A 192.0.2.81"]
    );
    assert_eq!(upstream.queries(), 0);
    sp.stop().await;
}
