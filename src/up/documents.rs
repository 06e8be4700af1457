//! What `up` applies: the project's manifests, Secrets and generated objects, the
//! add-ons' documents, each with its certificates; and the values they are rendered with.

use std::path::PathBuf;

use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::images::{self, BuiltImage};
use crate::manifests::{self, Builtins, Document};
use crate::node::Node;
use crate::report::Reporter;
use crate::{kubeconfig, secrets};

use super::DEFAULT_DOMAIN;
use super::DEFAULT_IP;

/// The sandbox's wildcard domain: an environment gets its own subdomain.
pub fn domain(config: &SandboxConfig) -> String {
    match &config.environment {
        Some(env) => format!("{env}.{DEFAULT_DOMAIN}"),
        None => DEFAULT_DOMAIN.to_string(),
    }
}

pub(super) fn builtins(
    config: &SandboxConfig,
    http_port: u16,
    https_port: u16,
    smtp_host: &str,
) -> Builtins {
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
pub(super) async fn smtp_host(node: &Node) -> String {
    if !node.profile.provides.cluster_dns {
        if let Some(ip) = maildev_address(node).await {
            return ip;
        }
    }
    crate::addons::SMTP_DNS_NAME.to_string()
}

/// The cluster address of maildev's Service, once it has one.
pub(super) async fn maildev_address(node: &Node) -> Option<String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(node.client.clone(), crate::addons::NAMESPACE);
    api.get_opt("maildev").await.ok()??.spec?.cluster_ip
}

/// Says (with `-v`) which program renders each kustomization of the manifests.
pub(super) fn report_kustomizations(reporter: &Reporter, config: &SandboxConfig) {
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

pub(super) fn install_context(node: &Node) -> Result<PathBuf, Error> {
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

/// The add-on images the local engine holds (the offline profile builds them); the node
/// pulls the others itself.
pub(super) async fn addon_load_requests(
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
pub(super) async fn addon_documents_secured(
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

/// The add-ons' documents: shared by every environment, so on the base domain.
pub(super) fn addon_documents(
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
pub(super) async fn project_documents_secured(
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
pub(super) type IssuedCert = (crate::ingress::TlsSecret, crate::ingress::Issued);

/// Adds TLS to the Ingresses of `docs` under `domain` and the Secrets they need (see
/// [`crate::ingress`]); returns what was done for each Secret.
pub(super) async fn secure_ingresses(
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
pub(super) fn report_issued(reporter: &Reporter, issued: &[IssuedCert]) {
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
