//! `sandbox trust [install|uninstall|print|reset]`: trust the sandbox CA on this machine.

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
    /// Replace the CA (one refused as too broad, too): remove the old one from every store,
    /// make a new one and install it where the old one was. Certificates the old one issued
    /// stop being trusted until `sandbox up` reissues them.
    Reset,
}

/// What a `sandbox trust` run did.
enum Done {
    Stores {
        action: Action,
        plan: Plan,
        reports: Vec<StoreReport>,
        /// The command to run again when a store failed.
        retry: &'static str,
    },
    Exports(Exports),
    Reset(Reset),
}

/// What `sandbox trust reset` did, once the old CA left every store.
struct Reset {
    /// The old CA's removal from every store, when there was an old CA.
    removed: Option<(Plan, Vec<StoreReport>)>,
    /// The new CA, to be put where the old one was removed from.
    plan: Plan,
    /// The new CA's outcome in those stores.
    reports: Vec<StoreReport>,
    /// The bundle of `sandbox trust print`, rewritten for the new CA, when there was one.
    bundle: Option<PathBuf>,
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
                    retry: "sandbox trust",
                })
            }
            TrustCommand::Uninstall => {
                // by name, the CA unchecked: a refused CA must be removable too
                let (plan, reports) = uninstall(&host, &dir)?;
                Ok(Done::Stores {
                    action: Action::Uninstall,
                    plan,
                    reports,
                    retry: "sandbox trust uninstall",
                })
            }
            TrustCommand::Reset => reset(&host, &dir, &reporter),
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
            retry,
        } => print_stores(ctx, action, &plan, &reports, retry)?,
        Done::Reset(reset) => print_reset(ctx, &reset)?,
    }
    Ok(())
}

/// Takes the CA in `dir` (whatever it is) out of every store, by its name.
fn uninstall(host: &Host, dir: &Path) -> Result<(Plan, Vec<StoreReport>), TrustError> {
    let ca_path = dir.join(tls::CA_CERT_FILE);
    let ca_pem = read_optional(&ca_path)?;
    let plan = trust::plan(host, &ca_path, ca_pem.as_deref());
    let reports = trust::apply(host, &plan, Action::Uninstall);
    Ok((plan, reports))
}

/// `sandbox trust reset`: the old CA out of every store, then a new CA, put where the old
/// one was. A store that keeps the old CA stops the reset before the old CA's files go (it
/// would stay trusted, and `sandbox trust uninstall` could no longer name it on macOS).
fn reset(host: &Host, dir: &Path, reporter: &crate::report::Reporter) -> Result<Done, TrustError> {
    let removed = if dir.join(tls::CA_CERT_FILE).exists() {
        let (plan, reports) = uninstall(host, dir)?;
        if reports.iter().any(|r| r.outcome.is_failure()) {
            reporter.warn(format!(
                "the old ca in {} is kept: a store still holds it",
                dir.display()
            ));
            return Ok(Done::Stores {
                action: Action::Uninstall,
                plan,
                reports,
                retry: "sandbox trust reset",
            });
        }
        Some((plan, reports))
    } else {
        None
    };
    let ca = Ca::reset(dir)?;
    // tools pointed at the bundle would go on trusting the old CA
    let bundle = match dir.join(trust::BUNDLE_FILE).exists() {
        true => Some(trust::write_bundle(host, ca.cert_path(), ca.ca_pem())?.bundle),
        false => None,
    };
    let plan = trust::plan(host, ca.cert_path(), Some(ca.ca_pem()));
    let old_reports = removed.as_ref().map_or(&[][..], |(_, r)| r.as_slice());
    let plan = trust::where_removed(plan, old_reports);
    let reports = trust::apply(host, &plan, Action::Install);
    Ok(Done::Reset(Reset {
        removed,
        plan,
        reports,
        bundle,
    }))
}

/// Prints what `sandbox trust reset` did, and what it breaks.
fn print_reset(ctx: &Context, reset: &Reset) -> Result<(), Error> {
    let mut text = match &reset.removed {
        Some((plan, reports)) => render("old ca", plan, reports),
        None => format!(
            "no old ca in {}\n",
            reset
                .plan
                .ca_path
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
        ),
    };
    text.push_str(&render("new ca", &reset.plan, &reset.reports));
    let failed = failures(&reset.reports);
    if !failed.is_empty() {
        eprint!("{text}");
        return Err(TrustError::Incomplete {
            failed,
            manual: manual(&reset.reports),
            retry: "sandbox trust",
        }
        .into());
    }
    let mut json = result_json(Action::Install, &reset.plan, &reset.reports);
    json["previous"] = match &reset.removed {
        Some((plan, reports)) => json!({"ca": plan.ca_path, "stores": stores_json(reports)}),
        None => serde_json::Value::Null,
    };
    ctx.print(&json, &text);
    if let Some(bundle) = &reset.bundle {
        ctx.reporter
            .info(format!("rewrote {} for the new ca", bundle.display()));
    }
    if reset.plan.stores.is_empty() {
        ctx.reporter.info(
            "the old ca was in no trust store, nor is the new one: `sandbox trust` installs it",
        );
    } else {
        ctx.reporter.info("restart browsers to pick up the new ca");
    }
    if reset.removed.is_some() {
        ctx.reporter.warn(
            "certificates the old ca issued are no longer trusted: run `sandbox up` again for \
             each running sandbox, which reissues them (and its sandbox-ca ConfigMap) from the new ca",
        );
    }
    Ok(())
}

/// The user's CA, created when there is none; one that is too broad is refused.
fn load_ca(dir: &Path, reporter: &crate::report::Reporter) -> Result<Ca, TrustError> {
    let ca = Ca::load_or_create(dir, &[])?;
    match ca.origin() {
        CaOrigin::Created => reporter.info(format!("created the ca {}", ca.cert_path().display())),
        CaOrigin::Replaced { .. } => reporter.info(format!(
            "replaced the ca {} (expiring, or not covering the sandbox zones): the stores get the new one",
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
    retry: &'static str,
) -> Result<(), Error> {
    let text = render("ca", plan, reports);
    let failed = failures(reports);
    if !failed.is_empty() {
        eprint!("{text}");
        return Err(TrustError::Incomplete {
            failed,
            manual: manual(reports),
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

/// One line per store that failed: its name and why.
fn failures(reports: &[StoreReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|r| r.outcome.is_failure())
        .map(|r| format!("{}: {}", r.label, r.outcome))
        .collect()
}

/// The commands to run as root for the stores that need root, when sudo is unavailable.
fn manual(reports: &[StoreReport]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| match &r.outcome {
            StoreOutcome::NeedsRoot(cmds) => Some(cmds.iter().map(|c| c.to_string())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The `TrustResult` document (`sandbox trust reset` adds `previous`: the old CA's file and
/// its removal from each store, or null when there was none).
pub(crate) fn result_json(
    action: Action,
    plan: &Plan,
    reports: &[StoreReport],
) -> serde_json::Value {
    let action_name = match action {
        Action::Install => "install",
        Action::Uninstall => "uninstall",
    };
    json!({
        "apiVersion": crate::config::API_VERSION,
        "kind": "TrustResult",
        "action": action_name,
        "ca": plan.ca_path,
        "nickname": plan.nickname,
        "stores": stores_json(reports),
    })
}

fn stores_json(reports: &[StoreReport]) -> Vec<serde_json::Value> {
    reports
        .iter()
        .map(|r| {
            json!({
                "store": r.label,
                "location": r.location,
                "result": r.outcome.name(),
                "detail": r.outcome.detail(),
            })
        })
        .collect()
}

/// One line for the CA (`TITLE PATH as NICKNAME`), then one per store:
/// `LABEL: OUTCOME (LOCATION)`.
fn render(title: &str, plan: &Plan, reports: &[StoreReport]) -> String {
    let mut text = format!("{title} {} as {}\n", plan.ca_path.display(), plan.nickname);
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
        assert!(matches!(
            parse(&["sandbox", "trust", "reset"]),
            Some(TrustCommand::Reset)
        ));
    }

    /// A CA without name constraints, as an old or foreign tool might have left in `dir`;
    /// returns its certificate.
    fn write_unconstrained_ca(dir: &Path) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(tls::CA_CERT_FILE), &pem).unwrap();
        fs::write(dir.join(tls::CA_KEY_FILE), key.serialize_pem()).unwrap();
        pem
    }

    /// A Debian host under `root` whose system store holds `installed` as the user `me`'s
    /// CA, with a stub `update-ca-certificates` in `tools` and, when `sudo_log` is given, a
    /// sudo there that logs what it is asked to run (and what `tee` reads) instead.
    fn debian_host(root: &Path, tools: &Path, installed: &str, sudo_log: Option<&Path>) -> Host {
        use std::os::unix::fs::PermissionsExt;
        let script = |name: &str, body: String| {
            let path = tools.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}exit 0\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("update-ca-certificates", String::new());
        if let Some(log) = sudo_log {
            let log = log.display();
            script(
                "sudo",
                format!("printf '%s\\n' \"$*\" >> '{log}'\n[ \"$2\" = tee ] && cat >> '{log}'\n"),
            );
        }
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/os-release"), "ID=debian\n").unwrap();
        let anchors = root.join("usr/local/share/ca-certificates");
        fs::create_dir_all(&anchors).unwrap();
        fs::write(anchors.join("sandbox-ca-me.crt"), installed).unwrap();
        Host {
            root: root.to_path_buf(),
            home: Some(root.join("home")),
            user: "me".into(),
            os: "linux".into(),
            is_root: false,
            path: vec![tools.to_path_buf()],
        }
    }

    #[test]
    fn a_reset_removes_the_refused_ca_then_puts_a_new_one_where_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let old = write_unconstrained_ca(&dir);
        assert!(matches!(
            Ca::load_or_create(&dir, &[]),
            Err(tls::TlsError::CaTooBroad { .. })
        ));
        fs::write(dir.join(trust::BUNDLE_FILE), &old).unwrap();
        let tools = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sudo.log");
        let root = tmp.path().join("root");
        let host = debian_host(&root, tools.path(), &old, Some(&log));
        let reporter = crate::report::Reporter::new(crate::report::Mode::Quiet, false);

        let Done::Reset(reset) = reset(&host, &dir, &reporter).unwrap() else {
            panic!("the reset stopped");
        };
        let (old_plan, removed) = reset.removed.as_ref().unwrap();
        assert_eq!(old_plan.ca_pem.as_deref(), Some(old.as_str()));
        let outcome = |reports: &[StoreReport], label: &str| {
            reports
                .iter()
                .find(|r| r.label == label)
                .map(|r| r.outcome.clone())
        };
        assert_eq!(
            outcome(removed, "system (debian)"),
            Some(StoreOutcome::Removed)
        );
        // the new CA goes where the old one was, and only there
        let labels: Vec<&str> = reset.plan.stores.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["system (debian)"]);
        assert_eq!(
            outcome(&reset.reports, "system (debian)"),
            Some(StoreOutcome::Installed)
        );
        let new = Ca::load_or_create(&dir, &[]).unwrap();
        assert_eq!(new.origin(), &tls::CaOrigin::Loaded);
        assert_ne!(new.ca_pem(), old);
        assert_eq!(reset.plan.ca_pem.as_deref(), Some(new.ca_pem()));
        // old out first, then new in, each program by name and the new CA on stdin
        let location = root.join("usr/local/share/ca-certificates/sandbox-ca-me.crt");
        let location = location.display();
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!(
                "-- rm -f {location}\n-- update-ca-certificates --fresh\n\
                 -- tee {location}\n{pem}-- chmod 0644 {location}\n-- update-ca-certificates\n",
                pem = new.ca_pem()
            )
        );
        // the bundle of `trust print` follows: the old CA is no longer in it
        assert_eq!(reset.bundle, Some(dir.join(trust::BUNDLE_FILE)));
        let bundle = fs::read_to_string(dir.join(trust::BUNDLE_FILE)).unwrap();
        assert!(trust::contains_cert(&bundle, new.ca_pem()));
        assert!(!trust::contains_cert(&bundle, &old));
    }

    #[test]
    fn a_reset_keeps_the_old_ca_while_a_store_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let old = write_unconstrained_ca(&dir);
        let key = fs::read_to_string(dir.join(tls::CA_KEY_FILE)).unwrap();
        let tools = tempfile::tempdir().unwrap();
        // no sudo: the system store cannot let the old CA go
        let host = debian_host(&tmp.path().join("root"), tools.path(), &old, None);
        let reporter = crate::report::Reporter::new(crate::report::Mode::Quiet, false);
        let Done::Stores {
            action,
            reports,
            retry,
            ..
        } = reset(&host, &dir, &reporter).unwrap()
        else {
            panic!("the reset went on with the old ca still trusted");
        };
        assert_eq!(action, Action::Uninstall);
        assert_eq!(retry, "sandbox trust reset");
        assert!(reports
            .iter()
            .any(|r| matches!(r.outcome, StoreOutcome::NeedsRoot(_))));
        assert_eq!(
            fs::read_to_string(dir.join(tls::CA_CERT_FILE)).unwrap(),
            old
        );
        assert_eq!(fs::read_to_string(dir.join(tls::CA_KEY_FILE)).unwrap(), key);
    }

    #[test]
    fn a_reset_without_an_old_ca_makes_one_and_installs_it_nowhere() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let host = Host {
            root: tmp.path().join("root"),
            home: Some(tmp.path().join("home")),
            user: "me".into(),
            os: "linux".into(),
            is_root: false,
            path: Vec::new(),
        };
        let reporter = crate::report::Reporter::new(crate::report::Mode::Quiet, false);
        let Done::Reset(reset) = reset(&host, &dir, &reporter).unwrap() else {
            panic!("the reset stopped");
        };
        assert!(reset.removed.is_none() && reset.bundle.is_none());
        assert!(reset.plan.stores.is_empty() && reset.reports.is_empty());
        assert_eq!(
            Ca::load_or_create(&dir, &[]).unwrap().origin(),
            &tls::CaOrigin::Loaded
        );
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
            render("ca", &plan, &reports),
            "ca /h/ca.crt as sandbox-ca-me\n\
             \x20 system (debian): needs root: sudo is not available; run as root \
             (/usr/local/share/ca-certificates/sandbox-ca-me.crt)\n\
             \x20   # update-ca-certificates\n\
             \x20 nss (chromium): already present (/h/.pki/nssdb)\n\
             \x20 nss (chromium, firefox): skipped: certutil not found\n"
        );
    }
}
