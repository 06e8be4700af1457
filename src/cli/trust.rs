//! `sandbox trust [install|uninstall|print]`: trust the sandbox CA on this machine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use crate::error::Error;
use crate::tls::{self, Ca, CaOrigin};
use crate::trust::{self, Action, Exports, Host, Plan, StoreOutcome, StoreReport, TrustError};

/// Options of `sandbox trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// What to do (default: install).
    #[command(subcommand)]
    pub command: Option<TrustCommand>,
}

/// `sandbox trust` subcommands.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum TrustCommand {
    /// Add the CA (created if absent) to the system trust store (through sudo when not
    /// root) and to the NSS databases of Chromium and Firefox: the default.
    Install,
    /// Remove the CA from every store (the CA itself is kept).
    Uninstall,
    /// Print `export` lines pointing Node, OpenSSL, Python and curl at the CA:
    /// `eval "$(sandbox trust print)"`.
    Print,
}

/// What a `sandbox trust` run did.
enum Done {
    Stores {
        action: Action,
        plan: Plan,
        reports: Vec<StoreReport>,
    },
    Exports(Exports),
}

/// Runs `sandbox trust`.
pub async fn run(ctx: &Context, args: TrustArgs) -> Result<(), Error> {
    let command = args.command.unwrap_or(TrustCommand::Install);
    let host = Host::from_process();
    let dir = tls::default_dir();
    let reporter = ctx.reporter.clone();
    // certutil, sudo (which may ask for a password) and the CA's files block: off the runtime
    let done = tokio::task::spawn_blocking(move || -> Result<Done, TrustError> {
        match command {
            TrustCommand::Install => {
                let ca = load_ca(&dir, &reporter)?;
                let plan = trust::plan(&host, ca.cert_path(), Some(ca.ca_pem()));
                let reports = trust::apply(&host, &plan, Action::Install);
                Ok(Done::Stores {
                    action: Action::Install,
                    plan,
                    reports,
                })
            }
            TrustCommand::Uninstall => {
                let ca_path = dir.join(tls::CA_CERT_FILE);
                let ca_pem = read_optional(&ca_path)?;
                let plan = trust::plan(&host, &ca_path, ca_pem.as_deref());
                let reports = trust::apply(&host, &plan, Action::Uninstall);
                Ok(Done::Stores {
                    action: Action::Uninstall,
                    plan,
                    reports,
                })
            }
            TrustCommand::Print => {
                let ca = load_ca(&dir, &reporter)?;
                let exports = trust::write_bundle(&host, ca.cert_path(), ca.ca_pem())?;
                if exports.system_bundle.is_none() {
                    reporter
                        .warn("no system CA bundle found: the bundle holds only the sandbox CA");
                }
                Ok(Done::Exports(exports))
            }
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    match done {
        Done::Exports(exports) => print_exports(ctx, &exports),
        Done::Stores {
            action,
            plan,
            reports,
        } => print_stores(ctx, action, &plan, &reports)?,
    }
    Ok(())
}

/// The user's CA, created when there is none.
fn load_ca(dir: &Path, reporter: &crate::report::Reporter) -> Result<Ca, TrustError> {
    let ca = Ca::load_or_create(dir, &[])?;
    match ca.origin() {
        CaOrigin::Created => reporter.info(format!("created the ca {}", ca.cert_path().display())),
        CaOrigin::Replaced { .. } => reporter.info(format!(
            "replaced the ca {} (expiring, or without name constraints): the stores get the new one",
            ca.cert_path().display()
        )),
        CaOrigin::Loaded => {}
    }
    Ok(ca)
}

fn read_optional(path: &Path) -> Result<Option<String>, TrustError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrustError::ReadCa {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn print_exports(ctx: &Context, exports: &Exports) {
    ctx.print(&exports_json(exports), &exports.shell());
}

/// The `TrustExports` document.
pub(crate) fn exports_json(exports: &Exports) -> serde_json::Value {
    let env: serde_json::Map<String, serde_json::Value> = exports
        .variables()
        .into_iter()
        .map(|(name, path)| (name.to_string(), json!(path)))
        .collect();
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "TrustExports",
        "ca": exports.ca_cert,
        "bundle": exports.bundle,
        "systemBundle": exports.system_bundle,
        "env": env,
    })
}

/// Prints the stores' outcomes: the result on success, on stderr before the error otherwise.
fn print_stores(
    ctx: &Context,
    action: Action,
    plan: &Plan,
    reports: &[StoreReport],
) -> Result<(), Error> {
    let text = render(plan, reports);
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome.is_failure())
        .map(|r| format!("{}: {}", r.label, r.outcome))
        .collect();
    if !failed.is_empty() {
        eprint!("{text}");
        let manual = reports
            .iter()
            .filter_map(|r| match &r.outcome {
                StoreOutcome::NeedsRoot(cmds) => Some(cmds.iter().map(|c| c.to_string())),
                _ => None,
            })
            .flatten()
            .collect();
        let retry = match action {
            Action::Install => "sandbox trust",
            Action::Uninstall => "sandbox trust uninstall",
        };
        return Err(TrustError::Incomplete {
            failed,
            manual,
            retry,
        }
        .into());
    }
    ctx.print(&result_json(action, plan, reports), &text);
    if action == Action::Install {
        ctx.reporter.info(
            "restart browsers to pick it up; for Node, OpenSSL, Python and curl: \
             eval \"$(sandbox trust print)\"",
        );
    }
    Ok(())
}

/// The `TrustResult` document.
pub(crate) fn result_json(
    action: Action,
    plan: &Plan,
    reports: &[StoreReport],
) -> serde_json::Value {
    let action_name = match action {
        Action::Install => "install",
        Action::Uninstall => "uninstall",
    };
    let stores: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({
                "store": r.label,
                "location": r.location,
                "result": r.outcome.name(),
                "detail": r.outcome.detail(),
            })
        })
        .collect();
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "TrustResult",
        "action": action_name,
        "ca": plan.ca_path,
        "nickname": plan.nickname,
        "stores": stores,
    })
}

/// One line for the CA, then one per store: `LABEL: OUTCOME (LOCATION)`.
fn render(plan: &Plan, reports: &[StoreReport]) -> String {
    let mut text = format!("ca {} as {}\n", plan.ca_path.display(), plan.nickname);
    for r in reports {
        let location = r
            .location
            .as_ref()
            .map(|l: &PathBuf| format!(" ({})", l.display()))
            .unwrap_or_default();
        text.push_str(&format!("  {}: {}{location}\n", r.label, r.outcome));
        if let StoreOutcome::NeedsRoot(cmds) = &r.outcome {
            for cmd in cmds {
                text.push_str(&format!("    # {cmd}\n"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn install_is_the_default() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Trust(a) => a.command,
            other => panic!("parsed as {other:?}"),
        };
        assert!(parse(&["sandbox", "trust"]).is_none());
        assert!(matches!(
            parse(&["sandbox", "trust", "uninstall"]),
            Some(TrustCommand::Uninstall)
        ));
        assert!(matches!(
            parse(&["sandbox", "-o", "json", "trust", "print"]),
            Some(TrustCommand::Print)
        ));
    }

    #[test]
    fn renders_one_line_per_store() {
        let plan = Plan {
            nickname: "sandbox-ca-me".into(),
            ca_path: "/h/ca.crt".into(),
            ca_pem: None,
            common_name: None,
            stores: Vec::new(),
            skipped: Vec::new(),
        };
        let cmd = trust::Cmd {
            program: "update-ca-certificates".into(),
            args: Vec::new(),
            may_fail: false,
            input: None,
        };
        let reports = [
            StoreReport {
                label: "system (debian)".into(),
                location: Some("/usr/local/share/ca-certificates/sandbox-ca-me.crt".into()),
                outcome: StoreOutcome::NeedsRoot(vec![cmd]),
            },
            StoreReport {
                label: "nss (chromium)".into(),
                location: Some("/h/.pki/nssdb".into()),
                outcome: StoreOutcome::AlreadyPresent,
            },
            StoreReport {
                label: "nss (chromium, firefox)".into(),
                location: None,
                outcome: StoreOutcome::Skipped("certutil not found".into()),
            },
        ];
        assert_eq!(
            render(&plan, &reports),
            "ca /h/ca.crt as sandbox-ca-me\n\
             \x20 system (debian): needs root: sudo is not available; run as root \
             (/usr/local/share/ca-certificates/sandbox-ca-me.crt)\n\
             \x20   # update-ca-certificates\n\
             \x20 nss (chromium): already present (/h/.pki/nssdb)\n\
             \x20 nss (chromium, firefox): skipped: certutil not found\n"
        );
    }
}
