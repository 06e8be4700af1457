//! `sandbox apply`: apply the manifests to the running sandbox and wait, building nothing.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::apply::{Applied, InventoryEntry};
use crate::error::Error;

/// Options of `sandbox apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {}

/// Runs `sandbox apply`: to sandbox's node, or to the environment of cluster mode.
pub async fn run(ctx: &Context, _args: ApplyArgs) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let config = ctx.config()?;
    crate::up::validate_manifests(&config)?;
    let mut target = super::target::select(&config).await?;
    let done =
        super::target::apply(&mut *target, ctx, super::target::latest_builds(&config)).await?;
    let changed = done.applied.iter().filter(|a| a.changed).count();
    let seconds = started.elapsed().as_secs_f64();
    ctx.print(
        &result_json(
            &config.name,
            &done.delivered,
            &done.applied,
            &done.pruned,
            seconds,
        ),
        &format!(
            "applied {} objects to {} ({changed} changed, {} pruned) in {seconds:.1}s\n",
            done.applied.len(),
            target.describe(),
            done.pruned.len()
        ),
    );
    Ok(())
}

/// The `ApplyResult` document.
pub(crate) fn result_json(
    sandbox: &str,
    loaded: &[String],
    applied: &[Applied],
    pruned: &[InventoryEntry],
    seconds: f64,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "ApplyResult",
        "sandbox": sandbox,
        "loaded": loaded,
        "objects": crate::up::objects_json(applied),
        "pruned": crate::up::pruned_json(pruned),
        "elapsedSeconds": (seconds * 10.0).round() / 10.0,
    })
}
