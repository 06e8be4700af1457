//! `up`: node → images → kube context → manifests → wait → summary, for `sandbox up`,
//! `dev` and `exec` (the verbs in `cli/` only parse and print).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::apply::{Applied, Applier, InventoryEntry};
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::images::{self, BuiltImage};
use crate::manifests::{self, Builtins, Document};
use crate::node::{self, Node};
use crate::plan::Names;
use crate::report::Reporter;
use crate::urls::{self, Url};
use crate::warm::Stale;
use crate::{kubeconfig, secrets, wait};

/// Every URL of the sandbox, once each answers the way a user reaches it (see
/// [`crate::routes`]), within what is left of the ready timeout since `ready_since` (at
/// least 5 s).
pub(crate) async fn wait_answering(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    ready_since: Instant,
) -> Result<Vec<Url>, Error> {
    let forwards = relay_ports(reporter, config, node).await?;
    let urls = urls::collect(
        &node.client,
        config.environment.as_deref(),
        Some(&domain(config)),
        node.ports.https,
        true,
        &forwards,
    )
    .await
    .map_err(Error::kube(urls::COLLECT_ACTION))?;
    let checks = crate::routes::plan(&urls, node.ports.https);
    check_routes(reporter, config, &checks, ready_since).await?;
    Ok(urls)
}

/// Gives every exposed Service port the ingress cannot carry a loopback port, kept across
/// `up`s, and has the sandbox's relay listen on them (see [`crate::forward`]); gives each
/// LoadBalancer Service its address. Returns the relayed ports.
async fn relay_ports(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
) -> Result<Vec<crate::forward::Forward>, Error> {
    let services = urls::project_services(&node.client, config.environment.as_deref())
        .await
        .map_err(Error::kube("list the Services whose ports are relayed"))?;
    // an environment's up relays its own namespace's ports, beside the sandbox's others
    let mut previous = crate::forward::table(&config.name);
    let wanted = crate::forward::wanted(&services);
    let mut table: Vec<crate::forward::Forward> = match &config.environment {
        Some(env) => previous
            .iter()
            .filter(|f| f.namespace != *env)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    previous.retain(|f| !table.contains(f));
    let reserved: Vec<u16> = [node.ports.api, node.ports.http, node.ports.https]
        .into_iter()
        .chain(table.iter().map(|f| f.host_port))
        .collect();
    let held = crate::forward::running(&config.name).is_some();
    let kept = table.len();
    let mut taken = Vec::new();
    // a port another process takes between the choice and the relay's listen is chosen
    // again (twice at most: then the relay's log says what holds them)
    for attempt in 0..3 {
        let mut reserved = reserved.clone();
        reserved.extend(&taken);
        let mut any = crate::forward::loopback_any;
        table.truncate(kept);
        table.extend(
            crate::forward::allocate(
                &previous,
                &wanted,
                held,
                &reserved,
                &crate::forward::loopback_free,
                &mut any,
            )
            .map_err(|source| Error::Io {
                action: "choose a loopback port for a Service",
                source,
            })?,
        );
        let (relay, failed) = crate::forward::ensure(&config.name, &table).await?;
        match relay {
            crate::forward::Relay::Started(pid) => reporter.info(format!(
                "started the port relay (pid {pid}) for {}",
                crate::report::count(table.len(), "port")
            )),
            crate::forward::Relay::Reloaded => reporter.detail("the port relay took the new ports"),
            crate::forward::Relay::None | crate::forward::Relay::Unchanged => {}
        }
        if failed.is_empty() {
            break;
        }
        if attempt == 2 {
            reporter.warn(format!(
                "the port relay cannot listen on 127.0.0.1 port(s) {failed:?}; see {}",
                crate::forward::log_path(&config.name).display()
            ));
            table.retain(|f| !failed.contains(&f.host_port));
            break;
        }
        taken.extend(failed);
    }
    crate::forward::publish_addresses(&node.client, &services, &domain(config))
        .await
        .map_err(Error::kube("write the LoadBalancer Services' addresses"))?;
    Ok(table)
}

/// Waits until every URL of `checks` answers through its route, within what is left of the
/// ready timeout since `ready_since` (at least 5 s).
pub(crate) async fn check_routes(
    reporter: &Reporter,
    config: &SandboxConfig,
    checks: &[(Url, crate::routes::Check)],
    ready_since: Instant,
) -> Result<(), Error> {
    if checks.is_empty() {
        return Ok(());
    }
    let budget = config
        .timeouts
        .ready
        .saturating_sub(ready_since.elapsed())
        .max(std::time::Duration::from_secs(5));
    let step = reporter.step(format!(
        "checking {}",
        crate::report::count(checks.len(), "URL")
    ));
    crate::routes::wait_all(checks, budget, &|line| step.update(line))
        .await
        .map_err(wait::WaitError::from)?;
    step.done("URLs answer");
    Ok(())
}

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
    let proxied: Vec<(String, String)> = changed
        .iter()
        .filter(|a| crate::proxy_rules::proxied(&a.object))
        .filter_map(|a| Some((a.namespace.clone()?, a.name.clone())))
        .collect();
    let ingresses: Vec<serde_json::Value> = changed
        .iter()
        .filter(|a| a.resource.kind == "Ingress")
        .map(|a| a.object.clone())
        .collect();
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

/// Waits until the node's kube-proxy and the ingress controller send each of `services`
/// and each backend of `ingresses` to its ready pods only (see [`crate::proxy_rules`]);
/// says so when they do not within 10 s.
async fn wait_data_paths(
    reporter: &Reporter,
    engine: &Engine,
    node: &Node,
    services: &[(String, String)],
    ingresses: &[serde_json::Value],
) {
    let last = std::sync::Mutex::new(String::new());
    let said = |line: String| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            reporter.detail(line.clone());
            *last = line;
        }
    };
    let budget = Duration::from_secs(10);
    let converged = crate::proxy_rules::wait_converged(
        engine,
        &node.info.name,
        &node.client,
        services,
        ingresses,
        budget,
        &said,
    )
    .await;
    for unread in converged.unread {
        reporter.detail(format!("{unread} cannot be read: not waited on"));
    }
    if !converged.lagging.is_empty() {
        reporter.warn(format!(
            "not sent to the new pods within {} s: {}; a request may still reach a pod of \
             before",
            budget.as_secs(),
            converged.lagging.join("; ")
        ));
    }
}

/// Starts the sandbox's node (and returns it) when it is stopped (the laptop rebooted) and
/// the record of the last complete `up` names it: with nothing else to change, the no-change path then only
/// waits for the workloads to come back (no build, no load, no apply, all of which would
/// share the 2 cores with the API server's boot). Otherwise the full `up` starts it, the
/// images building meanwhile.
async fn start_stopped_node(
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
async fn boot(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
) -> Result<node::Booting, node::NodeError> {
    node::boot(engine, &config.name, config.profile.as_deref(), reporter).await
}

/// A sandbox whose objects are applied, before the wait for them.
struct Converged {
    node: Node,
    kubeconfig: PathBuf,
    built: Vec<BuiltImage>,
    loaded: Vec<String>,
    /// The add-ons' objects.
    addons: Vec<Applied>,
    /// The project's objects.
    applied: Vec<Applied>,
    pruned: Vec<InventoryEntry>,
    /// The record to keep once the objects are ready (`None`: nothing new to record).
    record: Option<crate::warm::Record>,
    /// Whether the record showed nothing to do.
    unchanged: bool,
    /// How long the build, the load and the apply took.
    timings: Timings,
}

/// Node, images, context and apply: everything `up` does before it waits.
///
/// Three sides run at once, each waiting only for what it needs of the others:
/// - the node: boots (or is found), serves, takes pods;
/// - the add-ons: their images load into the node's runtime as soon as it answers, their
///   objects apply as soon as the API server takes them; when the record of the last
///   complete `up` (`last`) shows the same add-on documents on the same node and every
///   add-on object as it left them, they are not applied again (a `dev` update of the
///   project's image: the apply's requests would share the 2 cores with its build);
/// - the project: its images build (from the start, beside the boot), load, and its
///   objects apply.
///
/// A build or boot that fails ends the `up` at once (a node this run made stays, as
/// documented; an add-on apply under way ends first). What fails after the build lets the
/// other sides run to their end (an apply is never stopped halfway), and the node's error
/// is the one reported first (a boot past its deadline removes its sandbox before it says
/// so).
async fn converge(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
    last: Option<&crate::warm::Record>,
) -> Result<Converged, Error> {
    let ca = load_ca(reporter)?;
    let (booted, boot_known) = tokio::sync::watch::channel(None::<node::Booting>);
    let (served, serving) = tokio::sync::watch::channel(None::<Node>);
    let (listed, listing) = tokio::sync::watch::channel(None::<String>);
    let (made, registry) = tokio::sync::watch::channel(None::<crate::registry::LocalRegistry>);
    // objects go in as soon as the API server takes them, while the kubelet of a new node
    // still starts; those that make pods as soon as the node takes them (see hold_pods)
    let (takes_pods, node_takes_pods) = tokio::sync::watch::channel(false);
    let (services, services_applied) = tokio::sync::oneshot::channel();
    // whether the add-ons' apply is under way: a failed build waits for its end
    let (addons_applying, addons_apply) = tokio::sync::watch::channel(false);
    let local_registry = matches!(config.registry, Some(crate::config::Registry::Local));
    // each side owns what it sends (dropped when it fails: whoever waits on it then stops
    // waiting) and borrows what it waits on
    let (ca, boot_known, serving, listing, registry, node_takes_pods) = (
        &ca,
        &boot_known,
        &serving,
        &listing,
        &registry,
        &node_takes_pods,
    );
    // a side whose input never came: the side that failed to make it reports its error
    let not_running = || {
        Error::from(node::NodeError::NotRunning {
            sandbox: config.name.clone(),
        })
    };
    let node_side = async move {
        let booting = boot(reporter, config, engine).await?;
        let _ = booted.send(Some(booting.clone()));
        let deadline = booting.deadline(config.timeouts.boot);
        let node = booting.serving(engine, deadline, reporter).await?;
        let kubeconfig = install_context(&node)?;
        let _ = served.send(Some(node.clone()));
        node.schedulable(engine, deadline, reporter).await?;
        // the node pulls from the registry once it runs pods: its containerd gets the
        // mirror now (k3s writes its registry hosts anew while it starts)
        if local_registry {
            if let Some(registry) = known(registry).await {
                crate::registry::configure_node(engine, &node.info.name, &node.profile, &registry)
                    .await?;
            }
        }
        let _ = takes_pods.send(true);
        Ok::<_, Error>((node, kubeconfig))
    };
    let addon_side = async move {
        let work = async move {
            let booting = known(boot_known).await.ok_or_else(not_running)?;
            let registry = if local_registry {
                let registry =
                    crate::registry::ensure(engine, &config.name, &booting.profile, reporter)
                        .await?;
                let _ = made.send(Some(registry.clone()));
                Some(registry)
            } else {
                None
            };
            let node_name = &booting.names.node;
            let listed_now = images::listing(engine, node_name, &booting.profile).await?;
            let _ = listed.send(Some(listed_now.clone()));
            let requests =
                addon_load_requests(engine, &booting.profile, config.addons.maildev).await?;
            let loaded = images::load_listed(
                engine,
                node_name,
                &booting.profile,
                &listed_now,
                &requests,
                reporter,
            )
            .await?;
            let node = known(serving).await.ok_or_else(not_running)?;
            let (docs, issued) =
                addon_documents_secured(config, &node, ca, registry.as_ref()).await?;
            report_issued(reporter, &issued);
            let digest = crate::warm::documents_digest(&docs);
            let applied = match addons_as_left(config, &node, last, &digest).await {
                Some(applied) => {
                    reporter.detail("the add-ons are as the last up left them: not applied again");
                    let _ = services.send(());
                    applied
                }
                None => {
                    let held = Some(node_takes_pods.clone());
                    addons_applying.send_replace(true);
                    let applied =
                        apply_addons(reporter, config, &node, &docs, held, services).await;
                    addons_applying.send_replace(false);
                    applied?
                }
            };
            Ok::<_, Error>((applied, docs, digest, loaded))
        };
        Ok::<_, Error>(work.await)
    };
    let project_side = async move {
        let building = Instant::now();
        let built = images::build_all(engine, &config.images, &config.base_dir, reporter)
            .await
            .map_err(Error::from);
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                // ends the up, but never an add-on apply halfway: one under way ends first
                // (one not begun never begins)
                let mut apply = addons_apply.clone();
                let _ = apply.wait_for(|applying| !applying).await;
                return Err(e);
            }
        };
        let build = building.elapsed();
        let work = async move {
            let booting = known(boot_known).await.ok_or_else(not_running)?;
            // with a registry, the project's images are pushed there (the node pulls
            // them); else loaded into the node
            let (built, loaded) = if local_registry {
                let registry = known(registry).await.ok_or_else(not_running)?;
                crate::registry::push_all(engine, &registry, &built, reporter).await?
            } else {
                let listed_now = known(listing).await.ok_or_else(not_running)?;
                let requests = images::load_requests(&built);
                let loaded = images::load_listed(
                    engine,
                    &booting.names.node,
                    &booting.profile,
                    &listed_now,
                    &requests,
                    reporter,
                )
                .await?;
                (built, loaded)
            };
            let loaded_at = Instant::now();
            let node = known(serving).await.ok_or_else(not_running)?;
            // without cluster DNS, the project's documents name maildev's Service by its
            // address: they wait for the add-ons' Services when it is new (a failed add-on
            // apply drops the sender: its error is the one reported)
            if !smtp_service_known(config, &node).await {
                let _ = services_applied.await;
            }
            let docs = project_documents(reporter, config, &node, &built, ca).await?;
            let held = Some(node_takes_pods.clone());
            let (applied, pruned) = apply(reporter, config, &node, &docs, held).await?;
            Ok::<_, Error>((built, loaded, docs, applied, pruned, loaded_at))
        };
        Ok::<_, Error>((build, building, work.await))
    };
    let ((node, kubeconfig), addons, (build, building, project)) =
        tokio::try_join!(node_side, addon_side, project_side)?;
    let (addons, addon_docs, addon_documents, addons_loaded) = addons?;
    let (built, mut loaded, docs, applied, pruned, loaded_at) = project?;
    loaded.extend(addons_loaded);
    let documents = crate::warm::documents_digest(addon_docs.iter().chain(&docs));
    let record = new_record(
        config,
        &node,
        &built,
        documents,
        addon_documents,
        &addons,
        &applied,
    );
    Ok(Converged {
        node,
        kubeconfig,
        built,
        loaded,
        addons,
        applied,
        pruned,
        record,
        unchanged: false,
        timings: Timings {
            build,
            // from the build's end: on a new node, the load also waits for its runtime
            load: loaded_at.saturating_duration_since(building + build),
            // from the project's images loaded to both applies done
            apply: loaded_at.elapsed(),
            ..Timings::default()
        },
    })
}

/// The add-ons' objects as observed now, when `last` (the record of the last complete
/// `up`) was made on this node with the same add-on documents (`digest`) and each of their
/// objects is as it left them; `None` otherwise (they are applied).
async fn addons_as_left(
    config: &SandboxConfig,
    node: &Node,
    last: Option<&crate::warm::Record>,
    digest: &str,
) -> Option<Vec<Applied>> {
    let last = last.filter(|r| r.node == node.info.id && r.addon_documents == digest)?;
    let addons: Vec<crate::warm::ObjectRecord> = last
        .objects
        .iter()
        .filter(|o| o.role == crate::warm::Role::Addon)
        .cloned()
        .collect();
    if addons.is_empty() {
        return None;
    }
    let left = crate::warm::as_left(&node.client, &config.name, &addons).await;
    Some(left.ok()?.into_iter().map(|(_, object)| object).collect())
}

/// The value a side of [`converge`] sends once it has it; `None` when that side ended
/// without sending it (it failed: its error is reported).
async fn known<T: Clone>(value: &tokio::sync::watch::Receiver<Option<T>>) -> Option<T> {
    let mut value = value.clone();
    let sent = value.wait_for(Option::is_some).await.ok()?;
    sent.clone()
}

/// Whether the project's documents can be rendered before the add-ons' apply: the node
/// has cluster DNS (maildev is named by its DNS name), or maildev's Service exists already
/// (its address is known).
async fn smtp_service_known(config: &SandboxConfig, node: &Node) -> bool {
    node.profile.provides.cluster_dns
        || !config.addons.maildev
        || maildev_address(node).await.is_some()
}

/// The record of this `up`, its objects' states still to be observed; `None` when an
/// image's inputs are not known.
fn new_record(
    config: &SandboxConfig,
    node: &Node,
    built: &[BuiltImage],
    documents: String,
    addon_documents: String,
    addons: &[Applied],
    applied: &[Applied],
) -> Option<crate::warm::Record> {
    use crate::warm::{ObjectRecord, Role};
    let images = crate::warm::image_records(built)?;
    let mut objects: Vec<ObjectRecord> = addons
        .iter()
        .map(|a| ObjectRecord::applied(a, Role::Addon))
        .chain(
            applied
                .iter()
                .map(|a| ObjectRecord::applied(a, Role::Project)),
        )
        .collect();
    objects.push(ObjectRecord::inventory(crate::addons::NAMESPACE));
    if config.source.is_some() {
        objects.push(ObjectRecord::inventory(&config.namespace));
    }
    Some(crate::warm::Record {
        format: crate::warm::format(),
        node: node.info.id.clone(),
        kubeconfig: serde_yaml::to_string(&node.kubeconfig).ok()?,
        images,
        documents,
        addon_documents,
        objects,
    })
}

/// Observes the states the objects were left in and keeps the record; a failure only
/// means the next `up` is a full one.
async fn save_record(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    mut record: crate::warm::Record,
) {
    let saved = match crate::warm::observe(&node.client, &config.name, &record.objects).await {
        Ok(observed) => {
            record.objects = observed.into_iter().map(|(o, _)| o).collect();
            crate::warm::write(&crate::warm::key(config), &record).map_err(|e| e.to_string())
        }
        Err(reason) => Err(reason.to_string()),
    };
    if let Err(reason) = saved {
        reporter.detail(format!("no record of this up for the next: {reason}"));
    }
}

/// The no-change `up`: `Ok` when the record of the last complete `up` still holds (same
/// node, same image inputs with their images in the engine, the same documents, every
/// object as it was left), with the objects to wait for; `Err` says what differs.
async fn unchanged(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
    last: Option<&crate::warm::Record>,
) -> Result<Converged, Stale> {
    use crate::warm::Role;
    let record = last.ok_or(Stale::NoRecord)?;
    let (info, profile) = node::running(engine, &config.name).await?;
    if info.id != record.node {
        return Err(Stale::OtherNode);
    }
    let kubeconfig = serde_yaml::from_str(&record.kubeconfig).map_err(Stale::Kubeconfig)?;
    let node = node::attach(engine, info, profile, kubeconfig).await?;
    if record.images.len() != config.images.len() {
        return Err(Stale::ImagesConfigured);
    }
    let mut built = Vec::new();
    for (image, recorded) in config.images.iter().zip(&record.images) {
        let context = images::context_digest(image, &config.base_dir).await?;
        let inputs = images::inputs(engine, image, &config.base_dir, &context).await;
        if recorded.name != image.name || inputs.as_ref() != Some(&recorded.inputs) {
            return Err(Stale::NewInputs {
                image: image.name.clone(),
            });
        }
        let id = engine.image_id(&recorded.reference).await.ok().flatten();
        if id.as_ref() != Some(&recorded.id) {
            return Err(Stale::NotInEngine {
                reference: recorded.reference.clone(),
            });
        }
        built.push(BuiltImage {
            name: image.name.clone(),
            reference: recorded.reference.clone(),
            id: recorded.id.clone(),
            inputs,
        });
    }
    // with a registry: it runs, still holds every image, and the node has its mirror
    let registry = match config.registry {
        Some(crate::config::Registry::Local) => {
            let registry = crate::registry::running(engine, &config.name)
                .await?
                .ok_or(Stale::RegistryStopped)?;
            let mut delivered = Vec::new();
            for image in &built {
                let reference = registry.reference(image);
                if !crate::registry::holds(&registry, &reference).await {
                    return Err(Stale::NotInRegistry { reference });
                }
                delivered.push(BuiltImage {
                    reference,
                    ..image.clone()
                });
            }
            built = delivered;
            crate::registry::configure_node(engine, &node.info.name, &node.profile, &registry)
                .await?;
            Some(registry)
        }
        None => None,
    };
    let ca = load_ca(reporter)?;
    let (mut docs, mut issued) =
        addon_documents_secured(config, &node, &ca, registry.as_ref()).await?;
    let (project, more) = project_documents_secured(config, &node, &built, &ca).await?;
    docs.extend(project);
    issued.extend(more);
    if issued
        .iter()
        .any(|(_, i)| *i == crate::ingress::Issued::New)
    {
        return Err(Stale::CertificateDue);
    }
    if crate::warm::documents_digest(&docs) != record.documents {
        return Err(Stale::Documents);
    }
    let (ready, left) = tokio::join!(
        node::node_ready(&node.client, &node.info.name),
        crate::warm::as_left(&node.client, &config.name, &record.objects)
    );
    ready.map_err(Stale::NodeNotReady)?;
    let mut addons = Vec::new();
    let mut applied = Vec::new();
    for (role, object) in left? {
        match role {
            Role::Addon => addons.push(object),
            Role::Project => applied.push(object),
            Role::Inventory => {}
        }
    }
    let kubeconfig = install_context(&node)?;
    reporter.info(format!(
        "nothing to build, load or apply: {} and {} as the last up left them",
        crate::report::count(built.len(), "image"),
        crate::report::count(addons.len() + applied.len(), "object")
    ));
    Ok(Converged {
        node,
        kubeconfig,
        built,
        loaded: Vec::new(),
        addons,
        applied,
        pruned: Vec::new(),
        record: None,
        unchanged: true,
        timings: Timings::default(),
    })
}

/// The sandbox's wildcard domain: an environment gets its own subdomain.
pub fn domain(config: &SandboxConfig) -> String {
    match &config.environment {
        Some(env) => format!("{env}.{DEFAULT_DOMAIN}"),
        None => DEFAULT_DOMAIN.to_string(),
    }
}

fn builtins(config: &SandboxConfig, http_port: u16, https_port: u16, smtp_host: &str) -> Builtins {
    Builtins {
        name: config.name.clone(),
        namespace: config.namespace.clone(),
        domain: domain(config),
        ip: DEFAULT_IP.to_string(),
        http_port,
        https_port,
        smtp_host: smtp_host.to_string(),
        smtp_port: crate::addons::SMTP_PORT,
    }
}

/// Where the project's pods reach maildev's SMTP server: its cluster DNS name, or, on a
/// node without cluster DNS, its Service's address.
async fn smtp_host(node: &Node) -> String {
    if !node.profile.provides.cluster_dns {
        if let Some(ip) = maildev_address(node).await {
            return ip;
        }
    }
    crate::addons::SMTP_DNS_NAME.to_string()
}

/// The cluster address of maildev's Service, once it has one.
async fn maildev_address(node: &Node) -> Option<String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(node.client.clone(), crate::addons::NAMESPACE);
    api.get_opt("maildev").await.ok()??.spec?.cluster_ip
}

/// Says (with `-v`) which program renders each kustomization of the manifests.
fn report_kustomizations(reporter: &Reporter, config: &SandboxConfig) {
    let Ok(sources) = manifests::resolve(&config.manifests, &config.base_dir) else {
        return;
    };
    let tool = crate::kustomize::Tool::find();
    for source in sources {
        if let (manifests::Source::Kustomization(dir), Some(tool)) = (source, &tool) {
            reporter.detail(format!("rendered with `{}`", tool.command_line(&dir)));
        }
    }
}

pub(crate) fn validate_manifests(config: &SandboxConfig) -> Result<(), Error> {
    let builtins = builtins(config, 80, 443, crate::addons::SMTP_DNS_NAME);
    // the URLs' ports are not known yet, their names are: enough to check the references
    let profile = crate::profile::Profile::named(
        config
            .profile
            .as_deref()
            .unwrap_or(crate::profile::PREFERRED),
    )?;
    let addons = addon_documents(config, &profile, &builtins)?;
    let addon_urls = crate::urls::planned(&addons, 443, None, crate::addons::NAMESPACE);
    read_manifests(config, &builtins, None, &addon_urls)?;
    secret_documents(config)?;
    for image in &config.images {
        images::check(image, &config.base_dir)?;
    }
    Ok(())
}

pub(crate) fn secret_documents(config: &SandboxConfig) -> Result<Vec<Document>, Error> {
    Ok(secrets::documents(
        &config.secrets,
        &config.origin(),
        &config.base_dir,
        |var| std::env::var(var).ok(),
    )?)
}

fn install_context(node: &Node) -> Result<PathBuf, Error> {
    let path = kubeconfig::user_kubeconfig_path();
    kubeconfig::install(&path, &node.kubeconfig)?;
    Ok(path)
}

pub(crate) fn load_manifests(
    config: &SandboxConfig,
    node: &Node,
    built: &[BuiltImage],
    smtp_host: &str,
) -> Result<Vec<Document>, Error> {
    let builtins = builtins(config, node.ports.http, node.ports.https, smtp_host);
    let addons = addon_documents(config, &node.profile, &builtins)?;
    let addon_urls =
        crate::urls::planned(&addons, node.ports.https, None, crate::addons::NAMESPACE);
    let mut docs = secret_documents(config)?;
    let project = read_manifests(config, &builtins, Some(&builtins.domain), &addon_urls)?;
    // the exposed Services' HTTP ports, by name through the ingress
    let named = crate::urls::service_ingresses(&project, &builtins.domain, &config.namespace);
    docs.extend(project);
    docs.extend(named);
    let rewrite = images::rewrite_map(built);
    let policy = match config.registry {
        Some(_) => "IfNotPresent",
        None => "Never",
    };
    for doc in &mut docs {
        manifests::rewrite_images(&mut doc.object, &rewrite, policy);
    }
    Ok(docs)
}

/// The project's manifests, read with `builtins`; `${SANDBOX_URL_<NAME>}` are the URLs of
/// its own Ingresses (and its exposed Services' HTTP ports by name under `domain`), then of
/// the add-ons' (`addon_urls`).
pub(crate) fn read_manifests(
    config: &SandboxConfig,
    builtins: &Builtins,
    domain: Option<&str>,
    addon_urls: &[crate::urls::Url],
) -> Result<Vec<Document>, Error> {
    let vars = manifests::variables(builtins, &config.variables);
    let urls = |docs: &[Document]| {
        let mut urls = crate::urls::planned(docs, builtins.https_port, domain, &config.namespace);
        urls.extend_from_slice(addon_urls);
        crate::urls::variables(&urls)
    };
    Ok(manifests::load(
        &config.manifests,
        &config.base_dir,
        &vars,
        urls,
    )?)
}

/// Ensures the user's background DNS server answers; a failure is a warning (the names
/// still resolve wherever nip.io is reachable).
async fn start_dns(reporter: &Reporter) -> Option<std::net::SocketAddr> {
    match crate::dns_daemon::ensure().await {
        Ok((record, started)) => {
            if started {
                reporter.info(format!(
                    "started the DNS server on {} (pid {})",
                    record.address, record.pid
                ));
            }
            Some(record.address)
        }
        Err(e) => {
            reporter.warn(format!("{e}"));
            None
        }
    }
}

/// The add-on images the local engine holds (the offline profile builds them); the node
/// pulls the others itself.
async fn addon_load_requests(
    engine: &Engine,
    profile: &crate::profile::Profile,
    maildev: bool,
) -> Result<Vec<images::LoadRequest>, Error> {
    let mut requests = Vec::new();
    for reference in crate::addons::images(profile, maildev) {
        if let Some(id) = engine.image_id(&reference).await? {
            requests.push(images::LoadRequest { reference, id });
        }
    }
    Ok(requests)
}

/// The add-ons' documents with the certificates of their Ingresses.
async fn addon_documents_secured(
    config: &SandboxConfig,
    node: &Node,
    ca: &crate::tls::Ca,
    registry: Option<&crate::registry::LocalRegistry>,
) -> Result<(Vec<Document>, Vec<IssuedCert>), Error> {
    let builtins = builtins(
        config,
        node.ports.http,
        node.ports.https,
        crate::addons::SMTP_DNS_NAME,
    );
    let mut docs = addon_documents(config, &node.profile, &builtins)?;
    if let Some(registry) = registry {
        let text = crate::registry::hosting_configmap(registry);
        docs.extend(manifests::parse(
            &text,
            std::path::Path::new("(built-in add-on)/local-registry-hosting.yaml"),
        )?);
    }
    let issued = secure_ingresses(
        node,
        ca,
        &mut docs,
        DEFAULT_DOMAIN,
        crate::addons::NAMESPACE,
    )
    .await?;
    Ok((docs, issued))
}

/// Applies the add-ons (the ingress controller) under their own inventory; returns what
/// was applied, to be waited on with the project's objects.
async fn apply_addons(
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

/// The add-ons' documents: shared by every environment, so on the base domain.
fn addon_documents(
    config: &SandboxConfig,
    profile: &crate::profile::Profile,
    builtins: &Builtins,
) -> Result<Vec<Document>, Error> {
    let builtins = Builtins {
        domain: DEFAULT_DOMAIN.to_string(),
        smtp_host: crate::addons::SMTP_DNS_NAME.to_string(),
        ..builtins.clone()
    };
    Ok(crate::addons::documents(
        profile,
        &builtins,
        config.addons.maildev,
    )?)
}

/// The project's documents as applied: its manifests and secrets, plus a TLS Secret for
/// every Ingress under the sandbox domain and the CA's ConfigMap.
pub(crate) async fn project_documents(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    built: &[BuiltImage],
    ca: &crate::tls::Ca,
) -> Result<Vec<Document>, Error> {
    let (docs, issued) = project_documents_secured(config, node, built, ca).await?;
    report_issued(reporter, &issued);
    Ok(docs)
}

/// [`project_documents`], and what was done for each certificate, without reporting it.
async fn project_documents_secured(
    config: &SandboxConfig,
    node: &Node,
    built: &[BuiltImage],
    ca: &crate::tls::Ca,
) -> Result<(Vec<Document>, Vec<IssuedCert>), Error> {
    let smtp = smtp_host(node).await;
    let mut docs = load_manifests(config, node, built, &smtp)?;
    if config.fast_rollout {
        crate::manifests::fast_rollout(&mut docs);
    }
    if config.source.is_none() {
        return Ok((docs, Vec::new()));
    }
    let issued = secure_ingresses(node, ca, &mut docs, &domain(config), &config.namespace).await?;
    docs.push(crate::ingress::ca_configmap(ca.ca_pem(), &config.namespace));
    Ok((docs, issued))
}

/// The user's CA, created (and said so) when there is none.
pub(crate) fn load_ca(reporter: &Reporter) -> Result<crate::tls::Ca, Error> {
    let ca = crate::tls::Ca::load_or_create(&crate::tls::default_dir(), &[])?;
    if let crate::tls::CaOrigin::Created = ca.origin() {
        reporter.info(format!(
            "created the sandbox CA {} (sandbox trust installs it)",
            ca.cert_path().display()
        ));
    }
    Ok(ca)
}

/// A certificate Secret and what was done for it.
type IssuedCert = (crate::ingress::TlsSecret, crate::ingress::Issued);

/// Adds TLS to the Ingresses of `docs` under `domain` and the Secrets they need (see
/// [`crate::ingress`]); returns what was done for each Secret.
async fn secure_ingresses(
    node: &Node,
    ca: &crate::tls::Ca,
    docs: &mut Vec<Document>,
    domain: &str,
    namespace: &str,
) -> Result<Vec<IssuedCert>, Error> {
    let planned = crate::ingress::plan(docs, domain, namespace);
    let issued = crate::ingress::issue(&node.client, ca, &planned, crate::labels::SANDBOX).await?;
    let mut out = Vec::new();
    for (secret, what, doc) in issued {
        docs.extend(doc);
        out.push((secret, what));
    }
    Ok(out)
}

/// Says what was done for each certificate.
fn report_issued(reporter: &Reporter, issued: &[IssuedCert]) {
    for (secret, what) in issued {
        match what {
            crate::ingress::Issued::New => reporter.info(format!(
                "issued a certificate for {} (Secret {}/{})",
                secret.hosts.iter().cloned().collect::<Vec<_>>().join(", "),
                secret.namespace,
                secret.name
            )),
            crate::ingress::Issued::Users => reporter.info(format!(
                "Secret {}/{} exists and is not sandbox's: {} keep it",
                secret.namespace,
                secret.name,
                secret.ingresses.join(", ")
            )),
            crate::ingress::Issued::Kept => {}
        }
    }
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

pub(crate) async fn wait_ready(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    applied: &[Applied],
) -> Result<(), Error> {
    if !applied.iter().any(|a| wait::waits_on(&a.object)) {
        return Ok(());
    }
    let step = reporter.step("waiting for workloads");
    wait::wait_all(
        &node.client,
        applied,
        config.timeouts.ready,
        node.started,
        &step,
    )
    .await?;
    step.done("workloads ready");
    Ok(())
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
