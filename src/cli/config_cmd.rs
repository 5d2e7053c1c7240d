//! `taskbroker config ...`.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use crate::config::{Config, EXAMPLE};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented example configuration (all defaults).
    Example,
    /// Parse and validate a configuration file (exit 64 when invalid).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let path = file.display();
            let text =
                std::fs::read_to_string(&file).map_err(|e| CliError::Config(vec![format!("{path}: {e}")]))?;
            let config =
                Config::from_toml(&text).map_err(|e| CliError::Config(vec![format!("{path}: {e}")]))?;
            config.validate().map_err(|problems| {
                CliError::Config(problems.into_iter().map(|p| format!("{path}: {p}")).collect())
            })?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
