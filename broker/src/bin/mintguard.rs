//! `mintguard`: the operator CLI, a client of the broker's admin API.

use clap::Parser;

/// Inspect, explain and act on the Mintguard issuance log.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
}
