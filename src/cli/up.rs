//! `sandbox up`: parses, brings the sandbox up (see [`crate::up`]), prints the summary.

use clap::Args;

use super::Context;
use crate::error::Error;

/// Options of `sandbox up`.
#[derive(Debug, Args)]
pub struct UpArgs {}

/// Runs `sandbox up`.
pub async fn run(ctx: &Context, _args: UpArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    if config.cluster.is_some() {
        return super::cluster::up(ctx, &config).await;
    }
    let outcome = crate::up::bring_up(&ctx.reporter, &config).await?;
    ctx.print(&outcome.json(), &outcome.text());
    Ok(())
}
