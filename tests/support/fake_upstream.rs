//! A scriptable fake upstream DNS server on `127.0.0.1:0`, UDP and TCP on the same port.
//!
//! It answers every question with the configured [`Answer`] (or the one mapped to the name),
//! echoes the client's EDNS (payload size, DO, options) and adds its own option
//! ([`FAKE_OPTION_CODE`]) so tests can see EDNS relayed both ways. Its [`Behaviour`] can be
//! switched while it runs, and it counts the queries it receives per transport. signpost's own
//! probes (the health check's `. IN NS`, the start-up loop check under `signpost-loop-check.`)
//! are counted apart, in [`FakeUpstream::probes`], so that query counts prove cache hits and
//! coalescing exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The EDNS option code the fake adds to every reply that carries an OPT record (local use range,
/// RFC 6891 §9: 65001-65534).
#[allow(dead_code)]
pub(crate) const FAKE_OPTION_CODE: u16 = 65001;

/// How the fake replies.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) enum Behaviour {
    /// Reply with the configured answer.
    Answer,
    /// Never reply.
    Silent,
    /// Reply with the configured answer after this long.
    Slow(Duration),
    ServFail,
    Refused,
    FormErr,
    /// Over UDP: header and question with TC set. Over TCP: the full answer.
    Truncated,
    /// First a reply with a wrong ID, then (after a few ms) the real one.
    WrongId,
    /// First a reply for another question with the right ID, then the real one.
    WrongQuestion,
}

/// What the fake answers: an rcode and sections. A record owned by the root name `.` is given
/// the question's name when sent.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
    /// Set AA in the reply.
    pub(crate) authoritative: bool,
}

#[derive(Debug)]
struct State {
    behaviour: Mutex<Behaviour>,
    answer: Mutex<Answer>,
    names: Mutex<HashMap<Name, Answer>>,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    probes: AtomicUsize,
    last_query: Mutex<Option<Message>>,
}

/// A running fake upstream; stops when dropped.
#[allow(dead_code)]
pub(crate) struct FakeUpstream {
    pub(crate) addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

#[allow(dead_code)]
impl Answer {
    /// NOERROR with one A record for the question's name.
    pub(crate) fn a(ip: Ipv4Addr, ttl: u32) -> Answer {
        Answer::records(vec![Record::from_rdata(Name::root(), ttl, RData::A(A(ip)))])
    }

    /// NOERROR with these answer records.
    pub(crate) fn records(answers: Vec<Record>) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
            authoritative: false,
        }
    }

    /// NOERROR with `n` A records (10.0.x.y), to make a big answer.
    pub(crate) fn many_a(n: usize, ttl: u32) -> Answer {
        let records = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8);
                Record::from_rdata(Name::root(), ttl, RData::A(A(ip)))
            })
            .collect();
        Answer::records(records)
    }

    /// `rcode` with the SOA of `zone` in the authority section (RFC 2308 §3), as an
    /// authoritative negative answer.
    pub(crate) fn negative(rcode: ResponseCode, zone: &str, soa_ttl: u32, minimum: u32) -> Answer {
        let zone = Name::from_ascii(zone).unwrap();
        let soa = SOA::new(
            Name::from_ascii("ns1.example.org.").unwrap(),
            Name::from_ascii("hostmaster.example.org.").unwrap(),
            2024010101,
            3600,
            600,
            86400,
            minimum,
        );
        Answer {
            rcode,
            answers: Vec::new(),
            authorities: vec![Record::from_rdata(zone, soa_ttl, RData::SOA(soa))],
            additionals: Vec::new(),
            authoritative: true,
        }
    }

    /// An rcode with empty sections.
    pub(crate) fn rcode(rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            ..Answer::records(Vec::new())
        }
    }
}

#[allow(dead_code)]
impl FakeUpstream {
    /// Start a fake answering `answer` to every question.
    pub(crate) async fn start(answer: Answer) -> FakeUpstream {
        // UDP picks a free port; TCP must get the same one, which another test may hold.
        let mut bound = None;
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, addr, tcp));
                break;
            }
        }
        let (udp, addr, tcp) = bound.expect("a port free for UDP and TCP");
        let state = Arc::new(State {
            behaviour: Mutex::new(Behaviour::Answer),
            answer: Mutex::new(answer),
            names: Mutex::new(HashMap::new()),
            udp_queries: AtomicUsize::new(0),
            tcp_queries: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            last_query: Mutex::new(None),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        FakeUpstream { addr, state, tasks }
    }

    /// Start a fake with [`Answer::a`]`(ip, 300)` and then `behaviour`.
    pub(crate) async fn with(behaviour: Behaviour, ip: Ipv4Addr) -> FakeUpstream {
        let fake = FakeUpstream::start(Answer::a(ip, 300)).await;
        fake.set_behaviour(behaviour);
        fake
    }

    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    pub(crate) fn set_answer(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Answer `name` (any case) with `answer` instead of the default.
    pub(crate) fn set_name(&self, name: &str, answer: Answer) {
        let name = Name::from_ascii(name).unwrap().to_lowercase();
        self.state.names.lock().unwrap().insert(name, answer);
    }

    pub(crate) fn udp_queries(&self) -> usize {
        self.state.udp_queries.load(Ordering::SeqCst)
    }

    pub(crate) fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(Ordering::SeqCst)
    }

    pub(crate) fn queries(&self) -> usize {
        self.udp_queries() + self.tcp_queries()
    }

    /// Health-check and loop-check probes received (not in [`FakeUpstream::queries`]).
    pub(crate) fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// The last query received, as parsed.
    pub(crate) fn last_query(&self) -> Option<Message> {
        self.state.last_query.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl State {
    /// Count `query` as a probe or in `counter`.
    fn count(&self, query: &Message, counter: &AtomicUsize) {
        let probe = query.queries.first().is_some_and(|q| {
            let name = q.name().to_ascii().to_ascii_lowercase();
            name == "." || name.ends_with(".signpost-loop-check.")
        });
        if probe {
            self.probes.fetch_add(1, Ordering::SeqCst);
        } else {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            state.udp_queries.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        state.count(&query, &state.udp_queries);
        *state.last_query.lock().unwrap() = Some(query.clone());
        let socket = socket.clone();
        let state = state.clone();
        tokio::spawn(async move {
            for (delay, reply) in replies(&state, &query, false).await {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, state.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&buf) else {
            state.tcp_queries.fetch_add(1, Ordering::SeqCst);
            return;
        };
        state.count(&query, &state.tcp_queries);
        *state.last_query.lock().unwrap() = Some(query.clone());
        for (delay, reply) in replies(&state, &query, true).await {
            tokio::time::sleep(delay).await;
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// The datagrams to send for `query`, each after a delay.
async fn replies(state: &State, query: &Message, tcp: bool) -> Vec<(Duration, Vec<u8>)> {
    let behaviour = state.behaviour.lock().unwrap().clone();
    let name = query.queries.first().map(|q| q.name().to_lowercase());
    let answer = name
        .and_then(|n| state.names.lock().unwrap().get(&n).cloned())
        .unwrap_or_else(|| state.answer.lock().unwrap().clone());
    let now = Duration::ZERO;
    let decoy = Duration::from_millis(5);
    match behaviour {
        Behaviour::Answer => vec![(now, reply(query, &answer))],
        Behaviour::Silent => Vec::new(),
        Behaviour::Slow(delay) => vec![(delay, reply(query, &answer))],
        Behaviour::ServFail => vec![(now, reply(query, &Answer::rcode(ResponseCode::ServFail)))],
        Behaviour::Refused => vec![(now, reply(query, &Answer::rcode(ResponseCode::Refused)))],
        Behaviour::FormErr => vec![(now, reply(query, &Answer::rcode(ResponseCode::FormErr)))],
        Behaviour::Truncated if tcp => vec![(now, reply(query, &answer))],
        Behaviour::Truncated => {
            let mut message = Message::from_vec(&reply(query, &answer))
                .unwrap()
                .truncate();
            message.metadata.truncation = true;
            vec![(now, message.to_vec().unwrap())]
        }
        Behaviour::WrongId => {
            let mut wrong = reply(query, &Answer::a(Ipv4Addr::new(192, 0, 2, 66), 300));
            let id = u16::from_be_bytes([wrong[0], wrong[1]]).wrapping_add(1);
            wrong[..2].copy_from_slice(&id.to_be_bytes());
            vec![(now, wrong), (decoy, reply(query, &answer))]
        }
        Behaviour::WrongQuestion => {
            let mut other = query.clone();
            other.queries[0].set_name(Name::from_ascii("decoy.example.net.").unwrap());
            let wrong = reply(&other, &Answer::a(Ipv4Addr::new(192, 0, 2, 66), 300));
            vec![(now, wrong), (decoy, reply(query, &answer))]
        }
    }
}

/// The reply to `query` with `answer`: its ID, flags RD copied and RA set, its question, and an
/// OPT record echoing the client's with [`FAKE_OPTION_CODE`] added.
fn reply(query: &Message, answer: &Answer) -> Vec<u8> {
    let mut message = Message::response(query.metadata.id, query.metadata.op_code);
    message.metadata.recursion_desired = query.metadata.recursion_desired;
    message.metadata.recursion_available = true;
    message.metadata.authoritative = answer.authoritative;
    message.metadata.response_code = answer.rcode;
    message.add_queries(query.queries.iter().cloned());
    let owner = query
        .queries
        .first()
        .map(|q| q.name().clone())
        .unwrap_or_else(Name::root);
    let name = |records: &[Record]| -> Vec<Record> {
        records
            .iter()
            .cloned()
            .map(|mut r| {
                if r.name.is_root() {
                    r.name = owner.clone();
                }
                r
            })
            .collect()
    };
    message.add_answers(name(&answer.answers));
    message.add_authorities(name(&answer.authorities));
    message.add_additionals(name(&answer.additionals));
    if let Some(theirs) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(theirs.max_payload());
        edns.set_dnssec_ok(theirs.flags().dnssec_ok);
        for (_, option) in &theirs.options().options {
            edns.options_mut().insert(option.clone());
        }
        edns.options_mut()
            .insert(EdnsOption::Unknown(FAKE_OPTION_CODE, b"fake".to_vec()));
        message.set_edns(edns);
    }
    message.to_vec().unwrap()
}
