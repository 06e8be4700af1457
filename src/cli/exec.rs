//! `sandbox exec -- CMD ARGS...`: bring the sandbox up, run CMD against it, return CMD's
//! exit code (and tear down with `--down`).

use std::collections::BTreeMap;

use clap::Args;

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

/// The environment CMD gets: the sandbox's kubeconfig and context, and its URLs.
pub fn environment(
    outcome: &super::up::Outcome,
    kubeconfig: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("KUBECONFIG".to_string(), kubeconfig.display().to_string());
    env.insert("SANDBOX_NAME".to_string(), outcome.config.name.clone());
    env.insert(
        "SANDBOX_CONTEXT".to_string(),
        crate::plan::Names::of(&outcome.config.name).context,
    );
    env.insert(
        "SANDBOX_NAMESPACE".to_string(),
        outcome.config.namespace.clone(),
    );
    env.insert(
        "SANDBOX_API_SERVER".to_string(),
        format!("https://127.0.0.1:{}", outcome.node.ports.api),
    );
    env.extend(crate::urls::variables(&outcome.urls));
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
    let outcome = super::up::bring_up(ctx, &config).await?;
    // a kubeconfig of its own, so CMD's kubectl talks to this sandbox whatever the user's default
    let dir = tempfile::tempdir().map_err(|source| Error::Io {
        action: "create a temporary directory for the command's kubeconfig",
        source,
    })?;
    let kubeconfig = dir.path().join("kubeconfig");
    crate::kubeconfig::write(&kubeconfig, &outcome.node.kubeconfig)?;
    let mut env = environment(&outcome, &kubeconfig);
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
        let engine = crate::docker::Engine::connect().await?;
        let _lock = crate::lock::acquire(&config.name, &ctx.reporter).await?;
        crate::node::remove(&engine, &config.name, false).await?;
        ctx.reporter
            .info(format!("sandbox {} removed", config.name));
    }
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Exit(code))
    }
}
