//! Server-side apply of the add-ons' and the project's documents, with pruning.

use crate::apply::{Applied, Applier, InventoryEntry};
use crate::config::SandboxConfig;
use crate::error::Error;
use crate::manifests::Document;
use crate::node::Node;
use crate::report::Reporter;

/// Applies the add-ons (the ingress controller) under their own inventory; returns what
/// was applied, to be waited on with the project's objects.
pub(super) async fn apply_addons(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    docs: &[Document],
    pods_held: Option<tokio::sync::watch::Receiver<bool>>,
    services_applied: tokio::sync::oneshot::Sender<()>,
) -> Result<Vec<Applied>, Error> {
    let step = reporter.step("applying the add-ons (ingress controller, maildev)");
    let mut applier = Applier::new(node.client.clone(), &config.name, crate::addons::NAMESPACE);
    if let Some(held) = pods_held {
        applier.hold_pods(held);
    }
    applier.announce_pods(services_applied);
    let applied = applier.apply_all(docs).await?;
    applier.prune(&applied).await?;
    let changed = applied.iter().filter(|a| a.changed).count();
    step.done(format!("add-ons applied ({changed} changed)"));
    Ok(applied)
}

pub(crate) async fn apply(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    docs: &[Document],
    pods_held: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
    // the built-in default owns no objects: it must never prune a project's
    if config.source.is_none() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut applier = Applier::new(node.client.clone(), &config.name, &config.namespace);
    if let Some(held) = pods_held {
        applier.hold_pods(held);
    }
    apply_with(
        reporter,
        &mut applier,
        docs,
        format!("applying {} objects", docs.len()),
    )
    .await
}

/// Applies `docs` with `applier` and prunes what its last apply made and they no longer
/// hold, as one step of the progress (`message`), each pruned object said.
pub(crate) async fn apply_with(
    reporter: &Reporter,
    applier: &mut Applier,
    docs: &[Document],
    message: String,
) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
    let step = reporter.step(message);
    let applied = applier.apply_all(docs).await?;
    let pruned = applier.prune(&applied).await?;
    let changed = applied.iter().filter(|a| a.changed).count();
    step.done(format!(
        "applied {} objects ({changed} changed)",
        applied.len()
    ));
    for p in &pruned {
        reporter.info(format!("pruned {} (no longer in the manifests)", p.id()));
    }
    Ok((applied, pruned))
}
