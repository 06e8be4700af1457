//! `sandbox load IMAGE...`: load images from the local engine into the running node.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::images;

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
    let (info, profile) = crate::node::running(&engine, &sandbox).await?;
    let mut requests = Vec::new();
    for image in &args.images {
        let id = engine.image_id(image).await?.ok_or_else(|| {
            Error::Usage(format!("image {image} is not in the local Docker engine"))
        })?;
        requests.push(images::LoadRequest {
            reference: image.clone(),
            id,
        });
    }
    let loaded = images::load(&engine, &info.name, &profile, &requests, &ctx.reporter).await?;
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
    ctx.print(&result_json(&sandbox, &args.images, &loaded), &text);
    Ok(())
}

/// The `LoadResult` document: each image named and whether it is among the `loaded`.
pub(crate) fn result_json(
    sandbox: &str,
    images: &[String],
    loaded: &[String],
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "LoadResult",
        "sandbox": sandbox,
        "images": images.iter().map(|i| json!({"reference": i, "loaded": loaded.contains(i)})).collect::<Vec<_>>(),
    })
}
