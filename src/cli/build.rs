//! `sandbox build`: build the configured images and load them into the running node.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::images;
use crate::profile::Profile;

/// Options of `sandbox build`.
#[derive(Debug, Args)]
pub struct BuildArgs {}

/// Runs `sandbox build`.
pub async fn run(ctx: &Context, _args: BuildArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    let engine = Engine::connect().await?;
    if config.cluster.is_some() {
        return push_to_cluster(ctx, &config).await;
    }
    let built = images::build_all(&engine, &config.images, &config.base_dir, &ctx.reporter).await?;
    let node = engine
        .list_nodes(Some(&config.name))
        .await?
        .into_iter()
        .find(|n| n.running());
    // with the sandbox's registry running: pushed there, as `up` does
    let registry = match config.registry {
        Some(crate::config::Registry::Local) => {
            crate::registry::running(&engine, &config.name).await?
        }
        None => None,
    };
    let requests = images::load_requests(&built);
    let (built, loaded) = match (&registry, &node) {
        (Some(registry), _) => {
            crate::registry::push_all(&engine, registry, &built, &ctx.reporter).await?
        }
        (None, Some(info)) => {
            let profile = Profile::named(&info.profile)?;
            let loaded =
                images::load(&engine, &info.name, &profile, &requests, &ctx.reporter).await?;
            (built, loaded)
        }
        (None, None) => {
            ctx.reporter.info(format!(
                "sandbox {} is not running: images built, not loaded",
                config.name
            ));
            (built, Vec::new())
        }
    };
    let mut text = String::new();
    for b in &built {
        let state = if loaded.contains(&b.reference) {
            if registry.is_some() {
                "pushed"
            } else {
                "loaded"
            }
        } else if registry.is_some() {
            "already in the registry"
        } else if node.is_some() {
            "already in the node"
        } else {
            "built"
        };
        text.push_str(&format!("{}  {state}\n", b.reference));
    }
    ctx.print(&result_json(&config.name, &built, &loaded), &text);
    Ok(())
}

/// `build` in cluster mode: pushed to the cluster's registry (`cluster.registry`), where
/// the environments pull them from.
async fn push_to_cluster(
    ctx: &Context,
    config: &crate::config::SandboxConfig,
) -> Result<(), Error> {
    let built = super::target::build_all(ctx, config).await?;
    let (built, pushed) = super::cluster::push(ctx, config, built).await?;
    let mut text = String::new();
    for b in &built {
        let state = if pushed.contains(&b.reference) {
            "pushed"
        } else {
            "already in the registry"
        };
        text.push_str(&format!("{}  {state}\n", b.reference));
    }
    ctx.print(&result_json(&config.name, &built, &pushed), &text);
    Ok(())
}

/// The `BuildResult` document.
pub(crate) fn result_json(
    sandbox: &str,
    built: &[images::BuiltImage],
    loaded: &[String],
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "BuildResult",
        "sandbox": sandbox,
        "images": crate::up::images_json(built, loaded),
    })
}
