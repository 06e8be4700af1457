//! The no-change `up`: what a complete `up` records, and the checks that let the next one
//! skip the build, the load and the apply when none of them would change anything.
//!
//! A record holds the node container it was made on, each image's build inputs (the
//! context as sent to the engine, the Dockerfile's options and the IDs of the images it
//! builds from) with the image they gave, a digest of every document applied, and the
//! state each applied object was left in. The next `up` skips its build, load and apply
//! only when all of it still holds: same node, same inputs with their image still in the
//! engine, the same documents rendered, and every object as it was left (same UID, and
//! the same resourceVersion or, for objects whose status controllers write, the same
//! generation, labels, annotations and fields owned by sandbox). Anything else, or no
//! record, is a full `up`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::apply::{Applied, FIELD_MANAGER};
use crate::docker::Engine;
use crate::labels;
use crate::manifests::Document;

/// What a record is about; bumped when its meaning changes.
const FORMAT: &str = "sandbox.dev/up-record/v1";

/// Why an `up` is a full one: what of the record of the last complete `up` no longer
/// holds, or what could not be checked. Its text is the reason `up` and `apply` give (`a
/// full up: ...`, `a full run: ...`).
#[derive(Debug, thiserror::Error)]
pub enum Stale {
    /// No record of this format was kept.
    #[error("no record of a complete up")]
    NoRecord,
    /// The target keeps no records.
    #[error("no record kept for this target")]
    NotKept,
    /// The node was made again since.
    #[error("the node is not the one of the last up")]
    OtherNode,
    /// Images were added to or removed from the configuration.
    #[error("the images configured changed")]
    ImagesConfigured,
    /// A configured image's build inputs differ from the recorded ones.
    #[error("image {image} has new inputs")]
    NewInputs {
        /// The image's name.
        image: String,
    },
    /// An add-on's image is no longer the one pushed.
    #[error("add-on image {image} changed")]
    AddonImage {
        /// The image's name.
        image: String,
    },
    /// The engine no longer has the image built.
    #[error("{reference} is no longer in the engine")]
    NotInEngine {
        /// The content-tagged reference.
        reference: String,
    },
    /// The sandbox's local registry is not running.
    #[error("the registry is not running")]
    RegistryStopped,
    /// The registry no longer has an image pushed.
    #[error("the registry no longer holds {reference}")]
    NotInRegistry {
        /// The reference as pushed.
        reference: String,
    },
    /// A certificate would be issued anew.
    #[error("a certificate is due")]
    CertificateDue,
    /// The documents rendered now differ from those applied.
    #[error("the documents to apply changed")]
    Documents,
    /// The node does not take pods (what was observed).
    #[error("{0}")]
    NodeNotReady(String),
    /// An object was written since the last `up` (see [`ObjectState::unchanged`]).
    #[error("{object} changed since the last up")]
    Changed {
        /// `Kind namespace/name`.
        object: String,
    },
    /// An object is no longer there.
    #[error("{object} is gone")]
    Gone {
        /// `Kind namespace/name`.
        object: String,
    },
    /// The objects of a resource could not be listed. A reason is one line: the API
    /// server's message is part of it (the error is kept, not as a source to print again).
    #[error("cannot list {plural}: {}", crate::apply::api_message(.error))]
    List {
        /// The resource (plural).
        plural: String,
        /// Cause.
        error: kube::Error,
    },
    /// The record's kubeconfig does not parse.
    #[error(transparent)]
    Kubeconfig(serde_yaml::Error),
    /// A step of the check failed (reading the node, the engine, the registry or the CA,
    /// rendering the documents): its error's message is the reason.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// The failures of the steps of a check, as reasons.
macro_rules! failed_from {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Stale {
            fn from(e: $ty) -> Stale {
                Stale::Failed(Box::new(e))
            }
        }
    )*};
}
// (and from the top-level error, in error.rs: this module is below it)
failed_from!(
    crate::node::NodeError,
    crate::images::ImageError,
    crate::docker::DockerError,
    crate::registry::RegistryError
);

/// The record of the last complete `up` of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// [`FORMAT`] and the sandbox version that wrote it (its add-ons are built in).
    pub format: String,
    /// The node container's ID.
    pub node: String,
    /// The node's host kubeconfig (YAML; the file is the user's alone).
    pub kubeconfig: String,
    /// Each configured image, in order.
    pub images: Vec<ImageRecord>,
    /// Digest of every document applied (add-ons, then the project's).
    pub documents: String,
    /// Digest of the add-ons' documents alone: an `up` whose project changed applies the
    /// add-ons only when these or their objects changed (empty: not known).
    #[serde(default)]
    pub addon_documents: String,
    /// Every object applied, and the inventories, as they were left.
    pub objects: Vec<ObjectRecord>,
}

/// A built image and what it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Repository name as configured.
    pub name: String,
    /// Digest of the build inputs (see [`image_inputs`]).
    pub inputs: String,
    /// Image ID.
    pub id: String,
    /// The content-tagged reference the manifests use.
    pub reference: String,
}

/// Which apply an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// An add-on's object.
    Addon,
    /// One of the project's objects.
    Project,
    /// An inventory ConfigMap (what the next `up` prunes against).
    Inventory,
}

/// One object and the state it was left in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRecord {
    /// Which apply.
    pub role: Role,
    /// Where it came from (for reports).
    pub document: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Resource (plural).
    pub plural: String,
    /// Namespace, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// What was observed after the apply (empty before).
    #[serde(default)]
    pub state: ObjectState,
}

/// What identifies an object's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectState {
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub resource_version: String,
    /// metadata.generation, for kinds that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Digest of the labels, the annotations and the fields sandbox's apply owns.
    pub ours: String,
}

impl ObjectState {
    /// The state of a live object.
    pub fn of(object: &Value) -> ObjectState {
        let meta = &object["metadata"];
        let owned: Vec<&Value> = meta["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply")
            .collect();
        let ours = json!([owned, meta["labels"], meta["annotations"]]);
        ObjectState {
            uid: meta["uid"].as_str().unwrap_or_default().to_string(),
            resource_version: meta["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            generation: meta["generation"].as_i64(),
            ours: digest(ours.to_string().as_bytes()),
        }
    }

    /// The state of an object that controllers write without a generation to tell it by: a
    /// ServiceAccount, whose token Secret the token controller (before Kubernetes 1.24)
    /// adds to `secrets` a moment after it is created, under load after the record of that
    /// `up` was kept; a Service, whose LoadBalancer address sandbox itself writes to its
    /// status (see [`crate::forward::publish_addresses`]) beside the keeping of the record.
    /// Like a status write, that changes nothing sandbox applied: such an
    /// object counts as unchanged while its UID and the fields sandbox owns, its labels and
    /// annotations are (a generation that never moves stands for its spec).
    pub fn written_by_controllers(mut self) -> ObjectState {
        self.generation.get_or_insert(0);
        self
    }

    /// Whether `now` is the same object left as it was: the same UID, and nothing
    /// written, or (for kinds whose status controllers write) no change to its spec, its
    /// labels, its annotations or the fields sandbox owns.
    pub fn unchanged(&self, now: &ObjectState) -> bool {
        self.uid == now.uid
            && !self.uid.is_empty()
            && (self.resource_version == now.resource_version
                || (self.generation.is_some()
                    && self.generation == now.generation
                    && self.ours == now.ours))
    }
}

impl ObjectRecord {
    /// An applied object, its state not yet observed.
    pub fn applied(a: &Applied, role: Role) -> ObjectRecord {
        ObjectRecord {
            role,
            document: a.document.clone(),
            group: a.resource.group.clone(),
            version: a.resource.version.clone(),
            kind: a.resource.kind.clone(),
            plural: a.resource.plural.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            state: ObjectState::default(),
        }
    }

    /// The inventory ConfigMap of namespace `namespace`.
    pub fn inventory(namespace: &str) -> ObjectRecord {
        ObjectRecord {
            role: Role::Inventory,
            document: format!("ConfigMap {namespace}/{}", crate::apply::INVENTORY),
            group: String::new(),
            version: "v1".to_string(),
            kind: "ConfigMap".to_string(),
            plural: "configmaps".to_string(),
            namespace: Some(namespace.to_string()),
            name: crate::apply::INVENTORY.to_string(),
            state: ObjectState::default(),
        }
    }

    /// Its API resource.
    pub fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: if self.group.is_empty() {
                self.version.clone()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `Kind namespace/name`.
    pub fn id(&self) -> String {
        crate::apply::object_id(&self.kind, self.namespace.as_deref(), &self.name)
    }

    /// The object as applied, with its live state, for the readiness wait.
    pub fn as_applied(&self, object: Value) -> Applied {
        Applied {
            document: self.document.clone(),
            resource: self.resource(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            object,
            changed: false,
        }
    }
}

/// The record format of this build of sandbox.
pub fn format() -> String {
    format!("{FORMAT} sandbox {}", env!("CARGO_PKG_VERSION"))
}

/// The image records of `built`; `None` when an image's inputs are not known.
pub fn image_records(built: &[crate::images::BuiltImage]) -> Option<Vec<ImageRecord>> {
    built
        .iter()
        .map(|b| {
            Some(ImageRecord {
                name: b.name.clone(),
                inputs: b.inputs.clone()?,
                id: b.id.clone(),
                reference: b.reference.clone(),
            })
        })
        .collect()
}

/// Hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digest of documents as applied (their objects, in order).
pub fn documents_digest<'a>(docs: impl IntoIterator<Item = &'a Document>) -> String {
    let mut all = Vec::new();
    for doc in docs {
        all.extend(serde_json::to_vec(&doc.object).expect("objects serialise"));
        all.push(b'\n');
    }
    digest(&all)
}

/// The images a Dockerfile builds from: each `FROM` that names neither an earlier stage
/// nor `scratch`, and each `COPY --from=` that names neither a stage nor a stage index.
/// Variables are expanded as the engine does: in `FROM`, the `ARG`s declared before the
/// first `FROM`; in a stage, the `ARG`s the stage declares (a bare `ARG NAME` takes the
/// value declared before the first `FROM`); `args` override defaults, as `--build-arg`
/// does.
pub fn base_images(dockerfile: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut meta: HashMap<String, String> = HashMap::new();
    let mut stage: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut seen_from = false;
    let mut out: Vec<String> = Vec::new();
    let push = |image: String, out: &mut Vec<String>| {
        if !image.is_empty() && !image.eq_ignore_ascii_case("scratch") && !out.contains(&image) {
            out.push(image);
        }
    };
    for line in instructions(dockerfile) {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" => {
                for decl in &rest {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, d)) => (n, Some(unquote(d))),
                        None => (*decl, None),
                    };
                    let inherited = || {
                        if seen_from {
                            meta.get(name).cloned()
                        } else {
                            None
                        }
                    };
                    let value = args
                        .get(name)
                        .cloned()
                        .or(default)
                        .or_else(inherited)
                        .unwrap_or_default();
                    if seen_from {
                        stage.insert(name.to_string(), value);
                    } else {
                        meta.insert(name.to_string(), value);
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                stage.clear();
                let mut operands = rest.iter().filter(|w| !w.starts_with("--"));
                let Some(image) = operands.next() else {
                    continue;
                };
                let image = substitute(image, &meta);
                if !stages.iter().any(|s| s.eq_ignore_ascii_case(&image)) {
                    push(image, &mut out);
                }
                if let (Some(as_), Some(name)) = (operands.next(), operands.next()) {
                    if as_.eq_ignore_ascii_case("AS") {
                        stages.push(name.to_string());
                    }
                }
            }
            "COPY" => {
                for flag in &rest {
                    let Some(from) = flag.strip_prefix("--from=") else {
                        continue;
                    };
                    let from = substitute(from, &stage);
                    let named_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(&from))
                        || from.parse::<usize>().is_ok();
                    if !named_stage {
                        push(from, &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The Dockerfile's instructions, one per entry: comments dropped, continued lines joined.
fn instructions(dockerfile: &str) -> Vec<String> {
    let escape = dockerfile
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .find_map(|l| {
            let d = l.trim_start().trim_start_matches('#').trim();
            let (key, value) = d.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("escape")
                .then(|| value.trim().chars().next())
                .flatten()
        })
        .unwrap_or('\\');
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix(escape) {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

fn unquote(s: &str) -> String {
    s.trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}` from `vars` (unset
/// names are empty, as the engine makes them).
fn substitute(word: &str, vars: &HashMap<String, String>) -> String {
    let word = unquote(word);
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
            let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                Some(i) => (&inner[..i], Some((&inner[i..i + 2], &inner[i + 2..]))),
                None => (inner.as_str(), None),
            };
            let value = vars.get(name).filter(|v| !v.is_empty());
            match (op, value) {
                (Some((":-", default)), None) => out.push_str(default),
                (Some((":+", alt)), Some(_)) => out.push_str(alt),
                (Some((":+", _)), None) => {}
                (_, Some(v)) => out.push_str(v),
                (_, None) => {}
            }
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else if let Some(v) = vars.get(&name) {
                out.push_str(v);
            }
        }
    }
    out
}

/// Digest of an image's build inputs: the context as sent to the engine (`context`, its
/// digest), the Dockerfile's path, target and build arguments, and the engine's current
/// ID of every image the Dockerfile builds from. `None` when one of those is not in the
/// engine (the build would pull it).
pub async fn image_inputs(
    engine: &Engine,
    image: &crate::config::ImageConfig,
    dockerfile_text: &str,
    context: &str,
) -> Option<String> {
    let mut bases = Vec::new();
    for base in base_images(dockerfile_text, &image.args) {
        let id = engine.image_id(&base).await.ok().flatten()?;
        bases.push((base, id));
    }
    let inputs = json!({
        "context": context,
        "dockerfile": image.dockerfile,
        "target": image.target,
        "args": image.args,
        "bases": bases,
    });
    Some(digest(inputs.to_string().as_bytes()))
}

/// The key of a sandbox's record: its name, and its environment when one is selected
/// (each environment is its own namespace, applied on its own).
pub fn key(config: &crate::config::SandboxConfig) -> String {
    match &config.environment {
        Some(env) => format!("{}.{env}", config.name),
        None => config.name.clone(),
    }
}

/// Where the record of `key` is kept.
pub fn path(key: &str) -> PathBuf {
    crate::paths::state_dir().join(format!("{key}.up.json"))
}

/// The record of `key`'s last complete `up`, if there is one of this format.
pub fn read(key: &str) -> Option<Record> {
    let text = std::fs::read(path(key)).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    (record.format == format()).then_some(record)
}

/// Forgets the record of `key` (before anything changes what it describes).
pub fn forget(key: &str) {
    let _ = std::fs::remove_file(path(key));
}

/// Forgets the records of sandbox `name` and of all its environments.
pub fn forget_all(name: &str) {
    let Ok(entries) = std::fs::read_dir(crate::paths::state_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = file.strip_suffix(".up.json") else {
            continue;
        };
        if key == name || key.starts_with(&format!("{name}.")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes the record of `key` (replacing the file whole; readable by the user alone: it
/// holds the node's admin credentials, as the user's kubeconfig does).
pub fn write(key: &str, record: &Record) -> std::io::Result<()> {
    let file = path(key);
    let dir = file.parent().expect("the record is in a directory");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut tmp, record)?;
    tmp.persist(&file).map_err(|e| e.error)?;
    Ok(())
}

/// Each of `objects` as it is now, as applied (for the readiness wait) with its role, when
/// every one is as it was left (see [`ObjectState::unchanged`]); otherwise what changed.
pub async fn as_left(
    client: &kube::Client,
    sandbox: &str,
    objects: &[ObjectRecord],
) -> Result<Vec<(Role, Applied)>, Stale> {
    let observed = observe(client, sandbox, objects).await?;
    let mut left = Vec::new();
    for ((now, object), was) in observed.into_iter().zip(objects) {
        if !was.state.unchanged(&now.state) {
            return Err(Stale::Changed { object: now.id() });
        }
        left.push((now.role, now.as_applied(object)));
    }
    Ok(left)
}

/// Reads every object of `objects` from the API server, a list per resource (by the
/// sandbox's label), and returns each with its live state and the live object. `Err`
/// says what is missing.
pub async fn observe(
    client: &kube::Client,
    sandbox: &str,
    objects: &[ObjectRecord],
) -> Result<Vec<(ObjectRecord, Value)>, Stale> {
    let mut resources: Vec<ApiResource> = Vec::new();
    for o in objects {
        let r = o.resource();
        if !resources.contains(&r) {
            resources.push(r);
        }
    }
    let selector = format!("{}={sandbox}", labels::SANDBOX);
    let lists = futures_util::future::join_all(resources.iter().map(|r| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), r);
        let params = ListParams::default().labels(&selector);
        async move { api.list(&params).await }
    }))
    .await;
    let mut live: HashMap<(String, String, Option<String>, String), Value> = HashMap::new();
    for (resource, list) in resources.iter().zip(lists) {
        let list = list.map_err(|error| Stale::List {
            plural: resource.plural.clone(),
            error,
        })?;
        for item in list.items {
            let mut value = serde_json::to_value(&item).unwrap_or_default();
            // a list's items carry no apiVersion and kind; what judges them needs both
            value["apiVersion"] = json!(resource.api_version);
            value["kind"] = json!(resource.kind);
            live.insert(
                (
                    resource.group.clone(),
                    resource.plural.clone(),
                    item.metadata.namespace.clone(),
                    item.metadata.name.clone().unwrap_or_default(),
                ),
                value,
            );
        }
    }
    objects
        .iter()
        .map(|o| {
            let key = (
                o.group.clone(),
                o.plural.clone(),
                o.namespace.clone(),
                o.name.clone(),
            );
            let value = live
                .remove(&key)
                .ok_or_else(|| Stale::Gone { object: o.id() })?;
            let mut observed = o.clone();
            observed.state = ObjectState::of(&value);
            if o.group.is_empty() && matches!(o.kind.as_str(), "ServiceAccount" | "Service") {
                observed.state = observed.state.written_by_controllers();
            }
            Ok((observed, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn base_images_of_a_multi_stage_dockerfile() {
        let dockerfile = "# syntax=docker/dockerfile:1\n\
            ARG BASE=debian:bookworm\n\
            ARG TAG\n\
            FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n\
            RUN go build \\\n  -o /app .\n\
            FROM ${BASE}\n\
            COPY --from=build /app /app\n\
            COPY --from=0 /x /x\n\
            ARG TAG\n\
            COPY --from=nginx:${TAG:-1.25} /etc/nginx /etc/nginx\n\
            FROM build AS test\n\
            from scratch\n";
        assert_eq!(
            base_images(dockerfile, &BTreeMap::new()),
            ["golang:1.22", "debian:bookworm", "nginx:1.25"]
        );
        assert_eq!(
            base_images(dockerfile, &args(&[("BASE", "alpine:3"), ("TAG", "1.27")])),
            ["golang:1.22", "alpine:3", "nginx:1.27"]
        );
    }

    #[test]
    fn base_images_of_the_hello_fixture() {
        let dockerfile = "ARG BASE=sandbox-offline/busybox:1.35\nFROM ${BASE}\nCOPY www /www\n";
        assert_eq!(
            base_images(dockerfile, &BTreeMap::new()),
            ["sandbox-offline/busybox:1.35"]
        );
    }

    #[test]
    fn a_stage_sees_only_the_args_it_declares() {
        let dockerfile = "ARG IMG=meta\nFROM alpine:3\nCOPY --from=${IMG:-none} /a /a\n\
            FROM alpine:3\nARG IMG\nCOPY --from=$IMG /b /b\nARG OTHER=x:1\nCOPY --from=$OTHER /c /c\n";
        assert_eq!(
            base_images(dockerfile, &BTreeMap::new()),
            ["alpine:3", "none", "meta", "x:1"]
        );
        assert_eq!(
            base_images(dockerfile, &args(&[("IMG", "y:2")])),
            ["alpine:3", "none", "y:2", "x:1"]
        );
    }

    #[test]
    fn escape_directive_changes_the_continuation() {
        let dockerfile = "# escape=`\nFROM mcr.microsoft.com/windows `\n  AS base\nFROM base\n";
        assert_eq!(
            base_images(dockerfile, &BTreeMap::new()),
            ["mcr.microsoft.com/windows"]
        );
    }

    fn object(rv: &str, generation: Option<i64>, replicas: i64, owner: &str) -> Value {
        let mut o = json!({
            "metadata": {
                "uid": "u1", "resourceVersion": rv, "labels": {labels::SANDBOX: "demo"},
                "managedFields": [
                    {"manager": owner, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}}
                ]
            },
            "spec": {"replicas": replicas}
        });
        if let Some(g) = generation {
            o["metadata"]["generation"] = json!(g);
        }
        o
    }

    #[test]
    fn status_writes_leave_an_object_unchanged_spec_writes_do_not() {
        let left = ObjectState::of(&object("10", Some(1), 2, FIELD_MANAGER));
        // a controller wrote the status: new resourceVersion, same generation and fields
        assert!(left.unchanged(&ObjectState::of(&object("11", Some(1), 2, FIELD_MANAGER))));
        // someone scaled it: the generation moved
        assert!(!left.unchanged(&ObjectState::of(&object("12", Some(2), 3, FIELD_MANAGER))));
        // someone took sandbox's fields over
        assert!(!left.unchanged(&ObjectState::of(&object("12", Some(1), 2, "kubectl"))));
        // deleted and created again
        let mut again = object("10", Some(1), 2, FIELD_MANAGER);
        again["metadata"]["uid"] = json!("u2");
        assert!(!left.unchanged(&ObjectState::of(&again)));
    }

    #[test]
    fn a_service_accounts_token_is_the_controllers_not_a_change() {
        let mut account = json!({"kind": "ServiceAccount", "metadata": {"uid": "u1", "resourceVersion": "10",
            "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:metadata": {}}}]}});
        let left = ObjectState::of(&account).written_by_controllers();
        // the token controller adds its Secret: a new resourceVersion, nothing of sandbox's
        account["metadata"]["resourceVersion"] = json!("11");
        account["secrets"] = json!([{"name": "app-token-abcde"}]);
        assert!(left.unchanged(&ObjectState::of(&account).written_by_controllers()));
        // a label written by someone else is a change
        account["metadata"]["labels"] = json!({"team": "x"});
        assert!(!left.unchanged(&ObjectState::of(&account).written_by_controllers()));
        // a LoadBalancer's address written to its status is not
        let mut service = json!({"kind": "Service", "metadata": {"uid": "u2", "resourceVersion": "20",
            "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {}}}]}});
        let left = ObjectState::of(&service).written_by_controllers();
        service["metadata"]["resourceVersion"] = json!("21");
        service["status"] =
            json!({"loadBalancer": {"ingress": [{"hostname": "web.shop.127.0.0.1.nip.io"}]}});
        assert!(left.unchanged(&ObjectState::of(&service).written_by_controllers()));
    }

    #[test]
    fn kinds_without_a_generation_must_not_have_been_written() {
        let left = ObjectState::of(&object("10", None, 2, FIELD_MANAGER));
        assert!(left.unchanged(&ObjectState::of(&object("10", None, 2, FIELD_MANAGER))));
        assert!(!left.unchanged(&ObjectState::of(&object("11", None, 2, FIELD_MANAGER))));
    }

    #[test]
    fn labels_and_annotations_count() {
        let left = ObjectState::of(&object("10", Some(1), 2, FIELD_MANAGER));
        let mut labelled = object("11", Some(1), 2, FIELD_MANAGER);
        labelled["metadata"]["annotations"] = json!({"note": "x"});
        assert!(!left.unchanged(&ObjectState::of(&labelled)));
    }

    #[test]
    fn each_reason_reads_as_the_string_it_replaced() {
        let forbidden = kube::Error::Api(
            kube::core::Status {
                code: 403,
                message: "deployments.apps is forbidden: User \"dev\" cannot list".into(),
                reason: "Forbidden".into(),
                ..Default::default()
            }
            .boxed(),
        );
        let yaml = serde_yaml::from_str::<Value>("a: [").unwrap_err();
        let yaml_text = yaml.to_string();
        let node = crate::node::NodeError::NotRunning {
            sandbox: "demo".into(),
        };
        let node_text = node.to_string();
        let reference = "sandbox/web:sandbox-0123456789ab";
        let cases: Vec<(Stale, String)> = vec![
            (Stale::NoRecord, "no record of a complete up".into()),
            (Stale::NotKept, "no record kept for this target".into()),
            (
                Stale::OtherNode,
                "the node is not the one of the last up".into(),
            ),
            (
                Stale::ImagesConfigured,
                "the images configured changed".into(),
            ),
            (
                Stale::NewInputs {
                    image: "web".into(),
                },
                format!("image {} has new inputs", "web"),
            ),
            (
                Stale::AddonImage {
                    image: "maildev".into(),
                },
                format!("add-on image {} changed", "maildev"),
            ),
            (
                Stale::NotInEngine {
                    reference: reference.into(),
                },
                format!("{} is no longer in the engine", reference),
            ),
            (Stale::RegistryStopped, "the registry is not running".into()),
            (
                Stale::NotInRegistry {
                    reference: reference.into(),
                },
                format!("the registry no longer holds {reference}"),
            ),
            (Stale::CertificateDue, "a certificate is due".into()),
            (Stale::Documents, "the documents to apply changed".into()),
            (
                Stale::NodeNotReady("node demo not registered yet".into()),
                "node demo not registered yet".into(),
            ),
            (
                Stale::Changed {
                    object: "Deployment web/app".into(),
                },
                format!("{} changed since the last up", "Deployment web/app"),
            ),
            (
                Stale::Gone {
                    object: "Service web/app".into(),
                },
                format!("{} is gone", "Service web/app"),
            ),
            (
                Stale::List {
                    plural: "deployments".into(),
                    error: forbidden,
                },
                format!(
                    "cannot list {}: {}",
                    "deployments", "deployments.apps is forbidden: User \"dev\" cannot list"
                ),
            ),
            (Stale::Kubeconfig(yaml), yaml_text),
            (Stale::from(node), node_text),
        ];
        for (reason, old) in cases {
            assert_eq!(reason.to_string(), old, "{reason:?}");
        }
    }

    #[test]
    fn documents_digest_follows_content_and_order() {
        let docs = crate::manifests::parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
            std::path::Path::new("all.yaml"),
        )
        .unwrap();
        let d = documents_digest(&docs);
        assert_eq!(d, documents_digest(&docs));
        assert_ne!(d, documents_digest(docs.iter().rev()));
        assert_ne!(d, documents_digest(&docs[..1]));
    }
}
