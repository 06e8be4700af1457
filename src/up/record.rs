//! The record of the last complete `up`, and the check that finds nothing to do with it
//! (see [`crate::warm`]).

use crate::apply::Applied;
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::images::{self, BuiltImage};
use crate::node::{self, Node};
use crate::registry::LocalRegistry;
use crate::report::Reporter;
use crate::warm::Stale;

use super::converge::Converged;
use super::documents::addon_documents_secured;
use super::documents::install_context;
use super::documents::load_ca;
use super::documents::project_documents_secured;
use super::Timings;

/// The record of this `up`, its objects' states still to be observed; `None` when an
/// image's inputs are not known.
pub(super) fn new_record(
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
pub(super) async fn save_record(
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
pub(super) async fn unchanged(
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
    let built = recorded_images(config, engine, record).await?;
    let (built, registry) = delivered(config, engine, &node, built).await?;
    documents_as_recorded(reporter, config, &node, &built, registry.as_ref(), record).await?;
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

/// The images of the record, when each is still built from the same inputs and still in
/// the engine.
async fn recorded_images(
    config: &SandboxConfig,
    engine: &Engine,
    record: &crate::warm::Record,
) -> Result<Vec<BuiltImage>, Stale> {
    if record.images.len() != config.images.len() {
        return Err(Stale::ImagesConfigured);
    }
    let mut built = Vec::new();
    for (image, recorded) in config.images.iter().zip(&record.images) {
        built.push(still_built(engine, config, image, recorded).await?);
    }
    Ok(built)
}

/// The image `recorded` by the last `up` for `image`, when it is still built from the same
/// inputs and still in the engine (the warm checks of a node and of cluster mode).
pub(crate) async fn still_built(
    engine: &Engine,
    config: &SandboxConfig,
    image: &crate::config::ImageConfig,
    recorded: &crate::warm::ImageRecord,
) -> Result<BuiltImage, Stale> {
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
    Ok(BuiltImage {
        name: image.name.clone(),
        reference: recorded.reference.clone(),
        id: recorded.id.clone(),
        inputs,
    })
}

/// The images as the node gets them: with `registry: local`, the registry runs, still
/// holds every image, and the node has its mirror (their references are the registry's).
async fn delivered(
    config: &SandboxConfig,
    engine: &Engine,
    node: &Node,
    mut built: Vec<BuiltImage>,
) -> Result<(Vec<BuiltImage>, Option<LocalRegistry>), Stale> {
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
    Ok((built, registry))
}

/// Checks that the documents rendered now are those of the record, with no certificate
/// due.
async fn documents_as_recorded(
    reporter: &Reporter,
    config: &SandboxConfig,
    node: &Node,
    built: &[BuiltImage],
    registry: Option<&LocalRegistry>,
    record: &crate::warm::Record,
) -> Result<(), Stale> {
    let ca = load_ca(reporter)?;
    let (mut docs, mut issued) = addon_documents_secured(config, node, &ca, registry).await?;
    let (project, more) = project_documents_secured(config, node, built, &ca).await?;
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
    Ok(())
}
