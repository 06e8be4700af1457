//! `sandbox kubeconfig`: print the sandbox's kubeconfig, or write it to a file.

use std::path::PathBuf;

use clap::Args;

use super::Context;
use crate::docker::Engine;
use crate::error::Error;
use crate::node;

/// Options of `sandbox kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Write to this file (mode 0600) instead of stdout.
    #[arg(long)]
    pub write: Option<PathBuf>,
}

/// Runs `sandbox kubeconfig`.
pub async fn run(ctx: &Context, args: KubeconfigArgs) -> Result<(), Error> {
    let config = ctx.config()?;
    let kubeconfig = match config.cluster {
        // the environment's context alone, its namespace the environment
        Some(_) => {
            use super::target::Target;
            let mut target = super::cluster::ClusterTarget::new(&config)?;
            target.ensure(ctx, false).await?;
            target.access().await?.kubeconfig
        }
        None => {
            let sandbox = config.name;
            let engine = Engine::connect().await?;
            let (info, profile) = node::running(&engine, &sandbox).await?;
            node::host_kubeconfig(&engine, &info, &profile)
                .await?
                .ok_or_else(|| Error::NotFound(sandbox.clone()))?
        }
    };
    match args.write {
        Some(path) => crate::kubeconfig::write(&path, &kubeconfig)?,
        None => crate::report::stdout(
            &serde_yaml::to_string(&kubeconfig).expect("YAML trees serialise"),
        ),
    }
    Ok(())
}
