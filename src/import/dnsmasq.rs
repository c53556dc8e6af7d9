//! `signpost import-dnsmasq FILE`: a dnsmasq configuration (the `--conf-file` syntax:
//! `option=value` per line, `#` comments) to a signpost configuration.
//!
//! | dnsmasq | signpost |
//! | --- | --- |
//! | `server=IP[#port]` | `forward.upstreams` |
//! | `server=/d/[/d2/]IP[#port]` | `[[forward.domain]]` (none for the Consul domain: signpost answers it) |
//! | `no-resolv`, `resolv-file=PATH` | `resolv.conf[:PATH]` in `forward.upstreams`, or not |
//! | `address=/d/IP` | a zone file with origin `d`; subdomains are not covered (warned) |
//! | `srv-host=NAME,TARGET,PORT[,PRIO[,WEIGHT]]` | a zone file with origin `NAME` (only that name is authoritative) |
//! | `host-record=NAME[,NAME..],IP[,IP][,TTL]` | a generated hosts file |
//! | `addn-hosts=FILE`, default `/etc/hosts` | `zones.hosts` |
//! | `cache-size`, `min-cache-ttl`, `max-cache-ttl` | `cache.size`, `cache.min_ttl`, `cache.max_ttl` |
//! | `listen-address`, `port` | `listen.dns` |
//!
//! Anything else, and `neg-ttl` (signpost caches a negative answer by its SOA, RFC 2308, and
//! does not cache one without), is reported on stderr and left out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{ImportError, Imported};

/// What the file asked for, gathered before anything is written.
#[derive(Default)]
struct Dnsmasq {
    servers: Vec<String>,
    domains: Vec<(String, Vec<String>)>,
    no_resolv: bool,
    resolv_file: Option<String>,
    listen: Vec<String>,
    port: Option<u16>,
    /// Zone origin → records (zone-file lines relative to the origin).
    zones: BTreeMap<String, Vec<String>>,
    hosts: Vec<String>,
    no_hosts: bool,
    addn_hosts: Vec<String>,
}

/// Import `text` (read from `path`). Zone and hosts files go under `out_dir`.
pub fn import(text: &str, path: &Path, out_dir: &Path) -> Result<Imported, ImportError> {
    let mut out = Imported::default();
    let mut d = Dnsmasq::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.trim_start_matches("--");
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        let parse_error = |message: String| ImportError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let number = |v: &str| -> Result<u64, ImportError> {
            v.parse()
                .map_err(|_| parse_error(format!("{key}: `{v}` is not a number")))
        };
        match key {
            "server" | "local" => server(&mut d, &mut out, key, value).map_err(parse_error)?,
            "address" => address(&mut d, &mut out, value).map_err(parse_error)?,
            "host-record" => host_record(&mut d, &mut out, value).map_err(parse_error)?,
            "srv-host" => srv_host(&mut d, &mut out, value).map_err(parse_error)?,
            "cache-size" => {
                out.cache
                    .insert("size".into(), (number(value)? as i64).into());
            }
            "min-cache-ttl" => {
                out.cache
                    .insert("min_ttl".into(), format!("{}s", number(value)?).into());
            }
            "max-cache-ttl" => {
                out.cache
                    .insert("max_ttl".into(), format!("{}s", number(value)?).into());
            }
            "neg-ttl" => out.warn(format!(
                "neg-ttl={value}: not carried; signpost caches a negative answer for its SOA \
                 minimum (RFC 2308, capped by cache.negative_max_ttl) and does not cache one \
                 without an SOA"
            )),
            "no-resolv" => d.no_resolv = true,
            "resolv-file" => d.resolv_file = Some(value.to_owned()),
            "listen-address" => d
                .listen
                .extend(value.split(',').map(|a| a.trim().to_owned())),
            "port" => {
                let port = number(value)?;
                d.port =
                    Some(u16::try_from(port).map_err(|_| parse_error(format!("port {port}")))?);
            }
            "no-hosts" => d.no_hosts = true,
            "addn-hosts" => d.addn_hosts.push(value.to_owned()),
            "strict-order" => {
                out.forward.insert("strategy".into(), "sequential".into());
            }
            "bind-interfaces" | "bind-dynamic" => {}
            "keep-in-foreground" | "no-daemon" | "user" | "group" | "pid-file" | "log-facility" => {
                out.warn(format!(
                    "{key}: process option, not needed (see config/signpost.service)"
                ))
            }
            _ => out.warn(format!("{line}: not carried (no signpost equivalent)")),
        }
    }
    finish(d, &mut out, out_dir);
    Ok(out)
}

/// `IP`, `IP#port`, `IPv6#port` → signpost's `IP:port` / `[IPv6]:port`.
fn upstream(text: &str) -> Result<String, String> {
    let (addr, port) = match text.split_once('#') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    // `server=10.0.0.1@eth0` or `@source-ip`: the source is chosen by the kernel here.
    let addr = addr.split('@').next().unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("server: `{text}` is not IP[#port]"))?;
    let port: u16 = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("server: bad port in `{text}`"))?,
        None => 53,
    };
    Ok(match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    })
}

/// Split `/d1/d2/rest` into (["d1", "d2"], "rest"); `None` without a leading `/`.
fn domains_and_rest(value: &str) -> Option<(Vec<String>, &str)> {
    let inner = value.strip_prefix('/')?;
    let end = inner.rfind('/')?;
    let domains = inner[..end]
        .split('/')
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    Some((domains, &inner[end + 1..]))
}

fn server(d: &mut Dnsmasq, out: &mut Imported, key: &str, value: &str) -> Result<(), String> {
    let Some((domains, rest)) = domains_and_rest(value) else {
        if value.contains('@') {
            out.warn(format!(
                "{key}={value}: the @source/@interface part is not carried"
            ));
        }
        d.servers.push(upstream(value)?);
        return Ok(());
    };
    for domain in domains {
        if domain == "consul" || domain.ends_with(".consul") {
            out.warn(format!(
                "{key}={value}: not carried; signpost answers {domain}. itself from the \
                 Consul agent's catalog ([consul] address), so Consul's DNS port is not needed"
            ));
            continue;
        }
        if domain.is_empty() || domain == "#" {
            out.warn(format!(
                "{key}={value}: `/#/` and empty domains are not carried"
            ));
            continue;
        }
        match rest {
            "" => out.warn(format!(
                "{key}={value}: `{domain}` local-only (answered from local data only) is not carried"
            )),
            "#" => out.warn(format!(
                "{key}={value}: `{domain}` to the default servers is signpost's default; nothing to do"
            )),
            target => {
                let target = upstream(target)?;
                match d.domains.iter_mut().find(|(n, _)| *n == domain) {
                    Some((_, list)) => list.push(target),
                    None => d.domains.push((domain, vec![target])),
                }
            }
        }
    }
    Ok(())
}

/// The zone file lines of `origin`, created with its SOA on first use. Local answers get
/// TTL 0, dnsmasq's `local-ttl` default.
fn zone<'a>(d: &'a mut Dnsmasq, origin: &str) -> &'a mut Vec<String> {
    d.zones.entry(origin.to_owned()).or_insert_with(|| {
        vec![
            format!("$ORIGIN {origin}."),
            "$TTL 0".to_owned(),
            "@ IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 0".to_owned(),
        ]
    })
}

fn address(d: &mut Dnsmasq, out: &mut Imported, value: &str) -> Result<(), String> {
    let (domains, ip) =
        domains_and_rest(value).ok_or_else(|| format!("address: `{value}` is not /domain/IP"))?;
    for domain in domains {
        if domain.is_empty() || domain == "#" || ip.is_empty() || ip == "#" {
            out.warn(format!(
                "address={value}: NXDOMAIN or catch-all addresses are not carried"
            ));
            continue;
        }
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("address: `{ip}` is not an IP address"))?;
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        zone(d, &domain).push(format!("@ IN {rtype} {ip}"));
        out.warn(format!(
            "address={value}: {domain} is served from a generated zone; its subdomains get \
             NXDOMAIN (dnsmasq answers them with the same address too)"
        ));
    }
    Ok(())
}

fn host_record(d: &mut Dnsmasq, out: &mut Imported, value: &str) -> Result<(), String> {
    let mut names = Vec::new();
    let mut ips = Vec::new();
    for field in value.split(',').map(str::trim) {
        if let Ok(ip) = field.parse::<IpAddr>() {
            ips.push(ip);
        } else if field.parse::<u32>().is_ok() {
            out.warn(format!(
                "host-record={value}: the TTL is not carried (hosts file entries have TTL 0)"
            ));
        } else {
            names.push(field.to_owned());
        }
    }
    if names.is_empty() || ips.is_empty() {
        return Err(format!(
            "host-record: `{value}` needs a name and an address"
        ));
    }
    for ip in ips {
        d.hosts.push(format!("{ip} {}", names.join(" ")));
    }
    Ok(())
}

fn srv_host(d: &mut Dnsmasq, out: &mut Imported, value: &str) -> Result<(), String> {
    let fields: Vec<&str> = value.split(',').map(str::trim).collect();
    let name = fields[0].trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') || name.split('.').count() < 3 {
        out.warn(format!(
            "srv-host={value}: a name without a domain (dnsmasq adds --domain) is not carried"
        ));
        return Ok(());
    }
    let target = fields.get(1).copied().unwrap_or(".");
    let port: u16 = fields
        .get(2)
        .map_or(Ok(0), |p| p.parse())
        .map_err(|_| format!("srv-host: bad port in `{value}`"))?;
    let priority: u16 = fields
        .get(3)
        .map_or(Ok(0), |p| p.parse())
        .map_err(|_| format!("srv-host: bad priority in `{value}`"))?;
    let weight: u16 = fields
        .get(4)
        .map_or(Ok(0), |p| p.parse())
        .map_err(|_| format!("srv-host: bad weight in `{value}`"))?;
    let target = if target == "." {
        ".".to_owned()
    } else {
        format!("{}.", target.trim_end_matches('.'))
    };
    // Served by the zone of `address=` for a parent of the name when there is one, else by a
    // zone whose origin is the SRV name itself: signpost then owns just that name and every
    // other name of the domain is still forwarded, as with dnsmasq.
    let origin = d
        .zones
        .keys()
        .find(|o| name == **o || name.ends_with(&format!(".{o}")))
        .cloned()
        .unwrap_or_else(|| name.clone());
    let owner = if name == origin {
        "@".to_owned()
    } else {
        format!("{name}.")
    };
    zone(d, &origin).push(format!(
        "{owner} IN SRV {priority} {weight} {port} {target}"
    ));
    Ok(())
}

/// Write the sections from what was gathered.
fn finish(d: Dnsmasq, out: &mut Imported, out_dir: &Path) {
    let mut upstreams: Vec<toml::Value> = d.servers.iter().cloned().map(Into::into).collect();
    if !d.no_resolv {
        upstreams.push(match &d.resolv_file {
            Some(path) => format!("resolv.conf:{path}").into(),
            None => "resolv.conf".into(),
        });
    } else if upstreams.is_empty() {
        out.warn("no-resolv and no server=: signpost needs an upstream; resolv.conf kept");
        upstreams.push("resolv.conf".into());
    }
    out.forward
        .insert("upstreams".into(), toml::Value::Array(upstreams));
    for (name, list) in d.domains {
        let mut table = toml::Table::new();
        table.insert("name".into(), format!("{name}.").into());
        table.insert(
            "upstreams".into(),
            toml::Value::Array(list.into_iter().map(Into::into).collect()),
        );
        out.forward_domains.push(table);
    }

    let port = d.port.unwrap_or(53);
    if port == 0 {
        out.warn("port=0 turns dnsmasq's DNS off; signpost listens on 53");
    }
    let port = if port == 0 { 53 } else { port };
    let listen: Vec<toml::Value> = if d.listen.is_empty() {
        out.warn(
            "no listen-address: dnsmasq listens on every interface; signpost on 127.0.0.1 only",
        );
        vec![format!("127.0.0.1:{port}").into()]
    } else {
        d.listen
            .iter()
            .map(|a| match a.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}").into(),
                _ => format!("{a}:{port}").into(),
            })
            .collect()
    };
    out.listen.insert("dns".into(), toml::Value::Array(listen));

    if !d.zones.is_empty() {
        let dir = out_dir.join("zones");
        for (origin, mut lines) in d.zones {
            lines.push(String::new());
            out.files
                .push((dir.join(format!("{origin}.zone")), lines.join("\n")));
        }
        out.zones
            .insert("dir".into(), dir.display().to_string().into());
    }
    let hosts_file: Option<PathBuf> = if !d.hosts.is_empty() {
        let path = out_dir.join("hosts");
        out.files.push((path.clone(), d.hosts.join("\n") + "\n"));
        if !d.no_hosts || !d.addn_hosts.is_empty() {
            out.warn(
                "host-record entries go to a generated hosts file; signpost reads one hosts file, \
                 so /etc/hosts and addn-hosts files are not read",
            );
        }
        Some(path)
    } else if let Some(first) = d.addn_hosts.first() {
        if d.addn_hosts.len() > 1 || !d.no_hosts {
            out.warn(format!(
                "signpost reads one hosts file: only {first} is used"
            ));
        }
        Some(PathBuf::from(first))
    } else if !d.no_hosts {
        Some(PathBuf::from("/etc/hosts"))
    } else {
        None
    };
    if let Some(path) = hosts_file {
        out.zones
            .insert("hosts".into(), path.display().to_string().into());
    }
}
