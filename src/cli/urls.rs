//! `sandbox urls`: the URL table of a running sandbox.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::plan::Names;
use crate::profile::Profile;
use crate::urls::Url;

/// Options of `sandbox urls`.
#[derive(Debug, Args)]
pub struct UrlsArgs {}

/// Runs `sandbox urls`.
pub async fn run(ctx: &Context, _args: UrlsArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    if config.cluster.is_some() {
        return super::cluster::urls(ctx, &config).await;
    }
    let engine = Engine::connect().await?;
    let (info, client) = super::connect(&engine, &config.name).await?;
    let names = Names::of(&config.name);
    let profile = Profile::named(&info.profile)?;
    let ports = crate::node::ports_of(&info, &profile);
    let ip = engine.container_ip(&info.name, &names.network).await?;
    let urls = crate::urls::collect(
        &client,
        config.environment.as_deref(),
        ip.as_deref(),
        ports.https,
    )
    .await
    .map_err(|e| Error::Kube(crate::apply::api_message(&e)))?;
    let mut text = String::new();
    for u in &urls {
        text.push_str(&format!("{:<12} {:<30} {}\n", u.kind, u.name, u.url));
    }
    text.push_str(&format!(
        "{:<12} {:<30} https://127.0.0.1:{}\n",
        "API", names.context, ports.api
    ));
    ctx.print(&result_json(&config.name, ports.api, &urls), &text);
    Ok(())
}

/// The `UrlsResult` document.
pub(crate) fn result_json(sandbox: &str, api_port: u16, urls: &[Url]) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "UrlsResult",
        "sandbox": sandbox,
        "context": Names::of(sandbox).context,
        "apiServer": format!("https://127.0.0.1:{api_port}"),
        "urls": urls,
    })
}
