//! Server-side apply of the project's documents: ordering and ownership labels are pure;
//! the I/O is a thin layer of discovery, dry run and apply over kube's dynamic API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::Value;

use crate::labels;
use crate::manifests::Document;

/// The one field manager sandbox applies with.
pub const FIELD_MANAGER: &str = "sandbox";
/// Name of the ConfigMap (in the sandbox's namespace) listing what the last `up` applied,
/// so that objects removed from the manifests can be pruned.
pub const INVENTORY: &str = "sandbox-inventory";
/// How many objects are applied at once.
const PARALLEL: usize = 16;

/// Errors applying manifests.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server does not serve the kind in the document's group and version, and no
    /// CRD in the manifests defines it.
    #[error("{document}: {}", not_served(.kind, .api_version, .served, .server))]
    UnknownKind {
        /// Where the document is.
        document: String,
        /// Kind.
        kind: String,
        /// apiVersion.
        api_version: String,
        /// The group/versions in which the server does serve this kind (from discovery).
        served: Vec<String>,
        /// The server's version (`v1.20.2`), when it says it.
        server: Option<String>,
    },
    /// Discovery failed for another reason.
    #[error("{document}: cannot look up {kind} in {api_version}")]
    Discovery {
        /// Where the document is.
        document: String,
        /// Kind.
        kind: String,
        /// apiVersion.
        api_version: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The API server rejected an object (in the dry run or the real apply).
    #[error("{document}: {phase} rejected by the API server: {message}")]
    Rejected {
        /// Where the document is.
        document: String,
        /// `dry run` or `apply`.
        phase: &'static str,
        /// The server's message.
        message: String,
    },
    /// A document could not be turned into an object.
    #[error("{document}: {message}")]
    Invalid {
        /// Where the document is.
        document: String,
        /// What is wrong.
        message: String,
    },
    /// A bare Pod's ServiceAccount (or its token) did not appear.
    #[error("{document}: ServiceAccount {account}{} did not appear within {seconds} s: the API server admits the Pod only once it does", if *.token { " (with its token)" } else { "" })]
    Account {
        /// Where the Pod is.
        document: String,
        /// `namespace/name`.
        account: String,
        /// Whether its token was waited for.
        token: bool,
        /// Deadline.
        seconds: u64,
    },
    /// A CRD did not become Established.
    #[error("CustomResourceDefinition {name} was not Established within {seconds} s")]
    CrdTimeout {
        /// CRD name.
        name: String,
        /// Deadline.
        seconds: u64,
    },
}

/// The message of [`ApplyError::UnknownKind`].
fn not_served(kind: &str, api_version: &str, served: &[String], server: &Option<String>) -> String {
    let cluster = match server {
        Some(v) => format!("the cluster (Kubernetes {v})"),
        None => "the cluster".to_string(),
    };
    match served {
        [] => format!(
            "{cluster} has no kind {kind} in {api_version}, nor in any other version \
             (a custom resource needs its CustomResourceDefinition, in these manifests or installed)"
        ),
        [one] => format!(
            "{cluster} does not serve {kind} in {api_version}; it serves {kind} in {one}: \
             write `apiVersion: {one}`"
        ),
        many => format!(
            "{cluster} does not serve {kind} in {api_version}; it serves {kind} in {}",
            many.join(", ")
        ),
    }
}

/// The group/versions in which `discovery` serves `kind`, preferred versions first.
fn serving(discovery: &kube::Discovery, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for group in discovery.groups() {
        let preferred = group.preferred_version_or_latest().to_string();
        let versions: Vec<&str> = std::iter::once(preferred.as_str())
            .chain(group.versions().filter(|v| *v != preferred))
            .collect();
        for version in versions {
            for (resource, _) in group.versioned_resources(version) {
                if resource.kind == kind && !out.contains(&resource.api_version) {
                    out.push(resource.api_version);
                }
            }
        }
    }
    out
}

/// An object as applied: enough to wait for it and to report it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Where it came from.
    pub document: String,
    /// Its API resource.
    pub resource: ApiResource,
    /// Namespace (`None` for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The object the server returned.
    pub object: Value,
    /// Whether the apply changed the object (resourceVersion moved).
    pub changed: bool,
}

impl Applied {
    /// `Kind name` or `Kind namespace/name` (see [`object_id`]).
    pub fn id(&self) -> String {
        object_id(&self.resource.kind, self.namespace.as_deref(), &self.name)
    }
}

/// How an object is named to the user: `Kind name`, or `Kind namespace/name`.
pub fn object_id(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// One object recorded in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    /// apiVersion.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl InventoryEntry {
    /// The entry of an applied object.
    pub fn of(a: &Applied) -> InventoryEntry {
        InventoryEntry {
            api_version: a.resource.api_version.clone(),
            kind: a.resource.kind.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
        }
    }

    /// `Kind namespace/name`.
    pub fn id(&self) -> String {
        object_id(&self.kind, self.namespace.as_deref(), &self.name)
    }
}

/// Entries of `previous` that `current` no longer has (same group, kind, namespace and
/// name; the version may differ), in reverse order of application.
pub fn stale(previous: &[InventoryEntry], current: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let group = |e: &InventoryEntry| {
        e.api_version
            .split_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default()
    };
    previous
        .iter()
        .rev()
        .filter(|p| {
            !current.iter().any(|c| {
                group(c) == group(p)
                    && c.kind == p.kind
                    && c.namespace == p.namespace
                    && c.name == p.name
            })
        })
        .cloned()
        .collect()
}

/// Apply phase of a kind: namespaces and CRDs before everything that may live in them.
pub fn phase(kind: &str) -> u8 {
    match kind {
        "Namespace" | "CustomResourceDefinition" => 0,
        _ => 1,
    }
}

/// Install order of kinds (Helm's, which operators know): configuration and storage,
/// then RBAC, Services, workloads, Jobs, Ingresses. Unknown kinds (custom resources) last.
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// Kinds whose objects make pods as soon as they exist.
const POD_MAKERS: &[&str] = &[
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "Job",
];

/// Whether objects of `kind` make pods as soon as they exist.
pub fn makes_pods(kind: &str) -> bool {
    POD_MAKERS.contains(&kind)
}

/// The wave a kind is applied in (see [`KIND_ORDER`]).
pub fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// Prepares an object for apply: ownership label and default namespace (when namespaced).
pub fn prepare(object: &Value, sandbox: &str, namespace: Option<&str>) -> Value {
    let mut object = object.clone();
    let metadata = object["metadata"]
        .as_object_mut()
        .expect("documents are validated to have metadata");
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(
            labels::SANDBOX.to_string(),
            Value::String(sandbox.to_string()),
        );
    }
    match namespace {
        Some(ns) => {
            metadata
                .entry("namespace")
                .or_insert_with(|| Value::String(ns.to_string()));
        }
        None => {
            metadata.remove("namespace");
        }
    }
    object
}

fn gvk_of(doc: &Document) -> GroupVersionKind {
    let (group, version) = match doc.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", doc.api_version()),
    };
    GroupVersionKind::gvk(group, version, doc.kind())
}

/// The ServiceAccount a bare Pod runs as: `(namespace, name, mounts its token)`.
fn pod_account(doc: &Document, default_namespace: &str) -> Option<(String, String, bool)> {
    if doc.kind() != "Pod" {
        return None;
    }
    let spec = &doc.object["spec"];
    let name = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .unwrap_or("default");
    Some((
        doc.namespace().unwrap_or(default_namespace).to_string(),
        name.to_string(),
        spec["automountServiceAccountToken"] != false,
    ))
}

/// The ServiceAccounts the documents define, as `(namespace, name)`.
fn accounts_defined(docs: &[Document], default_namespace: &str) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| d.kind() == "ServiceAccount")
        .map(|d| {
            (
                d.namespace().unwrap_or(default_namespace).to_string(),
                d.name().to_string(),
            )
        })
        .collect()
}

/// Kinds defined by CustomResourceDefinitions among the documents, as `(group, kind)`.
fn kinds_defined(docs: &[Document]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| d.kind() == "CustomResourceDefinition")
        .filter_map(|d| {
            let spec = &d.object["spec"];
            Some((
                spec["group"].as_str()?.to_string(),
                spec["names"]["kind"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Applies documents with server-side apply.
pub struct Applier {
    client: kube::Client,
    sandbox: String,
    default_namespace: String,
    resources: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
    /// resourceVersion of each object as the dry run saw it (None: it did not exist), to
    /// tell whether the real apply changed it without reading it again.
    seen: std::sync::Mutex<HashMap<String, Option<String>>>,
    /// When set, what makes pods waits until it says true (see [`Applier::hold_pods`]).
    pods_held: Option<tokio::sync::watch::Receiver<bool>>,
    /// Told once everything before what makes pods is in (see [`Applier::announce_pods`]).
    before_pods: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's `/version`, asked once by [`Applier::apply_all`] (`None`: it did not
    /// say).
    version: Option<k8s_openapi::apimachinery::pkg::version::Info>,
}

impl Applier {
    /// An applier for sandbox `sandbox`, putting namespaced objects without a namespace in
    /// `default_namespace`.
    pub fn new(client: kube::Client, sandbox: &str, default_namespace: &str) -> Applier {
        Applier {
            client,
            sandbox: sandbox.to_string(),
            default_namespace: default_namespace.to_string(),
            resources: HashMap::new(),
            seen: Default::default(),
            pods_held: None,
            before_pods: None,
            version: None,
        }
    }

    /// Holds back the objects that make pods until `node_takes_pods` says true (everything
    /// else is applied meanwhile): a pod created while the node is not Ready yet is refused
    /// by the scheduler, which tries it again only after a back-off and its next queue
    /// flush, seconds later. A dropped sender releases the hold.
    pub fn hold_pods(&mut self, node_takes_pods: tokio::sync::watch::Receiver<bool>) {
        self.pods_held = Some(node_takes_pods);
    }

    /// Sends on `applied` once every object of the waves before those that make pods is
    /// applied (at the end when none makes pods); dropped unsent when the apply fails
    /// before.
    pub fn announce_pods(&mut self, applied: tokio::sync::oneshot::Sender<()>) {
        self.before_pods = Some(applied);
    }

    /// Tells (once) that everything before what makes pods is in.
    fn announce(&mut self) {
        if let Some(announced) = self.before_pods.take() {
            let _ = announced.send(());
        }
    }

    async fn resolve(
        &mut self,
        doc: &Document,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, ApplyError> {
        let gvk = gvk_of(doc);
        if let Some(found) = self.resources.get(&gvk) {
            return Ok(Some(found.clone()));
        }
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok(found) => {
                self.resources.insert(gvk, found.clone());
                Ok(Some(found))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(ApplyError::Discovery {
                document: doc.describe(),
                kind: doc.kind().to_string(),
                api_version: doc.api_version().to_string(),
                source,
            }),
        }
    }

    /// The error for a document whose kind the server does not serve in its version, with
    /// the versions it does serve that kind in (a full discovery: only on this error path).
    async fn unknown_kind(&self, doc: &Document) -> ApplyError {
        let served = kube::Discovery::new(self.client.clone()).run().await;
        ApplyError::UnknownKind {
            document: doc.describe(),
            kind: doc.kind().to_string(),
            api_version: doc.api_version().to_string(),
            served: served.map(|d| serving(&d, doc.kind())).unwrap_or_default(),
            server: self.version.as_ref().map(|i| i.git_version.clone()),
        }
    }

    /// The server's version as sandbox reasons about it (see [`Applier::version`]).
    fn server(&self) -> Option<crate::normalize::Server> {
        let info = self.version.as_ref()?;
        crate::normalize::Server::parse(&info.major, &info.minor)
    }

    fn api(
        &self,
        resource: &ApiResource,
        caps: &ApiCapabilities,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        match (caps.scope == Scope::Namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, resource),
            _ => Api::all_with(self.client.clone(), resource),
        }
    }

    /// The documents whose objects are cluster-scoped, as the server serves their kinds
    /// (a kind it does not serve yet counts as cluster-scoped when its CRD is among
    /// `docs` and says so).
    pub async fn cluster_scoped<'d>(
        &mut self,
        docs: &'d [Document],
    ) -> Result<Vec<&'d Document>, ApplyError> {
        let mut out = Vec::new();
        for doc in docs {
            let scoped = match self.resolve(doc).await? {
                Some((_, caps)) => caps.scope != Scope::Namespaced,
                None => docs.iter().any(|crd| {
                    crd.kind() == "CustomResourceDefinition"
                        && crd.object["spec"]["names"]["kind"] == doc.kind()
                        && crd.object["spec"]["scope"] == "Cluster"
                }),
            };
            if scoped {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Applies every document: a dry run of everything the server can already judge, then
    /// namespaces and CRDs, then the rest (dry run first for what could not be judged
    /// before). Returns the applied objects in document order.
    pub async fn apply_all(&mut self, docs: &[Document]) -> Result<Vec<Applied>, ApplyError> {
        self.version = self.client.apiserver_version().await.ok();
        let crd_kinds = kinds_defined(docs);
        // namespaces this apply creates: those in the manifests and the sandbox's own
        let default_namespace = self.default_namespace.clone();
        let new_namespaces: Vec<&str> = docs
            .iter()
            .filter(|d| d.kind() == "Namespace")
            .map(Document::name)
            .chain([default_namespace.as_str()])
            .collect();
        let planned = self.plan(docs, &crd_kinds).await?;
        let existing_namespaces = self.existing_namespaces().await;
        let judgeable =
            |doc: &Document, resolved: &Option<(ApiResource, ApiCapabilities)>| -> bool {
                let Some((_, caps)) = resolved else {
                    return false;
                };
                if caps.scope != Scope::Namespaced {
                    return true;
                }
                let ns = doc.namespace().unwrap_or(&self.default_namespace);
                existing_namespaces.iter().any(|n| n == ns) || !new_namespaces.contains(&ns)
            };
        // a bare Pod is admitted only once its ServiceAccount exists (with its token, before
        // 1.24); one whose account these manifests create is judged in its own wave
        let accounts = accounts_defined(docs, &default_namespace);
        let deferred = |doc: &Document| {
            pod_account(doc, &default_namespace)
                .is_some_and(|(ns, name, _)| accounts.contains(&(ns, name)))
        };
        // 1. dry run of everything the server can judge now: a bad document means nothing is written
        let early: Vec<_> = planned
            .iter()
            .filter(|(d, r)| judgeable(d, r) && !deferred(d))
            .map(|(d, r)| (*d, r.clone().expect("judgeable implies resolved")))
            .collect();
        self.apply_set(&early, true).await?;
        // 2. namespaces and CRDs
        let mut applied = self.apply_first(&planned).await?;
        // 3. the rest: dry run of what could not be judged before, then apply
        let rest = self.resolve_rest(&planned).await?;
        let late: Vec<_> = rest
            .iter()
            .filter(|(d, _)| !early.iter().any(|(e, _)| std::ptr::eq(*e, *d)) && !deferred(d))
            .cloned()
            .collect();
        // the default account of a namespace this apply created comes a moment after it
        for (doc, _) in &late {
            self.wait_account(doc).await?;
        }
        self.apply_set(&late, true).await?;
        // in waves by kind, so that what pods use exists before them
        self.apply_waves(&rest, &deferred, &mut applied).await?;
        self.announce();
        Ok(applied)
    }

    /// Each document with the kind the server serves it as, in document order; `None` for a
    /// kind not served yet that a CRD among `docs` defines (`crd_kinds`: their groups and
    /// kinds). Fails on a kind neither served nor defined, before anything is written.
    async fn plan<'d>(
        &mut self,
        docs: &'d [Document],
        crd_kinds: &[(String, String)],
    ) -> Result<Vec<(&'d Document, Option<(ApiResource, ApiCapabilities)>)>, ApplyError> {
        let mut planned = Vec::new();
        for doc in docs {
            let resolved = self.resolve(doc).await?;
            if resolved.is_none() {
                let gvk = gvk_of(doc);
                if !crd_kinds.contains(&(gvk.group.clone(), gvk.kind.clone())) {
                    return Err(self.unknown_kind(doc).await);
                }
            }
            planned.push((doc, resolved));
        }
        Ok(planned)
    }

    /// Applies the namespaces and CRDs among `planned` (phase 0), waits until each CRD is
    /// established, and makes sure the sandbox's own namespace exists: what the rest is
    /// created in or as. Returns what it applied. The kinds known so far are forgotten once
    /// something was applied (a new CRD serves a new kind).
    async fn apply_first(
        &mut self,
        planned: &[(&Document, Option<(ApiResource, ApiCapabilities)>)],
    ) -> Result<Vec<Applied>, ApplyError> {
        let first: Vec<_> = planned
            .iter()
            .filter(|(d, _)| phase(d.kind()) == 0)
            .map(|(d, r)| {
                (
                    *d,
                    r.clone().expect("namespaces and CRDs are built-in kinds"),
                )
            })
            .collect();
        let applied = self.apply_set(&first, false).await?;
        for a in applied
            .iter()
            .filter(|a| a.resource.kind == "CustomResourceDefinition")
        {
            self.wait_established(&a.name, Duration::from_secs(60))
                .await?;
        }
        if !applied.is_empty() {
            self.resources.clear();
        }
        self.ensure_namespace(&self.default_namespace.clone())
            .await?;
        Ok(applied)
    }

    /// The documents of `planned` after phase 0, in document order, each with its kind as
    /// the server serves it now (asked again for a kind a CRD just defined). Fails on a kind
    /// still not served.
    async fn resolve_rest<'d>(
        &mut self,
        planned: &[(&'d Document, Option<(ApiResource, ApiCapabilities)>)],
    ) -> Result<Vec<(&'d Document, (ApiResource, ApiCapabilities))>, ApplyError> {
        let mut rest = Vec::new();
        for (doc, resolved) in planned {
            if phase(doc.kind()) == 0 {
                continue;
            }
            let resolved = match resolved {
                Some(r) => r.clone(),
                None => match self.resolve(doc).await? {
                    Some(r) => r,
                    None => return Err(self.unknown_kind(doc).await),
                },
            };
            rest.push((*doc, resolved));
        }
        Ok(rest)
    }

    /// Applies `rest` in waves by kind, so that what pods use exists before them (a
    /// Service's environment variables, a ConfigMap they mount, the PVC they claim), adding
    /// what it applied to `applied`. Before the first wave that makes pods, it announces
    /// what came before and waits for the hold on pods (see [`Applier::hold_pods`]); the
    /// `deferred` documents of a wave (bare Pods whose account these manifests create) are
    /// dry-run there, once their account is in.
    async fn apply_waves(
        &mut self,
        rest: &[(&Document, (ApiResource, ApiCapabilities))],
        deferred: &impl Fn(&Document) -> bool,
        applied: &mut Vec<Applied>,
    ) -> Result<(), ApplyError> {
        let mut ranks: Vec<usize> = rest.iter().map(|(d, _)| kind_rank(d.kind())).collect();
        ranks.sort_unstable();
        ranks.dedup();
        for rank in ranks {
            let wave: Vec<_> = rest
                .iter()
                .filter(|(d, _)| kind_rank(d.kind()) == rank)
                .cloned()
                .collect();
            if wave.iter().any(|(d, _)| makes_pods(d.kind())) {
                self.announce();
                if let Some(mut held) = self.pods_held.take() {
                    let _ = held.wait_for(|takes| *takes).await;
                }
            }
            let judged_now: Vec<_> = wave.iter().filter(|(d, _)| deferred(d)).cloned().collect();
            for (doc, _) in &judged_now {
                self.wait_account(doc).await?;
            }
            self.apply_set(&judged_now, true).await?;
            applied.extend(self.apply_set(&wave, false).await?);
        }
        Ok(())
    }

    /// For a bare Pod: waits until the ServiceAccount it runs as exists and, on a server
    /// before 1.24 and unless the Pod mounts no token, holds its token Secret (the
    /// ServiceAccount admission plugin refuses the Pod until then: "No API token found").
    async fn wait_account(&self, doc: &Document) -> Result<(), ApplyError> {
        let Some((namespace, name, token)) = pod_account(doc, &self.default_namespace) else {
            return Ok(());
        };
        let token = token && self.server().is_none_or(|s| s.makes_token_secrets());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &namespace);
        let deadline = Duration::from_secs(60);
        let there = poll(deadline, Duration::from_millis(100), || async {
            match api.get_opt(&name).await {
                Ok(Some(account)) => !token || account.secrets.is_some_and(|s| !s.is_empty()),
                _ => false,
            }
        })
        .await;
        if there {
            return Ok(());
        }
        Err(ApplyError::Account {
            document: doc.describe(),
            account: format!("{namespace}/{name}"),
            token,
            seconds: deadline.as_secs(),
        })
    }

    /// Deletes objects the previous `up` applied that are no longer in the manifests (only
    /// when they still carry this sandbox's label), then records `applied` as the new
    /// inventory. Returns the pruned objects.
    pub async fn prune(&mut self, applied: &[Applied]) -> Result<Vec<InventoryEntry>, ApplyError> {
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &self.default_namespace);
        let previous: Vec<InventoryEntry> = configmaps
            .get_opt(INVENTORY)
            .await
            .ok()
            .flatten()
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("objects").cloned())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let current: Vec<InventoryEntry> = applied.iter().map(InventoryEntry::of).collect();
        let mut pruned = Vec::new();
        for entry in stale(&previous, &current) {
            let (group, version) = entry
                .api_version
                .split_once('/')
                .unwrap_or(("", entry.api_version.as_str()));
            let gvk = GroupVersionKind::gvk(group, version, &entry.kind);
            let Ok((resource, caps)) = kube::discovery::pinned_kind(&self.client, &gvk).await
            else {
                continue; // the kind is gone (its CRD was removed): nothing left to delete
            };
            let api = self.api(&resource, &caps, entry.namespace.as_deref());
            let owned = match api.get_opt(&entry.name).await {
                Ok(Some(o)) => {
                    o.metadata.labels.unwrap_or_default().get(labels::SANDBOX)
                        == Some(&self.sandbox)
                }
                _ => false,
            };
            if !owned {
                continue;
            }
            match api
                .delete(&entry.name, &kube::api::DeleteParams::background())
                .await
            {
                Ok(_) => pruned.push(entry),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(ApplyError::Rejected {
                        document: entry.id(),
                        phase: "prune",
                        message: api_message(&e),
                    })
                }
            }
        }
        let inventory = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": INVENTORY, "namespace": self.default_namespace,
                         "labels": {labels::SANDBOX: self.sandbox}},
            "data": {"objects": serde_json::to_string(&current).expect("entries serialise")},
        });
        configmaps
            .patch(
                INVENTORY,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&inventory),
            )
            .await
            .map_err(|e| ApplyError::Rejected {
                document: format!(
                    "ConfigMap {}/{INVENTORY} (sandbox's inventory)",
                    self.default_namespace
                ),
                phase: "apply",
                message: api_message(&e),
            })?;
        Ok(pruned)
    }

    async fn existing_namespaces(&self) -> Vec<String> {
        namespace_names(&self.client, None).await
    }

    async fn ensure_namespace(&self, name: &str) -> Result<(), ApplyError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        if matches!(api.get_opt(name).await, Ok(Some(_))) {
            return Ok(());
        }
        let ns = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {labels::SANDBOX: self.sandbox}},
        });
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .map_err(|e| ApplyError::Rejected {
            document: format!("namespace {name} (sandbox.yaml `namespace`)"),
            phase: "apply",
            message: api_message(&e),
        })?;
        Ok(())
    }

    async fn apply_set(
        &self,
        set: &[(&Document, (ApiResource, ApiCapabilities))],
        dry_run: bool,
    ) -> Result<Vec<Applied>, ApplyError> {
        let results: Vec<Applied> =
            stream::iter(set.iter().map(|(doc, (resource, caps))| async move {
                self.apply_one(doc, resource, caps, dry_run).await
            }))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        Ok(results)
    }

    async fn apply_one(
        &self,
        doc: &Document,
        resource: &ApiResource,
        caps: &ApiCapabilities,
        dry_run: bool,
    ) -> Result<Applied, ApplyError> {
        let namespaced = caps.scope == Scope::Namespaced;
        let namespace = namespaced.then(|| {
            doc.namespace()
                .unwrap_or(&self.default_namespace)
                .to_string()
        });
        let mut object = prepare(&doc.object, &self.sandbox, namespace.as_deref());
        // a server that does not say its version gets the defaults written: they are the
        // values it would default anyway
        if self.server().is_none_or(|s| s.fills_list_keys()) {
            crate::normalize::fill_list_keys(&mut object);
        }
        let api = self.api(resource, caps, namespace.as_deref());
        let name = doc.name().to_string();
        let key = format!(
            "{}/{}/{name}",
            resource.kind,
            namespace.as_deref().unwrap_or_default()
        );
        let seen = if dry_run {
            None
        } else {
            self.seen.lock().expect("not poisoned").get(&key).cloned()
        };
        let before = match seen {
            Some(version) => version,
            // not dry-run (cannot happen in apply_all, but stay correct): read it
            None if !dry_run => api
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|o| o.metadata.resource_version),
            None => None,
        };
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        let result = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| ApplyError::Rejected {
                document: doc.describe(),
                phase: if dry_run { "dry run" } else { "apply" },
                message: api_message(&e),
            })?;
        if dry_run {
            // a dry run of a new object returns no resourceVersion
            let version = result
                .metadata
                .resource_version
                .clone()
                .filter(|v| !v.is_empty());
            self.seen.lock().expect("not poisoned").insert(key, version);
        }
        let changed = before != result.metadata.resource_version;
        let object = serde_json::to_value(&result).map_err(|e| ApplyError::Invalid {
            document: doc.describe(),
            message: e.to_string(),
        })?;
        Ok(Applied {
            document: doc.describe(),
            resource: resource.clone(),
            namespace,
            name,
            object,
            changed,
        })
    }

    async fn wait_established(&self, name: &str, deadline: Duration) -> Result<(), ApplyError> {
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(self.client.clone());
        let established = poll(deadline, Duration::from_millis(200), || async {
            match api.get_opt(name).await {
                Ok(Some(crd)) => crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True"),
                _ => false,
            }
        })
        .await;
        if established {
            return Ok(());
        }
        Err(ApplyError::CrdTimeout {
            name: name.to_string(),
            seconds: deadline.as_secs(),
        })
    }
}

/// Asks `ready` every `every` until it says true (then `true`) or `deadline` has passed
/// (then `false`, after one last ask).
async fn poll<F, Fut>(deadline: Duration, every: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ready().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Names of the cluster's namespaces (those matching `selector` when given); empty when
/// they cannot be listed.
pub async fn namespace_names(client: &kube::Client, selector: Option<&str>) -> Vec<String> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut params = kube::api::ListParams::default();
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    api.list(&params)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

fn is_not_found(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(_) => true,
        _ => false,
    }
}

/// The API server's own message for an error, or the error's text.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn doc(text: &str) -> Document {
        crate::manifests::parse(text, Path::new("t.yaml"))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn prepare_labels_and_places_objects() {
        let d = doc("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {app: x}}\n");
        let o = prepare(&d.object, "demo", Some("web"));
        assert_eq!(o["metadata"]["labels"][labels::SANDBOX], "demo");
        assert_eq!(o["metadata"]["labels"]["app"], "x");
        assert_eq!(o["metadata"]["namespace"], "web");
        let d = doc("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: own}\n");
        assert_eq!(
            prepare(&d.object, "demo", Some("web"))["metadata"]["namespace"],
            "own"
        );
        let d = doc("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: stray}\n");
        assert!(prepare(&d.object, "demo", None)["metadata"]
            .get("namespace")
            .is_none());
    }

    #[test]
    fn namespaces_and_crds_come_first() {
        assert_eq!(phase("Namespace"), 0);
        assert_eq!(phase("CustomResourceDefinition"), 0);
        assert_eq!(phase("Deployment"), 1);
        assert!(kind_rank("ConfigMap") < kind_rank("Service"));
        assert!(kind_rank("PersistentVolumeClaim") < kind_rank("Deployment"));
        assert!(kind_rank("Service") < kind_rank("Deployment"));
        assert!(kind_rank("Deployment") < kind_rank("Job"));
        assert!(kind_rank("Ingress") < kind_rank("Widget"));
    }

    #[test]
    fn gvk_splits_core_and_groups() {
        let d = doc("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n");
        assert_eq!(
            gvk_of(&d),
            GroupVersionKind::gvk("apps", "v1", "Deployment")
        );
        let d = doc("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n");
        assert_eq!(gvk_of(&d), GroupVersionKind::gvk("", "v1", "Service"));
    }

    fn entry(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> InventoryEntry {
        InventoryEntry {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn stale_entries_are_those_no_longer_applied() {
        let previous = vec![
            entry("v1", "Namespace", None, "web"),
            entry("apps/v1", "Deployment", Some("web"), "a"),
            entry("apps/v1", "Deployment", Some("web"), "b"),
            entry("batch/v1beta1", "CronJob", Some("web"), "c"),
        ];
        let current = vec![
            entry("v1", "Namespace", None, "web"),
            entry("apps/v1", "Deployment", Some("web"), "a"),
            entry("batch/v1", "CronJob", Some("web"), "c"),
            entry("apps/v1", "Deployment", Some("other"), "b"),
        ];
        assert_eq!(
            stale(&previous, &current),
            vec![entry("apps/v1", "Deployment", Some("web"), "b")]
        );
        assert!(stale(&[], &current).is_empty());
        // reverse order: dependants go before what they live in
        let gone = stale(&previous, &[]);
        assert_eq!(gone.first().unwrap().name, "c");
        assert_eq!(gone.last().unwrap().kind, "Namespace");
    }

    #[test]
    fn a_version_miss_names_what_the_server_serves() {
        let server = Some("v1.20.2".to_string());
        assert_eq!(
            not_served("CronJob", "batch/v1", &["batch/v1beta1".into()], &server),
            "the cluster (Kubernetes v1.20.2) does not serve CronJob in batch/v1; it serves \
             CronJob in batch/v1beta1: write `apiVersion: batch/v1beta1`"
        );
        assert_eq!(
            not_served(
                "Ingress",
                "extensions/v1beta1",
                &[
                    "networking.k8s.io/v1".into(),
                    "networking.k8s.io/v1beta1".into()
                ],
                &None
            ),
            "the cluster does not serve Ingress in extensions/v1beta1; it serves Ingress in \
             networking.k8s.io/v1, networking.k8s.io/v1beta1"
        );
        assert!(not_served("Widget", "example.com/v1", &[], &server)
            .starts_with("the cluster (Kubernetes v1.20.2) has no kind Widget in example.com/v1, nor in any other version"));
    }

    #[test]
    fn a_pods_account_is_its_own_or_default() {
        let pod = doc("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n");
        assert_eq!(
            pod_account(&pod, "web"),
            Some(("web".into(), "default".into(), true))
        );
        let pod = doc(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ops}\n\
            spec: {serviceAccountName: agent, automountServiceAccountToken: false}\n",
        );
        assert_eq!(
            pod_account(&pod, "web"),
            Some(("ops".into(), "agent".into(), false))
        );
        // the deprecated field still names it
        let pod =
            doc("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccount: old}\n");
        assert_eq!(pod_account(&pod, "web").unwrap().1, "old");
        let deploy = doc("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
        assert_eq!(pod_account(&deploy, "web"), None);
        let sa =
            doc("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: agent, namespace: ops}\n");
        assert_eq!(
            accounts_defined(&[sa, deploy], "web"),
            [("ops".to_string(), "agent".to_string())]
        );
    }

    #[test]
    fn crd_kinds_are_collected() {
        let d = doc("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec: {group: example.com, names: {kind: Widget}}\n");
        assert_eq!(
            kinds_defined(&[d]),
            vec![("example.com".to_string(), "Widget".to_string())]
        );
    }
}
