//! The `signpost` command: the only place that prints errors and picks exit codes
//! (0 success, 2 bad command line, 78 invalid configuration, 1 any other failure).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use signpost::config::{Config, Overrides};
use signpost::ops::notify::Notifier;

/// A node-local DNS sidecar for Consul.
#[derive(Parser)]
#[command(name = "signpost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS and HTTP until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    Run(RunArgs),
    /// Validate the configuration (and its zone files), bind nothing, exit.
    CheckConfig(ConfigArgs),
    /// Render the SRV data file and every template once from the current catalog, then exit
    /// (non-zero if any render, check, write or reload failed).
    Render(RenderArgs),
    /// Turn a dnsmasq config into a signpost config (stdout); zone and hosts files it needs
    /// are written to --dir. Each option that cannot be carried is named on stderr.
    ImportDnsmasq(ImportDnsmasqArgs),
    /// Turn a Consul agent config's DNS settings (JSON or HCL) into a signpost config (stdout).
    ImportConsulDns(ImportArgs),
    /// Print a short summary of a running signpost (catalog, upstreams, cache, renders).
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// The running signpost's HTTP address (its `listen.http`).
    #[arg(long, default_value = "127.0.0.1:9153")]
    http: std::net::SocketAddr,
}

#[derive(Args)]
struct ImportArgs {
    /// The file to import.
    file: PathBuf,
}

#[derive(Args)]
struct ImportDnsmasqArgs {
    /// The dnsmasq config file.
    file: PathBuf,
    /// Where generated zone and hosts files go (referenced by absolute path).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Args)]
struct ConfigArgs {
    /// The configuration file (default: /etc/signpost/signpost.toml if it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// DNS listen address (UDP and TCP); repeat for several. Replaces `listen.dns`.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// HTTP listen address for /metrics, /health, /ready, /v1/catalog; "" disables.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Consul agent URL (http://127.0.0.1:8500) or file:PATH for a static catalog.
    #[arg(long, value_name = "URL")]
    consul: Option<String>,
    /// Upstream resolver (IP[:port] or resolv.conf); repeat for several. Replaces `forward.upstreams`.
    #[arg(long = "upstream", value_name = "ADDR")]
    upstreams: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info", env = "SIGNPOST_LOG")]
    log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Started as root: become this user once the listeners are bound (port 53 needs root or
    /// CAP_NET_BIND_SERVICE only to bind).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Log every query (as `[log] queries = true`), off the request path.
    #[arg(long)]
    log_queries: bool,
}

#[derive(Args)]
struct RenderArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Render once and exit (consul-template `-once`); the only mode for now.
    #[arg(long, required = true)]
    once: bool,
    /// Print what would be written to stdout; write nothing, run no command.
    #[arg(long)]
    dry_run: bool,
    /// Longest wait for the first complete catalog from the agent.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "warn", env = "SIGNPOST_LOG")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an invalid configuration (sysexits.h EX_CONFIG).
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => match load(&args) {
            Ok(config) => match check_zones(&config) {
                Ok(()) => {
                    println!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EX_CONFIG, &e),
            },
            Err(e) => fail(EX_CONFIG, &e),
        },
        Command::Run(args) => {
            init_tracing(&args.log_level, args.log_format);
            let config = match load_run(&args) {
                Ok(c) => c,
                Err(e) => return fail(EX_CONFIG, &e),
            };
            run(config, &args)
        }
        Command::ImportDnsmasq(args) => import(&args.file, |text| {
            let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
            signpost::import::dnsmasq::import(text, &args.file, &dir)
        }),
        Command::ImportConsulDns(args) => import(&args.file, |text| {
            signpost::import::consul::import(text, &args.file)
        }),
        Command::Status(args) => {
            use signpost::ops::status;
            let ready = status::get(args.http, "/ready").map(|(code, _)| code == 200);
            let metrics = status::get(args.http, "/metrics");
            match (ready, metrics) {
                (Ok(ready), Ok((200, body))) => {
                    let catalog = status::get(args.http, "/v1/catalog")
                        .ok()
                        .filter(|(code, _)| *code == 200)
                        .map(|(_, body)| body);
                    print!(
                        "{}",
                        status::summary(args.http, ready, &body, catalog.as_deref())
                    );
                    if ready {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    }
                }
                (Ok(_), Ok((code, _))) => {
                    fail(1, &format!("{}: /metrics answered {code}", args.http))
                }
                (Err(e), _) | (_, Err(e)) => {
                    fail(1, &format!("cannot reach signpost at {}: {e}", args.http))
                }
            }
        }
        Command::Render(args) => {
            init_tracing(&args.log_level, LogFormat::Text);
            let config = match load(&args.config) {
                Ok(c) => c,
                Err(e) => return fail(EX_CONFIG, &e),
            };
            render(config, &args)
        }
    }
}

/// Read `file`, import it, write the generated files, print the TOML and the warnings.
fn import(
    file: &std::path::Path,
    convert: impl FnOnce(&str) -> Result<signpost::import::Imported, signpost::import::ImportError>,
) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(1, &format!("cannot read {}: {e}", file.display())),
    };
    let imported = match convert(&text) {
        Ok(i) => i,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    for (path, contents) in &imported.files {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, contents));
        if let Err(e) = written {
            return fail(1, &format!("cannot write {}: {e}", path.display()));
        }
        eprintln!("signpost: wrote {}", path.display());
    }
    for warning in &imported.warnings {
        eprintln!("signpost: warning: {warning}");
    }
    print!("{}", imported.to_toml(&file.display().to_string()));
    ExitCode::SUCCESS
}

/// The config for `run`: the file and flags, plus `--log-queries`.
fn load_run(args: &RunArgs) -> Result<Config, signpost::config::ConfigError> {
    let mut config = load(&args.config)?;
    config.log.queries |= args.log_queries;
    Ok(config)
}

fn load(args: &ConfigArgs) -> Result<Config, signpost::config::ConfigError> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        http: args.http.clone(),
        consul: args.consul.clone(),
        upstreams: args.upstreams.clone(),
    };
    Config::load(args.config.as_deref(), &overrides)
}

/// Zone files are part of the configuration: a broken one fails `check-config` like a bad key.
fn check_zones(config: &Config) -> Result<(), signpost::zones::ZoneError> {
    match &config.zones.dir {
        Some(dir) => signpost::zones::Zones::load_dir(dir).map(|_| ()),
        None => Ok(()),
    }
}

fn run(config: Config, args: &RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("signpost")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    runtime.block_on(async move {
        // Signal handlers first: a SIGHUP that arrives while starting must not kill us.
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => return fail(1, &e),
        };
        let mut running = match signpost::app::start(config).await {
            Ok(r) => r,
            Err(signpost::app::AppError::Zone(e)) => return fail(EX_CONFIG, &e),
            Err(e) => return fail(1, &e),
        };
        if let Some(user) = &args.user {
            if let Err(e) = signpost::ops::privileges::drop_to(user) {
                running.stop().await;
                return fail(1, &e);
            }
            tracing::info!(user, "privileges dropped");
        }
        let notifier = Arc::new(Notifier::from_env());
        let notify_task = tokio::spawn(notify_systemd(
            Arc::clone(&notifier),
            Arc::clone(&running.readiness),
        ));
        while let Received::Reload = signals.next().await {
            let _ = notifier.notify(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                signpost::ops::notify::monotonic_usec()
            ));
            let result = match load_run(args) {
                Ok(config) => running.reload(config).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            signpost::app::record_reload(&result);
            let _ = notifier.notify("READY=1");
        }
        tracing::info!("shutting down");
        let _ = notifier.notify("STOPPING=1");
        notify_task.abort();
        running.stop().await;
        ExitCode::SUCCESS
    })
}

/// Tell systemd `READY=1` once `/ready` would answer 200, then feed the watchdog (if the unit
/// has `WatchdogSec=`) from this runtime: if it stalls, systemd restarts us.
async fn notify_systemd(notifier: Arc<Notifier>, readiness: Arc<signpost::http::Readiness>) {
    if !notifier.enabled() {
        return;
    }
    while !readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = notifier.notify("READY=1\nSTATUS=serving") {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let Some(interval) = notifier.watchdog_interval() else {
        return;
    };
    loop {
        if let Err(e) = notifier.notify("WATCHDOG=1") {
            tracing::warn!(error = %e, "cannot feed the systemd watchdog");
        }
        tokio::time::sleep(interval).await;
    }
}

/// What a signal asks for.
enum Received {
    Reload,
    Stop,
}

/// SIGHUP, SIGTERM and SIGINT, registered once.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.hup.recv() => Received::Reload,
            _ = self.term.recv() => Received::Stop,
            _ = self.int.recv() => Received::Stop,
        }
    }
}

/// `signpost render --once [--dry-run]`: one catalog (a `file:` catalog is read at once; an
/// agent's first complete catalog is awaited up to `--timeout`), every output rendered once.
fn render(config: Config, args: &RenderArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    runtime.block_on(async move {
        let (mut catalogs, feed) = match signpost::consul::watch::spawn(&config.consul) {
            Ok(started) => started,
            Err(e) => return fail(1, &e),
        };
        let first = tokio::time::timeout(args.timeout, catalogs.wait_for(Option::is_some)).await;
        let catalog = match first {
            Ok(Ok(c)) => c.clone(),
            Ok(Err(_)) => None,
            Err(_) => {
                feed.abort();
                return fail(
                    1,
                    &format!(
                        "no complete catalog within {}",
                        humantime::format_duration(args.timeout)
                    ),
                );
            }
        };
        feed.abort();
        let Some(catalog) = catalog else {
            return fail(1, &"the catalog feed stopped before the first catalog");
        };
        let domains = signpost::app::consul_domains(&config);
        let data = std::sync::Arc::new(signpost::emit::SrvData::build(
            &catalog,
            &config.dns,
            &domains[0],
        ));
        let mut stdout = std::io::stdout().lock();
        let results =
            signpost::emit::render_once(&config.emit, data, &domains[0], args.dry_run, &mut stdout)
                .await;
        let failed: Vec<_> = results.iter().filter(|r| !r.result.is_success()).collect();
        if !args.dry_run {
            for r in &results {
                eprintln!("{}: {}", r.name, r.result);
            }
        }
        match failed.as_slice() {
            [] => ExitCode::SUCCESS,
            failed => {
                let names: Vec<String> = failed
                    .iter()
                    .map(|r| format!("{} ({})", r.name, r.result))
                    .collect();
                fail(1, &format!("render failed: {}", names.join(", ")))
            }
        }
    })
}

fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // hickory's own INFO lines cost ~20% of throughput (reference/hickory.md §2.4).
    // The query log has its own switch ([log] queries): its lines pass whatever the level.
    let filter = EnvFilter::try_new(format!(
        "{level},hickory_server=warn,hickory_proto=warn,signpost::query=info"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("signpost: {error}");
    ExitCode::from(code)
}
