//! Node, images, context and apply: the three sides of a full `up` that run at once
//! (see [`converge`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::apply::{Applied, InventoryEntry};
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::images::{self, BuiltImage};
use crate::manifests::Document;
use crate::node::{self, Node};
use crate::registry::LocalRegistry;
use crate::report::Reporter;

use super::apply::apply;
use super::apply::apply_addons;
use super::boot;
use super::documents::addon_documents_secured;
use super::documents::addon_load_requests;
use super::documents::install_context;
use super::documents::load_ca;
use super::documents::maildev_address;
use super::documents::project_documents;
use super::documents::report_issued;
use super::record::new_record;
use super::Timings;

/// A sandbox whose objects are applied, before the wait for them.
pub(super) struct Converged {
    pub(super) node: Node,
    pub(super) kubeconfig: PathBuf,
    pub(super) built: Vec<BuiltImage>,
    pub(super) loaded: Vec<String>,
    /// The add-ons' objects.
    pub(super) addons: Vec<Applied>,
    /// The project's objects.
    pub(super) applied: Vec<Applied>,
    pub(super) pruned: Vec<InventoryEntry>,
    /// The record to keep once the objects are ready (`None`: nothing new to record).
    pub(super) record: Option<crate::warm::Record>,
    /// Whether the record showed nothing to do.
    pub(super) unchanged: bool,
    /// How long the build, the load and the apply took.
    pub(super) timings: Timings,
}

/// Node, images, context and apply: everything `up` does before it waits.
///
/// Three sides run at once, each waiting only for what it needs of the others (see
/// [`Heard`]):
/// - the node ([`node_side`]): boots (or is found), serves, takes pods;
/// - the add-ons ([`addon_side`]): their images load into the node's runtime as soon as it
///   answers, their objects apply as soon as the API server takes them; when the record of
///   the last complete `up` (`last`) shows the same add-on documents on the same node and
///   every add-on object as it left them, they are not applied again (a `dev` update of
///   the project's image: the apply's requests would share the 2 cores with its build);
/// - the project ([`project_side`]): its images build (from the start, beside the boot),
///   load, and its objects apply.
///
/// A build or boot that fails ends the `up` at once (a node this run made stays, as
/// documented; an add-on apply under way ends first). What fails after the build lets the
/// other sides run to their end (an apply is never stopped halfway), and the node's error
/// is the one reported first (a boot past its deadline removes its sandbox before it says
/// so).
pub(super) async fn converge(
    reporter: &Reporter,
    config: &SandboxConfig,
    engine: &Engine,
    last: Option<&crate::warm::Record>,
) -> Result<Converged, Error> {
    let ca = load_ca(reporter)?;
    let (booted, boot) = watch::channel(None);
    let (served, serving) = watch::channel(None);
    let (listed, listing) = watch::channel(None);
    let (made, registry) = watch::channel(None);
    // objects go in as soon as the API server takes them, while the kubelet of a new node
    // still starts; those that make pods as soon as the node takes them (see hold_pods)
    let (takes_pods, node_takes_pods) = watch::channel(false);
    let (services, services_applied) = oneshot::channel();
    // whether the add-ons' apply is under way: a failed build waits for its end
    let (addons_applying, addons_apply) = watch::channel(false);
    let heard = Heard {
        boot,
        serving,
        listing,
        registry,
        node_takes_pods,
        addons_apply,
    };
    let run = Run {
        reporter,
        config,
        engine,
        heard: &heard,
    };
    // each side owns what it sends (dropped when it fails: whoever waits on it then stops
    // waiting) and borrows what it waits on
    let ((node, kubeconfig), addons, (build, building, project)) = tokio::try_join!(
        node_side(run, booted, served, takes_pods),
        addon_side(run, &ca, last, listed, made, services, addons_applying),
        project_side(run, &ca, services_applied)
    )?;
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

/// What the sides of [`converge`] learn from each other, as it becomes known.
struct Heard {
    /// The node, booting (from the node side).
    boot: watch::Receiver<Option<node::Booting>>,
    /// The node, serving its API (from the node side).
    serving: watch::Receiver<Option<Node>>,
    /// The node's image listing (from the add-on side).
    listing: watch::Receiver<Option<String>>,
    /// The sandbox's registry, with `registry: local` (from the add-on side).
    registry: watch::Receiver<Option<LocalRegistry>>,
    /// Whether the node takes pods (from the node side).
    node_takes_pods: watch::Receiver<bool>,
    /// Whether the add-ons' apply is under way (from the add-on side).
    addons_apply: watch::Receiver<bool>,
}

/// What every side of [`converge`] works with.
#[derive(Clone, Copy)]
struct Run<'a> {
    reporter: &'a Reporter,
    config: &'a SandboxConfig,
    engine: &'a Engine,
    heard: &'a Heard,
}

impl Run<'_> {
    /// Whether the config asks for the sandbox's own registry.
    fn local_registry(&self) -> bool {
        matches!(self.config.registry, Some(crate::config::Registry::Local))
    }

    /// The error of a side whose input never came: the side that failed to make it
    /// reports its own.
    fn not_running(&self) -> Error {
        Error::from(node::NodeError::NotRunning {
            sandbox: self.config.name.clone(),
        })
    }
}

/// The node: found, started or made; serving (the kube context installed); taking pods
/// (with a local registry, its containerd mirrors it first).
async fn node_side(
    run: Run<'_>,
    booted: watch::Sender<Option<node::Booting>>,
    served: watch::Sender<Option<Node>>,
    takes_pods: watch::Sender<bool>,
) -> Result<(Node, PathBuf), Error> {
    let Run {
        reporter,
        config,
        engine,
        heard,
    } = run;
    let booting = boot(reporter, config, engine).await?;
    let _ = booted.send(Some(booting.clone()));
    let deadline = booting.deadline(config.timeouts.boot);
    let node = booting.serving(engine, deadline, reporter).await?;
    let kubeconfig = install_context(&node)?;
    let _ = served.send(Some(node.clone()));
    node.schedulable(engine, deadline, reporter).await?;
    // the node pulls from the registry once it runs pods: its containerd gets the
    // mirror now (k3s writes its registry hosts anew while it starts)
    if run.local_registry() {
        if let Some(registry) = known(&heard.registry).await {
            crate::registry::configure_node(engine, &node.info.name, &node.profile, &registry)
                .await?;
        }
    }
    let _ = takes_pods.send(true);
    Ok((node, kubeconfig))
}

/// What the add-on side made: the objects, their documents and its digest, the images it
/// loaded.
type AddonsDone = (Vec<Applied>, Vec<Document>, String, Vec<String>);

/// The add-ons: the registry (with `registry: local`), the node's image listing, their
/// images loaded, their documents rendered and applied unless as the last `up` left
/// them. Its own failure is the inner `Err`: the other sides run to their end.
async fn addon_side(
    run: Run<'_>,
    ca: &crate::tls::Ca,
    last: Option<&crate::warm::Record>,
    listed: watch::Sender<Option<String>>,
    made: watch::Sender<Option<LocalRegistry>>,
    services: oneshot::Sender<()>,
    applying: watch::Sender<bool>,
) -> Result<Result<AddonsDone, Error>, Error> {
    let Run {
        reporter,
        config,
        engine,
        heard,
    } = run;
    let work = async move {
        let booting = known(&heard.boot).await.ok_or_else(|| run.not_running())?;
        let registry = if run.local_registry() {
            let registry =
                crate::registry::ensure(engine, &config.name, &booting.profile, reporter).await?;
            let _ = made.send(Some(registry.clone()));
            Some(registry)
        } else {
            None
        };
        let node_name = &booting.names.node;
        let listed_now = images::listing(engine, node_name, &booting.profile).await?;
        let _ = listed.send(Some(listed_now.clone()));
        let requests = addon_load_requests(engine, &booting.profile, config.addons.maildev).await?;
        let loaded = images::load_listed(
            engine,
            node_name,
            &booting.profile,
            &listed_now,
            &requests,
            reporter,
        )
        .await?;
        let node = known(&heard.serving)
            .await
            .ok_or_else(|| run.not_running())?;
        let (docs, issued) = addon_documents_secured(config, &node, ca, registry.as_ref()).await?;
        report_issued(reporter, &issued);
        let digest = crate::warm::documents_digest(&docs);
        let applied = match addons_as_left(config, &node, last, &digest).await {
            Some(applied) => {
                reporter.detail("the add-ons are as the last up left them: not applied again");
                let _ = services.send(());
                applied
            }
            None => {
                let held = Some(heard.node_takes_pods.clone());
                applying.send_replace(true);
                let applied = apply_addons(reporter, config, &node, &docs, held, services).await;
                applying.send_replace(false);
                applied?
            }
        };
        Ok::<_, Error>((applied, docs, digest, loaded))
    };
    Ok(work.await)
}

/// What the project side made: the images built and loaded, the documents, the objects
/// applied and pruned, and when the load ended.
type ProjectDone = (
    Vec<BuiltImage>,
    Vec<String>,
    Vec<Document>,
    Vec<Applied>,
    Vec<InventoryEntry>,
    Instant,
);

/// The project: its images built (beside the boot: a failed build ends the `up`, after an
/// add-on apply under way), then pushed to the registry or loaded into the node, its
/// documents rendered and applied. Returns the build's duration and start, and the rest's
/// outcome (the inner `Err`: the other sides run to their end).
async fn project_side(
    run: Run<'_>,
    ca: &crate::tls::Ca,
    services_applied: oneshot::Receiver<()>,
) -> Result<(Duration, Instant, Result<ProjectDone, Error>), Error> {
    let Run {
        reporter,
        config,
        engine,
        heard,
    } = run;
    let building = Instant::now();
    let built = match images::build_all(engine, &config.images, &config.base_dir, reporter).await {
        Ok(built) => built,
        Err(e) => {
            // ends the up, but never an add-on apply halfway: one under way ends first
            // (one not begun never begins)
            let mut apply = heard.addons_apply.clone();
            let _ = apply.wait_for(|applying| !applying).await;
            return Err(e.into());
        }
    };
    let build = building.elapsed();
    let work = async move {
        let booting = known(&heard.boot).await.ok_or_else(|| run.not_running())?;
        // with a registry, the project's images are pushed there (the node pulls
        // them); else loaded into the node
        let (built, loaded) = if run.local_registry() {
            let registry = known(&heard.registry)
                .await
                .ok_or_else(|| run.not_running())?;
            crate::registry::push_all(engine, &registry, &built, reporter).await?
        } else {
            let listed_now = known(&heard.listing)
                .await
                .ok_or_else(|| run.not_running())?;
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
        let node = known(&heard.serving)
            .await
            .ok_or_else(|| run.not_running())?;
        // without cluster DNS, the project's documents name maildev's Service by its
        // address: they wait for the add-ons' Services when it is new (a failed add-on
        // apply drops the sender: its error is the one reported)
        if !smtp_service_known(config, &node).await {
            let _ = services_applied.await;
        }
        let docs = project_documents(reporter, config, &node, &built, ca).await?;
        let held = Some(heard.node_takes_pods.clone());
        let (applied, pruned) = apply(reporter, config, &node, &docs, held).await?;
        Ok::<_, Error>((built, loaded, docs, applied, pruned, loaded_at))
    };
    Ok((build, building, work.await))
}

/// The add-ons' objects as observed now, when `last` (the record of the last complete
/// `up`) was made on this node with the same add-on documents (`digest`) and each of their
/// objects is as it left them; `None` otherwise (they are applied).
pub(super) async fn addons_as_left(
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
pub(super) async fn known<T: Clone>(value: &watch::Receiver<Option<T>>) -> Option<T> {
    let mut value = value.clone();
    let sent = value.wait_for(Option::is_some).await.ok()?;
    sent.clone()
}

/// Whether the project's documents can be rendered before the add-ons' apply: the node
/// has cluster DNS (maildev is named by its DNS name), or maildev's Service exists already
/// (its address is known).
pub(super) async fn smtp_service_known(config: &SandboxConfig, node: &Node) -> bool {
    node.profile.provides.cluster_dns
        || !config.addons.maildev
        || maildev_address(node).await.is_some()
}
