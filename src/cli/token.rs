//! `taskbroker token new --name NAME`: a fresh random token, and the lines
//! that make the broker know it (only its SHA-256 is ever stored).

use clap::{Args, Subcommand};
use rand::RngCore;

use crate::security::authn::{hex, token_hash};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and the config lines with its hash.
    New(NewArgs),
    /// Print the SHA-256 of a token read from standard input.
    Hash,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The principal the token is for (`[[auth.principals]] name`).
    #[arg(long)]
    pub name: String,
}

/// 32 random bytes, hex, with a prefix that makes leaked tokens easy to
/// find with secret scanners.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("tbk_{}", hex(&bytes))
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New(NewArgs { name }) => {
            let token = generate();
            let hash = hex(&token_hash(&token));
            println!("token (give it to the client; it is not stored anywhere):\n  {token}\n");
            println!("config ([[auth.principals]] for {name:?}):\n  token_sha256 = \"{hash}\"\n");
            println!("or a line of auth.tokens_file:\n  {hash} {name}");
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            println!("{}", hex(&token_hash(line.trim())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::security::parse_sha256;

    #[test]
    fn new_tokens_are_random_prefixed_and_hash_to_a_valid_config_value() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with("tbk_") && a.len() == 4 + 64, "{a}");
        assert!(parse_sha256(&hex(&token_hash(&a))).is_some());
    }
}
