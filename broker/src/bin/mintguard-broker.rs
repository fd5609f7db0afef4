//! `mintguard-broker`: the broker service.

use clap::Parser;

/// The Mintguard credential broker.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
}
