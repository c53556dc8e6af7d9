//! The query log (`[log] queries = true`, `--log-queries`; dnsmasq's `--log-queries`): one line
//! per answered query, written by a thread of its own.
//!
//! The request path only formats nothing and tries to queue a small record
//! ([`QueryLog::record`]); the queue is bounded and a full queue drops the record and counts
//! it (`signpost_query_log_dropped_total`). A slow or blocked log destination (a full pipe,
//! a stalled journal) therefore costs answers nothing. Lines go through `tracing` with the
//! target `signpost::query`, so they follow `--log-format`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::metrics::{QUERY_LOG_DROPPED_TOTAL, Zone};
use crate::wire::Proto;

/// Records queued at most; beyond it they are dropped.
pub const QUEUE: usize = 8192;

/// A handle to the query log. Off until [`QueryLog::set_enabled`].
#[derive(Debug)]
pub struct QueryLog {
    enabled: AtomicBool,
    tx: SyncSender<Entry>,
    dropped: metrics::Counter,
}

/// One logged query.
#[derive(Debug)]
struct Entry {
    name: Box<str>,
    qtype: u16,
    proto: Proto,
    zone: Zone,
    rcode: u8,
    took: Duration,
}

// === impl QueryLog ===

impl QueryLog {
    /// Start the writer thread.
    pub fn start() -> std::io::Result<Arc<QueryLog>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("signpost-query-log".into())
            .spawn(move || write(rx))?;
        Ok(Arc::new(QueryLog {
            enabled: AtomicBool::new(false),
            tx,
            dropped: metrics::counter!(QUERY_LOG_DROPPED_TOTAL),
        }))
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Queue a line for `name` (dotted, as received); never waits.
    pub fn record(
        &self,
        name: &[u8],
        qtype: u16,
        proto: Proto,
        zone: Zone,
        rcode: u8,
        took: Duration,
    ) {
        let entry = Entry {
            name: String::from_utf8_lossy(name).into(),
            qtype,
            proto,
            zone,
            rcode,
            took,
        };
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.increment(1),
        }
    }
}

fn write(rx: Receiver<Entry>) {
    for e in rx {
        let proto = match e.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        };
        tracing::info!(
            target: "signpost::query",
            qname = %e.name,
            qtype = %RecordType::from(e.qtype),
            proto,
            zone = e.zone.label(),
            rcode = rcode_name(e.rcode),
            us = e.took.as_micros() as u64,
            "query"
        );
    }
}

fn rcode_name(code: u8) -> &'static str {
    match code {
        0 => "noerror",
        1 => "formerr",
        2 => "servfail",
        3 => "nxdomain",
        4 => "notimp",
        5 => "refused",
        _ => "other",
    }
}
