//! `mintguard-agent`: the node agent, and its helpers for AWS SDKs and scripts.

#![allow(clippy::print_stdout)] // the helpers print credentials for their callers

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mintguard_agent::client::{self, DEFAULT_SOCKET};
use mintguard_agent::config::Config;
use mintguard_api::CredentialRequest;

/// The Mintguard node agent.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: enroll (first start, join token from a file or the
    /// environment, never argv) or reuse the stored SVID, serve workloads.
    Run {
        /// The TOML configuration (see deploy/agent_full.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Overrides `socket.path`.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Print AWS `credential_process` JSON for a grant (configure it as
    /// `credential_process = mintguard-agent credential-process --grant G`).
    CredentialProcess {
        /// The grant.
        #[arg(long)]
        grant: String,
        /// The agent's socket.
        #[arg(long, env = "MINTGUARD_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Fetch a credential for a shell script.
    Fetch {
        /// The grant.
        #[arg(long)]
        grant: String,
        /// json (the whole answer), env (shell assignments) or token.
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Requested TTL in seconds (the decision may shorten it).
        #[arg(long)]
        ttl: Option<u64>,
        /// Why (recorded in the issuance log).
        #[arg(long)]
        purpose: Option<String>,
        /// The SPIFFE ID, when several entries match.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// The agent's socket.
        #[arg(long, env = "MINTGUARD_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Env,
    Token,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mintguard-agent: {message}");
    ExitCode::FAILURE
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Raises the soft limit on open files to the hard one (each workload
/// connection holds three descriptors: its socket, its peer's pidfd and the
/// peer's `/proc/PID/cgroup`).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%e, soft, hard, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%e, "could not read the open-file limit"),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            socket,
            log_json,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr);
            if log_json {
                builder.json().init();
            } else {
                builder.init();
            }
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if let Some(socket) = socket {
                config.socket_path = socket;
            }
            // Each connection holds its socket and its peer's pidfd.
            raise_nofile();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match runtime.block_on(mintguard_agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::CredentialProcess { grant, socket } => {
            let request = request(&grant, None, None, None);
            let result =
                runtime().and_then(|rt| rt.block_on(client::request_credential(&socket, &request)));
            match result.and_then(|issued| client::credential_process_json(&grant, &issued)) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Fetch {
            grant,
            format,
            ttl,
            purpose,
            spiffe_id,
            socket,
        } => {
            let request = request(&grant, ttl, purpose, spiffe_id);
            let issued = match runtime()
                .and_then(|rt| rt.block_on(client::request_credential(&socket, &request)))
            {
                Ok(i) => i,
                Err(e) => return fail(e),
            };
            match format {
                Format::Json => match serde_json::to_string_pretty(&issued) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return fail(e),
                },
                Format::Env => print!("{}", client::env_lines(&issued)),
                Format::Token => match issued.credential["token"].as_str() {
                    Some(t) => println!("{t}"),
                    None => return fail("this credential has no token field; use --format json"),
                },
            }
            ExitCode::SUCCESS
        }
    }
}

fn request(
    grant: &str,
    ttl: Option<u64>,
    purpose: Option<String>,
    spiffe_id: Option<String>,
) -> CredentialRequest {
    CredentialRequest {
        grant: grant.to_owned(),
        ttl_seconds: ttl,
        purpose,
        spiffe_id,
        ..Default::default()
    }
}
