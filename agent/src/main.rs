//! `mintguard-agent`: the node agent.

use clap::Parser;

/// The Mintguard node agent.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
}
