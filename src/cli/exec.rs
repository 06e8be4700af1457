//! `sandbox exec -- CMD ARGS...`: bring the sandbox up, run CMD against it, return CMD's
//! exit code (and tear down with `--down`).

use std::collections::BTreeMap;

use clap::Args;

use super::target::{Access, Target};
use super::Context;
use crate::error::Error;

/// Options of `sandbox exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Tear the sandbox down (keeping its data volume) after CMD, whatever its result.
    #[arg(long)]
    pub down: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The environment CMD gets: the target's kubeconfig and context, and its URLs.
pub fn environment(
    config: &crate::config::SandboxConfig,
    access: &Access,
    urls: &[crate::urls::Url],
    kubeconfig: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("KUBECONFIG".to_string(), kubeconfig.display().to_string());
    env.insert("SANDBOX_NAME".to_string(), config.name.clone());
    env.insert("SANDBOX_CONTEXT".to_string(), access.context.clone());
    env.insert("SANDBOX_NAMESPACE".to_string(), config.namespace.clone());
    env.insert("SANDBOX_API_SERVER".to_string(), access.server.clone());
    env.extend(crate::urls::variables(urls));
    env
}

/// `NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE` and the like, pointing at the sandbox CA and a
/// bundle of the system's CAs plus it.
fn ca_exports() -> Result<Vec<(String, String)>, Error> {
    let ca = crate::tls::Ca::load_or_create(&crate::tls::default_dir(), &[])?;
    let host = crate::trust::Host::from_process();
    let exports = crate::trust::write_bundle(&host, ca.cert_path(), ca.ca_pem())?;
    Ok(exports
        .variables()
        .into_iter()
        .map(|(name, path)| (name.to_string(), path.display().to_string()))
        .collect())
}

/// Runs `sandbox exec`; returns CMD's exit code through [`Error::Exit`] when non-zero.
pub async fn run(ctx: &Context, args: ExecArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    // `up`: the laptop's, or the environment's in cluster mode
    let (target, access, urls): (Box<dyn Target>, Access, Vec<crate::urls::Url>) = match config
        .cluster
    {
        Some(_) => {
            crate::up::validate_manifests(&config)?;
            let mut target = super::cluster::ClusterTarget::new(&config)?;
            let done =
                super::target::up(&mut target, ctx, super::target::build_all(ctx, &config)).await?;
            let access = target.access().await?;
            (Box::new(target), access, done.urls)
        }
        None => {
            let outcome = crate::up::bring_up(&ctx.reporter, &config).await?;
            let access = Access {
                kubeconfig: outcome.node.kubeconfig.clone(),
                context: crate::plan::Names::of(&config.name).context,
                server: format!("https://127.0.0.1:{}", outcome.node.ports.api),
            };
            let target = super::target::NodeTarget::new(&config).await?;
            (Box::new(target), access, outcome.urls)
        }
    };
    // a kubeconfig of its own, so CMD's kubectl talks to this sandbox whatever the user's default
    let dir = tempfile::tempdir().map_err(|source| Error::Io {
        action: "create a temporary directory for the command's kubeconfig",
        source,
    })?;
    let kubeconfig = dir.path().join("kubeconfig");
    crate::kubeconfig::write(&kubeconfig, &access.kubeconfig)?;
    let mut env = environment(&config, &access, &urls, &kubeconfig);
    // the CA exports of `sandbox trust print`, so that CMD's HTTPS clients trust the sandbox
    match ca_exports() {
        Ok(vars) => env.extend(vars),
        Err(e) => ctx
            .reporter
            .warn(format!("the command runs without the CA exports: {e}")),
    }
    ctx.reporter
        .info(format!("running {}", args.command.join(" ")));
    let status = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .envs(&env)
        .status()
        .await;
    let code = match status {
        Ok(status) => status.code().unwrap_or(128),
        Err(e) => {
            ctx.reporter
                .warn(format!("cannot run {}: {e}", args.command[0]));
            if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    if args.down {
        let lock = target.lock(ctx).await?;
        let removed = target.remove(ctx).await;
        lock.release().await;
        if removed? {
            ctx.reporter.info(format!("{} removed", target.describe()));
        }
    }
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Exit(code))
    }
}
