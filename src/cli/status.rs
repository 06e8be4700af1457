//! `sandbox status`: every sandbox on this engine (or one), with its health.

use clap::Args;
use serde_json::json;

use super::{Context, Output};
use crate::dns_daemon::DaemonRecord;
use crate::docker::Engine;
use crate::error::Error;
use crate::node;
use crate::plan::{HostPorts, Names};
use crate::profile::Profile;

/// Options of `sandbox status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show every sandbox, not just the current one.
    #[arg(long)]
    pub all: bool,
}

/// Runs `sandbox status`.
pub async fn run(ctx: &Context, args: StatusArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    if config.cluster.is_some() && !args.all {
        return super::cluster::status(ctx, &config).await;
    }
    let engine = Engine::connect().await?;
    let only = if args.all {
        None
    } else {
        Some(config.name.clone())
    };
    let nodes = engine.list_nodes(only.as_deref()).await?;
    let rows = rows_json(&engine, &nodes).await;
    let mut text = table_text(&rows, only.as_deref());
    let dns = crate::dns_daemon::running().await;
    text.push_str(&match &dns {
        Some(d) => format!("DNS server: {} (pid {})\n", d.address, d.pid),
        None => "DNS server: not running (`sandbox up` starts it)\n".to_string(),
    });
    let missing = only.filter(|_| rows.is_empty());
    // with -o json, the Error is stdout's one document
    if missing.is_none() || ctx.global.output == Output::Text {
        ctx.print(&result_json(rows, dns.as_ref()), &text);
    }
    match missing {
        Some(name) => Err(Error::NotFound(name)),
        None => Ok(()),
    }
}

/// A `StatusResult` row per node of `nodes`: a running node's with its API's health, its
/// environments and add-ons (asked of it in turn), a stopped one's without.
async fn rows_json(engine: &Engine, nodes: &[crate::docker::NodeInfo]) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for info in nodes {
        let profile = Profile::named(&info.profile).ok();
        let ports = profile.as_ref().map(|p| node::ports_of(info, p));
        let (api, environments, addons) = if !info.running() {
            ("stopped".to_string(), Vec::new(), Vec::new())
        } else {
            match &profile {
                Some(p) => api_health(engine, info, p).await,
                None => (
                    format!("unknown profile {}", info.profile),
                    Vec::new(),
                    Vec::new(),
                ),
            }
        };
        rows.push(row_json(info, ports, &api, &environments, &addons));
    }
    rows
}

/// The `status` table of `rows` (a header and a line per sandbox), or, with none, why
/// there is no sandbox to show: `only`, the one asked for, does not exist.
fn table_text(rows: &[serde_json::Value], only: Option<&str>) -> String {
    let mut text = String::new();
    if rows.is_empty() {
        text.push_str(&match only {
            Some(name) => format!("sandbox {name} does not exist (`sandbox up` creates it)\n"),
            None => "no sandboxes\n".to_string(),
        });
    } else {
        text.push_str(&format!(
            "{:<20} {:<8} {:<9} {:<10} {:<24} {:<30} {}\n",
            "SANDBOX",
            "PROFILE",
            "STATE",
            "API",
            "PORTS (api/http/https)",
            "ADD-ONS",
            "ENVIRONMENTS"
        ));
        for r in rows {
            text.push_str(&row_text(r));
        }
    }
    text
}

/// A sandbox's line of the `status` table, from its `StatusResult` row: add-ons as
/// `NAME:ready` or `NAME:not ready`, environments comma-separated.
fn row_text(r: &serde_json::Value) -> String {
    let ports = &r["ports"];
    let environments: Vec<&str> = r["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .collect();
    let addons: Vec<String> = r["addons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let state = a["state"].as_str().unwrap_or_default();
            let short = if state == "ready" {
                "ready"
            } else {
                "not ready"
            };
            format!("{}:{short}", a["name"].as_str().unwrap_or_default())
        })
        .collect();
    format!(
        "{:<20} {:<8} {:<9} {:<10} {:<24} {:<30} {}\n",
        r["sandbox"].as_str().unwrap_or_default(),
        r["profile"].as_str().unwrap_or_default(),
        r["state"].as_str().unwrap_or_default(),
        r["api"].as_str().unwrap_or_default(),
        format!("{}/{}/{}", ports["api"], ports["http"], ports["https"]),
        addons.join(","),
        environments.join(","),
    )
}

/// One sandbox of `StatusResult`: its node, the API's health, its environments and add-ons.
pub(crate) fn row_json(
    info: &crate::docker::NodeInfo,
    ports: Option<HostPorts>,
    api: &str,
    environments: &[String],
    addons: &[(String, String)],
) -> serde_json::Value {
    json!({
        "sandbox": info.sandbox,
        "profile": info.profile,
        "container": info.name,
        "state": info.state,
        "api": api,
        "context": Names::of(&info.sandbox).context,
        "ports": ports.map(|p| json!({"api": p.api, "http": p.http, "https": p.https})),
        "environments": environments,
        "addons": addons.iter().map(|(name, state)| json!({"name": name, "state": state})).collect::<Vec<_>>(),
    })
}

/// The `StatusResult` document.
pub(crate) fn result_json(
    rows: Vec<serde_json::Value>,
    dns: Option<&DaemonRecord>,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "StatusResult",
        "sandboxes": rows,
        "dns": dns.map(|d| json!({"address": d.address.to_string(), "pid": d.pid})),
    })
}

/// The API's health and the sandbox's namespaces (its environments).
async fn api_health(
    engine: &Engine,
    info: &crate::docker::NodeInfo,
    profile: &Profile,
) -> (String, Vec<String>, Vec<(String, String)>) {
    let context = Names::of(&info.sandbox).context;
    let Ok(Some(kubeconfig)) = node::host_kubeconfig(engine, info, profile).await else {
        return ("starting".to_string(), Vec::new(), Vec::new());
    };
    let Ok(client) = node::client_for(&kubeconfig, &context).await else {
        return ("error".to_string(), Vec::new(), Vec::new());
    };
    if node::api_ready(&client).await.is_err() {
        return ("not-ready".to_string(), Vec::new(), Vec::new());
    }
    let environments = environments(&client, &info.sandbox).await;
    (
        "ready".to_string(),
        environments,
        workload_health(&client, crate::addons::NAMESPACE).await,
    )
}

/// The namespaces sandbox `sandbox` made on a cluster (its environments), not its add-ons'.
pub(crate) async fn environments(client: &kube::Client, sandbox: &str) -> Vec<String> {
    let selector = format!(
        "{}={sandbox},{}!={}",
        crate::labels::SANDBOX,
        crate::labels::ROLE,
        crate::addons::ROLE
    );
    crate::apply::namespace_names(client, Some(&selector)).await
}

/// Each Deployment of `namespace` with its state: `ready`, or what it waits for.
pub(crate) async fn workload_health(
    client: &kube::Client,
    namespace: &str,
) -> Vec<(String, String)> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), namespace);
    let Ok(list) = api.list(&Default::default()).await else {
        return Vec::new();
    };
    list.items
        .into_iter()
        .filter_map(|d| {
            let name = d.metadata.name.clone()?;
            let mut object = serde_json::to_value(&d).ok()?;
            object["kind"] = json!("Deployment");
            let state = match crate::wait::judge(&object)? {
                crate::wait::Readiness::Ready => "ready".to_string(),
                crate::wait::Readiness::Pending(m) | crate::wait::Readiness::Failed(m) => m,
            };
            Some((name, state))
        })
        .collect()
}
