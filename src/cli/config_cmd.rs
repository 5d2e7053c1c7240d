//! `taskbroker config ...`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::config::{Config, EXAMPLE};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented example configuration (all defaults).
    Example,
    /// Parse and validate a configuration file.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let config = Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if let Err(problems) = config.validate() {
                bail!("{}:\n  {}", file.display(), problems.join("\n  "));
            }
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
