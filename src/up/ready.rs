//! The waits after the apply: workloads ready, the data paths converged, every URL
//! answering; the relayed ports and the DNS server on the way.

use std::time::{Duration, Instant};

use crate::apply::Applied;
use crate::config::SandboxConfig;
use crate::docker::Engine;
use crate::error::Error;
use crate::node::Node;
use crate::report::Reporter;
use crate::urls::{self, Url};
use crate::wait;

use super::documents::domain;

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
pub(super) async fn relay_ports(
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

/// Waits until the node's kube-proxy and the ingress controller send each of `services`
/// and each backend of `ingresses` to its ready pods only (see [`crate::proxy_rules`]);
/// says so when they do not within 10 s.
pub(super) async fn wait_data_paths(
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

/// Ensures the user's background DNS server answers; a failure is a warning (the names
/// still resolve wherever nip.io is reachable).
pub(super) async fn start_dns(reporter: &Reporter) -> Option<std::net::SocketAddr> {
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
