//! `sandbox dns serve`: the embedded wildcard DNS server in the foreground.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use crate::dns::{self, Zones};
use crate::error::Error;

/// Options of `sandbox dns`.
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DnsCommand,
}

/// `sandbox dns` subcommands.
#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Serve nip.io/sslip.io-style names (and custom domains) until interrupted.
    Serve(ServeArgs),
    /// Print (or, with --install, write) the OS resolver hook that sends nip.io and
    /// sslip.io queries to the background DNS server.
    Setup(SetupArgs),
}

/// Options of `sandbox dns setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Write the files (needs root) instead of printing them.
    #[arg(long, conflicts_with = "uninstall")]
    pub install: bool,
    /// Remove the files `--install` wrote (needs root).
    #[arg(long)]
    pub uninstall: bool,
}

/// The zones the resolver hook routes to the sandbox DNS server.
const HOOK_ZONES: &[&str] = &["nip.io", "sslip.io"];
/// The systemd-resolved drop-in (systemd 246+ accepts a port in `DNS=`).
const RESOLVED_DROP_IN: &str = "/etc/systemd/resolved.conf.d/sandbox.conf";

/// One file of a resolver hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFile {
    /// Where it goes.
    pub path: std::path::PathBuf,
    /// What it holds.
    pub content: String,
}

/// The resolver hook for `os` (`macos`, or anything else for systemd-resolved): files and
/// the command that makes the OS read them.
pub fn resolver_hook(os: &str, server: SocketAddr) -> (Vec<HookFile>, Option<Vec<String>>) {
    if os == "macos" {
        let files = HOOK_ZONES
            .iter()
            .map(|zone| HookFile {
                path: std::path::PathBuf::from("/etc/resolver").join(zone),
                content: format!(
                    "# written by `sandbox dns setup --install`\nnameserver {}\nport {}\n",
                    server.ip(),
                    server.port()
                ),
            })
            .collect();
        return (files, None);
    }
    let domains: Vec<String> = HOOK_ZONES.iter().map(|z| format!("~{z}")).collect();
    let files = vec![HookFile {
        path: std::path::PathBuf::from(RESOLVED_DROP_IN),
        content: format!(
            "# written by `sandbox dns setup --install`\n[Resolve]\nDNS={server}\nDomains={}\n",
            domains.join(" ")
        ),
    }];
    let reload = ["systemctl", "restart", "systemd-resolved"]
        .map(String::from)
        .to_vec();
    (files, Some(reload))
}

/// Options of `sandbox dns serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, UDP and TCP (loopback by default: never an open resolver).
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub listen: SocketAddr,
    /// A custom domain answered with an address: `DOMAIN=IP` (repeatable), e.g.
    /// `sandbox.test=127.0.0.1` answers every name under sandbox.test.
    #[arg(long = "domain", value_parser = parse_domain)]
    pub domains: Vec<(String, IpAddr)>,
    /// Record the pid and address for `up`, `down` and `status` (how `up` runs it in the
    /// background); the record is removed on exit.
    #[arg(long, hide = true)]
    pub record: bool,
}

fn parse_domain(text: &str) -> Result<(String, IpAddr), String> {
    let (domain, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected DOMAIN=IP"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|e| format!("{text:?}: {ip:?} is not an IP address ({e})"))?;
    if domain.trim_matches('.').is_empty() {
        return Err(format!("{text:?}: empty domain"));
    }
    Ok((domain.to_string(), ip))
}

/// `sandbox dns setup`: the hook for the running server's address (the preferred one when
/// none runs yet).
async fn setup(ctx: &Context, args: SetupArgs) -> Result<(), Error> {
    let server = match crate::dns_daemon::running().await {
        Some(record) => record.address,
        None => {
            ctx.reporter.warn(format!(
                "no sandbox DNS server is running; the hook names 127.0.0.1:{} (`sandbox up` starts it there unless that port is taken)",
                crate::dns_daemon::PREFERRED_PORT
            ));
            SocketAddr::from(([127, 0, 0, 1], crate::dns_daemon::PREFERRED_PORT))
        }
    };
    let (files, reload) = resolver_hook(std::env::consts::OS, server);
    if !args.install && !args.uninstall {
        let mut text = String::new();
        for f in &files {
            text.push_str(&format!("# {}\n{}\n", f.path.display(), f.content));
        }
        if let Some(reload) = &reload {
            text.push_str(&format!("# then: {}\n", reload.join(" ")));
        }
        text.push_str("# `sandbox dns setup --install` (as root) writes these\n");
        ctx.print(&setup_json(server, &files, reload.as_deref()), &text);
        return Ok(());
    }
    for f in &files {
        let io = |action| move |source| Error::Io { action, source };
        if args.install {
            if let Some(dir) = f.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(io("create the resolver hook's directory (run as root)"))?;
            }
            std::fs::write(&f.path, &f.content)
                .map_err(io("write the resolver hook (run as root)"))?;
            ctx.reporter.info(format!("wrote {}", f.path.display()));
        } else if f.path.exists() {
            std::fs::remove_file(&f.path).map_err(io("remove the resolver hook (run as root)"))?;
            ctx.reporter.info(format!("removed {}", f.path.display()));
        }
    }
    if let Some(reload) = reload {
        let status = std::process::Command::new(&reload[0])
            .args(&reload[1..])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            ctx.reporter.warn(format!(
                "`{}` failed: restart the resolver by hand",
                reload.join(" ")
            ));
        }
    }
    Ok(())
}

/// The `DnsSetup` document: the hook's files and reload command for `server`.
pub(crate) fn setup_json(
    server: SocketAddr,
    files: &[HookFile],
    reload: Option<&[String]>,
) -> serde_json::Value {
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "DnsSetup",
        "server": server.to_string(),
        "files": files.iter().map(|f| json!({"path": f.path, "content": f.content})).collect::<Vec<_>>(),
        "reload": reload,
    })
}

/// The warning of `dns serve --listen` on an address other than loopback: the server then
/// answers whoever can reach that address, not only this machine.
fn exposure_warning(listen: SocketAddr) -> Option<String> {
    if listen.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "{listen} is not a loopback address: this DNS server now answers the network, \
         not only this machine (it still answers only its own zones and never forwards)"
    ))
}

/// Runs `sandbox dns`.
pub async fn run(ctx: &Context, args: DnsArgs) -> Result<(), Error> {
    match args.command {
        DnsCommand::Setup(setup_args) => setup(ctx, setup_args).await,
        DnsCommand::Serve(serve) => {
            let zones = serve
                .domains
                .into_iter()
                .fold(Zones::new(), |z, (d, ip)| z.with_custom(d, ip));
            if let Some(warning) = exposure_warning(serve.listen) {
                ctx.reporter.warn(warning);
            }
            ctx.reporter.info(format!(
                "answering nip.io, sslip.io, localhost{} on {} (UDP and TCP); Ctrl-C stops",
                zones
                    .custom
                    .iter()
                    .map(|(d, _)| format!(", {d}"))
                    .collect::<String>(),
                serve.listen
            ));
            let record = serve.record;
            let served = dns::run_foreground(serve.listen, zones, move |addr| {
                if record {
                    if let Err(e) = crate::dns_daemon::write_record(addr) {
                        eprintln!("{e}");
                    }
                }
            })
            .await;
            if record {
                crate::dns_daemon::remove_own_record();
            }
            served.map_err(|e| Error::Dns(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_hooks_name_the_server_and_its_port() {
        let server: SocketAddr = "127.0.0.1:15353".parse().unwrap();
        let (files, reload) = resolver_hook("linux", server);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, std::path::Path::new(RESOLVED_DROP_IN));
        assert!(files[0]
            .content
            .contains("\nDNS=127.0.0.1:15353\nDomains=~nip.io ~sslip.io\n"));
        assert_eq!(
            reload.unwrap().join(" "),
            "systemctl restart systemd-resolved"
        );
        let (files, reload) = resolver_hook("macos", server);
        assert_eq!(
            files
                .iter()
                .map(|f| f.path.to_str().unwrap())
                .collect::<Vec<_>>(),
            ["/etc/resolver/nip.io", "/etc/resolver/sslip.io"]
        );
        assert!(files[0]
            .content
            .ends_with("nameserver 127.0.0.1\nport 15353\n"));
        assert!(reload.is_none());
    }

    #[test]
    fn listening_beyond_loopback_is_warned_about() {
        for quiet in [
            "127.0.0.1:5353",
            "127.0.0.53:53",
            "[::1]:5353",
            "[::ffff:127.0.0.1]:53",
        ] {
            assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
        }
        for loud in ["0.0.0.0:5353", "[::]:53", "192.168.1.10:53", "[fd00::1]:53"] {
            let warning = exposure_warning(loud.parse().unwrap()).expect(loud);
            assert!(
                warning.starts_with(&format!("{loud} is not a loopback address")),
                "{warning}"
            );
            assert!(warning.contains("answers the network"), "{warning}");
        }
    }

    #[test]
    fn domains_parse() {
        assert_eq!(
            parse_domain("sandbox.test=127.0.0.1").unwrap(),
            ("sandbox.test".to_string(), "127.0.0.1".parse().unwrap())
        );
        assert!(parse_domain("sandbox.test").is_err());
        assert!(parse_domain("x=not-ip").is_err());
        assert!(parse_domain("=1.2.3.4").is_err());
    }
}
