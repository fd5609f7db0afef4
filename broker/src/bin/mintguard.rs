//! `mintguard`: the operator CLI. Offline commands run here; the others are
//! clients of the broker's admin API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mintguard_broker::cli;

/// Inspect, explain and act on Mintguard.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ECI of every node of an exposure graph, from the file alone.
    Eci(cli::eci::EciArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Eci(eci) => cli::eci::run(
            eci,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mintguard: {message}");
            ExitCode::from(2)
        }
    }
}
