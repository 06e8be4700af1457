//! `sandbox logs`: the logs of a workload's pods (or of every pod in the namespace).

use clap::Args;
use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, LogParams};

use super::Context;
use crate::error::Error;

/// Options of `sandbox logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `POD`, or `KIND/NAME` for a workload (`deploy/web`, `job/setup`, `sts/db`, `ds/agent`).
    /// Default: every pod in the namespace.
    pub target: Option<String>,
    /// Only this container.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Lines from the end of each log.
    #[arg(long, default_value_t = 50)]
    pub tail: i64,
    /// Keep streaming new lines (`-f` is the global `--file`).
    #[arg(long)]
    pub follow: bool,
}

fn kind_of(short: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match short {
        "deploy" | "deployment" | "deployments" => ("apps", "v1", "Deployment"),
        "sts" | "statefulset" | "statefulsets" => ("apps", "v1", "StatefulSet"),
        "ds" | "daemonset" | "daemonsets" => ("apps", "v1", "DaemonSet"),
        "rs" | "replicaset" | "replicasets" => ("apps", "v1", "ReplicaSet"),
        "job" | "jobs" => ("batch", "v1", "Job"),
        _ => return None,
    })
}

/// Runs `sandbox logs`.
pub async fn run(ctx: &Context, args: LogsArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    let mut target = super::target::select(&config).await?;
    target.ensure(ctx, false).await?;
    let client = target.client()?;
    let namespace = config.namespace.clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods: Vec<Pod> = match args.target.as_deref() {
        None => {
            pods_api
                .list(&ListParams::default())
                .await
                .map_err(kube_error)?
                .items
        }
        Some(target) => match target.split_once('/') {
            Some((short, name)) => {
                let (group, version, kind) = kind_of(short).ok_or_else(|| {
                    Error::Usage(format!(
                        "{target}: unknown kind {short:?} (deploy, sts, ds, rs, job)"
                    ))
                })?;
                let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
                let (resource, _) = kube::discovery::pinned_kind(&client, &gvk)
                    .await
                    .map_err(kube_error)?;
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &namespace, &resource);
                let object = api
                    .get_opt(name)
                    .await
                    .map_err(kube_error)?
                    .ok_or_else(|| {
                        Error::Usage(format!("{kind} {namespace}/{name} does not exist"))
                    })?;
                let object = serde_json::to_value(&object).expect("objects serialise");
                let selector = crate::wait::pod_selector(kind, &object, name).ok_or_else(|| {
                    Error::Usage(format!("{kind} {name} has no matchLabels selector"))
                })?;
                pods_api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(kube_error)?
                    .items
            }
            None => vec![pods_api
                .get_opt(target)
                .await
                .map_err(kube_error)?
                .ok_or_else(|| Error::Usage(format!("pod {namespace}/{target} does not exist")))?],
        },
    };
    let mut streams = Vec::new();
    for pod in &pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let containers: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .map(|c| c.name.clone())
            .filter(|c| args.container.as_ref().is_none_or(|only| only == c))
            .collect();
        for container in containers {
            let params = LogParams {
                container: Some(container.clone()),
                tail_lines: Some(args.tail),
                follow: args.follow,
                ..Default::default()
            };
            let prefix = format!("{pod_name}/{container}");
            match pods_api.log_stream(&pod_name, &params).await {
                Ok(stream) => streams.push(
                    stream
                        .lines()
                        .map_ok(move |line| format!("[{prefix}] {line}"))
                        .boxed(),
                ),
                // a container that has not started has no log yet
                Err(e) => ctx
                    .reporter
                    .warn(format!("{prefix}: {}", crate::apply::api_message(&e))),
            }
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(line) = all.next().await {
        match line {
            Ok(line) => println!("{line}"),
            Err(e) => {
                ctx.reporter.warn(format!("log stream ended: {e}"));
            }
        }
    }
    Ok(())
}

fn kube_error(e: kube::Error) -> Error {
    Error::Kube(crate::apply::api_message(&e))
}
