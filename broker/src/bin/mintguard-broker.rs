//! `mintguard-broker`: the broker service.

//!
//! `run --config FILE` validates the configuration before binding anything
//! (exit 2 naming the file, key and reason), then serves. SIGHUP reloads
//! rules, grants, signal weights and the exposure graph; a reload that fails
//! validation keeps the running configuration and says why.

#![allow(clippy::print_stdout)] // a command-line tool prints its results

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: the issuance path allocates many small, short-lived JSON values
/// across threads, where glibc malloc spent a sixth of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mintguard_broker::config::{Config, Role};
use mintguard_broker::state::Broker;

/// The Mintguard credential broker.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public, agents and admin listeners.
    Run {
        /// The TOML configuration (see deploy/broker_full.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Write a busy issuance log through the real issuance core and anomaly
    /// analysis, on a clock walking the past `--span` up to now (demos, the
    /// console's screenshots and timings). Stop the broker first; the
    /// config's rules must permit `spiffe://<td>/ns/seed/…` (examples/busy/).
    SeedLog {
        /// The broker's TOML configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Credential requests to decide.
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// The span they cover, ending now.
        #[arg(long, default_value = "24h")]
        span: String,
        /// Nodes (besides the batch node).
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Workload identities.
        #[arg(long, default_value_t = 120)]
        identities: usize,
        /// The traffic's random seed (the same seed, the same traffic).
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Bootstrap operators.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Create an operator: a token, or with `--cert` a certificate and key for
    /// `spiffe://<td>/mintguard/operator/NAME` (run on the broker host; the
    /// broker loads `<data_dir>/operators/NAME.role` and `NAME.token` at start
    /// and on reload). Run again with `--cert` to renew the certificate.
    Create {
        /// Operator name.
        name: String,
        /// viewer, operator, approver, admin or signal_source.
        #[arg(long, default_value = "admin")]
        role: String,
        /// The broker's configuration (for its data_dir and CA).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Issue an operator certificate (valid for `ca.svid_ttl`) instead of
        /// a token.
        #[arg(long)]
        cert: bool,
        /// Also copy the token file (or write the certificate, key and trust
        /// bundle) here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, log_json } => run(config, log_json),
        Command::SeedLog {
            config,
            requests,
            span,
            nodes,
            identities,
            seed,
        } => seed_log(&config, requests, &span, nodes, identities, seed),
        Command::Operator {
            command:
                OperatorCommand::Create {
                    name,
                    role,
                    config,
                    cert,
                    out,
                },
        } => operator_create(&name, &role, &config, cert, out),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mintguard-broker: {message}");
    ExitCode::from(2)
}

/// The multi-threaded runtime, or the exit its failure means.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("runtime: {e}")))
}

fn seed_log(
    file: &std::path::Path,
    requests: u64,
    span: &str,
    nodes: usize,
    identities: usize,
    seed: u64,
) -> ExitCode {
    let span = match humantime::parse_duration(span) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => return fail(format!("--span {span:?}: {e}")),
    };
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return e,
    };
    let plan = mintguard_broker::seed::SeedPlan {
        requests,
        span_ms: span,
        nodes,
        identities,
        seed,
    };
    let started = std::time::Instant::now();
    match runtime.block_on(mintguard_broker::seed::seed(config, &plan)) {
        Ok(report) => {
            let mut out = serde_json::to_value(&report).unwrap_or_default();
            out["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn run(file: PathBuf, log_json: bool) -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return e,
    };
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let bound = match mintguard_broker::routes::serve(broker.clone()).await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let listen = serde_json::to_string_pretty(&bound).unwrap_or_default();
        if let Err(e) = std::fs::write(data_dir.join("listen.json"), &listen) {
            return fail(format!("{}: {e}", data_dir.join("listen.json").display()));
        }
        eprintln!(
            "mintguard-broker: serving public on {}, agents on {}, admin on {} (data in {})",
            bound.public,
            bound.agents,
            bound.admin,
            data_dir.display()
        );
        wait_for_signals(broker).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signals(broker: Arc<Broker>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&broker).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
}

async fn reload(broker: &Broker) {
    if let Err(e) = broker.reload().await {
        tracing::error!(%e, "reload refused: keeping the running configuration");
    }
}

fn operator_create(
    name: &str,
    role: &str,
    file: &std::path::Path,
    cert: bool,
    out: Option<PathBuf>,
) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let parsed: Result<Role, _> =
        serde_json::from_value(serde_json::Value::String(role.to_owned()));
    if parsed.is_err() {
        return fail(format!(
            "unknown role {role:?}: viewer, operator, approver, admin or signal_source"
        ));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return fail(format!("operator name {name:?}: use [A-Za-z0-9_-]"));
    }
    let dir = config.data_dir.join("operators");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(format!("{}: {e}", dir.display()));
    }
    let role_file = dir.join(format!("{name}.role"));
    match std::fs::read_to_string(&role_file) {
        Ok(existing) if existing.trim() != role => {
            return fail(format!(
                "{}: operator {name} exists with role {}",
                role_file.display(),
                existing.trim()
            ));
        }
        Ok(_) => {}
        Err(_) => {
            if let Err(e) = write_secret(&role_file, role.as_bytes(), false) {
                return fail(format!("{}: {e}", role_file.display()));
            }
        }
    }
    if cert {
        return operator_cert(name, &config, out.unwrap_or(dir));
    }
    let token = match mintguard_broker::ids::secret_token("mgop") {
        Ok(token) => token,
        Err(e) => return fail(e.to_string()),
    };
    let path = dir.join(format!("{name}.token"));
    if let Err(e) = write_secret(&path, token.as_bytes(), false) {
        return fail(format!(
            "{}: {e} (does the operator exist already?)",
            path.display()
        ));
    }
    if let Some(out) = out {
        let copy = out.join(format!("{name}.token"));
        if let Err(e) = std::fs::create_dir_all(&out)
            .and_then(|()| write_secret(&copy, token.as_bytes(), false))
        {
            return fail(format!("{}: {e}", copy.display()));
        }
        println!("{}", copy.display());
    } else {
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

/// Writes a 0600 file: `create_new` refuses to overwrite; `replace` writes a
/// temporary file and renames it over the old one (certificate renewal).
fn write_secret(path: &std::path::Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = if replace {
        path.with_extension("tmp")
    } else {
        path.to_owned()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(!replace)
        .create(replace)
        .truncate(replace)
        .mode(0o600)
        .open(&target)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if replace {
        std::fs::rename(&target, path)?;
    }
    Ok(())
}

/// Issues `spiffe://<td>/mintguard/operator/NAME` from the broker's CA and
/// writes `NAME.crt`, `NAME.key` (0600) and `bundle.pem` into `out`.
fn operator_cert(name: &str, config: &Config, out: PathBuf) -> ExitCode {
    use mintguard_certs::ca::{CaSettings, CertificateAuthority};
    let now = time::OffsetDateTime::now_utc();
    let settings = CaSettings {
        ca_ttl: config.ca.ca_ttl.0,
        max_svid_ttl: config.ca.svid_ttl.0,
    };
    let issued = CertificateAuthority::load_or_create(
        &config.data_dir.join("ca"),
        config.trust_domain.clone(),
        settings,
        now,
    )
    .and_then(|ca| {
        let id = mintguard_certs::id::operator_id(&config.trust_domain, name)?;
        Ok((
            ca.issue_svid(&id, config.ca.svid_ttl.0, now)?,
            ca.bundle(now)?,
        ))
    });
    let (svid, bundle) = match issued {
        Ok(v) => v,
        Err(e) => return fail(format!("issuing the operator certificate: {e}")),
    };
    let files = [
        (format!("{name}.crt"), svid.chain_pem()),
        (format!("{name}.key"), svid.key().to_pem().to_string()),
        ("bundle.pem".to_owned(), bundle.to_pem()),
    ];
    if let Err(e) = std::fs::create_dir_all(&out) {
        return fail(format!("{}: {e}", out.display()));
    }
    for (file, text) in &files {
        let path = out.join(file);
        if let Err(e) = write_secret(&path, text.as_bytes(), true) {
            return fail(format!("{}: {e}", path.display()));
        }
    }
    println!(
        "{}\n{}\nvalid until {}",
        out.join(&files[0].0).display(),
        out.join(&files[1].0).display(),
        svid.not_after()
    );
    ExitCode::SUCCESS
}
