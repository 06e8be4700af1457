//! `sandbox forward serve`: the sandbox's relay of loopback ports, started by `up` in the
//! background (see [`crate::forward`]); not meant to be run by hand.

use clap::{Args, Subcommand};

use super::Context;
use crate::error::Error;

/// Options of `sandbox forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ForwardCommand,
}

/// The relay's commands.
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Relay the sandbox's loopback ports until SIGTERM (reads its table again on SIGHUP).
    Serve,
}

/// Runs `sandbox forward`.
pub async fn run(ctx: &Context, args: ForwardArgs) -> Result<(), Error> {
    match args.command {
        ForwardCommand::Serve => {
            let name = ctx
                .global
                .name
                .clone()
                .ok_or_else(|| Error::Usage("forward serve needs --name".into()))?;
            Ok(crate::forward::serve(&name).await?)
        }
    }
}
