//! Operating signpost on a node (issue 9), always through the real binary: reload and
//! shutdown, systemd, privileges, alerts with the real Prometheus, status, migration imports,
//! and the system resolver in a network namespace.

mod daemon;

/// The alerting rules under the real promtool and Prometheus.
mod alerts;
/// `import-dnsmasq` and `import-consul-dns` against the real dnsmasq.
mod import;
/// SIGHUP reloads, an invalid file keeps the old config, SIGTERM drains and exits 0, and a
/// reload under load loses no query.
mod lifecycle;
/// glibc's resolver through signpost in a network namespace of the test's own.
mod netns;
/// The query log: its lines, and answers unaffected when it is blocked.
mod query_log;
/// `signpost status`.
mod status;
/// The systemd unit, `sd_notify`, and `--user`.
mod systemd;
