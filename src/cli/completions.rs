//! `sandbox completions SHELL` and `sandbox man`: generated from the command definitions.

use clap::{Args, CommandFactory};

use super::Cli;
use crate::error::Error;

/// Options of `sandbox completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for a shell.
pub fn completions(args: CompletionsArgs) -> Result<(), Error> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "sandbox", &mut std::io::stdout());
    Ok(())
}

/// Prints the man page (roff).
pub fn man() -> Result<(), Error> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|source| Error::Io {
            action: "write the man page",
            source,
        })
}
