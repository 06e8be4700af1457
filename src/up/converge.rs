//! Node, images, context and apply: the three sides of a full `up` that run at once
//! (see [`converge`]). What each step does is behind [`Steps`] (the real ones: [`Real`]),
//! so that the order of the steps, what waits on what and what a failure ends are
//! unit-tested against a fake that records its calls.

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
/// Three sides run at once (see [`sides`]), each waiting only for what it needs of the
/// others:
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
    let real = Real {
        reporter,
        config,
        engine,
        ca: &ca,
        last,
    };
    let local_registry = matches!(config.registry, Some(crate::config::Registry::Local));
    let done = sides(&real, local_registry, &config.name).await?;
    let documents = crate::warm::documents_digest(done.addon_docs.iter().chain(&done.docs));
    let record = new_record(
        config,
        &done.node,
        &done.built,
        documents,
        done.addon_digest,
        &done.addons,
        &done.applied,
    );
    Ok(Converged {
        node: done.node,
        kubeconfig: done.kubeconfig,
        built: done.built,
        loaded: done.loaded,
        addons: done.addons,
        applied: done.applied,
        pruned: done.pruned,
        record,
        unchanged: false,
        timings: done.timings,
    })
}

/// The steps of the three sides, one method each. [`Real`] does them; the tests' fake
/// records them.
pub(super) trait Steps {
    /// The node while it boots.
    type Booting: Clone;
    /// The node serving its API.
    type Node: Clone;
    /// The sandbox's own registry.
    type Registry: Clone;

    /// Finds, starts or makes the node.
    async fn boot(&self) -> Result<Self::Booting, Error>;
    /// Waits until the node serves its API; installs its kube context (the file's path).
    async fn serving(&self, booting: &Self::Booting) -> Result<(Self::Node, PathBuf), Error>;
    /// Waits until the node takes pods.
    async fn schedulable(&self, booting: &Self::Booting, node: &Self::Node) -> Result<(), Error>;
    /// Gives the node's containerd the registry as its mirror.
    async fn mirror(&self, node: &Self::Node, registry: &Self::Registry) -> Result<(), Error>;
    /// Starts (or finds) the sandbox's registry.
    async fn registry(&self, booting: &Self::Booting) -> Result<Self::Registry, Error>;
    /// What the node's runtime holds.
    async fn listing(&self, booting: &Self::Booting) -> Result<String, Error>;
    /// Loads the add-ons' images the node lacks; returns the references loaded.
    async fn load_addons(
        &self,
        booting: &Self::Booting,
        listing: &str,
    ) -> Result<Vec<String>, Error>;
    /// The add-ons' documents (their certificates issued).
    async fn addon_documents(
        &self,
        node: &Self::Node,
        registry: Option<&Self::Registry>,
    ) -> Result<Vec<Document>, Error>;
    /// The add-ons' objects, when the last `up` left them as the documents (`digest`) say.
    async fn addons_as_left(&self, node: &Self::Node, digest: &str) -> Option<Vec<Applied>>;
    /// Applies the add-ons; `services` is sent once their Services exist.
    async fn apply_addons(
        &self,
        node: &Self::Node,
        docs: &[Document],
        held: watch::Receiver<bool>,
        services: oneshot::Sender<()>,
    ) -> Result<Vec<Applied>, Error>;
    /// Builds the project's images.
    async fn build(&self) -> Result<Vec<BuiltImage>, Error>;
    /// Pushes them to the registry; returns them as the node pulls them, and what was pushed.
    async fn push(
        &self,
        registry: &Self::Registry,
        built: Vec<BuiltImage>,
    ) -> Result<(Vec<BuiltImage>, Vec<String>), Error>;
    /// Loads them into the node (what it lacks); returns the references loaded.
    async fn load(
        &self,
        booting: &Self::Booting,
        listing: &str,
        built: &[BuiltImage],
    ) -> Result<Vec<String>, Error>;
    /// Whether the project's documents can name maildev's Service before the add-ons'
    /// apply (see [`smtp_service_known`]).
    async fn smtp_known(&self, node: &Self::Node) -> bool;
    /// The project's documents, rendered for `built`.
    async fn project_documents(
        &self,
        node: &Self::Node,
        built: &[BuiltImage],
    ) -> Result<Vec<Document>, Error>;
    /// Applies the project's documents (pruning what they no longer hold).
    async fn apply(
        &self,
        node: &Self::Node,
        docs: &[Document],
        held: watch::Receiver<bool>,
    ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error>;
}

/// What the three sides made.
struct Done<S: Steps> {
    node: S::Node,
    kubeconfig: PathBuf,
    built: Vec<BuiltImage>,
    /// Images loaded (or pushed), the project's and the add-ons'.
    loaded: Vec<String>,
    addons: Vec<Applied>,
    addon_docs: Vec<Document>,
    /// The digest of the add-ons' documents.
    addon_digest: String,
    docs: Vec<Document>,
    applied: Vec<Applied>,
    pruned: Vec<InventoryEntry>,
    timings: Timings,
}

/// Runs the three sides at once (see [`converge`]).
async fn sides<S: Steps>(steps: &S, local_registry: bool, sandbox: &str) -> Result<Done<S>, Error> {
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
        steps,
        heard: &heard,
        local_registry,
        sandbox,
    };
    // each side owns what it sends (dropped when it fails: whoever waits on it then stops
    // waiting) and borrows what it waits on
    let ((node, kubeconfig), addons, (build, building, project)) = tokio::try_join!(
        node_side(run, booted, served, takes_pods),
        addon_side(run, listed, made, services, addons_applying),
        project_side(run, services_applied)
    )?;
    let (addons, addon_docs, addon_digest, addons_loaded) = addons?;
    let (built, mut loaded, docs, applied, pruned, loaded_at) = project?;
    loaded.extend(addons_loaded);
    Ok(Done {
        node,
        kubeconfig,
        built,
        loaded,
        addons,
        addon_docs,
        addon_digest,
        docs,
        applied,
        pruned,
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
struct Heard<S: Steps> {
    /// The node, booting (from the node side).
    boot: watch::Receiver<Option<S::Booting>>,
    /// The node, serving its API (from the node side).
    serving: watch::Receiver<Option<S::Node>>,
    /// The node's image listing (from the add-on side).
    listing: watch::Receiver<Option<String>>,
    /// The sandbox's registry, with `registry: local` (from the add-on side).
    registry: watch::Receiver<Option<S::Registry>>,
    /// Whether the node takes pods (from the node side).
    node_takes_pods: watch::Receiver<bool>,
    /// Whether the add-ons' apply is under way (from the add-on side).
    addons_apply: watch::Receiver<bool>,
}

/// What every side of [`converge`] works with.
struct Run<'a, S: Steps> {
    steps: &'a S,
    heard: &'a Heard<S>,
    local_registry: bool,
    sandbox: &'a str,
}

impl<S: Steps> Clone for Run<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Steps> Copy for Run<'_, S> {}

impl<S: Steps> Run<'_, S> {
    /// The error of a side whose input never came: the side that failed to make it
    /// reports its own.
    fn not_running(&self) -> Error {
        Error::from(node::NodeError::NotRunning {
            sandbox: self.sandbox.to_string(),
        })
    }
}

/// The node: found, started or made; serving (the kube context installed); taking pods
/// (with a local registry, its containerd mirrors it first).
async fn node_side<S: Steps>(
    run: Run<'_, S>,
    booted: watch::Sender<Option<S::Booting>>,
    served: watch::Sender<Option<S::Node>>,
    takes_pods: watch::Sender<bool>,
) -> Result<(S::Node, PathBuf), Error> {
    let steps = run.steps;
    let booting = steps.boot().await?;
    let _ = booted.send(Some(booting.clone()));
    let (node, kubeconfig) = steps.serving(&booting).await?;
    let _ = served.send(Some(node.clone()));
    steps.schedulable(&booting, &node).await?;
    // the node pulls from the registry once it runs pods: its containerd gets the
    // mirror now (k3s writes its registry hosts anew while it starts)
    if run.local_registry {
        if let Some(registry) = known(&run.heard.registry).await {
            steps.mirror(&node, &registry).await?;
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
async fn addon_side<S: Steps>(
    run: Run<'_, S>,
    listed: watch::Sender<Option<String>>,
    made: watch::Sender<Option<S::Registry>>,
    services: oneshot::Sender<()>,
    applying: watch::Sender<bool>,
) -> Result<Result<AddonsDone, Error>, Error> {
    let (steps, heard) = (run.steps, run.heard);
    let work = async move {
        let booting = known(&heard.boot).await.ok_or_else(|| run.not_running())?;
        let registry = if run.local_registry {
            let registry = steps.registry(&booting).await?;
            let _ = made.send(Some(registry.clone()));
            Some(registry)
        } else {
            None
        };
        let listed_now = steps.listing(&booting).await?;
        let _ = listed.send(Some(listed_now.clone()));
        let loaded = steps.load_addons(&booting, &listed_now).await?;
        let node = known(&heard.serving)
            .await
            .ok_or_else(|| run.not_running())?;
        let docs = steps.addon_documents(&node, registry.as_ref()).await?;
        let digest = crate::warm::documents_digest(&docs);
        let applied = match steps.addons_as_left(&node, &digest).await {
            Some(applied) => {
                let _ = services.send(());
                applied
            }
            None => {
                let held = heard.node_takes_pods.clone();
                applying.send_replace(true);
                let applied = steps.apply_addons(&node, &docs, held, services).await;
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
async fn project_side<S: Steps>(
    run: Run<'_, S>,
    services_applied: oneshot::Receiver<()>,
) -> Result<(Duration, Instant, Result<ProjectDone, Error>), Error> {
    let (steps, heard) = (run.steps, run.heard);
    let building = Instant::now();
    let built = match steps.build().await {
        Ok(built) => built,
        Err(e) => {
            // ends the up, but never an add-on apply halfway: one under way ends first
            // (one not begun never begins)
            let mut apply = heard.addons_apply.clone();
            let _ = apply.wait_for(|applying| !applying).await;
            return Err(e);
        }
    };
    let build = building.elapsed();
    let work = async move {
        let booting = known(&heard.boot).await.ok_or_else(|| run.not_running())?;
        // with a registry, the project's images are pushed there (the node pulls
        // them); else loaded into the node
        let (built, loaded) = if run.local_registry {
            let registry = known(&heard.registry)
                .await
                .ok_or_else(|| run.not_running())?;
            steps.push(&registry, built).await?
        } else {
            let listed_now = known(&heard.listing)
                .await
                .ok_or_else(|| run.not_running())?;
            let loaded = steps.load(&booting, &listed_now, &built).await?;
            (built, loaded)
        };
        let loaded_at = Instant::now();
        let node = known(&heard.serving)
            .await
            .ok_or_else(|| run.not_running())?;
        // without cluster DNS, the project's documents name maildev's Service by its
        // address: they wait for the add-ons' Services when it is new (a failed add-on
        // apply drops the sender: its error is the one reported)
        if !steps.smtp_known(&node).await {
            let _ = services_applied.await;
        }
        let docs = steps.project_documents(&node, &built).await?;
        let held = heard.node_takes_pods.clone();
        let (applied, pruned) = steps.apply(&node, &docs, held).await?;
        Ok::<_, Error>((built, loaded, docs, applied, pruned, loaded_at))
    };
    Ok((build, building, work.await))
}

/// The steps as `up` does them: the engine, the node's API, the sandbox's CA.
struct Real<'a> {
    reporter: &'a Reporter,
    config: &'a SandboxConfig,
    engine: &'a Engine,
    ca: &'a crate::tls::Ca,
    /// The record of the last complete `up`.
    last: Option<&'a crate::warm::Record>,
}

/// A booting node with its deadline (taken once it is found or made: serving and taking
/// pods share it).
type Booted = (node::Booting, node::BootDeadline);

impl Steps for Real<'_> {
    type Booting = Booted;
    type Node = Node;
    type Registry = LocalRegistry;

    async fn boot(&self) -> Result<Booted, Error> {
        let booting = boot(self.reporter, self.config, self.engine).await?;
        let deadline = booting.deadline(self.config.timeouts.boot);
        Ok((booting, deadline))
    }

    async fn serving(&self, (booting, deadline): &Booted) -> Result<(Node, PathBuf), Error> {
        let node = booting
            .clone()
            .serving(self.engine, *deadline, self.reporter)
            .await?;
        let kubeconfig = install_context(&node)?;
        Ok((node, kubeconfig))
    }

    async fn schedulable(&self, (_, deadline): &Booted, node: &Node) -> Result<(), Error> {
        Ok(node
            .schedulable(self.engine, *deadline, self.reporter)
            .await?)
    }

    async fn mirror(&self, node: &Node, registry: &LocalRegistry) -> Result<(), Error> {
        Ok(
            crate::registry::configure_node(self.engine, &node.info.name, &node.profile, registry)
                .await?,
        )
    }

    async fn registry(&self, (booting, _): &Booted) -> Result<LocalRegistry, Error> {
        Ok(crate::registry::ensure(
            self.engine,
            &self.config.name,
            &booting.profile,
            self.reporter,
        )
        .await?)
    }

    async fn listing(&self, (booting, _): &Booted) -> Result<String, Error> {
        Ok(images::listing(self.engine, &booting.names.node, &booting.profile).await?)
    }

    async fn load_addons(
        &self,
        (booting, _): &Booted,
        listing: &str,
    ) -> Result<Vec<String>, Error> {
        let requests =
            addon_load_requests(self.engine, &booting.profile, self.config.addons.maildev).await?;
        Ok(images::load_listed(
            self.engine,
            &booting.names.node,
            &booting.profile,
            listing,
            &requests,
            self.reporter,
        )
        .await?)
    }

    async fn addon_documents(
        &self,
        node: &Node,
        registry: Option<&LocalRegistry>,
    ) -> Result<Vec<Document>, Error> {
        let (docs, issued) = addon_documents_secured(self.config, node, self.ca, registry).await?;
        report_issued(self.reporter, &issued);
        Ok(docs)
    }

    async fn addons_as_left(&self, node: &Node, digest: &str) -> Option<Vec<Applied>> {
        let left = addons_as_left(self.config, node, self.last, digest).await;
        if left.is_some() {
            self.reporter
                .detail("the add-ons are as the last up left them: not applied again");
        }
        left
    }

    async fn apply_addons(
        &self,
        node: &Node,
        docs: &[Document],
        held: watch::Receiver<bool>,
        services: oneshot::Sender<()>,
    ) -> Result<Vec<Applied>, Error> {
        apply_addons(self.reporter, self.config, node, docs, Some(held), services).await
    }

    async fn build(&self) -> Result<Vec<BuiltImage>, Error> {
        Ok(images::build_all(
            self.engine,
            &self.config.images,
            &self.config.base_dir,
            self.reporter,
        )
        .await?)
    }

    async fn push(
        &self,
        registry: &LocalRegistry,
        built: Vec<BuiltImage>,
    ) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
        Ok(crate::registry::push_all(self.engine, registry, &built, self.reporter).await?)
    }

    async fn load(
        &self,
        (booting, _): &Booted,
        listing: &str,
        built: &[BuiltImage],
    ) -> Result<Vec<String>, Error> {
        let requests = images::load_requests(built);
        Ok(images::load_listed(
            self.engine,
            &booting.names.node,
            &booting.profile,
            listing,
            &requests,
            self.reporter,
        )
        .await?)
    }

    async fn smtp_known(&self, node: &Node) -> bool {
        smtp_service_known(self.config, node).await
    }

    async fn project_documents(
        &self,
        node: &Node,
        built: &[BuiltImage],
    ) -> Result<Vec<Document>, Error> {
        project_documents(self.reporter, self.config, node, built, self.ca).await
    }

    async fn apply(
        &self,
        node: &Node,
        docs: &[Document],
        held: watch::Receiver<bool>,
    ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
        apply(self.reporter, self.config, node, docs, Some(held)).await
    }
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

#[cfg(test)]
mod tests {
    //! The order of the steps, what waits on what, and what a failure ends, against a
    //! fake whose steps record themselves (and fail, or wait for each other, on demand).

    use std::collections::HashSet;
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    /// Steps that record `name` (and `name done` for the ones that take time) in order.
    #[derive(Default)]
    struct Fake {
        events: Mutex<Vec<String>>,
        /// Steps that fail.
        fail: HashSet<&'static str>,
        /// Maildev's Service can be named before the add-ons' apply.
        smtp_known: bool,
        /// The add-ons are as the last `up` left them.
        as_left: bool,
        /// The build ends (and fails, if it does) only once the add-ons' apply is under way.
        build_after_addons_begin: bool,
        /// The node is found only once the build has begun (the build does not wait for it).
        boot_after_build_begins: bool,
        /// The add-ons' Services exist only once the project's images are loaded.
        services_after_load: bool,
        loaded: Notify,
        addons_applying: Notify,
        build_ended: Notify,
        build_began: Notify,
    }

    impl Fake {
        fn log(&self, event: impl Into<String>) {
            self.events.lock().unwrap().push(event.into());
        }

        /// Records `name`; fails when asked to.
        fn step(&self, name: &'static str) -> Result<(), Error> {
            self.log(name);
            if self.fail.contains(name) {
                return Err(Error::Usage(format!("{name} failed")));
            }
            Ok(())
        }

        fn events(&self) -> Vec<String> {
            self.events.lock().unwrap().clone()
        }

        /// The position of `event`, which must have happened once.
        fn at(&self, event: &str) -> usize {
            let events = self.events();
            let found: Vec<usize> = (0..events.len()).filter(|&i| events[i] == event).collect();
            assert_eq!(found.len(), 1, "{event} once in {events:?}");
            found[0]
        }
    }

    impl Steps for Fake {
        type Booting = ();
        type Node = ();
        type Registry = ();

        async fn boot(&self) -> Result<(), Error> {
            if self.boot_after_build_begins {
                self.build_began.notified().await;
            }
            self.step("boot")
        }
        async fn serving(&self, _: &()) -> Result<((), PathBuf), Error> {
            self.step("serving")
                .map(|()| ((), PathBuf::from("kubeconfig")))
        }
        async fn schedulable(&self, _: &(), _: &()) -> Result<(), Error> {
            self.step("schedulable")
        }
        async fn mirror(&self, _: &(), _: &()) -> Result<(), Error> {
            self.step("mirror")
        }
        async fn registry(&self, _: &()) -> Result<(), Error> {
            self.step("registry")
        }
        async fn listing(&self, _: &()) -> Result<String, Error> {
            self.step("listing").map(|()| String::new())
        }
        async fn load_addons(&self, _: &(), _: &str) -> Result<Vec<String>, Error> {
            self.step("load_addons").map(|()| vec!["traefik".into()])
        }
        async fn addon_documents(&self, _: &(), _: Option<&()>) -> Result<Vec<Document>, Error> {
            self.step("addon_documents").map(|()| Vec::new())
        }
        async fn addons_as_left(&self, _: &(), _: &str) -> Option<Vec<Applied>> {
            self.log("addons_as_left");
            self.as_left.then(Vec::new)
        }
        async fn apply_addons(
            &self,
            _: &(),
            _: &[Document],
            _: watch::Receiver<bool>,
            services: oneshot::Sender<()>,
        ) -> Result<Vec<Applied>, Error> {
            self.step("apply_addons")?;
            self.addons_applying.notify_one();
            if self.build_after_addons_begin {
                self.build_ended.notified().await;
            }
            if self.services_after_load {
                self.loaded.notified().await;
            }
            self.log("addon services");
            let _ = services.send(());
            self.log("apply_addons done");
            Ok(Vec::new())
        }
        async fn build(&self) -> Result<Vec<BuiltImage>, Error> {
            self.log("build begins");
            self.build_began.notify_one();
            if self.build_after_addons_begin {
                self.addons_applying.notified().await;
            }
            let result = self.step("build");
            self.build_ended.notify_one();
            result.map(|()| {
                vec![BuiltImage {
                    name: "web".into(),
                    reference: "web:sandbox-1".into(),
                    id: "sha256:1".into(),
                    inputs: None,
                }]
            })
        }
        async fn push(
            &self,
            _: &(),
            built: Vec<BuiltImage>,
        ) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
            self.step("push")
                .map(|()| (built, vec!["web:sandbox-1".into()]))
        }
        async fn load(&self, _: &(), _: &str, _: &[BuiltImage]) -> Result<Vec<String>, Error> {
            let result = self.step("load");
            self.loaded.notify_one();
            result.map(|()| vec!["web:sandbox-1".into()])
        }
        async fn smtp_known(&self, _: &()) -> bool {
            self.smtp_known
        }
        async fn project_documents(
            &self,
            _: &(),
            _: &[BuiltImage],
        ) -> Result<Vec<Document>, Error> {
            self.step("project_documents").map(|()| Vec::new())
        }
        async fn apply(
            &self,
            _: &(),
            _: &[Document],
            _: watch::Receiver<bool>,
        ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
            self.step("apply").map(|()| (Vec::new(), Vec::new()))
        }
    }

    /// Runs the sides, failing the test rather than hanging when they wait on each other
    /// forever.
    async fn run(fake: &Fake, local_registry: bool) -> Result<Done<Fake>, Error> {
        tokio::time::timeout(Duration::from_secs(10), sides(fake, local_registry, "demo"))
            .await
            .expect("the sides end")
    }

    /// Runs the sides, which must fail with the error of `step`.
    async fn assert_fails_at(fake: &Fake, step: &str) {
        let error = run(fake, false).await.err().expect("the up fails");
        assert_eq!(
            error.to_string(),
            Error::Usage(format!("{step} failed")).to_string()
        );
    }

    fn before(fake: &Fake, pairs: &[(&str, &str)]) {
        for (a, b) in pairs {
            assert!(
                fake.at(a) < fake.at(b),
                "{a} before {b}: {:?}",
                fake.events()
            );
        }
    }

    #[tokio::test]
    async fn every_step_runs_once_each_after_what_it_needs() {
        let fake = Fake {
            smtp_known: true,
            // the build does not wait for the node: the node is found only once it began
            boot_after_build_begins: true,
            ..Fake::default()
        };
        let done = run(&fake, false).await.unwrap();
        before(
            &fake,
            &[
                ("build begins", "boot"),
                ("boot", "serving"),
                ("serving", "schedulable"),
                ("boot", "listing"),
                ("listing", "load_addons"),
                ("serving", "addon_documents"),
                ("addon_documents", "addons_as_left"),
                ("addons_as_left", "apply_addons"),
                ("listing", "load"),
                ("build", "load"),
                ("serving", "project_documents"),
                ("load", "project_documents"),
                ("project_documents", "apply"),
            ],
        );
        for absent in ["registry", "mirror", "push"] {
            assert!(!fake.events().iter().any(|e| e == absent), "{absent}");
        }
        assert_eq!(done.loaded, ["web:sandbox-1", "traefik"]);
        assert_eq!(done.kubeconfig, PathBuf::from("kubeconfig"));
        assert_eq!(done.built[0].reference, "web:sandbox-1");
    }

    #[tokio::test]
    async fn without_cluster_dns_the_project_waits_for_the_addons_services() {
        let fake = Fake {
            services_after_load: true,
            ..Fake::default()
        };
        run(&fake, false).await.unwrap();
        before(
            &fake,
            &[
                ("load", "addon services"),
                ("addon services", "project_documents"),
            ],
        );
        // with cluster DNS it does not
        let fake = Fake {
            services_after_load: true,
            smtp_known: true,
            ..Fake::default()
        };
        run(&fake, false).await.unwrap();
        before(&fake, &[("project_documents", "addon services")]);
    }

    #[tokio::test]
    async fn addons_as_the_last_up_left_them_are_not_applied_again() {
        let fake = Fake {
            as_left: true,
            ..Fake::default()
        };
        // the project does not wait for an apply that never comes
        run(&fake, false).await.unwrap();
        assert!(!fake.events().iter().any(|e| e == "apply_addons"));
        before(&fake, &[("addons_as_left", "project_documents")]);
    }

    #[tokio::test]
    async fn with_a_local_registry_images_are_pushed_and_the_node_mirrors_it() {
        let fake = Fake {
            smtp_known: true,
            ..Fake::default()
        };
        run(&fake, true).await.unwrap();
        before(
            &fake,
            &[
                ("boot", "registry"),
                ("registry", "mirror"),
                ("schedulable", "mirror"),
                ("registry", "push"),
                ("push", "project_documents"),
            ],
        );
        assert!(!fake.events().iter().any(|e| e == "load"));
    }

    #[tokio::test]
    async fn a_failed_build_ends_the_up_after_the_addons_apply_under_way() {
        let fake = Fake {
            fail: HashSet::from(["build"]),
            build_after_addons_begin: true,
            ..Fake::default()
        };
        assert_fails_at(&fake, "build").await;
        // the apply under way ended before the up did; nothing of the project went on
        before(
            &fake,
            &[("apply_addons", "build"), ("build", "apply_addons done")],
        );
        for absent in ["load", "project_documents", "apply"] {
            assert!(!fake.events().iter().any(|e| e == absent), "{absent}");
        }
    }

    #[tokio::test]
    async fn a_failed_boot_ends_the_up_and_nothing_waits_for_the_node() {
        let fake = Fake {
            fail: HashSet::from(["boot"]),
            ..Fake::default()
        };
        assert_fails_at(&fake, "boot").await;
        for absent in ["serving", "listing", "apply_addons", "load", "apply"] {
            assert!(!fake.events().iter().any(|e| e == absent), "{absent}");
        }
    }

    #[tokio::test]
    async fn a_failure_after_the_build_lets_the_addons_apply_end() {
        let fake = Fake {
            fail: HashSet::from(["project_documents"]),
            smtp_known: true,
            ..Fake::default()
        };
        assert_fails_at(&fake, "project_documents").await;
        assert!(fake.events().iter().any(|e| e == "apply_addons done"));
        assert!(!fake.events().iter().any(|e| e == "apply"));
    }

    #[tokio::test]
    async fn a_failed_node_is_the_error_reported_when_the_addons_fail_too() {
        // the add-ons wait for the node: when it fails, their error is not the one shown
        let fake = Fake {
            fail: HashSet::from(["serving"]),
            smtp_known: true,
            ..Fake::default()
        };
        assert_fails_at(&fake, "serving").await;
    }
}
