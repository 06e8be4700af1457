//! `sandbox dev`: `up`, then watch the files an `up` reads and bring the sandbox up to date
//! on every change (one update per burst of changes), streaming the project's pod logs in
//! between. Ctrl-C stops watching and leaves the sandbox up (`--down` removes it).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kube::api::Api;
use notify::Watcher;

use super::Context;
use crate::config::SandboxConfig;
use crate::error::Error;
use crate::watch::{Burst, Inputs, SyncFile, Touched};

/// Options of `sandbox dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Remove the sandbox (data volume kept) when `dev` stops.
    #[arg(long)]
    pub down: bool,
    /// Do not stream the project's pod logs.
    #[arg(long)]
    pub no_logs: bool,
    /// Roll the project's Deployments out with every new pod at once (`maxSurge: 100%`,
    /// `maxUnavailable: 0`) while `dev` runs, instead of their own strategy.
    #[arg(long)]
    pub fast_rollout: bool,
}

/// Runs `sandbox dev` until Ctrl-C (exit 130).
pub async fn run(ctx: &Context, args: DevArgs) -> Result<(), Error> {
    let config = SandboxConfig {
        fast_rollout: args.fast_rollout,
        ..ctx.config()?
    };
    if config.cluster.is_some() {
        return Err(Error::Usage(
            "`sandbox dev` does not work in cluster mode yet; `sandbox up` does".into(),
        ));
    }
    let looped = watch_loop(ctx, &config, &args);
    let stopped = tokio::select! {
        result = looped => result,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
    };
    if args.down {
        let target = super::target::NodeTarget::new(&config).await?;
        let lock = super::target::Target::lock(&target, ctx).await?;
        let removed = super::target::Target::remove(&target, ctx).await;
        lock.release().await;
        if removed? {
            ctx.reporter
                .info(format!("sandbox {} removed", config.name));
        }
    } else if matches!(stopped, Err(Error::Interrupted)) {
        ctx.reporter.info(format!(
            "stopped watching; sandbox {} stays up (`sandbox down` removes it)",
            config.name
        ));
    }
    stopped
}

/// The first `up`, then an update per burst of changes, forever.
async fn watch_loop(ctx: &Context, config: &SandboxConfig, args: &DevArgs) -> Result<(), Error> {
    let outcome = crate::up::bring_up(&ctx.reporter, config).await?;
    eprint!("{}", outcome.text());
    if !args.no_logs {
        // the pods running now from their next line, later ones from their first
        let lines = crate::logs::Lines {
            tail: Some(0),
            ..Default::default()
        };
        let pods = Api::namespaced(outcome.node.client.clone(), &config.namespace);
        tokio::spawn(crate::logs::follow(pods, None, lines));
    }
    // a sync execs in the containers: an upgrade, which the multiplexed client cannot do
    let client = crate::node::upgrading_client_for(
        &outcome.node.kubeconfig,
        &crate::plan::Names::of(&config.name).context,
    )
    .await?;
    // what the pods run of each image: a sync goes into those containers
    let mut references = references_of(&outcome);
    let (events, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut config = config.clone();
    let mut inputs = Inputs::of(&config);
    let mut watcher = watch(&inputs, events.clone())?;
    ctx.reporter.info(format!(
        "watching the project's files for changes ({} watched; Ctrl-C stops, the sandbox \
         stays up)",
        match inputs.roots().len() {
            1 => "1 directory".to_string(),
            n => format!("{n} directories"),
        }
    ));
    let mut update = 0;
    loop {
        let Some(burst) = next_burst(&mut changes, &inputs).await else {
            return Ok(());
        };
        update += 1;
        let started = Instant::now();
        let trigger = burst.describe(&config.base_dir);
        ctx.reporter
            .info(format!("update {update}: {trigger} changed"));
        if burst.touched.contains(&Touched::Config) {
            // sandbox.yaml or a .dockerignore: what is read, and so watched, may differ
            let Some(reread) = reread_config(ctx, args, update) else {
                continue;
            };
            config = reread;
            inputs = Inputs::of(&config);
            drop(watcher);
            watcher = watch(&inputs, events.clone())?;
        }
        // only files under sync rules changed: into the running containers, no rebuild
        if let Some(files) = inputs.sync_plan(&burst) {
            if synced(ctx, &config, &client, &references, &files, update, started).await {
                continue;
            }
        }
        // anything else (or a sync that failed): a full `up`, whose images the pods now run
        if let Some(rebuilt) = rebuild(ctx, &config, update, started).await {
            references = rebuilt;
        }
    }
}

/// The next burst of changes from `changes` (its paths that are inputs of the sandbox,
/// from the first such until they stop coming for a while), or `None` once nothing can
/// send any more.
async fn next_burst(
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    inputs: &Inputs,
) -> Option<Burst> {
    // the first change that is an input of the sandbox begins a burst
    let mut burst = loop {
        let path = changes.recv().await?;
        let touched = inputs.touched(&path);
        if !touched.is_empty() {
            let mut burst = Burst::new(Instant::now());
            burst.add(path, touched, Instant::now());
            break burst;
        }
    };
    // the rest of the burst, until it is quiet
    loop {
        let due = tokio::time::Instant::from_std(burst.due());
        match tokio::time::timeout_at(due, changes.recv()).await {
            Ok(Some(path)) => {
                let touched = inputs.touched(&path);
                if !touched.is_empty() {
                    burst.add(path, touched, Instant::now());
                }
            }
            Ok(None) => return None,
            Err(_) => break,
        }
    }
    Some(burst)
}

/// The config read again for update `update` (with `dev`'s `--fast-rollout`), or `None`
/// when it cannot be read, which is warned of: the update is skipped, the loop goes on
/// with the config it had until the next change.
fn reread_config(ctx: &Context, args: &DevArgs, update: u32) -> Option<SandboxConfig> {
    match ctx.config() {
        Ok(c) => Some(SandboxConfig {
            fast_rollout: args.fast_rollout,
            ..c
        }),
        Err(e) => {
            ctx.reporter.warn(format!(
                "update {update} failed: {e}; watching for the next change"
            ));
            None
        }
    }
}

/// Update `update` by a sync of `files` into the running containers (through `client`,
/// into those running `references`' images), said when done; whether it was done (else
/// why not is said and the caller rebuilds).
async fn synced(
    ctx: &Context,
    config: &SandboxConfig,
    client: &kube::Client,
    references: &std::collections::BTreeMap<String, String>,
    files: &[SyncFile],
    update: u32,
    started: Instant,
) -> bool {
    let synced =
        crate::sync::sync(client, &config.namespace, &config.images, references, files).await;
    match synced {
        Ok(synced) => {
            ctx.reporter.info(format!(
                "update {update} done in {:.1}s: {} synced into {} (no build, no \
                 restart)",
                started.elapsed().as_secs_f64(),
                crate::report::count(synced.files, "file"),
                crate::report::count(synced.containers, "container"),
            ));
            true
        }
        Err(reason) => {
            ctx.reporter.info(format!(
                "update {update}: not synced ({reason}); rebuilding"
            ));
            false
        }
    }
}

/// Update `update` by a full `up` of `config`, said when done, or warned of with its
/// causes when it failed (the loop goes on: the next change may fix it); the references
/// the pods now run when it was done.
async fn rebuild(
    ctx: &Context,
    config: &SandboxConfig,
    update: u32,
    started: Instant,
) -> Option<std::collections::BTreeMap<String, String>> {
    match crate::up::bring_up(&ctx.reporter, config).await {
        Ok(outcome) => {
            let references = references_of(&outcome);
            ctx.reporter.info(format!(
                "update {update} done in {:.1}s: {}",
                started.elapsed().as_secs_f64(),
                summary(&outcome)
            ));
            Some(references)
        }
        Err(e) => {
            let mut message = format!("update {update} failed: {e}");
            for cause in e.chain() {
                message.push_str(&format!("\n  caused by: {cause}"));
            }
            ctx.reporter
                .warn(format!("{message}\nwatching for the next change"));
            None
        }
    }
}

/// Each configured image's name → the reference the manifests run.
fn references_of(outcome: &crate::up::Outcome) -> std::collections::BTreeMap<String, String> {
    outcome
        .built
        .iter()
        .map(|b| (b.name.clone(), b.reference.clone()))
        .collect()
}

/// What an update did, in a few words.
fn summary(outcome: &crate::up::Outcome) -> String {
    if outcome.unchanged {
        return "nothing to build, load or apply".into();
    }
    let changed = outcome.applied.iter().filter(|a| a.changed).count();
    format!(
        "{} loaded, {} changed, ready ({})",
        crate::report::count(outcome.loaded.len(), "image"),
        crate::report::count(changed, "object"),
        outcome.timings.describe()
    )
}

/// A watcher of every root of `inputs`, sending each changed path to `events`.
fn watch(
    inputs: &Inputs,
    events: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> Result<notify::RecommendedWatcher, Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        for path in event.paths {
            let _ = events.send(path);
        }
    })
    .map_err(watch_error)?;
    for (dir, recursive) in inputs.roots() {
        if !dir.is_dir() {
            // a directory that does not exist yet (secrets/ before its first file)
            continue;
        }
        let mode = if *recursive {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode).map_err(watch_error)?;
    }
    Ok(watcher)
}

fn watch_error(e: notify::Error) -> Error {
    Error::Io {
        action: "watch the project's files",
        source: std::io::Error::other(e.to_string()),
    }
}
