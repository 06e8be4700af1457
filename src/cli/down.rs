//! `sandbox down`: remove what the sandbox made; its data only with `--purge`.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::node;

/// Options of `sandbox down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also delete the data volume (cluster state and persistent volumes).
    #[arg(long)]
    pub purge: bool,
}

/// Runs `sandbox down`.
pub async fn run(ctx: &Context, args: DownArgs) -> Result<(), Error> {
    let sandbox = ctx.sandbox_name()?;
    let engine = Engine::connect().await?;
    let _lock = crate::lock::acquire(&sandbox, &ctx.reporter).await?;
    let step = ctx.reporter.step(format!("removing sandbox {sandbox}"));
    let removed = node::remove(&engine, &sandbox, args.purge).await?;
    step.done(format!("removed sandbox {sandbox}"));
    let nothing = removed.containers.is_empty()
        && removed.networks.is_empty()
        && removed.volumes.is_empty()
        && !removed.context;
    let text = if nothing {
        format!("sandbox {sandbox} does not exist; nothing to remove\n")
    } else {
        let kept = if args.purge {
            String::new()
        } else {
            format!(" (data volume kept; `sandbox down --purge --name {sandbox}` deletes it)")
        };
        format!(
            "sandbox {sandbox} removed: {} container(s), {} network(s), {} volume(s), kube context {}{kept}\n",
            removed.containers.len(),
            removed.networks.len(),
            removed.volumes.len(),
            if removed.context { "removed" } else { "absent" },
        )
    };
    ctx.print(
        &json!({
            "apiVersion": crate::config::API_VERSION,
            "kind": "DownResult",
            "sandbox": sandbox,
            "purged": args.purge,
            "removed": removed,
        }),
        &text,
    );
    Ok(())
}
