//! `sandbox dns serve`: the embedded wildcard DNS server in the foreground.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Subcommand};

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

/// Runs `sandbox dns`.
pub async fn run(ctx: &Context, args: DnsArgs) -> Result<(), Error> {
    match args.command {
        DnsCommand::Serve(serve) => {
            let zones = serve
                .domains
                .into_iter()
                .fold(Zones::new(), |z, (d, ip)| z.with_custom(d, ip));
            ctx.reporter.info(format!(
                "answering nip.io, sslip.io, localhost{} on {} (UDP and TCP); Ctrl-C stops",
                zones
                    .custom
                    .iter()
                    .map(|(d, _)| format!(", {d}"))
                    .collect::<String>(),
                serve.listen
            ));
            if !serve.record {
                return dns::run_foreground(serve.listen, zones)
                    .await
                    .map_err(|e| Error::Dns(Box::new(e)));
            }
            let server = dns::DnsServer::bind(serve.listen, zones)
                .await
                .map_err(|e| Error::Dns(Box::new(e)))?;
            crate::dns_daemon::write_record(server.local_addr())
                .map_err(|e| Error::Usage(e.to_string()))?;
            let served = server.run_until(stop_signal()).await;
            crate::dns_daemon::remove_own_record();
            served.map_err(|e| Error::Dns(Box::new(e)))
        }
    }
}

/// Resolves on SIGINT or SIGTERM (how `down` stops the background server).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
