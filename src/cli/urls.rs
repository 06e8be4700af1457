//! `sandbox urls`: the URL table of a running sandbox.

use clap::Args;
use serde_json::json;

use super::Context;
use crate::error::Error;
use crate::urls::Url;

/// Options of `sandbox urls`.
#[derive(Debug, Args)]
pub struct UrlsArgs {}

/// Runs `sandbox urls`: of sandbox's node, or of the environment of cluster mode.
pub async fn run(ctx: &Context, _args: UrlsArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    let mut target = super::target::select(&config).await?;
    target.ensure(ctx, false).await?;
    let urls = target.urls(ctx, None).await?;
    let access = target.access().await?;
    let mut text = crate::urls::table(&urls, "", "");
    text.push_str(&format!(
        "{:<12} {:<30} {}\n",
        "API", access.context, access.server
    ));
    ctx.print(&result_json(&config.name, &access, &urls), &text);
    Ok(())
}

/// The `UrlsResult` document.
pub(crate) fn result_json(
    sandbox: &str,
    access: &super::target::Access,
    urls: &[Url],
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "UrlsResult",
        "sandbox": sandbox,
        "context": access.context,
        "apiServer": access.server,
        "urls": urls,
    })
}
