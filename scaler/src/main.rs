//! The `surge-scaler` binary: parses the command line and hands over to the library.
use clap::Parser;
use surge_scaler::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", surge_scaler::crd::crd_yaml()?);
            Ok(())
        }
        Command::Run(_args) => anyhow::bail!("`run` is not implemented yet in this build"),
    }
}
