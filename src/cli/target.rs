//! The provider seam: where a project's objects run. [`NodeTarget`] is sandbox's own Docker
//! node; [`super::cluster::ClusterTarget`] an existing cluster reached through a kube context
//! (cluster mode). The verbs `apply`, `build`, `urls`, `status`, `exec`, `logs`,
//! `kubeconfig` and `down --namespace` are written once over [`Target`], and so is `up` in
//! cluster mode ([`up`]); the laptop's `up` keeps its own path (the node boots while the
//! images build, see `cli::up`), which ends in the same state.
//!
//! The sequences here are unit-tested with a fake target that records its calls.

use std::time::Instant;

use async_trait::async_trait;

use super::Context;
use crate::apply::{Applied, InventoryEntry};
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::images::{self, BuiltImage};
use crate::manifests::{self, Document};
use crate::node::{self, Node};
use crate::urls::Url;
use crate::warm::Stale;

/// What serialises runs on a target, held until released.
pub enum Lock {
    /// The laptop's file lock (released on drop).
    File(crate::lock::SandboxLock),
    /// A cluster environment's Lease (renewed until released).
    Lease(Box<super::cluster::Held>),
    /// Nothing to release (a fake in tests).
    #[cfg(test)]
    Recorded(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl Lock {
    /// Releases the lock; a Lease is deleted so that the next run need not wait it out.
    pub async fn release(self) {
        match self {
            Lock::File(lock) => drop(lock),
            Lock::Lease(held) => (*held).release().await,
            #[cfg(test)]
            Lock::Recorded(calls) => calls.lock().unwrap().push("release".into()),
        }
    }
}

/// How a command reaches a target's API server: a kubeconfig of that context alone.
pub struct Access {
    /// The kubeconfig (one context, its cluster and user).
    pub kubeconfig: serde_yaml::Value,
    /// Its context.
    pub context: String,
    /// The API server's URL.
    pub server: String,
}

/// Where a project's objects run.
#[async_trait(?Send)]
pub trait Target {
    /// How messages name it (`sandbox web`, `environment pr-1 of sandbox web on context team`).
    fn describe(&self) -> String;
    /// Reaches the target; with `create`, makes what is missing first. Returns whether this
    /// call created it. Without `create`, a target that does not run is exit 8.
    async fn ensure(&mut self, ctx: &Context, create: bool) -> Result<bool, Error>;
    /// Serialises runs that change the target, on this machine or (a Lease) any other.
    async fn lock(&self, ctx: &Context) -> Result<Lock, Error>;
    /// The project's documents as the target applies them (its TLS, names, add-ons), their
    /// images not yet rewritten to the delivered ones. Bad input is refused here, before any
    /// image is delivered.
    async fn documents(&self, ctx: &Context) -> Result<Vec<Document>, Error>;
    /// Puts the built images where the target's container runtime finds them (loaded into
    /// the node, or pushed to a registry): returns them as the manifests are to name them,
    /// and the references actually loaded or pushed.
    async fn deliver(
        &self,
        ctx: &Context,
        built: Vec<BuiltImage>,
    ) -> Result<(Vec<BuiltImage>, Vec<String>), Error>;
    /// The pull policy of rewritten image references (`Never` for images loaded into the
    /// node, `IfNotPresent` for pushed ones).
    fn pull_policy(&self) -> &'static str;
    /// Server-side applies `docs` and prunes what the last apply made and they no longer
    /// hold.
    async fn apply(
        &self,
        ctx: &Context,
        docs: &[Document],
    ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error>;
    /// Waits until every workload of `applied` is ready.
    async fn wait(&self, ctx: &Context, applied: &[Applied]) -> Result<(), Error>;
    /// The URL table; with `checked_since`, once every URL answers through its route
    /// (within what is left of the ready timeout since then).
    async fn urls(&self, ctx: &Context, checked_since: Option<Instant>) -> Result<Vec<Url>, Error>;
    /// A kubeconfig for commands run against the target.
    async fn access(&self) -> Result<Access, Error>;
    /// A client of its API server (after [`Target::ensure`]).
    fn client(&self) -> Result<kube::Client, Error>;
    /// Removes what `up` made for this target; returns whether there was anything.
    async fn remove(&self, ctx: &Context) -> Result<bool, Error>;
    /// The no-change `up`: `Ok` with the images as delivered and the objects to wait for
    /// when the record of the last complete `up` still holds for `docs`; `Err` says why not.
    async fn unchanged(
        &self,
        _docs: &[Document],
    ) -> Result<(Vec<BuiltImage>, Vec<Applied>), Stale> {
        Err(Stale::NotKept)
    }
    /// Keeps the record of a complete `up` (a failure only means a full `up` next time).
    async fn remember(&self, _built: &[BuiltImage], _docs: &[Document], _applied: &[Applied]) {}
}

/// Points the images of `docs` at the delivered ones, with `policy`.
pub fn rewrite(docs: &mut [Document], built: &[BuiltImage], policy: &str) {
    let map = images::rewrite_map(built);
    for doc in docs {
        manifests::rewrite_images(&mut doc.object, &map, policy);
    }
}

/// What a run of [`apply`] or [`up`] did.
pub struct Applying {
    /// The images, as the manifests name them.
    pub built: Vec<BuiltImage>,
    /// The references loaded or pushed.
    pub delivered: Vec<String>,
    /// The objects applied.
    pub applied: Vec<Applied>,
    /// The objects pruned.
    pub pruned: Vec<InventoryEntry>,
    /// The URL table, every URL answering.
    pub urls: Vec<Url>,
    /// Whether the record showed nothing to deliver or apply.
    pub unchanged: bool,
}

/// `sandbox apply`: to the running target, the images as last built (`images`), then wait
/// until the workloads are ready and the URLs answer.
pub async fn apply<T, F>(target: &mut T, ctx: &Context, images: F) -> Result<Applying, Error>
where
    T: Target + ?Sized,
    F: std::future::Future<Output = Result<Vec<BuiltImage>, Error>>,
{
    target.ensure(ctx, false).await?;
    let lock = target.lock(ctx).await?;
    let result = deliver_and_apply(target, ctx, images, None).await;
    lock.release().await;
    result
}

/// The common part of `apply` and `up`: documents (bad input refused), images built and
/// delivered, objects applied, then waited for and their URLs checked. `applying` is set
/// once the apply begins.
async fn deliver_and_apply<T, F>(
    target: &T,
    ctx: &Context,
    images: F,
    applying: Option<&std::sync::atomic::AtomicBool>,
) -> Result<Applying, Error>
where
    T: Target + ?Sized,
    F: std::future::Future<Output = Result<Vec<BuiltImage>, Error>>,
{
    let mut docs = target.documents(ctx).await?;
    // the no-change path applies nothing: its documents are only compared, by the target
    let (built, delivered, applied, pruned, unchanged) = match target.unchanged(&docs).await {
        Ok((built, applied)) => {
            ctx.reporter.info(format!(
                "nothing to build, deliver or apply: {} and {} as the last up left them",
                crate::report::count(built.len(), "image"),
                crate::report::count(applied.len(), "object")
            ));
            (built, Vec::new(), applied, Vec::new(), true)
        }
        Err(reason) => {
            ctx.reporter.detail(format!("a full run: {reason}"));
            let (built, delivered) = target.deliver(ctx, images.await?).await?;
            rewrite(&mut docs, &built, target.pull_policy());
            if let Some(flag) = applying {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let (applied, pruned) = target.apply(ctx, &docs).await?;
            (built, delivered, applied, pruned, false)
        }
    };
    let ready_since = Instant::now();
    target.wait(ctx, &applied).await?;
    let urls = target.urls(ctx, Some(ready_since)).await?;
    if !unchanged {
        target.remember(&built, &docs, &applied).await;
    }
    Ok(Applying {
        built,
        delivered,
        applied,
        pruned,
        urls,
        unchanged,
    })
}

/// `up` over a target: made sure of (created when missing), then as [`apply`] with the
/// images built by `images` (not built when nothing changed). A run that fails before it
/// applied anything to a target it created removes that target again.
pub async fn up<T, F>(target: &mut T, ctx: &Context, images: F) -> Result<Applying, Error>
where
    T: Target + ?Sized,
    F: std::future::Future<Output = Result<Vec<BuiltImage>, Error>>,
{
    let created = target.ensure(ctx, true).await?;
    let lock = match target.lock(ctx).await {
        Ok(lock) => lock,
        Err(e) => {
            if created {
                let _ = target.remove(ctx).await;
            }
            return Err(e);
        }
    };
    let applying = std::sync::atomic::AtomicBool::new(false);
    let result = deliver_and_apply(&*target, ctx, images, Some(&applying)).await;
    lock.release().await;
    if result.is_err() && created && !applying.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = target.remove(ctx).await;
    }
    result
}

/// The target a command works on: the existing cluster in cluster mode (`--context`, or
/// `cluster:` in sandbox.yaml), else sandbox's own node.
pub async fn select(config: &SandboxConfig) -> Result<Box<dyn Target>, Error> {
    Ok(match config.cluster {
        Some(_) => Box::new(super::cluster::ClusterTarget::new(config)?),
        None => Box::new(NodeTarget::new(config).await?),
    })
}

/// Sandbox's own Docker node, with the project's namespace (or its environment's) in it.
pub struct NodeTarget {
    engine: Engine,
    config: SandboxConfig,
    node: Option<Node>,
}

impl NodeTarget {
    /// The node target of `config` (the engine reached, nothing else yet).
    pub async fn new(config: &SandboxConfig) -> Result<NodeTarget, Error> {
        Ok(NodeTarget {
            engine: Engine::connect().await?,
            config: config.clone(),
            node: None,
        })
    }

    /// The node, once [`Target::ensure`] reached it.
    pub fn node(&self) -> Result<&Node, Error> {
        self.node
            .as_ref()
            .ok_or_else(|| Error::NotFound(self.config.name.clone()))
    }

    /// The engine it runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[async_trait(?Send)]
impl Target for NodeTarget {
    fn describe(&self) -> String {
        match &self.config.environment {
            Some(env) => format!("environment {env} of sandbox {}", self.config.name),
            None => format!("sandbox {}", self.config.name),
        }
    }

    async fn ensure(&mut self, ctx: &Context, create: bool) -> Result<bool, Error> {
        if self.node.is_some() {
            return Ok(false);
        }
        if !create {
            self.node = Some(node::ensure_running(&self.engine, &self.config.name).await?);
            return Ok(false);
        }
        // one step after the other (`up` overlaps the boot with the build)
        let booting = node::boot(
            &self.engine,
            &self.config.name,
            self.config.profile.as_deref(),
            &ctx.reporter,
        )
        .await?;
        let deadline = booting.deadline(self.config.timeouts.boot);
        let node = booting
            .serving(&self.engine, deadline, &ctx.reporter)
            .await?;
        node.schedulable(&self.engine, deadline, &ctx.reporter)
            .await?;
        crate::kubeconfig::install(&crate::kubeconfig::user_kubeconfig_path(), &node.kubeconfig)?;
        let created = node.fresh;
        self.node = Some(node);
        Ok(created)
    }

    async fn lock(&self, ctx: &Context) -> Result<Lock, Error> {
        Ok(Lock::File(
            crate::lock::acquire(&self.config.name, &ctx.reporter).await?,
        ))
    }

    async fn documents(&self, ctx: &Context) -> Result<Vec<Document>, Error> {
        let ca = crate::up::load_ca(&ctx.reporter)?;
        crate::up::project_documents(&ctx.reporter, &self.config, self.node()?, &[], &ca).await
    }

    async fn deliver(
        &self,
        ctx: &Context,
        built: Vec<BuiltImage>,
    ) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
        let node = self.node()?;
        match self.config.registry {
            // pushed to the sandbox's registry (made sure of, as `up` does), pulled by the node
            Some(crate::config::Registry::Local) => {
                let registry = crate::registry::ensure(
                    &self.engine,
                    &self.config.name,
                    &node.profile,
                    &ctx.reporter,
                )
                .await?;
                crate::registry::configure_node(
                    &self.engine,
                    &node.info.name,
                    &node.profile,
                    &registry,
                )
                .await?;
                Ok(
                    crate::registry::push_all(&self.engine, &registry, &built, &ctx.reporter)
                        .await?,
                )
            }
            None => {
                let loaded = images::load(
                    &self.engine,
                    &node.info.name,
                    &node.profile,
                    &images::load_requests(&built),
                    &ctx.reporter,
                )
                .await?;
                Ok((built, loaded))
            }
        }
    }

    fn pull_policy(&self) -> &'static str {
        match self.config.registry {
            Some(_) => "IfNotPresent",
            None => "Never",
        }
    }

    async fn apply(
        &self,
        ctx: &Context,
        docs: &[Document],
    ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
        // what it applies may differ from what the last `up` recorded
        crate::warm::forget(&crate::warm::key(&self.config));
        crate::up::apply(&ctx.reporter, &self.config, self.node()?, docs, None).await
    }

    async fn wait(&self, ctx: &Context, applied: &[Applied]) -> Result<(), Error> {
        crate::up::wait_ready(&ctx.reporter, &self.config, self.node()?, applied).await
    }

    async fn urls(&self, ctx: &Context, checked_since: Option<Instant>) -> Result<Vec<Url>, Error> {
        let node = self.node()?;
        match checked_since {
            Some(since) => {
                crate::up::wait_answering(&ctx.reporter, &self.config, node, since).await
            }
            None => crate::urls::collect(
                &node.client,
                self.config.environment.as_deref(),
                Some(&crate::up::domain(&self.config)),
                node.ports.https,
                true,
                &crate::forward::table(&self.config.name),
            )
            .await
            .map_err(Error::kube(crate::urls::COLLECT_ACTION)),
        }
    }

    async fn access(&self) -> Result<Access, Error> {
        let node = self.node()?;
        Ok(Access {
            kubeconfig: node.kubeconfig.clone(),
            context: crate::plan::Names::of(&self.config.name).context,
            server: format!("https://127.0.0.1:{}", node.ports.api),
        })
    }

    fn client(&self) -> Result<kube::Client, Error> {
        Ok(self.node()?.client.clone())
    }

    async fn remove(&self, ctx: &Context) -> Result<bool, Error> {
        match &self.config.environment {
            // an environment: its namespace, the node stays
            Some(env) => {
                crate::warm::forget(&crate::warm::key(&self.config));
                let client = match &self.node {
                    Some(node) => node.client.clone(),
                    None => {
                        node::ensure_running(&self.engine, &self.config.name)
                            .await?
                            .client
                    }
                };
                super::down::delete_environment(ctx, &client, &self.config, env).await
            }
            None => {
                crate::warm::forget_all(&self.config.name);
                let removed = node::remove(&self.engine, &self.config.name, false).await?;
                Ok(!removed.containers.is_empty())
            }
        }
    }
}

/// The images `apply` delivers: the latest builds of the configured ones, built by nothing.
pub async fn latest_builds(config: &SandboxConfig) -> Result<Vec<BuiltImage>, Error> {
    if config.images.is_empty() {
        return Ok(Vec::new());
    }
    let engine = Engine::connect().await?;
    Ok(images::latest_builds(&engine, &config.images).await?)
}

/// The images `up` delivers: the configured ones, built (a content-tagged build that exists
/// is reused).
pub async fn build_all(ctx: &Context, config: &SandboxConfig) -> Result<Vec<BuiltImage>, Error> {
    if config.images.is_empty() {
        return Ok(Vec::new());
    }
    let engine = Engine::connect().await?;
    Ok(images::build_all(&engine, &config.images, &config.base_dir, &ctx.reporter).await?)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A target that records its calls and fails on demand.

    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records calls; `fail` names the call that fails (with exit 5 for `deliver`, 6 for
    /// `apply`, 7 for `wait`, 2 otherwise).
    #[derive(Default)]
    pub struct Fake {
        pub calls: Arc<Mutex<Vec<String>>>,
        pub fail: Option<&'static str>,
        pub created: bool,
        pub unchanged: bool,
    }

    impl Fake {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn call(&self, name: &str) -> Result<(), Error> {
            self.calls.lock().unwrap().push(name.to_string());
            if self.fail == Some(name) {
                return Err(match name {
                    "deliver" => Error::from(crate::registry::RegistryError::PushRefused {
                        reference: "registry.test/web:sandbox-0123456789ab".into(),
                        registry: "registry.test".into(),
                        message: "denied".into(),
                    }),
                    "wait" => Error::from(crate::wait::WaitError::NotReady {
                        summary: "not ready".into(),
                        details: String::new(),
                    }),
                    _ => Error::Usage(format!("{name} failed")),
                });
            }
            Ok(())
        }
    }

    fn doc() -> Document {
        manifests::parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: web, image: web}\n",
            std::path::Path::new("k8s/web.yaml"),
        )
        .unwrap()
        .remove(0)
    }

    #[async_trait(?Send)]
    impl Target for Fake {
        fn describe(&self) -> String {
            "the fake".into()
        }
        async fn ensure(&mut self, _: &Context, create: bool) -> Result<bool, Error> {
            self.call(if create { "create" } else { "ensure" })?;
            Ok(create && self.created)
        }
        async fn lock(&self, _: &Context) -> Result<Lock, Error> {
            self.call("lock")?;
            Ok(Lock::Recorded(self.calls.clone()))
        }
        async fn documents(&self, _: &Context) -> Result<Vec<Document>, Error> {
            self.call("documents")?;
            Ok(vec![doc()])
        }
        async fn deliver(
            &self,
            _: &Context,
            built: Vec<BuiltImage>,
        ) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
            self.call("deliver")?;
            let delivered: Vec<BuiltImage> = built
                .into_iter()
                .map(|b| BuiltImage {
                    reference: format!("registry.test/{}", b.reference),
                    ..b
                })
                .collect();
            let refs = delivered.iter().map(|b| b.reference.clone()).collect();
            Ok((delivered, refs))
        }
        fn pull_policy(&self) -> &'static str {
            "IfNotPresent"
        }
        async fn apply(
            &self,
            _: &Context,
            docs: &[Document],
        ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
            self.call("apply")?;
            let image = docs[0].object["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.calls.lock().unwrap().push(format!("applied {image}"));
            Ok((Vec::new(), Vec::new()))
        }
        async fn wait(&self, _: &Context, _: &[Applied]) -> Result<(), Error> {
            self.call("wait")
        }
        async fn urls(&self, _: &Context, since: Option<Instant>) -> Result<Vec<Url>, Error> {
            self.call(if since.is_some() {
                "urls checked"
            } else {
                "urls"
            })?;
            Ok(Vec::new())
        }
        async fn access(&self) -> Result<Access, Error> {
            self.call("access")?;
            Ok(Access {
                kubeconfig: serde_yaml::Value::Null,
                context: "fake".into(),
                server: "https://fake".into(),
            })
        }
        fn client(&self) -> Result<kube::Client, Error> {
            Err(Error::Usage("the fake has no API server".into()))
        }
        async fn remove(&self, _: &Context) -> Result<bool, Error> {
            self.call("remove")?;
            Ok(true)
        }
        async fn unchanged(
            &self,
            _: &[Document],
        ) -> Result<(Vec<BuiltImage>, Vec<Applied>), Stale> {
            self.calls.lock().unwrap().push("unchanged?".into());
            if self.unchanged {
                Ok((Vec::new(), Vec::new()))
            } else {
                Err(Stale::NoRecord)
            }
        }
        async fn remember(&self, _: &[BuiltImage], _: &[Document], _: &[Applied]) {
            self.calls.lock().unwrap().push("remember".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;

    fn ctx() -> Context {
        Context::new(crate::cli::Global {
            name: None,
            file: None,
            profile: None,
            namespace: None,
            context: None,
            output: super::super::Output::Json,
            verbose: false,
            quiet: true,
        })
    }

    fn web() -> Vec<BuiltImage> {
        vec![BuiltImage {
            name: "web".into(),
            reference: "web:sandbox-0123456789ab".into(),
            id: "sha256:0123".into(),
            inputs: None,
        }]
    }

    async fn built(
        calls: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Result<Vec<BuiltImage>, Error> {
        calls.lock().unwrap().push("build".into());
        Ok(web())
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn apply_reaches_a_running_target_delivers_then_applies_the_delivered_names() {
        let mut fake = Fake::default();
        let calls = fake.calls.clone();
        assert!(run(apply(&mut fake, &ctx(), built(&calls))).is_ok());
        assert_eq!(
            fake.calls(),
            [
                "ensure",
                "lock",
                "documents",
                "unchanged?",
                "build",
                "deliver",
                "apply",
                "applied registry.test/web:sandbox-0123456789ab",
                "wait",
                "urls checked",
                "remember",
                "release"
            ]
        );
    }

    #[test]
    fn a_refused_delivery_applies_nothing_and_releases_the_lock() {
        let mut fake = Fake {
            fail: Some("deliver"),
            ..Default::default()
        };
        let calls = fake.calls.clone();
        let Err(err) = run(apply(&mut fake, &ctx(), built(&calls))) else {
            panic!("applied")
        };
        assert_eq!(err.exit_code(), crate::error::exit::IMAGE);
        let calls = fake.calls();
        assert!(!calls.iter().any(|c| c.starts_with("apply")), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("release"));
    }

    #[test]
    fn bad_documents_are_refused_before_anything_is_built() {
        let mut fake = Fake {
            fail: Some("documents"),
            created: true,
            ..Default::default()
        };
        let calls = fake.calls.clone();
        let Err(err) = run(up(&mut fake, &ctx(), built(&calls))) else {
            panic!("up")
        };
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        // the environment this run created is removed again
        assert_eq!(
            fake.calls(),
            ["create", "lock", "documents", "release", "remove"]
        );
    }

    #[test]
    fn a_new_target_is_kept_once_its_apply_began() {
        let mut fake = Fake {
            fail: Some("wait"),
            created: true,
            ..Default::default()
        };
        let calls = fake.calls.clone();
        assert!(run(up(&mut fake, &ctx(), built(&calls))).is_err());
        let calls = fake.calls();
        assert!(calls.contains(&"apply".to_string()), "{calls:?}");
        assert!(!calls.contains(&"remove".to_string()), "{calls:?}");
        assert!(!calls.contains(&"remember".to_string()), "{calls:?}");
    }

    #[test]
    fn a_failed_refused_push_to_an_existing_target_removes_nothing() {
        let mut fake = Fake {
            fail: Some("deliver"),
            created: false,
            ..Default::default()
        };
        let calls = fake.calls.clone();
        assert!(run(up(&mut fake, &ctx(), built(&calls))).is_err());
        assert!(!fake.calls().contains(&"remove".to_string()));
    }

    #[test]
    fn an_unchanged_target_builds_delivers_and_applies_nothing() {
        let mut fake = Fake {
            unchanged: true,
            ..Default::default()
        };
        let calls = fake.calls.clone();
        let Ok(done) = run(up(&mut fake, &ctx(), built(&calls))) else {
            panic!("up failed")
        };
        assert!(done.unchanged);
        assert_eq!(
            fake.calls(),
            [
                "create",
                "lock",
                "documents",
                "unchanged?",
                "wait",
                "urls checked",
                "release"
            ]
        );
    }
}
