//! `sandbox apply`: apply the manifests to the running sandbox and wait, building nothing.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::apply::{Applied, InventoryEntry};
use crate::docker::Engine;
use crate::error::Error;
use crate::images;

/// Options of `sandbox apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {}

/// Runs `sandbox apply`.
pub async fn run(ctx: &Context, _args: ApplyArgs) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let config = ctx.config()?;
    super::up::validate_manifests(&config)?;
    let engine = Engine::connect().await?;
    let _lock = crate::lock::acquire(&config.name, &ctx.reporter).await?;
    // what it applies may differ from what the last `up` recorded
    crate::warm::forget(&crate::warm::key(&config));
    // the node is neither created nor waited for: apply is for a running sandbox
    let node = crate::node::ensure_running(&engine, &config.name).await?;
    let built = images::latest_builds(&engine, &config.images).await?;
    let (built, loaded) = match config.registry {
        // pushed to the sandbox's registry (made sure of, as `up` does), pulled by the node
        Some(crate::config::Registry::Local) => {
            let registry =
                crate::registry::ensure(&engine, &config.name, &node.profile, &ctx.reporter)
                    .await?;
            crate::registry::configure_node(&engine, &node.info.name, &node.profile, &registry)
                .await?;
            crate::registry::push_all(&engine, &registry, &built, &ctx.reporter).await?
        }
        None => {
            let loaded = images::load(
                &engine,
                &node.info.name,
                &node.profile,
                &images::load_requests(&built),
                &ctx.reporter,
            )
            .await?;
            (built, loaded)
        }
    };
    let ca = super::up::load_ca(ctx)?;
    let docs = super::up::project_documents(ctx, &config, &node, &built, &ca).await?;
    let (applied, pruned) = super::up::apply(ctx, &config, &node, &docs, None).await?;
    let ready_since = std::time::Instant::now();
    super::up::wait_ready(ctx, &config, &node, &applied).await?;
    super::up::wait_answering(ctx, &config, &node, ready_since).await?;
    let changed = applied.iter().filter(|a| a.changed).count();
    let seconds = started.elapsed().as_secs_f64();
    ctx.print(
        &result_json(&config.name, &loaded, &applied, &pruned, seconds),
        &format!(
            "applied {} objects to sandbox {} ({changed} changed, {} pruned) in {seconds:.1}s\n",
            applied.len(),
            config.name,
            pruned.len()
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
        "objects": super::up::objects_json(applied),
        "pruned": super::up::pruned_json(pruned),
        "elapsedSeconds": (seconds * 10.0).round() / 10.0,
    })
}
