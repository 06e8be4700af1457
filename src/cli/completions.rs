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
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "sandbox", &mut script);
    crate::report::stdout(&String::from_utf8_lossy(&script));
    Ok(())
}

/// Prints the man page (roff).
pub fn man() -> Result<(), Error> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|source| Error::Io {
            action: "render the man page",
            source,
        })?;
    crate::report::stdout(&String::from_utf8_lossy(&page));
    Ok(())
}
