//! `sandbox logs`: the logs of a workload's pods (or of every pod in the namespace).

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};

use super::Context;
use crate::error::Error;

/// Options of `sandbox logs`: kubectl's flags.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `POD`, or `KIND/NAME` for a workload (`deploy/web`, `job/setup`, `sts/db`, `ds/agent`).
    /// Default: every pod in the namespace.
    #[arg(conflicts_with = "selector")]
    pub target: Option<String>,
    /// Only the pods with these labels (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Only this container.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Lines from the end of each log (-1: all). Default: 50, or all with `--since`.
    #[arg(long, allow_negative_numbers = true)]
    pub tail: Option<i64>,
    /// Only lines newer than this (`30s`, `5m`, `1h30m`).
    #[arg(long, value_parser = crate::logs::parse_since)]
    pub since: Option<i64>,
    /// Keep streaming new lines, following the pods a rollout makes (Ctrl-C stops).
    #[arg(short = 'f', long, conflicts_with = "previous")]
    pub follow: bool,
    /// The previous instance of each container (the one that crashed or was restarted).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Config file, as the global `--file` (here `-f` is `--follow`, as in kubectl).
    #[arg(long = "file", id = "file", value_name = "FILE", env = "SANDBOX_FILE")]
    pub file: Option<std::path::PathBuf>,
}

impl LogsArgs {
    fn lines(&self) -> crate::logs::Lines {
        let tail = match (self.tail, self.since) {
            (Some(n), _) if n < 0 => None,
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAIL),
        };
        crate::logs::Lines {
            container: self.container.clone(),
            tail,
            since_seconds: self.since,
            previous: self.previous,
        }
    }
}

/// Lines from the end of each log when neither `--tail` nor `--since` is given.
const DEFAULT_TAIL: i64 = 50;

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
    let lines = args.lines();
    // the pods, and the selector that finds the ones a rollout makes next (none for a pod
    // named on its own)
    let (pods, selector): (Vec<Pod>, Option<String>) = match args.target.as_deref() {
        None => {
            let list = match &args.selector {
                Some(s) => ListParams::default().labels(s),
                None => ListParams::default(),
            };
            let pods = pods_api
                .list(&list)
                .await
                .map_err(Error::kube(format!(
                    "list the pods of namespace {namespace}"
                )))?
                .items;
            (pods, Some(args.selector.clone().unwrap_or_default()))
        }
        Some(target) => match target.split_once('/') {
            Some((short, name)) => {
                let (pods, selector) =
                    workload_pods(&client, &pods_api, &namespace, target, (short, name)).await?;
                (pods, Some(selector))
            }
            None => {
                let pod = pods_api
                    .get_opt(target)
                    .await
                    .map_err(Error::kube(format!("read pod {namespace}/{target}")))?
                    .ok_or_else(|| {
                        Error::Usage(format!("pod {namespace}/{target} does not exist"))
                    })?;
                (vec![pod], None)
            }
        },
    };
    if args.previous
        && pods
            .iter()
            .all(|p| crate::logs::containers(p, &lines).is_empty())
    {
        ctx.reporter
            .warn("no container of these pods has a previous instance (none has restarted)");
    }
    let warn = |message: String| ctx.reporter.warn(message);
    match (args.follow, selector) {
        (false, _) => crate::logs::print(&pods_api, &pods, &lines, &warn).await,
        // a workload, a selector or the namespace: its pods as they come and go, until Ctrl-C
        (true, Some(selector)) => {
            let selector = (!selector.is_empty()).then_some(selector);
            crate::logs::follow(pods_api, selector, lines).await
        }
        // one pod: until its containers stop
        (true, None) => crate::logs::follow_pod(&pods_api, &pods[0], &lines, &warn).await,
    }
    Ok(())
}

/// The pods of workload `short/name` (`deploy/web`; `target` as given, for messages) in
/// `namespace`, with its pod selector: what finds the pods its rollouts make next when
/// following.
async fn workload_pods(
    client: &kube::Client,
    pods_api: &Api<Pod>,
    namespace: &str,
    target: &str,
    (short, name): (&str, &str),
) -> Result<(Vec<Pod>, String), Error> {
    let (group, version, kind) = kind_of(short).ok_or_else(|| {
        Error::Usage(format!(
            "{target}: unknown kind {short:?} (deploy, sts, ds, rs, job)"
        ))
    })?;
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(Error::kube(format!("look up {kind} in {group}/{version}")))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("read {kind} {namespace}/{name}")))?
        .ok_or_else(|| Error::Usage(format!("{kind} {namespace}/{name} does not exist")))?;
    let object = serde_json::to_value(&object).expect("objects serialise");
    let selector = crate::wait::pod_selector(kind, &object, name)
        .ok_or_else(|| Error::Usage(format!("{kind} {name} has no matchLabels selector")))?;
    let pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!(
            "list the pods of {kind} {namespace}/{name}"
        )))?
        .items;
    Ok((pods, selector))
}
