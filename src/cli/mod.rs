//! The command line: one file per verb, each `run()` a short list of named calls.

pub mod apply;
pub mod build;
pub mod cluster;
pub mod completions;
pub mod dev;
pub mod dns;
pub mod down;
pub mod exec;
pub mod forward;
pub mod kubeconfig;
pub mod load;
pub mod logs;
#[cfg(test)]
mod output_schema;
pub mod status;
pub mod target;
pub mod trust;
pub mod up;
pub mod urls;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::SandboxConfig;
use crate::error::Error;
use crate::report::{Mode, Reporter};

/// A production-shaped Kubernetes sandbox on one laptop, with one command.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Sandbox name (default: `name` in sandbox.yaml, else `sandbox`).
    #[arg(long, global = true, env = "SANDBOX_NAME")]
    pub name: Option<String>,
    /// Config file (default: ./sandbox.yaml when present, else the built-in default).
    #[arg(short = 'f', long = "file", global = true, env = "SANDBOX_FILE")]
    pub file: Option<PathBuf>,
    /// Node profile: `k3s` or `offline` (default: k3s when its image is available).
    #[arg(long, global = true, env = "SANDBOX_PROFILE")]
    pub profile: Option<String>,
    /// Deploy into this namespace as a per-branch environment, with its own subdomain
    /// (`down --namespace` removes just it).
    #[arg(short = 'n', long, global = true, env = "SANDBOX_NAMESPACE")]
    pub namespace: Option<String>,
    /// Deploy to the existing cluster of this kube context (cluster mode, see `cluster:` in
    /// sandbox.yaml) instead of a Docker node of sandbox's own.
    #[arg(long, global = true, env = "SANDBOX_CONTEXT")]
    pub context: Option<String>,
    /// Result format on stdout.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Show detail (build output).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Show only warnings and the result.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// Result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document (schema/output.v1alpha1.schema.json).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot (or reuse) the node, build and load images, apply manifests, wait until ready.
    Up(up::UpArgs),
    /// Remove the sandbox's containers, network and kube context (data only with --purge).
    Down(down::DownArgs),
    /// Bring the sandbox up, then keep it up to date as the project's files change.
    Dev(dev::DevArgs),
    /// Apply the manifests to the running sandbox and wait, building nothing.
    Apply(apply::ApplyArgs),
    /// Build the configured images and load them into the running node.
    Build(build::BuildArgs),
    /// Load images from the local Docker engine into the running node.
    Load(load::LoadArgs),
    /// Print every URL of the sandbox: Ingress hosts, NodePort and LoadBalancer Services.
    Urls(urls::UrlsArgs),
    /// The embedded wildcard DNS server (`sandbox dns serve`).
    Dns(dns::DnsArgs),
    /// Print (or follow) the logs of a workload's pods.
    Logs(logs::LogsArgs),
    /// Show sandboxes and their health.
    Status(status::StatusArgs),
    /// Bring the sandbox up, run a command against it and return its exit code.
    Exec(exec::ExecArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff): `sandbox man > sandbox.1`.
    Man,
    /// Print the sandbox's kubeconfig (for KUBECONFIG=...).
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Trust the sandbox CA: install (default), uninstall, print exports for tools, or reset.
    Trust(trust::TrustArgs),
    /// The relay of the sandbox's loopback ports (started by `up`).
    #[command(hide = true)]
    Forward(forward::ForwardArgs),
}

/// Everything a command needs from the global options.
pub struct Context {
    /// Global options.
    pub global: Global,
    /// Progress reporter.
    pub reporter: Reporter,
}

impl Context {
    /// Builds the context from the parsed options.
    pub fn new(global: Global) -> Context {
        let reporter = Reporter::new(Mode::detect(global.quiet), global.verbose);
        Context { global, reporter }
    }

    /// Loads the config and applies the command-line overrides.
    pub fn config(&self) -> Result<SandboxConfig, Error> {
        let cwd = std::env::current_dir().map_err(Error::Cwd)?;
        let mut config = SandboxConfig::discover(self.global.file.as_deref(), &cwd)?;
        if let Some(name) = &self.global.name {
            crate::config::validate_name(name)
                .map_err(|message| Error::Usage(format!("--name: {message}")))?;
            config.name = name.clone();
        }
        if let Some(profile) = &self.global.profile {
            config.profile = Some(profile.clone());
        }
        if let Some(namespace) = &self.global.namespace {
            let env = crate::config::environment_name(namespace);
            if &env != namespace {
                return Err(Error::Usage(format!(
                    "--namespace {namespace:?} is not a DNS label (try {env:?})"
                )));
            }
            config.namespace = env.clone();
            config.environment = Some(env);
        }
        if let Some(context) = &self.global.context {
            // named on the command line: allowed
            config.cluster.get_or_insert_with(Default::default).context = Some(context.clone());
        }
        if let Some(profile) = &config.profile {
            // an unknown profile is bad input: say so before touching Docker
            crate::profile::Profile::named(profile)?;
        }
        Ok(config)
    }

    /// `Err` when cluster mode is selected (`--context`, or `cluster:` in the config) for
    /// `load`, which puts images into sandbox's own node: it must not act on a local node of
    /// the same name instead.
    pub fn refuse_cluster_mode(&self, command: &str) -> Result<(), Error> {
        let selected =
            self.global.context.is_some() || self.config().is_ok_and(|c| c.cluster.is_some());
        if selected {
            return Err(Error::Usage(format!(
                "`sandbox {command}` does not work in cluster mode (`--context` or \
                 `cluster:` in sandbox.yaml): images reach the cluster through \
                 `cluster.registry`, pushed by `sandbox build` and `sandbox up`"
            )));
        }
        Ok(())
    }

    /// The sandbox name without loading manifests (for down/status/kubeconfig).
    pub fn sandbox_name(&self) -> Result<String, Error> {
        Ok(self.config()?.name)
    }

    /// Prints a result: JSON as one document, or text as given.
    pub fn print(&self, json: &serde_json::Value, text: &str) {
        match self.global.output {
            Output::Json => crate::report::stdout(&format!(
                "{}\n",
                serde_json::to_string_pretty(json).expect("JSON values serialise")
            )),
            Output::Text => crate::report::stdout(text),
        }
    }
}

/// The running node of sandbox `name` and a client for its API server.
pub async fn connect(
    engine: &crate::docker::Engine,
    name: &str,
) -> Result<(crate::docker::NodeInfo, kube::Client), Error> {
    let node = crate::node::ensure_running(engine, name).await?;
    Ok((node.info, node.client))
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    if !matches!(cli.command, Command::Completions(_) | Command::Man) {
        // before anything changes: no command stops halfway for want of a directory
        crate::paths::check()?;
    }
    let ctx = Context::new(cli.global);
    match cli.command {
        Command::Up(args) => up::run(&ctx, args).await,
        Command::Down(args) => down::run(&ctx, args).await,
        Command::Dev(args) => dev::run(&ctx, args).await,
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Build(args) => build::run(&ctx, args).await,
        Command::Load(args) => {
            ctx.refuse_cluster_mode("load")?;
            load::run(&ctx, args).await
        }
        Command::Urls(args) => urls::run(&ctx, args).await,
        Command::Dns(args) => dns::run(&ctx, args).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man => completions::man(),
        Command::Exec(args) => exec::run(&ctx, args).await,
        Command::Kubeconfig(args) => kubeconfig::run(&ctx, args).await,
        Command::Trust(args) => trust::run(&ctx, args).await,
        Command::Forward(args) => forward::run(&ctx, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_everything_after_the_separator() {
        let cli = Cli::try_parse_from([
            "sandbox", "--name", "a", "exec", "--", "sh", "-c", "exit 3", "--name", "b",
        ])
        .unwrap();
        assert_eq!(cli.global.name.as_deref(), Some("a"));
        match cli.command {
            Command::Exec(args) => assert_eq!(args.command, ["sh", "-c", "exit 3", "--name", "b"]),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn logs_takes_kubectl_flags_and_the_config_file_still_reaches_every_verb() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap();
        let cli = parse(&["sandbox", "-f", "a.yaml", "logs", "-f", "-l", "app=web"]);
        assert_eq!(
            cli.global.file.as_deref(),
            Some(std::path::Path::new("a.yaml"))
        );
        match cli.command {
            Command::Logs(args) => {
                assert!(args.follow);
                assert_eq!(args.selector.as_deref(), Some("app=web"));
            }
            other => panic!("parsed as {other:?}"),
        }
        // after the verb, the config file is `--file`, and it reaches the global options
        let cli = parse(&[
            "sandbox",
            "logs",
            "--file",
            "b.yaml",
            "deploy/web",
            "--since",
            "5m",
            "-p",
        ]);
        assert_eq!(
            cli.global.file.as_deref(),
            Some(std::path::Path::new("b.yaml"))
        );
        match cli.command {
            Command::Logs(args) => {
                assert_eq!(args.since, Some(300));
                assert!(args.previous && !args.follow);
                assert_eq!(args.target.as_deref(), Some("deploy/web"));
            }
            other => panic!("parsed as {other:?}"),
        }
        // other verbs keep `-f` as the config file
        let cli = parse(&["sandbox", "up", "-f", "c.yaml"]);
        assert_eq!(
            cli.global.file.as_deref(),
            Some(std::path::Path::new("c.yaml"))
        );
        // a target and a selector, or following a previous instance, make no sense
        assert!(Cli::try_parse_from(["sandbox", "logs", "deploy/web", "-l", "a=b"]).is_err());
        assert!(Cli::try_parse_from(["sandbox", "logs", "-f", "-p"]).is_err());
        assert!(Cli::try_parse_from(["sandbox", "logs", "--since", "5"]).is_err());
    }
}
