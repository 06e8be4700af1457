//! `up`: node → images → kube context → manifests → wait → summary, for `sandbox up`,
//! `dev` and `exec` (the verbs in `cli/` only parse and print).

mod apply;
mod converge;
mod documents;
mod ready;
mod record;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::apply::{Applied, InventoryEntry};
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::images::BuiltImage;
use crate::node::{self, Node};
use crate::plan::Names;
use crate::report::Reporter;
use crate::urls::Url;

pub(crate) use self::apply::apply;
pub(crate) use self::apply::apply_with;
use self::converge::converge;
pub use self::documents::domain;
pub(crate) use self::documents::load_ca;
pub(crate) use self::documents::project_documents;
pub(crate) use self::documents::read_manifests;
use self::documents::report_kustomizations;
pub(crate) use self::documents::secret_documents;
pub(crate) use self::documents::validate_manifests;
pub(crate) use self::ready::check_routes;
use self::ready::start_dns;
pub(crate) use self::ready::wait_answering;
use self::ready::wait_data_paths;
pub(crate) use self::ready::wait_ready;
use self::record::save_record;
pub(crate) use self::record::still_built;
use self::record::unchanged;

/// The wildcard domain of the laptop's loopback.
pub const DEFAULT_DOMAIN: &str = "127.0.0.1.nip.io";

/// The address the laptop reaches the ingress on.
pub const DEFAULT_IP: &str = "127.0.0.1";

/// Everything `up` did, for its summary and for `exec`.
pub struct Outcome {
    /// The config used.
    pub config: SandboxConfig,
    /// The ready node.
    pub node: Node,
    /// The kubeconfig file the context was merged into.
    pub kubeconfig: PathBuf,
    /// Images built.
    pub built: Vec<BuiltImage>,
    /// References loaded into the node.
    pub loaded: Vec<String>,
    /// Objects applied.
    pub applied: Vec<Applied>,
    /// Objects pruned.
    pub pruned: Vec<InventoryEntry>,
    /// What the laptop can open.
    pub urls: Vec<Url>,
    /// Where the background DNS server answers (`None` when it could not start).
    pub dns: Option<std::net::SocketAddr>,
    /// Whether the record of the last complete `up` showed nothing to build, load or
    /// apply (see [`crate::warm`]).
    pub unchanged: bool,
    /// Wall time.
    pub seconds: f64,
    /// How long each part took.
    pub timings: Timings,
}

/// How long each part of an `up` took. The parts overlap on a new node (the images build
/// while it boots); on a running one they follow each other.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Building the images (the engine's part).
    pub build: Duration,
    /// Loading them into the node (or pushing them to the registry).
    pub load: Duration,
    /// Applying the documents (rendering them included).
    pub apply: Duration,
    /// Waiting for the workloads: the rollout.
    pub rollout: Duration,
    /// Waiting for the URLs to answer.
    pub urls: Duration,
}

impl Timings {
    /// `build 0.4s, load 0.3s, apply 0.1s, rollout 2.3s, URLs 0.0s`
    pub fn describe(&self) -> String {
        format!(
            "build {:.1}s, load {:.1}s, apply {:.1}s, rollout {:.1}s, URLs {:.1}s",
            self.build.as_secs_f64(),
            self.load.as_secs_f64(),
            self.apply.as_secs_f64(),
            self.rollout.as_secs_f64(),
            self.urls.as_secs_f64()
        )
    }
}

/// The whole of `up`: node → images → context → manifests → wait; or, when the record of
/// the last complete `up` shows that none of it would change anything, the wait alone
/// (see [`crate::warm`]).
pub async fn bring_up(reporter: &Reporter, config: &SandboxConfig) -> Result<Outcome, Error> {
    let started = Instant::now();
    // bad manifests fail before anything is booted or built
    validate_manifests(config)?;
    report_kustomizations(reporter, config);
    let engine = Engine::connect().await?;
    let _lock = crate::lock::acquire(&config.name, reporter).await?;
    // the record of the last complete up (read once, under the lock)
    let last = crate::warm::read(&crate::warm::key(config));
    let restarted = start_stopped_node(reporter, config, &engine, last.as_ref()).await?;
    let mut up = match unchanged(reporter, config, &engine, last.as_ref()).await {
        Ok(up) => up,
        Err(reason) => {
            reporter.detail(format!("a full up: {reason}"));
            crate::warm::forget(&crate::warm::key(config));
            // what it says of the add-ons still holds if they did not change (see converge)
            converge(reporter, config, &engine, last.as_ref()).await?
        }
    };
    let restarted_now = restarted.is_some();
    if let Some(restarted) = restarted {
        // made again by this run (a host port taken while it was stopped): say so
        up.node.created |= restarted.created;
        up.node.fresh |= restarted.fresh;
    }
    let waited: Vec<Applied> = up.addons.iter().chain(&up.applied).cloned().collect();
    let ready_since = Instant::now();
    let mut timings = up.timings;
    // the user's DNS server is made sure of while the workloads start, not after them
    let (ready, dns) = tokio::join!(
        async {
            let ready = wait_ready(reporter, config, &up.node, &waited).await;
            timings.rollout = ready_since.elapsed();
            ready
        },
        start_dns(reporter)
    );
    ready?;
    let answering_since = Instant::now();
    // what changed (a rollout, the node's restart) reaches the node's rules up to a second
    // after the API says it is done
    let changed: &[Applied] = if up.unchanged && !restarted_now {
        &[]
    } else {
        &waited
    };
    let (proxied, ingresses) = data_paths(changed);
    let (urls, (), ()) = tokio::join!(
        wait_answering(reporter, config, &up.node, ready_since),
        async {
            if let Some(record) = up.record {
                save_record(reporter, config, &up.node, record).await;
            }
        },
        wait_data_paths(reporter, &engine, &up.node, &proxied, &ingresses)
    );
    let urls = urls?;
    timings.urls = answering_since.elapsed();
    Ok(Outcome {
        config: config.clone(),
        node: up.node,
        kubeconfig: up.kubeconfig,
        built: up.built,
        loaded: up.loaded,
        applied: up.applied,
        pruned: up.pruned,
        urls,
        dns,
        unchanged: up.unchanged,
        seconds: started.elapsed().as_secs_f64(),
        timings,
    })
}

impl Outcome {
    /// The `UpResult` document.
    pub fn json(&self) -> serde_json::Value {
        let names = Names::of(&self.config.name);
        json!({
            "apiVersion": crate::config::API_VERSION,
            "kind": "UpResult",
            "sandbox": self.config.name,
            "config": self.config.source,
            "profile": self.node.profile.name,
            "node": {
                "container": self.node.info.name,
                "image": self.node.info.image,
                "ip": self.node.ip,
                "created": self.node.created,
            },
            "context": names.context,
            "kubeconfig": self.kubeconfig,
            "apiServer": format!("https://127.0.0.1:{}", self.node.ports.api),
            "ports": {"api": self.node.ports.api, "http": self.node.ports.http, "https": self.node.ports.https},
            "images": images_json(&self.built, &self.loaded),
            "objects": objects_json(&self.applied),
            "pruned": pruned_json(&self.pruned),
            "urls": self.urls,
            "dns": self.dns.map(|a| json!({"address": a.to_string()})),
            "unchanged": self.unchanged,
            "elapsedSeconds": (self.seconds * 10.0).round() / 10.0,
        })
    }

    /// The text summary.
    pub fn text(&self) -> String {
        let names = Names::of(&self.config.name);
        let mut out = format!(
            "sandbox {} is up ({:.1}s): profile {}, node {}\n",
            self.config.name, self.seconds, self.node.profile.name, self.node.info.name
        );
        out.push_str(&format!(
            "  kube context  {}  (kubectl --context {} get pods; merged into {})\n",
            names.context,
            names.context,
            self.kubeconfig.display()
        ));
        out.push_str(&format!(
            "  API server    https://127.0.0.1:{}\n",
            self.node.ports.api
        ));
        out.push_str(&format!(
            "  ingress ports 127.0.0.1:{} (http), 127.0.0.1:{} (https)\n",
            self.node.ports.http, self.node.ports.https
        ));
        if !self.built.is_empty() {
            out.push_str(&format!(
                "  images        {} built, {} loaded\n",
                self.built.len(),
                self.loaded.len()
            ));
        }
        if !self.applied.is_empty() {
            let changed = self.applied.iter().filter(|a| a.changed).count();
            out.push_str(&format!(
                "  objects       {} applied, {changed} changed\n",
                self.applied.len()
            ));
        }
        if let Some(dns) = self.dns {
            out.push_str(&format!(
                "  DNS           {dns} answers *.nip.io, *.sslip.io (sandbox dns setup hooks it into the OS)\n"
            ));
        }
        let urls = &self.urls;
        if !urls.is_empty() {
            out.push_str("URLs\n");
            for u in urls {
                out.push_str(&format!("  {:<12} {:<30} {}\n", u.kind, u.name, u.url));
            }
        }
        out
    }
}

/// The `images` list of `UpResult` and `BuildResult`: each built image and whether it is
/// among the `loaded` references.
pub fn images_json(built: &[BuiltImage], loaded: &[String]) -> serde_json::Value {
    built
        .iter()
        .map(|b| json!({"name": b.name, "reference": b.reference, "id": b.id, "loaded": loaded.contains(&b.reference)}))
        .collect()
}

/// The `objects` list of `UpResult` and `ApplyResult`.
pub fn objects_json(applied: &[Applied]) -> serde_json::Value {
    applied
        .iter()
        .map(|a| json!({"kind": a.resource.kind, "namespace": a.namespace, "name": a.name, "changed": a.changed}))
        .collect()
}

/// The `pruned` list of `UpResult` and `ApplyResult`.
pub fn pruned_json(pruned: &[InventoryEntry]) -> serde_json::Value {
    pruned
        .iter()
        .map(|p| json!({"kind": p.kind, "namespace": p.namespace, "name": p.name}))
        .collect()
}

/// The data paths of `changed` objects a request takes: the Services kube-proxy writes
/// rules for (namespace, name), and the Ingresses (pure).
fn data_paths(changed: &[Applied]) -> (Vec<(String, String)>, Vec<serde_json::Value>) {
    let proxied = changed
        .iter()
        .filter(|a| crate::proxy_rules::proxied(&a.object))
        .filter_map(|a| Some((a.namespace.clone()?, a.name.clone())))
        .collect();
    let ingresses = changed
        .iter()
        .filter(|a| a.resource.kind == "Ingress")
        .map(|a| a.object.clone())
        .collect();
    (proxied, ingresses)
}

/// Starts the sandbox's node (and returns it) when it is stopped (the laptop rebooted) and
/// the record of the last complete `up` names it: with nothing else to change, the no-change path then only
/// waits for the workloads to come back (no build, no load, no apply, all of which would
/// share the 2 cores with the API server's boot). Otherwise the full `up` starts it, the
/// images building meanwhile.
pub(super) async fn start_stopped_node(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
    last: Option<&crate::warm::Record>,
) -> Result<Option<Node>, Error> {
    let Ok(nodes) = engine.list_nodes(Some(&config.name)).await else {
        return Ok(None);
    };
    let Some(info) = nodes.into_iter().next() else {
        return Ok(None);
    };
    if info.running() || info.never_started() {
        return Ok(None);
    }
    if last.is_none_or(|r| r.node != info.id) {
        return Ok(None);
    }
    let booting = boot(reporter, config, engine).await?;
    // serving and Ready: the no-change path takes a node whose kubelet reports
    let node = booting
        .ready(engine, config.timeouts.boot, reporter)
        .await?;
    Ok(Some(node))
}

/// The sandbox's node, found and started or made (see [`node::boot`]).
pub(super) async fn boot(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
) -> Result<node::Booting, node::NodeError> {
    node::boot(engine, &config.name, config.profile.as_deref(), reporter).await
}
