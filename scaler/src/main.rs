//! The `surge-scaler` binary: parses the command line and hands over to the library.
use clap::Parser;
use surge_scaler::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", surge_scaler::crd::crd_yaml()?),
        Command::Run(args) => surge_scaler::server::run(args).await?,
    }
    Ok(())
}
