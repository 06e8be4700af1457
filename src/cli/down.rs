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
    // cluster mode removes an environment, never anything else
    if ctx.global.namespace.is_some() || ctx.config()?.cluster.is_some() {
        return remove_environment(ctx).await;
    }
    let sandbox = ctx.sandbox_name()?;
    let engine = Engine::connect().await?;
    let _lock = crate::lock::acquire(&sandbox, &ctx.reporter).await?;
    crate::warm::forget_all(&sandbox);
    let step = ctx.reporter.step(format!("removing sandbox {sandbox}"));
    let removed = node::remove(&engine, &sandbox, args.purge).await?;
    if crate::forward::stop(&sandbox).await {
        ctx.reporter.detail("stopped the port relay");
    }
    if args.purge {
        crate::forward::forget(&sandbox);
    }
    step.done(format!("removed sandbox {sandbox}"));
    // the DNS server is shared by a user's sandboxes: the last one's down stops it
    let dns_stopped = match engine.list_nodes(None).await {
        Ok(nodes) if !crate::dns_daemon::needed_by(&nodes) => {
            crate::dns_daemon::stop(&ctx.reporter).await.is_some()
        }
        _ => false,
    };
    if dns_stopped {
        ctx.reporter
            .info("stopped the DNS server (no sandbox is left)");
    }
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
        &result_json(&sandbox, args.purge, &removed, dns_stopped),
        &text,
    );
    Ok(())
}

/// `down --namespace NAME` (and any `down` in cluster mode): delete one environment's
/// namespace, keep the cluster.
async fn remove_environment(ctx: &Context) -> Result<(), Error> {
    let config = ctx.config()?;
    let target = super::target::select(&config).await?;
    let removed = target.remove(ctx).await?;
    // the environment's loopback ports go with it; the sandbox's others stay put
    if config.cluster.is_none() {
        let mut table = crate::forward::table(&config.name);
        let before = table.len();
        table.retain(|f| f.namespace != config.namespace);
        if table.len() != before {
            crate::forward::ensure(&config.name, &table).await?;
        }
    }
    let text = if removed {
        format!("{} removed\n", target.describe())
    } else {
        format!("{} does not exist; nothing to remove\n", target.describe())
    };
    ctx.print(
        &environment_result_json(&config.name, &config.namespace, removed),
        &text,
    );
    Ok(())
}

/// Deletes environment `namespace` when it is sandbox `config.name`'s (its label says so);
/// returns whether it was.
pub(crate) async fn delete_environment(
    ctx: &Context,
    client: &kube::Client,
    config: &crate::config::SandboxConfig,
    namespace: &str,
) -> Result<bool, Error> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let owned = match api.get_opt(namespace).await {
        Ok(Some(ns)) => {
            ns.metadata
                .labels
                .unwrap_or_default()
                .get(crate::labels::SANDBOX)
                == Some(&config.name)
        }
        Ok(None) => false,
        Err(e) => return Err(Error::kube(format!("read namespace {namespace}"))(e)),
    };
    if owned {
        let step = ctx
            .reporter
            .step(format!("deleting environment {namespace}"));
        api.delete(namespace, &Default::default())
            .await
            .map_err(Error::kube(format!("delete namespace {namespace}")))?;
        step.done(format!("deleted namespace {namespace}"));
    }
    Ok(owned)
}

/// The `DownResult` document of a sandbox.
pub(crate) fn result_json(
    sandbox: &str,
    purged: bool,
    removed: &node::Removed,
    dns_stopped: bool,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "DownResult",
        "sandbox": sandbox,
        "purged": purged,
        "removed": removed,
        "dnsStopped": dns_stopped,
    })
}

/// The `DownResult` document of `down --namespace`: whether the namespace was deleted.
pub(crate) fn environment_result_json(
    sandbox: &str,
    environment: &str,
    removed: bool,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "DownResult",
        "sandbox": sandbox,
        "environment": environment,
        "removed": {"namespace": removed},
    })
}
