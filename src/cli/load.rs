//! `sandbox load IMAGE...`: load images from the local engine into the running node.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::images;
use crate::profile::Profile;

/// Options of `sandbox load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Image references in the local Docker engine (`app:1.2`).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Runs `sandbox load`.
pub async fn run(ctx: &Context, args: LoadArgs) -> Result<(), Error> {
    let sandbox = ctx.sandbox_name()?;
    let engine = Engine::connect().await?;
    let info = engine
        .list_nodes(Some(&sandbox))
        .await?
        .into_iter()
        .find(|n| n.running())
        .ok_or_else(|| Error::NotFound(sandbox.clone()))?;
    for image in &args.images {
        if engine.image_id(image).await?.is_none() {
            return Err(Error::Usage(format!(
                "image {image} is not in the local Docker engine"
            )));
        }
    }
    let profile = Profile::named(&info.profile)?;
    let loaded = images::load(&engine, &info.name, &profile, &args.images, &ctx.reporter).await?;
    let text: String = args
        .images
        .iter()
        .map(|i| {
            let state = if loaded.contains(i) {
                "loaded"
            } else {
                "already in the node"
            };
            format!("{i}  {state}\n")
        })
        .collect();
    ctx.print(
        &json!({
            "apiVersion": crate::config::API_VERSION,
            "kind": "LoadResult",
            "sandbox": sandbox,
            "images": args.images.iter().map(|i| json!({"reference": i, "loaded": loaded.contains(i)})).collect::<Vec<_>>(),
        }),
        &text,
    );
    Ok(())
}
