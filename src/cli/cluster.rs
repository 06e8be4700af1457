//! Cluster mode (`cluster:` in sandbox.yaml, or `--context`): `up` and `down` of a
//! per-branch environment on an existing cluster reached through a kube context, instead of
//! a Docker node of sandbox's own. Nothing is created on Docker but the images, which are
//! pushed to the configured registry; the objects go into the environment's namespace,
//! which sandbox owns, under a Lease that serialises two runs of one environment on any
//! machines.
//!
//! Guardrails: the context must be named (in sandbox.yaml or on the command line; the
//! current context is taken only when it is one of sandbox's own, `sandbox-*`), the
//! environment must be given (`--namespace` or `namespace: auto`), and cluster-scoped
//! objects are refused unless `cluster.allowClusterScoped`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::target::{Access, Applying, Lock, Target};
use super::Context;
use crate::apply::{Applied, Applier, InventoryEntry};
use crate::config::{ClusterConfig, SandboxConfig};
use crate::docker::Engine;
use crate::error::Error;
use crate::images::{self, BuiltImage};
use crate::manifests::{self, Document};
use crate::urls::Url;
use crate::warm::Stale;

/// The Lease that serialises runs on one environment.
pub const LEASE: &str = "sandbox-lock";
/// How long a Lease holds without renewal (a run that died frees it after this).
const LEASE_SECONDS: i32 = 30;

/// The kube context cluster mode uses: the one named on the command line or in
/// sandbox.yaml; else the current one only when it is one of sandbox's own.
pub fn context(config: &ClusterConfig, current: Option<&str>) -> Result<String, Error> {
    if let Some(named) = &config.context {
        return Ok(named.clone());
    }
    match current {
        Some(c) if c.starts_with("sandbox-") => Ok(c.to_string()),
        Some(c) => Err(Error::Usage(format!(
            "cluster mode needs the kube context named: `cluster.context` in sandbox.yaml or \
             --context (sandbox never deploys to the current context, {c:?}, unless it is one \
             of its own)"
        ))),
        None => Err(Error::Usage(
            "cluster mode needs the kube context named: `cluster.context` in sandbox.yaml or \
             --context"
                .into(),
        )),
    }
}

/// A client for `context` of the user's kubeconfig (`KUBECONFIG`, else ~/.kube/config).
pub async fn connect(context: &str) -> Result<kube::Client, Error> {
    let path = crate::kubeconfig::user_kubeconfig_path();
    let kubeconfig = crate::kubeconfig::read(&path)?.unwrap_or_default();
    let known: Vec<&str> = kubeconfig["contexts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    if !known.contains(&context) {
        return Err(Error::Usage(format!(
            "kube context {context:?} is not in {} (contexts there: {})",
            path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    Ok(crate::node::client_for(&kubeconfig, context).await?)
}

fn current_context() -> Option<String> {
    let path = crate::kubeconfig::user_kubeconfig_path();
    let kubeconfig = crate::kubeconfig::read(&path).ok()??;
    kubeconfig["current-context"].as_str().map(str::to_string)
}

/// The environment's namespace: cluster mode deploys only into one.
fn environment(config: &SandboxConfig) -> Result<String, Error> {
    config.environment.clone().ok_or_else(|| {
        Error::Usage(
            "cluster mode deploys into a per-branch environment: give --namespace NAME or \
             `namespace: auto` in sandbox.yaml"
                .into(),
        )
    })
}

/// An environment on an existing cluster: the namespace `config.environment` of the
/// cluster behind `cluster.context`.
pub struct ClusterTarget {
    config: SandboxConfig,
    cluster: ClusterConfig,
    context: String,
    namespace: String,
    client: Option<kube::Client>,
    /// The documents as rendered by `ensure(create)`, before it touched the cluster.
    rendered: Option<Vec<Document>>,
    /// maildev's image when the environment runs one (`addons.maildev: true`), with the
    /// local build to push when the engine holds it.
    /// Found when first needed (it asks the Docker engine): `urls`, `logs` and `kubeconfig`
    /// of an environment need no engine.
    maildev: std::sync::OnceLock<(String, Option<BuiltImage>)>,
}

impl ClusterTarget {
    /// The environment of `config` (its context allowed, its namespace given), not reached
    /// yet.
    pub fn new(config: &SandboxConfig) -> Result<ClusterTarget, Error> {
        let cluster = config.cluster.clone().unwrap_or_default();
        let context = context(&cluster, current_context().as_deref())?;
        let namespace = environment(config)?;
        Ok(ClusterTarget {
            config: config.clone(),
            cluster,
            context,
            namespace,
            client: None,
            rendered: None,
            maildev: std::sync::OnceLock::new(),
        })
    }

    /// The kube context.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The environment's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The environment's hosts' domain: `<namespace>.<cluster.domain>`.
    fn domain(&self) -> String {
        format!(
            "{}.{}",
            self.namespace,
            self.cluster
                .domain
                .as_deref()
                .unwrap_or(crate::up::DEFAULT_DOMAIN)
        )
    }

    fn record_key(&self) -> String {
        record_key(&self.config, &self.context, &self.namespace)
    }

    fn connected(&self) -> Result<&kube::Client, Error> {
        self.client.as_ref().ok_or_else(|| Error::Unreached {
            context: self.context.clone(),
        })
    }

    /// maildev's image and its local build to push, when the environment runs maildev.
    async fn maildev(&self) -> Result<Option<&(String, Option<BuiltImage>)>, Error> {
        if !self.config.addons.maildev_asked {
            return Ok(None);
        }
        if self.maildev.get().is_none() {
            let found = maildev_image(&self.config).await?;
            let _ = self.maildev.set(found);
        }
        Ok(self.maildev.get())
    }

    /// The project's documents (and the add-ons it asks for), cluster-scoped ones refused
    /// unless allowed.
    async fn render(&self) -> Result<Vec<Document>, Error> {
        let client = self.connected()?;
        let maildev = self.maildev().await?.map(|(image, _)| image.as_str());
        let docs = documents(&self.config, &self.cluster, &self.domain(), maildev)?;
        let elsewhere = elsewhere(&docs, &self.namespace);
        if !elsewhere.is_empty() {
            return Err(Error::Usage(format!(
                "cluster mode applies only into the environment's namespace {}, and these \
                 objects name another:\n{}\n(remove their `metadata.namespace`, or set it to \
                 ${{SANDBOX_NAMESPACE}})",
                self.namespace,
                elsewhere.join("\n")
            )));
        }
        if self.cluster.tls_issuer.is_some() {
            let gvk = kube::core::GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
            if kube::discovery::pinned_kind(client, &gvk).await.is_err() {
                return Err(Error::Usage(format!(
                    "cluster.tls.issuer: context {} serves no cert-manager.io/v1 Certificate \
                     (is cert-manager installed?); use `cluster.tls.secret` instead, or no TLS",
                    self.context
                )));
            }
        }
        if !self.cluster.allow_cluster_scoped {
            let mut applier = Applier::new(client.clone(), &self.config.name, &self.namespace);
            let scoped = applier.cluster_scoped(&docs).await?;
            if !scoped.is_empty() {
                return Err(Error::Usage(format!(
                    "cluster mode applies only into the environment's namespace, and these \
                     objects are cluster-scoped:\n{}\n(set `cluster.allowClusterScoped: true` \
                     to apply them anyway)",
                    scoped
                        .iter()
                        .map(|d| format!("  {}", d.describe()))
                        .collect::<Vec<_>>()
                        .join("\n")
                )));
            }
        }
        Ok(docs)
    }
}

#[async_trait::async_trait(?Send)]
impl Target for ClusterTarget {
    fn describe(&self) -> String {
        format!(
            "environment {} of sandbox {} on context {}",
            self.namespace, self.config.name, self.context
        )
    }

    async fn ensure(&mut self, _ctx: &Context, create: bool) -> Result<bool, Error> {
        if self.client.is_none() {
            self.client = Some(connect(&self.context).await?);
        }
        let client = self.connected()?.clone();
        if !create {
            if !environment_exists(&client, &self.namespace, &self.config.name).await? {
                return Err(Error::Absent(format!(
                    "{} does not exist (`sandbox up --namespace {}` creates it)",
                    self.describe(),
                    self.namespace
                )));
            }
            return Ok(false);
        }
        if !self.config.images.is_empty() && self.cluster.registry.is_none() {
            return Err(no_registry());
        }
        // bad input is refused before the environment is made
        self.rendered = Some(self.render().await?);
        ensure_namespace(&client, &self.namespace, &self.config.name).await
    }

    async fn lock(&self, ctx: &Context) -> Result<Lock, Error> {
        Ok(Lock::Lease(Box::new(
            take_lease(ctx, self.connected()?, &self.namespace).await?,
        )))
    }

    async fn documents(&self, _ctx: &Context) -> Result<Vec<Document>, Error> {
        let client = self.connected()?;
        let mut docs = match &self.rendered {
            Some(docs) => docs.clone(),
            None => self.render().await?,
        };
        if let Some(secret) = &self.cluster.tls_secret {
            use_tls_secret(&mut docs, &secret.1);
            docs.extend(copy_tls_secret(client, secret, &self.namespace).await?);
        }
        if let Some(issuer) = &self.cluster.tls_issuer {
            docs.extend(certificate(&docs, &self.namespace, issuer)?);
            use_tls_secret(&mut docs, CERTIFICATE);
        }
        Ok(docs)
    }

    async fn deliver(
        &self,
        ctx: &Context,
        built: Vec<BuiltImage>,
    ) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
        let mut built = built;
        // maildev's local build goes the same way as the project's images
        built.extend(self.maildev().await?.and_then(|(_, local)| local.clone()));
        deliver(ctx, &self.cluster, built).await
    }

    fn pull_policy(&self) -> &'static str {
        "IfNotPresent"
    }

    async fn apply(
        &self,
        ctx: &Context,
        docs: &[Document],
    ) -> Result<(Vec<Applied>, Vec<InventoryEntry>), Error> {
        crate::warm::forget(&self.record_key());
        let mut applier = Applier::new(
            self.connected()?.clone(),
            &self.config.name,
            &self.namespace,
        );
        let message = format!("applying {} objects to {}", docs.len(), self.namespace);
        crate::up::apply_with(&ctx.reporter, &mut applier, docs, message).await
    }

    async fn wait(&self, ctx: &Context, applied: &[Applied]) -> Result<(), Error> {
        if applied.iter().any(|a| crate::wait::waits_on(&a.object)) {
            let step = ctx.reporter.step("waiting for workloads");
            crate::wait::wait_all(
                self.connected()?,
                applied,
                self.config.timeouts.ready,
                None,
                &step,
            )
            .await?;
            step.done("workloads ready");
        }
        Ok(())
    }

    async fn urls(&self, ctx: &Context, checked_since: Option<Instant>) -> Result<Vec<Url>, Error> {
        let client = self.connected()?;
        match checked_since {
            Some(since) => {
                answering(
                    ctx,
                    &self.config,
                    client,
                    &self.namespace,
                    &self.cluster,
                    since,
                )
                .await
            }
            None => crate::urls::collect(
                client,
                Some(&self.namespace),
                None,
                self.cluster.https_port,
                false,
                &[],
            )
            .await
            .map_err(Error::kube(crate::urls::COLLECT_ACTION)),
        }
    }

    async fn access(&self) -> Result<Access, Error> {
        let path = crate::kubeconfig::user_kubeconfig_path();
        let kubeconfig = crate::kubeconfig::read(&path)?.unwrap_or_default();
        let narrowed = crate::kubeconfig::narrow(&kubeconfig, &self.context, &self.namespace)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "kube context {:?} is not in {}",
                    self.context,
                    path.display()
                ))
            })?;
        Ok(Access {
            server: api_server(&narrowed, &self.context).unwrap_or_default(),
            kubeconfig: narrowed,
            context: self.context.clone(),
        })
    }

    fn client(&self) -> Result<kube::Client, Error> {
        self.connected().cloned()
    }

    async fn remove(&self, ctx: &Context) -> Result<bool, Error> {
        crate::warm::forget(&self.record_key());
        let client = match &self.client {
            Some(client) => client.clone(),
            None => connect(&self.context).await?,
        };
        super::down::delete_environment(ctx, &client, &self.config, &self.namespace).await
    }

    async fn unchanged(&self, docs: &[Document]) -> Result<(Vec<BuiltImage>, Vec<Applied>), Stale> {
        let client = self.connected()?;
        let addons: Vec<BuiltImage> = self
            .maildev()
            .await?
            .and_then(|(_, local)| local.clone())
            .into_iter()
            .collect();
        unchanged(
            &self.config,
            &self.cluster,
            client,
            (docs, &addons),
            &self.record_key(),
        )
        .await
    }

    async fn remember(&self, built: &[BuiltImage], docs: &[Document], applied: &[Applied]) {
        if let Ok(client) = self.connected() {
            save_record(
                client,
                &self.config,
                &self.record_key(),
                built,
                docs,
                applied,
                &self.namespace,
            )
            .await;
        }
    }
}

/// maildev's image for an environment: that of the profile named (else of the first
/// profile whose image the local engine holds, else of the default profile), with the local
/// image to push when the engine holds it (content-tagged).
async fn maildev_image(config: &SandboxConfig) -> Result<(String, Option<BuiltImage>), Error> {
    let names: Vec<&str> = match &config.profile {
        Some(named) => vec![named.as_str()],
        None => vec![crate::profile::PREFERRED, "offline"],
    };
    let mut references = Vec::new();
    for name in names {
        let profile = crate::profile::Profile::named(name)?;
        references.extend(profile.addons.get("maildev").cloned());
    }
    // without a registry to push to, the cluster pulls the profile's image itself
    let registry = config.cluster.as_ref().and_then(|c| c.registry.as_ref());
    if registry.is_some() {
        let engine = Engine::connect().await?;
        for reference in &references {
            if let Some(id) = engine.image_id(reference).await? {
                let (repository, _) = crate::docker::split_tag(reference);
                let local = BuiltImage {
                    name: repository.to_string(),
                    reference: format!("{repository}:{}", images::content_tag(&id)),
                    inputs: Some(id.clone()),
                    id,
                };
                return Ok((reference.clone(), Some(local)));
            }
        }
    }
    let first = references.into_iter().next().ok_or_else(|| {
        Error::Usage("the profile names no maildev image (`addons.maildev`)".into())
    })?;
    Ok((first, None))
}

/// Whether `namespace` exists as an environment of sandbox `sandbox` (labelled its).
async fn environment_exists(
    client: &kube::Client,
    namespace: &str,
    sandbox: &str,
) -> Result<bool, Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    Ok(api
        .get_opt(namespace)
        .await
        .map_err(Error::kube(format!("read namespace {namespace}")))?
        .is_some_and(|ns| {
            ns.metadata
                .labels
                .unwrap_or_default()
                .get(crate::labels::SANDBOX)
                == Some(&sandbox.to_string())
        }))
}

/// `up` in cluster mode.
pub async fn up(ctx: &Context, config: &SandboxConfig) -> Result<(), Error> {
    let started = Instant::now();
    crate::up::validate_manifests(config)?;
    let mut target = ClusterTarget::new(config)?;
    let done = super::target::up(&mut target, ctx, super::target::build_all(ctx, config)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (context, namespace) = (target.context(), target.namespace());
    let json = result_json(config, context, namespace, &done, seconds);
    let mut text = format!(
        "environment {namespace} of sandbox {} is up on context {context} ({seconds:.1}s)\n",
        config.name
    );
    let changed = done.applied.iter().filter(|a| a.changed).count();
    text.push_str(&format!(
        "  objects       {} applied, {changed} changed, {} pruned\n",
        done.applied.len(),
        done.pruned.len()
    ));
    if !done.built.is_empty() {
        text.push_str(&format!(
            "  images        {} built, {} pushed\n",
            done.built.len(),
            done.delivered.len()
        ));
    }
    text.push_str(&crate::urls::table(&done.urls, "URLs\n", "  "));
    ctx.print(&json, &text);
    Ok(())
}

/// The `ClusterUpResult` document: the images built with those pushed, the objects
/// applied with those pruned.
pub(crate) fn result_json(
    config: &SandboxConfig,
    context: &str,
    namespace: &str,
    done: &Applying,
    seconds: f64,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "ClusterUpResult",
        "sandbox": config.name,
        "config": config.source,
        "context": context,
        "namespace": namespace,
        "images": crate::up::images_json(&done.built, &done.delivered),
        "objects": crate::up::objects_json(&done.applied),
        "pruned": crate::up::pruned_json(&done.pruned),
        "urls": done.urls,
        "unchanged": done.unchanged,
        "elapsedSeconds": seconds,
    })
}

/// The key of an environment's record: its context (by digest: a context name may hold
/// any character), sandbox and namespace.
fn record_key(config: &SandboxConfig, context: &str, namespace: &str) -> String {
    let context = &crate::warm::digest(context.as_bytes())[..12];
    format!("cluster-{context}.{}.{namespace}", config.name)
}

/// The no-change `up` of an environment: `Ok` with the images as pushed and the objects to
/// wait for when the record of its last complete `up` still holds (the same image inputs
/// with their images in the engine and, on a loopback registry, in the registry; the same
/// documents; every object as it was left); `Err` says what differs.
async fn unchanged(
    config: &SandboxConfig,
    cluster: &ClusterConfig,
    client: &kube::Client,
    (docs, addons): (&[Document], &[BuiltImage]),
    key: &str,
) -> Result<(Vec<BuiltImage>, Vec<crate::apply::Applied>), Stale> {
    let record = crate::warm::read(key).ok_or(Stale::NoRecord)?;
    if record.images.len() != config.images.len() + addons.len() {
        return Err(Stale::ImagesConfigured);
    }
    let host = cluster
        .registry
        .as_deref()
        .and_then(|r| r.split('/').next())
        .unwrap_or_default();
    // the add-ons' images as pushed (after the project's, as recorded): the same local
    // image, still in the registry
    let pushed_addons = pushed_addons(addons, &record.images[config.images.len()..], host).await?;
    let mut built = if config.images.is_empty() {
        Vec::new()
    } else {
        pushed_project(config, &record.images, host).await?
    };
    built.extend(pushed_addons);
    let mut docs = docs.to_vec();
    super::target::rewrite(&mut docs, &built, "IfNotPresent");
    if crate::warm::documents_digest(&docs) != record.documents {
        return Err(Stale::Documents);
    }
    let observed = crate::warm::observe(client, &config.name, &record.objects).await?;
    let mut applied = Vec::new();
    for ((now, object), left) in observed.into_iter().zip(&record.objects) {
        if !left.state.unchanged(&now.state) {
            return Err(Stale::Changed { object: now.id() });
        }
        if now.role == crate::warm::Role::Project {
            applied.push(now.as_applied(object));
        }
    }
    Ok((built, applied))
}

/// The add-ons' images as pushed by the recorded `up` (`recorded`, in `addons`' order), when
/// each is still the same local image and still in the registry at `host`; `Err` says which
/// is not. Part of [`unchanged`].
async fn pushed_addons(
    addons: &[BuiltImage],
    recorded: &[crate::warm::ImageRecord],
    host: &str,
) -> Result<Vec<BuiltImage>, Stale> {
    let mut pushed_addons = Vec::new();
    for (image, recorded) in addons.iter().zip(recorded) {
        if recorded.name != image.name || recorded.id != image.id {
            return Err(Stale::AddonImage {
                image: image.name.clone(),
            });
        }
        if crate::registry::holds_at(host, &recorded.reference).await == Some(false) {
            return Err(Stale::NotInRegistry {
                reference: recorded.reference.clone(),
            });
        }
        pushed_addons.push(BuiltImage {
            reference: recorded.reference.clone(),
            ..image.clone()
        });
    }
    Ok(pushed_addons)
}

/// The project's images (`config.images`, at least one) as pushed by the recorded `up`
/// (`recorded`, in the same order), when each has the same inputs, is in the engine and is
/// still in the registry at `host`; `Err` says which is not. Part of [`unchanged`].
async fn pushed_project(
    config: &SandboxConfig,
    recorded: &[crate::warm::ImageRecord],
    host: &str,
) -> Result<Vec<BuiltImage>, Stale> {
    let mut built = Vec::new();
    let engine = Engine::connect().await?;
    for (image, recorded) in config.images.iter().zip(recorded) {
        let image = crate::up::still_built(&engine, config, image, recorded).await?;
        if crate::registry::holds_at(host, &image.reference).await == Some(false) {
            return Err(Stale::NotInRegistry {
                reference: image.reference,
            });
        }
        built.push(image);
    }
    Ok(built)
}

/// Keeps the record of this complete `up` (the states its objects were left in); a failure
/// only means the next `up` is a full one.
async fn save_record(
    client: &kube::Client,
    config: &SandboxConfig,
    key: &str,
    built: &[BuiltImage],
    docs: &[Document],
    applied: &[crate::apply::Applied],
    namespace: &str,
) {
    use crate::warm::{ObjectRecord, Role};
    let Some(images) = crate::warm::image_records(built) else {
        return;
    };
    let mut objects: Vec<ObjectRecord> = applied
        .iter()
        .map(|a| ObjectRecord::applied(a, Role::Project))
        .collect();
    objects.push(ObjectRecord::inventory(namespace));
    let Ok(observed) = crate::warm::observe(client, &config.name, &objects).await else {
        return;
    };
    let record = crate::warm::Record {
        format: crate::warm::format(),
        node: key.to_string(),
        kubeconfig: String::new(),
        images,
        documents: crate::warm::documents_digest(docs),
        // cluster mode has no add-ons
        addon_documents: String::new(),
        objects: observed.into_iter().map(|(o, _)| o).collect(),
    };
    let _ = crate::warm::write(key, &record);
}

/// The project's documents for an environment on `domain`: its Secrets and manifests,
/// with the cluster's IngressClass on Ingresses that name none.
fn documents(
    config: &SandboxConfig,
    cluster: &ClusterConfig,
    domain: &str,
    maildev: Option<&str>,
) -> Result<Vec<Document>, Error> {
    let builtins = manifests::Builtins {
        name: config.name.clone(),
        namespace: config.namespace.clone(),
        domain: domain.to_string(),
        ip: crate::up::DEFAULT_IP.to_string(),
        http_port: 80,
        https_port: cluster.https_port,
        smtp_host: match maildev {
            Some(_) => crate::addons::smtp_host_in(&config.namespace),
            None => crate::addons::SMTP_DNS_NAME.to_string(),
        },
        smtp_port: crate::addons::SMTP_PORT,
    };
    let mut docs = crate::up::secret_documents(config)?;
    let mut addons = Vec::new();
    if let Some(image) = maildev {
        addons = crate::addons::maildev_documents(&builtins, &config.namespace, image)?;
    }
    let addon_urls = crate::urls::planned(&addons, cluster.https_port, None, &config.namespace);
    docs.extend(crate::up::read_manifests(
        config,
        &builtins,
        None,
        &addon_urls,
    )?);
    docs.extend(addons);
    if let Some(class) = &cluster.ingress_class {
        for doc in docs.iter_mut().filter(|d| d.kind() == "Ingress") {
            let spec = &mut doc.object["spec"];
            if spec["ingressClassName"].is_null() {
                spec["ingressClassName"] = json!(class);
            }
        }
    }
    Ok(docs)
}

/// `sandbox build` in cluster mode: the built images pushed to `cluster.registry` (no
/// environment needed), as [`deliver`].
pub async fn push(
    ctx: &Context,
    config: &SandboxConfig,
    built: Vec<BuiltImage>,
) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
    let cluster = config.cluster.clone().unwrap_or_default();
    if !built.is_empty() && cluster.registry.is_none() {
        return Err(no_registry());
    }
    deliver(ctx, &cluster, built).await
}

/// Images configured, and no `cluster.registry` to push them to.
fn no_registry() -> Error {
    Error::Usage(
        "cluster mode pushes the built images to a registry the cluster pulls from: set \
         `cluster.registry` (HOST[:PORT][/PREFIX])"
            .into(),
    )
}

/// Pushes each built image to the cluster's registry as `REGISTRY/NAME:sandbox-<id>`
/// (skipped when it holds that tag); returns them as the manifests name them, and what was
/// pushed.
async fn deliver(
    ctx: &Context,
    cluster: &ClusterConfig,
    built: Vec<BuiltImage>,
) -> Result<(Vec<BuiltImage>, Vec<String>), Error> {
    let Some(registry) = &cluster.registry else {
        return Ok((built, Vec::new()));
    };
    if built.is_empty() {
        return Ok((built, Vec::new()));
    }
    let engine = Engine::connect().await?;
    let host = registry.split('/').next().unwrap_or(registry);
    let credentials = crate::credentials::for_host(&crate::credentials::config_path()?, host)
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(crate::registry::push_all_to(&engine, registry, credentials, &built, &ctx.reporter).await?)
}

/// The environment's namespace, created labelled as the sandbox's when absent (`true`:
/// this call created it). One that exists without the label is refused: it is someone
/// else's.
async fn ensure_namespace(
    client: &kube::Client,
    namespace: &str,
    sandbox: &str,
) -> Result<bool, Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let read = Error::kube(format!("read namespace {namespace}"));
    match api.get_opt(namespace).await.map_err(read)? {
        Some(ns) => {
            let owner = ns
                .metadata
                .labels
                .unwrap_or_default()
                .get(crate::labels::SANDBOX)
                .cloned();
            if owner.as_deref() != Some(sandbox) {
                return Err(Error::Usage(format!(
                    "namespace {namespace} exists and is not an environment of sandbox {sandbox} \
                     (its label {}: {}); choose another --namespace",
                    crate::labels::SANDBOX,
                    owner.as_deref().unwrap_or("absent")
                )));
            }
        }
        None => {
            let ns = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {crate::labels::SANDBOX: sandbox}},
            }))
            .expect("a Namespace");
            return match api.create(&PostParams::default(), &ns).await {
                Ok(_) => Ok(true),
                // made meanwhile by another run of this environment: the Lease settles it
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(format!("create namespace {namespace}"))(e)),
            };
        }
    }
    Ok(false)
}

/// A held Lease, renewed in the background until released.
pub struct Held {
    api: Api<Lease>,
    holder: String,
    renewing: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Stops renewing and deletes the Lease when this run still holds it.
    pub async fn release(self) {
        self.renewing.abort();
        if let Ok(Some(lease)) = self.api.get_opt(LEASE).await {
            if lease.spec.and_then(|s| s.holder_identity).as_deref() == Some(&self.holder) {
                let _ = self.api.delete(LEASE, &Default::default()).await;
            }
        }
    }
}

/// Who holds a Lease: this host and process.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}/{}", std::process::id())
}

/// Whether `lease` is free for `me`: absent holder, mine, or not renewed in time.
fn free_for(lease: &Lease, me: &str, now: k8s_openapi::jiff::Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let Some(holder) = spec.holder_identity.as_deref() else {
        return true;
    };
    if holder == me {
        return true;
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    spec.renew_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).as_secs() > seconds)
}

fn lease_body(me: &str, resource_version: Option<String>) -> Lease {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(LEASE.into()),
            resource_version,
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

/// Takes the environment's Lease, waiting (and saying so) while another run holds it.
async fn take_lease(ctx: &Context, client: &kube::Client, namespace: &str) -> Result<Held, Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let me = holder();
    let mut said = false;
    loop {
        let read = Error::kube(format!("read Lease {namespace}/{LEASE}"));
        let taken = match api.get_opt(LEASE).await.map_err(read)? {
            None => {
                api.create(&PostParams::default(), &lease_body(&me, None))
                    .await
            }
            Some(lease) if free_for(&lease, &me, k8s_openapi::jiff::Timestamp::now()) => {
                let version = lease.metadata.resource_version.clone();
                api.replace(LEASE, &PostParams::default(), &lease_body(&me, version))
                    .await
            }
            Some(lease) => {
                if !said {
                    said = true;
                    ctx.reporter.info(format!(
                        "another run holds environment {namespace} ({}); waiting for it",
                        lease
                            .spec
                            .and_then(|s| s.holder_identity)
                            .unwrap_or_default()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match taken {
            Ok(_) => break,
            // another run got there first: look again
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(Error::kube(format!("take Lease {namespace}/{LEASE}"))(e)),
        }
    }
    let renewing = {
        let api = api.clone();
        let me = me.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 / 3)).await;
                if let Ok(Some(lease)) = api.get_opt(LEASE).await {
                    let version = lease.metadata.resource_version.clone();
                    let _ = api
                        .replace(LEASE, &PostParams::default(), &lease_body(&me, version))
                        .await;
                }
            }
        })
    };
    Ok(Held {
        api,
        holder: me,
        renewing,
    })
}

/// Points every Ingress of `docs` without a TLS section at Secret `name`, for all its hosts
/// (pure).
pub fn use_tls_secret(docs: &mut [Document], name: &str) {
    for doc in docs.iter_mut().filter(|d| d.kind() == "Ingress") {
        let spec = &mut doc.object["spec"];
        if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
            continue;
        }
        let mut hosts: Vec<serde_json::Value> = Vec::new();
        for rule in spec["rules"].as_array().into_iter().flatten() {
            if let Some(host) = rule["host"].as_str() {
                if !hosts.iter().any(|h| h == host) {
                    hosts.push(json!(host));
                }
            }
        }
        if !hosts.is_empty() {
            spec["tls"] = json!([{"hosts": hosts, "secretName": name}]);
        }
    }
}

/// The documents of `docs` that name a namespace other than `namespace`, described with
/// the namespace they name (pure).
pub fn elsewhere(docs: &[Document], namespace: &str) -> Vec<String> {
    docs.iter()
        .filter_map(|d| {
            let named = d.namespace().filter(|n| *n != namespace)?;
            Some(format!("  {}: metadata.namespace {named}", d.describe()))
        })
        .collect()
}

/// The name of an environment's Certificate (`cluster.tls.issuer`) and of its Secret.
pub const CERTIFICATE: &str = "sandbox-tls";

/// The cert-manager Certificate of an environment: from ClusterIssuer `issuer`, for the
/// hosts of every Ingress of `docs` without a TLS section, into Secret [`CERTIFICATE`]
/// (pure; none when there is no such host).
pub fn certificate(
    docs: &[Document],
    namespace: &str,
    issuer: &str,
) -> Result<Vec<Document>, Error> {
    let mut hosts: Vec<&str> = Vec::new();
    for doc in docs.iter().filter(|d| d.kind() == "Ingress") {
        let spec = &doc.object["spec"];
        if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
            continue;
        }
        for rule in spec["rules"].as_array().into_iter().flatten() {
            if let Some(host) = rule["host"].as_str() {
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        }
    }
    if hosts.is_empty() {
        return Ok(Vec::new());
    }
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": CERTIFICATE, "namespace": namespace},
        "spec": {
            "secretName": CERTIFICATE,
            "dnsNames": hosts,
            "issuerRef": {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": issuer},
        },
    });
    let text = serde_yaml::to_string(&certificate).expect("a Certificate serialises");
    Ok(manifests::parse(
        &text,
        std::path::Path::new(&format!("(cluster.tls.issuer {issuer})")),
    )?)
}

/// Copies the TLS Secret `secret` (`(namespace, name)`) into the environment.
async fn copy_tls_secret(
    client: &kube::Client,
    secret: &(String, String),
    namespace: &str,
) -> Result<Vec<Document>, Error> {
    let (from, name) = secret;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), from);
    let found = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("read Secret {from}/{name}")))?
        .ok_or_else(|| {
            Error::Usage(format!(
                "cluster.tls.secret: Secret {from}/{name} does not exist on the cluster"
            ))
        })?;
    let copy = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": found.type_.unwrap_or_else(|| "kubernetes.io/tls".into()),
        "data": found.data,
    });
    let text = serde_yaml::to_string(&copy).expect("a Secret serialises");
    Ok(manifests::parse(
        &text,
        std::path::Path::new(&format!("(cluster.tls.secret {from}/{name})")),
    )?)
}

/// The environment's URLs, once each answers through the cluster's ingress (hosts resolved
/// as nip.io-style names, else through DNS), within what is left of the ready timeout.
async fn answering(
    ctx: &Context,
    config: &SandboxConfig,
    client: &kube::Client,
    namespace: &str,
    cluster: &ClusterConfig,
    ready_since: Instant,
) -> Result<Vec<Url>, Error> {
    let urls = crate::urls::collect(
        client,
        Some(namespace),
        None,
        cluster.https_port,
        false,
        &[],
    )
    .await
    .map_err(Error::kube(crate::urls::COLLECT_ACTION))?;
    let mut addresses = std::collections::BTreeMap::new();
    for u in urls.iter().filter(|u| u.kind == "Ingress") {
        let host = u
            .url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ':']).next())
            .unwrap_or_default()
            .to_string();
        if let Some(ip) = ingress_address(&host, cluster.https_port).await {
            addresses.insert(host, ip);
        } else {
            ctx.reporter
                .warn(format!("{host} does not resolve: its URL is not checked"));
        }
    }
    let checks = crate::routes::plan_at(&urls, cluster.https_port, &|h| addresses.get(h).copied())
        .into_iter()
        .filter(|(u, _)| u.kind == "Ingress")
        .collect::<Vec<_>>();
    crate::up::check_routes(&ctx.reporter, config, &checks, ready_since).await?;
    Ok(urls)
}

/// Where `host` reaches the cluster's ingress: the address a nip.io-style name embeds,
/// else what DNS says.
async fn ingress_address(host: &str, port: u16) -> Option<IpAddr> {
    if let crate::dns::Answer::Address(ip) =
        crate::dns::resolve(host, crate::dns::Family::V4, &crate::dns::Zones::new())
    {
        return Some(ip);
    }
    tokio::net::lookup_host((host, port))
        .await
        .ok()?
        .next()
        .map(|a| a.ip())
}

/// `status` in cluster mode: the context's API server, and each environment of the sandbox
/// there (every one, or the one named) with its workloads and who holds its Lease.
pub async fn status(ctx: &Context, config: &SandboxConfig) -> Result<(), Error> {
    let cluster = config.cluster.clone().unwrap_or_default();
    let context = context(&cluster, current_context().as_deref())?;
    let client = connect(&context).await?;
    let kubeconfig =
        crate::kubeconfig::read(&crate::kubeconfig::user_kubeconfig_path())?.unwrap_or_default();
    let server = api_server(&kubeconfig, &context).unwrap_or_default();
    let api = match crate::node::api_ready(&client).await {
        Ok(()) => "ready",
        Err(_) => "not-ready",
    };
    let environments = if api == "ready" {
        environment_health(&client, config).await
    } else {
        Vec::new()
    };
    let missing = config
        .environment
        .as_ref()
        .filter(|_| api == "ready" && environments.is_empty());
    let text = status_text(config, &context, &server, api, &environments);
    let json = status_json(config, &context, &server, api, &environments);
    if missing.is_none() || ctx.global.output == super::Output::Text {
        ctx.print(&json, &text);
    }
    match missing {
        Some(namespace) => Err(Error::Absent(format!(
            "environment {namespace} of sandbox {} does not exist on context {context}",
            config.name
        ))),
        None => Ok(()),
    }
}

/// One environment of `ClusterStatusResult`: its namespace, workloads and Lease holder.
type EnvironmentHealth = (String, Vec<(String, String)>, Option<String>);

/// Each environment of the sandbox on the cluster `client` reaches (every one, or the one
/// `config` names) with its workloads' health and the holder of its Lease, if a run holds
/// it. Part of [`status`], when the API is ready.
async fn environment_health(
    client: &kube::Client,
    config: &SandboxConfig,
) -> Vec<EnvironmentHealth> {
    let mut environments = Vec::new();
    // the add-ons' namespace of a laptop sandbox of the same name is no environment
    for namespace in super::status::environments(client, &config.name).await {
        if config
            .environment
            .as_ref()
            .is_some_and(|only| only != &namespace)
        {
            continue;
        }
        let workloads = super::status::workload_health(client, &namespace).await;
        let lease: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let locked_by = match lease.get_opt(LEASE).await {
            Ok(Some(l)) if !free_for(&l, "", k8s_openapi::jiff::Timestamp::now()) => {
                l.spec.and_then(|s| s.holder_identity)
            }
            _ => None,
        };
        environments.push((namespace, workloads, locked_by));
    }
    environments
}

/// The text of cluster-mode `status`: the API server's line, then a line per environment
/// with its workloads' states (ready or not) and who holds its Lease.
fn status_text(
    config: &SandboxConfig,
    context: &str,
    server: &str,
    api: &str,
    environments: &[EnvironmentHealth],
) -> String {
    let mut text = format!(
        "sandbox {} on context {context} ({server}): API {api}\n",
        config.name
    );
    if environments.is_empty() {
        text.push_str("  no environments (`sandbox up --namespace NAME` makes one)\n");
    }
    for (namespace, workloads, locked_by) in environments {
        let states: Vec<String> = workloads
            .iter()
            .map(|(name, state)| {
                format!(
                    "{name}:{}",
                    if state == "ready" {
                        "ready"
                    } else {
                        "not ready"
                    }
                )
            })
            .collect();
        text.push_str(&format!(
            "  {namespace:<24} {}{}\n",
            if states.is_empty() {
                "no workloads".to_string()
            } else {
                states.join(",")
            },
            locked_by
                .as_ref()
                .map(|h| format!("  (a run of {h} holds it)"))
                .unwrap_or_default()
        ));
    }
    text
}

/// The `ClusterStatusResult` document.
pub(crate) fn status_json(
    config: &SandboxConfig,
    context: &str,
    server: &str,
    api: &str,
    environments: &[EnvironmentHealth],
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "ClusterStatusResult",
        "sandbox": config.name,
        "context": context,
        "apiServer": server,
        "api": api,
        "environments": environments.iter().map(|(namespace, workloads, locked_by)| json!({
            "namespace": namespace,
            "workloads": workloads.iter().map(|(name, state)| json!({"name": name, "state": state})).collect::<Vec<_>>(),
            "lockedBy": locked_by,
        })).collect::<Vec<_>>(),
    })
}

/// The API server of `context` in `kubeconfig`.
fn api_server(kubeconfig: &serde_yaml::Value, context: &str) -> Option<String> {
    let cluster = kubeconfig["contexts"]
        .as_sequence()?
        .iter()
        .find(|c| c["name"] == context)?["context"]["cluster"]
        .as_str()?
        .to_string();
    kubeconfig["clusters"]
        .as_sequence()?
        .iter()
        .find(|c| c["name"] == cluster.as_str())?["cluster"]["server"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_named_never_taken_silently() {
        let named = ClusterConfig {
            context: Some("team-shared".into()),
            ..Default::default()
        };
        assert_eq!(context(&named, Some("prod")).unwrap(), "team-shared");
        let unnamed = ClusterConfig::default();
        assert_eq!(
            context(&unnamed, Some("sandbox-shared")).unwrap(),
            "sandbox-shared"
        );
        let err = context(&unnamed, Some("prod")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(err.to_string().contains("\"prod\""), "{err}");
        assert!(context(&unnamed, None).is_err());
    }

    #[test]
    fn ingresses_without_tls_use_the_wildcard_secret() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\n\
                    spec:\n  rules:\n  - host: a.pr-1.dev.example.com\n  - host: b.pr-1.dev.example.com\n  - host: a.pr-1.dev.example.com\n\
                    ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: own}\n\
                    spec:\n  tls: [{hosts: [own.example.com], secretName: own-tls}]\n  rules:\n  - host: own.example.com\n";
        let mut docs = manifests::parse(text, std::path::Path::new("k8s/ingress.yaml")).unwrap();
        use_tls_secret(&mut docs, "wildcard-dev");
        assert_eq!(
            docs[0].object["spec"]["tls"],
            json!([{"hosts": ["a.pr-1.dev.example.com", "b.pr-1.dev.example.com"], "secretName": "wildcard-dev"}])
        );
        assert_eq!(docs[1].object["spec"]["tls"][0]["secretName"], "own-tls");
    }

    #[test]
    fn a_lease_is_free_when_absent_mine_or_not_renewed() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let held = |holder: &str, renewed: &str| Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(30),
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    renewed.parse().unwrap(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(free_for(&Lease::default(), "me", now));
        assert!(free_for(&held("me", "2026-12-01T11:59:59Z"), "me", now));
        assert!(!free_for(
            &held("ci-2/77", "2026-12-01T11:59:50Z"),
            "me",
            now
        ));
        assert!(free_for(
            &held("ci-2/77", "2026-12-01T11:58:00Z"),
            "me",
            now
        ));
    }

    #[test]
    fn an_issuer_gives_one_certificate_for_the_hosts_without_tls() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\n\
                    spec:\n  rules:\n  - host: a.pr-1.dev.example.com\n  - host: b.pr-1.dev.example.com\n\
                    ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: own}\n\
                    spec:\n  tls: [{hosts: [own.example.com], secretName: own-tls}]\n  rules:\n  - host: own.example.com\n";
        let mut docs = manifests::parse(text, std::path::Path::new("k8s/ingress.yaml")).unwrap();
        let issued = certificate(&docs, "pr-1", "team-ca").unwrap();
        assert_eq!(issued.len(), 1);
        let spec = &issued[0].object["spec"];
        assert_eq!(
            spec["dnsNames"],
            json!(["a.pr-1.dev.example.com", "b.pr-1.dev.example.com"])
        );
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["issuerRef"]["name"], "team-ca");
        assert_eq!(issued[0].object["metadata"]["namespace"], "pr-1");
        assert!(crate::wait::waits_on(&issued[0].object));
        use_tls_secret(&mut docs, CERTIFICATE);
        assert_eq!(docs[0].object["spec"]["tls"][0]["secretName"], CERTIFICATE);
        assert!(certificate(&docs, "pr-1", "team-ca").unwrap().is_empty());
    }

    #[test]
    fn objects_naming_another_namespace_are_found_with_their_file_and_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: pr-1}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: monitoring}\n";
        let docs = manifests::parse(text, std::path::Path::new("k8s/all.yaml")).unwrap();
        let found = elsewhere(&docs, "pr-1");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("k8s/all.yaml")
                && found[0].contains("document 3")
                && found[0].contains("metadata.namespace monitoring"),
            "{found:?}"
        );
    }
}
