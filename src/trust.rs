//! Trusting the sandbox CA outside the cluster: the operating system's trust store
//! (Debian/Ubuntu, Fedora/RHEL, macOS), the NSS databases of Chromium and Firefox (when
//! `certutil` exists), and a CA bundle for tools that read `SSL_CERT_FILE` and friends.
//!
//! Planning is pure: [`plan`] turns a [`Host`] (root directory, home, user, OS, `PATH`,
//! filled from the process in production and from temporary directories in tests) into
//! [`Store`]s, and each store says which [`Cmd`]s install or remove the CA. [`apply`] then
//! checks each store, runs its commands (the system store's through `sudo` when not root)
//! and reports a [`StoreOutcome`] per store. Every store gets the CA under one per-user
//! name ([`nickname`]), so that re-installing replaces and two users of one machine do not
//! clash.
//!
//! What runs as root is named, never located through the user's `PATH` (a directory there
//! that the user can write would otherwise choose what root runs): `sudo -- NAME ...`,
//! where sudo finds `NAME` itself, or, when sandbox already runs as root, `NAME` from
//! [`ROOT_DIRS`]. And root never reads the user's CA file: the certificate sandbox checked
//! reaches it on standard input ([`CertInput`]), as mkcert does, so that the file cannot
//! be swapped between the check and the read.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// File name of the bundle (the system's CAs and the sandbox CA) inside the CA directory.
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The macOS keychain the CA is added to.
pub const MACOS_KEYCHAIN: &str = "/Library/Keychains/System.keychain";
/// Where a Linux system keeps its CA bundle, most common first (the list Go uses).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "etc/ssl/ca-bundle.pem",
    "etc/pki/tls/cacert.pem",
    "etc/ssl/cert.pem",
];
/// NSS trust flags of the CA: a trusted issuer of TLS server certificates, nothing else.
const NSS_TRUST: &str = "C,,";
/// Directories searched for system tools besides `PATH` (a user's `PATH` often lacks them).
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];
/// Where a root command is found when sandbox itself runs as root: system directories only
/// (`PATH` may be the user's, carried over by `sudo -E`), none a user can write on any
/// supported system (unlike `/usr/local/bin`, which Homebrew gives the user on Intel Macs).
pub const ROOT_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// Where macOS's `security`, which takes the CA from a file only, reads it: root's home,
/// `root:wheel` mode 0750, where no other user can create, replace or link a file between
/// `sudo -- tee` writing it and `security` reading it (unlike `/tmp`).
pub const MACOS_STAGING_DIR: &str = "/var/root";
/// How many duplicates of one nickname an NSS uninstall removes before giving up.
const MAX_NSS_DELETES: usize = 8;

/// Errors of trusting the CA.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] crate::tls::TlsError),
    /// The CA certificate could not be read.
    #[error("cannot read the ca certificate {path}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The system's CA bundle could not be read.
    #[error("cannot read the system ca bundle {path}")]
    ReadBundle {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The bundle for `SSL_CERT_FILE` could not be written.
    #[error("cannot write the ca bundle {path}")]
    WriteBundle {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Some stores were not updated; the others were.
    #[error(
        "{} not updated: {}",
        crate::report::count(.failed.len(), "trust store"),
        .failed.join("; ")
    )]
    Incomplete {
        /// One line per store that failed: its name and why.
        failed: Vec<String>,
        /// Commands to run as root for the stores that need it, when sudo is unavailable.
        manual: Vec<String>,
        /// The command to run again afterwards (`sandbox trust`, `sandbox trust reset`).
        retry: &'static str,
    },
}

impl TrustError {
    /// A suggestion, when there is a likely fix.
    pub fn hint(&self) -> Option<String> {
        match self {
            TrustError::Incomplete { manual, retry, .. } if !manual.is_empty() => Some(format!(
                "run as root, then `{retry}` again: {}",
                manual.join(" && ")
            )),
            _ => None,
        }
    }
}

/// What the planning needs to know about the machine, so that tests can point it at
/// temporary directories instead of the real system and home.
#[derive(Debug, Clone)]
pub struct Host {
    /// The file system root the system stores and bundles are under (`/` in production).
    pub root: PathBuf,
    /// The user's home, where the NSS databases are (none with HOME unset: then there are
    /// no per-user stores, rather than a shared directory taken for the user's).
    pub home: Option<PathBuf>,
    /// The user's name, part of [`nickname`].
    pub user: String,
    /// The operating system, as `std::env::consts::OS` names it (`linux`, `macos`).
    pub os: String,
    /// Whether the process runs as root (system stores need it, or sudo).
    pub is_root: bool,
    /// Where tools are looked up (`PATH`).
    pub path: Vec<PathBuf>,
}

impl Host {
    /// The machine this process runs on.
    pub fn from_process() -> Host {
        // the one rule of crate::paths: an absolute HOME, else none
        let home = crate::paths::home(crate::paths::HOME).ok();
        let user = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "user".into());
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Host {
            root: PathBuf::from("/"),
            home,
            user,
            os: std::env::consts::OS.to_string(),
            is_root: effective_uid() == Some(0),
            path,
        }
    }

    /// The executable `name` in `PATH` or the sbin directories.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.find_in(name, true)
    }

    /// The executable `name` in [`ROOT_DIRS`], for running it as root.
    fn find_for_root(name: &str) -> Option<PathBuf> {
        ROOT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| is_executable(p))
    }

    fn find_in(&self, name: &str, sbin: bool) -> Option<PathBuf> {
        let sbin_dirs = if sbin { SBIN_DIRS } else { &[] };
        self.path
            .iter()
            .cloned()
            .chain(sbin_dirs.iter().map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    }

    fn under_root(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The uid of this process, from /proc (Linux) or `id -u` (macOS).
fn effective_uid() -> Option<u32> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The name the CA gets in every store: `sandbox-ca-<user>`, with characters other than
/// letters, digits, `.`, `_` and `-` replaced by `-`.
pub fn nickname(user: &str) -> String {
    let user: String = user
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let user = if user.is_empty() { "user".into() } else { user };
    format!("sandbox-ca-{user}")
}

/// The operating system's trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemStore {
    /// Debian, Ubuntu and derivatives: `/usr/local/share/ca-certificates` and
    /// `update-ca-certificates`.
    Debian,
    /// Fedora, RHEL, CentOS and derivatives: `/etc/pki/ca-trust/source/anchors` and
    /// `update-ca-trust extract`.
    Fedora,
    /// macOS: the System keychain, through `security`.
    MacOs,
}

impl SystemStore {
    /// The store of an OS (`std::env::consts::OS`) with this `/etc/os-release` content;
    /// `None` when it is not one we know how to update.
    pub fn detect(os: &str, os_release: Option<&str>) -> Option<SystemStore> {
        if os == "macos" {
            return Some(SystemStore::MacOs);
        }
        if os != "linux" {
            return None;
        }
        let release = os_release?;
        let field = |key: &str| {
            release
                .lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().trim_matches(['"', '\'']).to_ascii_lowercase())
                .unwrap_or_default()
        };
        let id = field("ID");
        let like = field("ID_LIKE");
        let ids: Vec<&str> = std::iter::once(id.as_str())
            .chain(like.split_whitespace())
            .collect();
        // ID first: an ID_LIKE listing both families (rare) defers to the distribution itself
        ids.iter().find_map(|id| match *id {
            "debian" | "ubuntu" => Some(SystemStore::Debian),
            "fedora" | "rhel" | "centos" => Some(SystemStore::Fedora),
            _ => None,
        })
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SystemStore::Debian => "debian",
            SystemStore::Fedora => "fedora",
            SystemStore::MacOs => "macos",
        }
    }

    /// The tool that must exist for this store to be updated.
    fn tool(self) -> &'static str {
        match self {
            SystemStore::Debian => "update-ca-certificates",
            SystemStore::Fedora => "update-ca-trust",
            SystemStore::MacOs => "security",
        }
    }

    /// Where the CA goes: its file (Linux) or the keychain (macOS).
    fn location(self, host: &Host, nickname: &str) -> PathBuf {
        match self {
            SystemStore::Debian => {
                host.under_root(&format!("usr/local/share/ca-certificates/{nickname}.crt"))
            }
            SystemStore::Fedora => {
                host.under_root(&format!("etc/pki/ca-trust/source/anchors/{nickname}.pem"))
            }
            SystemStore::MacOs => host.under_root(MACOS_KEYCHAIN),
        }
    }
}

/// One trust store the CA can be put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// What kind of store.
    pub kind: StoreKind,
    /// Its name in reports: `system (debian)`, `nss (chromium)`, `nss (firefox PROFILE)`.
    pub label: String,
    /// The CA's file (Linux system stores), the keychain, or the NSS database directory.
    pub location: PathBuf,
}

/// The kinds of trust stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The operating system's store (needs root).
    System(SystemStore),
    /// An NSS database (Chromium's shared one, a Firefox profile's); `create` when it does
    /// not exist yet (Chromium's, created on install).
    Nss {
        /// Create the database first.
        create: bool,
    },
}

/// A store that cannot be updated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The store's name in reports.
    pub label: String,
    /// Why it is skipped.
    pub reason: String,
}

/// Where the CA goes on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The CA's name in every store ([`nickname`]).
    pub nickname: String,
    /// The CA certificate file.
    pub ca_path: PathBuf,
    /// The CA certificate as read and checked (install puts exactly this in the stores),
    /// when the CA exists.
    pub ca_pem: Option<String>,
    /// The CA's common name (macOS deletes by it), when the CA exists.
    pub common_name: Option<String>,
    /// The stores to update, system store first.
    pub stores: Vec<Store>,
    /// The stores that cannot be updated here.
    pub skipped: Vec<Skipped>,
}

/// Plans where the CA at `ca_path` (PEM `ca_pem`, when it exists) goes on `host`.
pub fn plan(host: &Host, ca_path: &Path, ca_pem: Option<&str>) -> Plan {
    let nickname = nickname(&host.user);
    let mut stores = Vec::new();
    let mut skipped = Vec::new();
    let os_release = fs::read_to_string(host.under_root("etc/os-release"))
        .or_else(|_| fs::read_to_string(host.under_root("usr/lib/os-release")))
        .ok();
    match SystemStore::detect(&host.os, os_release.as_deref()) {
        Some(system) if host.find(system.tool()).is_some() => stores.push(Store {
            kind: StoreKind::System(system),
            label: format!("system ({})", system.name()),
            location: system.location(host, &nickname),
        }),
        Some(system) => skipped.push(Skipped {
            label: format!("system ({})", system.name()),
            reason: format!("{} not found", system.tool()),
        }),
        None => skipped.push(Skipped {
            label: "system".into(),
            reason: format!(
                "no supported trust store on this {} (Debian/Ubuntu, Fedora/RHEL and macOS are)",
                host.os
            ),
        }),
    }
    if host.find("certutil").is_some() {
        stores.extend(nss_databases(host));
    } else {
        let hint = if host.os == "macos" {
            "brew install nss"
        } else {
            "apt-get install libnss3-tools, or dnf install nss-tools"
        };
        skipped.push(Skipped {
            label: "nss (chromium, firefox)".into(),
            reason: format!("certutil not found ({hint})"),
        });
    }
    Plan {
        nickname,
        ca_path: ca_path.to_path_buf(),
        ca_pem: ca_pem.map(str::to_string),
        common_name: ca_pem.and_then(common_name),
        stores,
        skipped,
    }
}

/// The NSS databases of `host`'s user: Chromium's (Linux, created when missing) and every
/// Firefox profile holding a `cert9.db`.
pub fn nss_databases(host: &Host) -> Vec<Store> {
    let mut stores = Vec::new();
    let Some(home) = &host.home else {
        return stores;
    };
    if host.os == "linux" {
        let db = home.join(".pki/nssdb");
        stores.push(Store {
            kind: StoreKind::Nss {
                create: !db.join("cert9.db").exists(),
            },
            label: "nss (chromium)".into(),
            location: db,
        });
    }
    for (dir, what) in [
        (".mozilla/firefox", "firefox"),
        ("snap/firefox/common/.mozilla/firefox", "firefox snap"),
        ("Library/Application Support/Firefox/Profiles", "firefox"),
    ] {
        let Ok(entries) = fs::read_dir(home.join(dir)) else {
            continue;
        };
        let mut profiles: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("cert9.db").is_file())
            .collect();
        profiles.sort();
        for profile in profiles {
            let name = profile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            stores.push(Store {
                kind: StoreKind::Nss { create: false },
                label: format!("nss ({what} {name})"),
                location: profile,
            });
        }
    }
    stores
}

/// A command to run, shown exactly as it would be typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// The program, by name.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Whether a failure is expected and harmless (removing what may be absent).
    pub may_fail: bool,
    /// The CA certificate it reads on standard input, when it reads one.
    pub input: Option<CertInput>,
}

/// The CA certificate a command reads on standard input, from sandbox's memory: the bytes
/// sandbox read and checked, not a file the user could change in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInput {
    /// The PEM text written to the command's standard input.
    pub pem: String,
    /// The file it was read from, to show the command as a shell runs it (`< FILE`).
    pub file: PathBuf,
}

impl Cmd {
    fn new(program: &str, args: &[&str]) -> Cmd {
        Cmd {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            may_fail: false,
            input: None,
        }
    }

    fn may_fail(mut self) -> Cmd {
        self.may_fail = true;
        self
    }

    /// This command reading the CA of `plan` on standard input.
    fn reading_ca(mut self, plan: &Plan) -> Cmd {
        self.input = Some(CertInput {
            pem: plan.ca_pem.clone().unwrap_or_default(),
            file: plan.ca_path.clone(),
        });
        self
    }

    /// This command as run through sudo: `sudo -- PROGRAM ARGS...`, the program by name
    /// (sudo finds it, in its `secure_path` where sudoers sets one), its input still on
    /// standard input.
    pub fn elevated(&self) -> Cmd {
        let mut args = vec!["--".to_string(), self.program.clone()];
        args.extend(self.args.iter().cloned());
        Cmd {
            program: "sudo".into(),
            args,
            ..self.clone()
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        if let Some(input) = &self.input {
            write!(f, " < {}", shell_quote(&lossy(&input.file)))?;
        }
        Ok(())
    }
}

/// `text` as one shell word: unchanged when it is plain, else in single quotes.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Root's copy of the CA for macOS's `security`, in [`MACOS_STAGING_DIR`].
fn macos_staging(nickname: &str) -> PathBuf {
    Path::new(MACOS_STAGING_DIR).join(format!("{nickname}.pem"))
}

impl Store {
    /// Whether updating the store needs root.
    pub fn needs_root(&self) -> bool {
        matches!(self.kind, StoreKind::System(_))
    }

    fn nss_db(&self) -> String {
        format!("sql:{}", self.location.display())
    }

    /// The commands that put the CA of `plan` in this store, replacing an older one of the
    /// same name. Each reads the CA on standard input or from a root-owned copy, never from
    /// [`Plan::ca_path`]. An NSS database to create is created first (its directory by
    /// [`apply`]).
    pub fn install_commands(&self, plan: &Plan) -> Vec<Cmd> {
        let location = lossy(&self.location);
        match self.kind {
            // tee creates the file under root's umask: chmod makes it readable as before
            StoreKind::System(SystemStore::Debian) => vec![
                Cmd::new("tee", &[&location]).reading_ca(plan),
                Cmd::new("chmod", &["0644", &location]),
                Cmd::new("update-ca-certificates", &[]),
            ],
            StoreKind::System(SystemStore::Fedora) => vec![
                Cmd::new("tee", &[&location]).reading_ca(plan),
                Cmd::new("chmod", &["0644", &location]),
                Cmd::new("update-ca-trust", &["extract"]),
            ],
            StoreKind::System(SystemStore::MacOs) => {
                let mut cmds = Vec::new();
                if let Some(cn) = &plan.common_name {
                    cmds.push(
                        Cmd::new(
                            "security",
                            &["delete-certificate", "-c", cn, "-t", &location],
                        )
                        .may_fail(),
                    );
                }
                // security reads a file only: root's own copy (see MACOS_STAGING_DIR)
                let staged = lossy(&macos_staging(&plan.nickname));
                cmds.extend([
                    Cmd::new("tee", &[&staged]).reading_ca(plan),
                    Cmd::new(
                        "security",
                        &[
                            "add-trusted-cert",
                            "-d",
                            "-r",
                            "trustRoot",
                            "-k",
                            &location,
                            &staged,
                        ],
                    ),
                    Cmd::new("rm", &["-f", &staged]),
                ]);
                cmds
            }
            StoreKind::Nss { create } => {
                let db = self.nss_db();
                let mut cmds = Vec::new();
                if create {
                    cmds.push(Cmd::new("certutil", &["-N", "--empty-password", "-d", &db]));
                } else {
                    cmds.push(
                        Cmd::new("certutil", &["-D", "-d", &db, "-n", &plan.nickname]).may_fail(),
                    );
                }
                // without -i, certutil reads the certificate on standard input
                cmds.push(
                    Cmd::new(
                        "certutil",
                        &["-A", "-d", &db, "-t", NSS_TRUST, "-n", &plan.nickname],
                    )
                    .reading_ca(plan),
                );
                cmds
            }
        }
    }

    /// The commands that take the CA out of this store.
    pub fn uninstall_commands(&self, plan: &Plan) -> Vec<Cmd> {
        let location = lossy(&self.location);
        match self.kind {
            StoreKind::System(SystemStore::Debian) => vec![
                Cmd::new("rm", &["-f", &location]),
                Cmd::new("update-ca-certificates", &["--fresh"]),
            ],
            StoreKind::System(SystemStore::Fedora) => vec![
                Cmd::new("rm", &["-f", &location]),
                Cmd::new("update-ca-trust", &["extract"]),
            ],
            StoreKind::System(SystemStore::MacOs) => {
                let mut cmds = Vec::new();
                if plan.ca_pem.is_some() {
                    // the admin trust setting goes by the certificate: root's own copy of it
                    let staged = lossy(&macos_staging(&plan.nickname));
                    cmds.extend([
                        Cmd::new("tee", &[&staged]).reading_ca(plan).may_fail(),
                        Cmd::new("security", &["remove-trusted-cert", "-d", &staged]).may_fail(),
                        Cmd::new("rm", &["-f", &staged]).may_fail(),
                    ]);
                }
                if let Some(cn) = &plan.common_name {
                    cmds.push(Cmd::new(
                        "security",
                        &["delete-certificate", "-c", cn, "-t", &location],
                    ));
                }
                cmds
            }
            StoreKind::Nss { .. } => vec![Cmd::new(
                "certutil",
                &["-D", "-d", &self.nss_db(), "-n", &plan.nickname],
            )],
        }
    }
}

/// What to do with the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Put it in every store.
    Install,
    /// Take it out of every store.
    Uninstall,
}

/// What happened to one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The CA was put in.
    Installed,
    /// The CA was there already.
    AlreadyPresent,
    /// The CA was taken out.
    Removed,
    /// The CA was not there.
    NotPresent,
    /// The store cannot be updated here.
    Skipped(String),
    /// The store needs root and sudo is unavailable: these commands are to be run as root.
    NeedsRoot(Vec<Cmd>),
    /// A command failed.
    Failed(String),
}

impl StoreOutcome {
    /// Its name in JSON: `installed`, `already-present`, `removed`, `not-present`,
    /// `skipped`, `needs-root`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            StoreOutcome::Installed => "installed",
            StoreOutcome::AlreadyPresent => "already-present",
            StoreOutcome::Removed => "removed",
            StoreOutcome::NotPresent => "not-present",
            StoreOutcome::Skipped(_) => "skipped",
            StoreOutcome::NeedsRoot(_) => "needs-root",
            StoreOutcome::Failed(_) => "failed",
        }
    }

    /// The reason or failure, when there is one.
    pub fn detail(&self) -> Option<String> {
        match self {
            StoreOutcome::Skipped(why) | StoreOutcome::Failed(why) => Some(why.clone()),
            StoreOutcome::NeedsRoot(_) => Some("sudo is not available; run as root".into()),
            _ => None,
        }
    }

    /// Whether the store is not as asked.
    pub fn is_failure(&self) -> bool {
        matches!(self, StoreOutcome::NeedsRoot(_) | StoreOutcome::Failed(_))
    }
}

impl fmt::Display for StoreOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.name().replace('-', " ");
        match self.detail() {
            Some(detail) => write!(f, "{text}: {detail}"),
            None => write!(f, "{text}"),
        }
    }
}

/// One store's name, location and outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReport {
    /// The store's name.
    pub label: String,
    /// Its location, when it has one.
    pub location: Option<PathBuf>,
    /// What happened.
    pub outcome: StoreOutcome,
}

/// Installs or uninstalls the CA in every store of `plan`, one after the other, and
/// reports on each (skipped ones included); a store's failure does not stop the others.
/// Install puts [`Plan::ca_pem`] in; uninstall removes whatever carries the CA's name.
pub fn apply(host: &Host, plan: &Plan, action: Action) -> Vec<StoreReport> {
    let mut reports: Vec<StoreReport> = plan
        .skipped
        .iter()
        .map(|s| StoreReport {
            label: s.label.clone(),
            location: None,
            outcome: StoreOutcome::Skipped(s.reason.clone()),
        })
        .collect();
    // only from PATH: a test's host without sudo on its PATH never elevates
    let sudo = if host.is_root {
        None
    } else {
        host.find_in("sudo", false)
    };
    for store in &plan.stores {
        let outcome = apply_store(host, plan, store, action, sudo.as_deref());
        reports.push(StoreReport {
            label: store.label.clone(),
            location: Some(store.location.clone()),
            outcome,
        });
    }
    // the system store first, as planned; skipped ones last
    reports.rotate_left(plan.skipped.len());
    reports
}

/// Who runs a command.
#[derive(Debug, Clone, Copy)]
enum Runner<'a> {
    /// This process's user, the program found with [`Host::find`].
    User,
    /// Root, through this sudo: `sudo -- NAME ...` ([`Cmd::elevated`]).
    Sudo(&'a Path),
    /// This process, already root: the program from [`ROOT_DIRS`].
    Root,
}

fn apply_store(
    host: &Host,
    plan: &Plan,
    store: &Store,
    action: Action,
    sudo: Option<&Path>,
) -> StoreOutcome {
    // install looks for this very CA; uninstall removes whatever carries the name
    let present = match (action, plan.ca_pem.as_deref()) {
        (Action::Install, None) => return StoreOutcome::Failed("no ca to install".into()),
        (Action::Install, Some(pem)) => holds(host, plan, store, Some(pem)),
        (Action::Uninstall, _) => holds(host, plan, store, None),
    };
    let commands = match (action, present) {
        (Action::Install, true) => return StoreOutcome::AlreadyPresent,
        (Action::Uninstall, false) => return StoreOutcome::NotPresent,
        (Action::Install, false) => store.install_commands(plan),
        (Action::Uninstall, true) => store.uninstall_commands(plan),
    };
    let runner = match (store.needs_root(), host.is_root, sudo) {
        (false, _, _) => Runner::User,
        (true, true, _) => Runner::Root,
        (true, false, Some(sudo)) => Runner::Sudo(sudo),
        (true, false, None) => return StoreOutcome::NeedsRoot(commands),
    };
    if let StoreKind::Nss { create: true } = store.kind {
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&store.location)
        {
            return StoreOutcome::Failed(format!(
                "cannot create {}: {e}",
                store.location.display()
            ));
        }
    }
    for cmd in &commands {
        let result = run(host, cmd, runner);
        if let Err(failure) = result {
            if !cmd.may_fail {
                return StoreOutcome::Failed(failure);
            }
        }
    }
    if action == Action::Uninstall && matches!(store.kind, StoreKind::Nss { .. }) {
        // NSS may hold several certificates under one nickname: remove them all
        for _ in 0..MAX_NSS_DELETES {
            if !holds(host, plan, store, None) {
                break;
            }
            if let Err(failure) = run(host, &store.uninstall_commands(plan)[0], Runner::User) {
                return StoreOutcome::Failed(failure);
            }
        }
    }
    match action {
        Action::Install => StoreOutcome::Installed,
        Action::Uninstall => StoreOutcome::Removed,
    }
}

/// `plan`, of a new CA, narrowed to the stores that `reports`, of the old CA's uninstall,
/// say it was removed from: where `sandbox trust reset` puts the new CA. The skipped stores
/// were reported with the old CA already.
pub fn where_removed(mut plan: Plan, reports: &[StoreReport]) -> Plan {
    let removed: Vec<&str> = reports
        .iter()
        .filter(|r| r.outcome == StoreOutcome::Removed)
        .map(|r| r.label.as_str())
        .collect();
    plan.stores.retain(|s| removed.contains(&s.label.as_str()));
    plan.skipped.clear();
    plan
}

/// Whether `store` holds the CA: this very certificate when `ca_pem` is given, else
/// anything under its name.
fn holds(host: &Host, plan: &Plan, store: &Store, ca_pem: Option<&str>) -> bool {
    let matches = |found: &str| ca_pem.is_none_or(|pem| contains_cert(found, pem));
    match store.kind {
        StoreKind::System(SystemStore::Debian | SystemStore::Fedora) => {
            let Ok(file) = fs::read_to_string(&store.location) else {
                return false;
            };
            // the file alone is not enough: the last update of the bundle may have failed
            matches(&file)
                && match (ca_pem, system_bundle(host)) {
                    (Some(pem), Some(bundle)) => {
                        fs::read_to_string(bundle).is_ok_and(|b| contains_cert(&b, pem))
                    }
                    _ => true,
                }
        }
        StoreKind::System(SystemStore::MacOs) => {
            let Some(cn) = &plan.common_name else {
                return false;
            };
            let location = lossy(&store.location);
            let cmd = Cmd::new(
                "security",
                &["find-certificate", "-a", "-c", cn, "-p", &location],
            );
            run(host, &cmd, Runner::User).is_ok_and(|out| !out.trim().is_empty() && matches(&out))
        }
        StoreKind::Nss { create: true } => false,
        StoreKind::Nss { create: false } => {
            let cmd = Cmd::new(
                "certutil",
                &["-L", "-d", &store.nss_db(), "-n", &plan.nickname, "-a"],
            );
            run(host, &cmd, Runner::User).is_ok_and(|out| matches(&out))
        }
    }
}

/// Runs `cmd` as `runner` says, its [`CertInput`] written to its standard input, returning
/// its stdout, or a one-line failure.
fn run(host: &Host, cmd: &Cmd, runner: Runner<'_>) -> Result<String, String> {
    let not_found = || format!("{} not found", cmd.program);
    let (program, shown) = match runner {
        Runner::User => (host.find(&cmd.program).ok_or_else(not_found)?, cmd.clone()),
        Runner::Sudo(sudo) => (sudo.to_path_buf(), cmd.elevated()),
        Runner::Root => (
            Host::find_for_root(&cmd.program).ok_or_else(not_found)?,
            cmd.clone(),
        ),
    };
    let mut command = Command::new(&program);
    command
        .args(shown.args.iter().map(OsStr::new))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // without input, stdin stays the terminal's (sudo prompts on the terminal either way)
    command.stdin(match cmd.input {
        Some(_) => Stdio::piped(),
        None => Stdio::inherit(),
    });
    let mut child = command.spawn().map_err(|e| format!("`{shown}`: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (&cmd.input, child.stdin.take()) {
        // a certificate fits the pipe's buffer: written before reading the output, it
        // cannot block; a command that exits without reading it fails on its own status
        let _ = stdin.write_all(input.pem.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{shown}`: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "`{shown}` failed ({}){}",
        out.status,
        last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
    ))
}

/// The base64 body of the first PEM certificate of `pem`, without whitespace.
fn pem_body(pem: &str) -> Option<String> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    (!body.is_empty()).then_some(body)
}

/// Whether the PEM text `haystack` (a file, a bundle) holds the certificate `cert_pem`.
pub fn contains_cert(haystack: &str, cert_pem: &str) -> bool {
    let Some(body) = pem_body(cert_pem) else {
        return false;
    };
    let flat: String = haystack.chars().filter(|c| !c.is_whitespace()).collect();
    flat.contains(&format!(
        "-----BEGINCERTIFICATE-----{body}-----ENDCERTIFICATE-----"
    ))
}

/// The subject common name of a PEM certificate.
fn common_name(pem: &str) -> Option<String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = parsed.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The system's CA bundle on `host`, the first of [`SYSTEM_BUNDLES`] that exists.
pub fn system_bundle(host: &Host) -> Option<PathBuf> {
    SYSTEM_BUNDLES
        .iter()
        .map(|p| host.under_root(p))
        .find(|p| p.is_file())
}

/// The files `sandbox trust print` points the environment at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exports {
    /// The CA certificate alone (`NODE_EXTRA_CA_CERTS` adds it to Node's own CAs).
    pub ca_cert: PathBuf,
    /// The system's CAs and the sandbox CA (`SSL_CERT_FILE` and friends replace the
    /// system's bundle rather than adding to it).
    pub bundle: PathBuf,
    /// The system bundle it was made from, when one was found.
    pub system_bundle: Option<PathBuf>,
}

impl Exports {
    /// The environment variables and their values, in the order they are printed.
    pub fn variables(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("NODE_EXTRA_CA_CERTS", self.ca_cert.as_path()),
            ("SSL_CERT_FILE", self.bundle.as_path()),
            ("REQUESTS_CA_BUNDLE", self.bundle.as_path()),
            ("CURL_CA_BUNDLE", self.bundle.as_path()),
        ]
    }

    /// The `export NAME=VALUE` lines, for `eval "$(sandbox trust print)"`.
    pub fn shell(&self) -> String {
        self.variables()
            .iter()
            .map(|(name, path)| format!("export {name}={}\n", shell_quote(&lossy(path))))
            .collect()
    }
}

/// Writes [`BUNDLE_FILE`] next to the CA at `ca_path`: the system bundle of `host` and the
/// CA (unless the system bundle holds it already, when it is trusted system-wide).
pub fn write_bundle(host: &Host, ca_path: &Path, ca_pem: &str) -> Result<Exports, TrustError> {
    let dir = ca_path.parent().unwrap_or(Path::new("."));
    let bundle = dir.join(BUNDLE_FILE);
    let system = system_bundle(host);
    let mut text = match &system {
        Some(path) => fs::read_to_string(path).map_err(|source| TrustError::ReadBundle {
            path: path.clone(),
            source,
        })?,
        None => String::new(),
    };
    if !contains_cert(&text, ca_pem) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(ca_pem);
    }
    let write_error = |source| TrustError::WriteBundle {
        path: bundle.clone(),
        source,
    };
    // written beside its final name and renamed: a shell reading it never sees half a file
    let mut tmp = tempfile::Builder::new()
        .prefix(".bundle")
        .tempfile_in(dir)
        .map_err(write_error)?;
    tmp.write_all(text.as_bytes()).map_err(write_error)?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(write_error)?;
    tmp.persist(&bundle).map_err(|e| write_error(e.error))?;
    Ok(Exports {
        ca_cert: ca_path.to_path_buf(),
        bundle,
        system_bundle: system,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Ca;

    fn host(root: &Path, home: &Path, os: &str) -> Host {
        Host {
            root: root.to_path_buf(),
            home: Some(home.to_path_buf()),
            user: "me".into(),
            os: os.into(),
            is_root: false,
            path: Vec::new(),
        }
    }

    /// A directory holding an executable stub for each of `tools`.
    fn tool_dir(tools: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for tool in tools {
            let path = dir.path().join(tool);
            fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn system_store_by_os_release() {
        let cases = [
            ("ID=debian\nVERSION_ID=\"12\"\n", Some(SystemStore::Debian)),
            ("ID=ubuntu\nID_LIKE=debian\n", Some(SystemStore::Debian)),
            (
                "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n",
                Some(SystemStore::Debian),
            ),
            (
                "ID=pop\nID_LIKE=\"ubuntu debian\"\n",
                Some(SystemStore::Debian),
            ),
            ("ID=fedora\n", Some(SystemStore::Fedora)),
            (
                "ID=\"rhel\"\nID_LIKE=\"fedora\"\n",
                Some(SystemStore::Fedora),
            ),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
                Some(SystemStore::Fedora),
            ),
            (
                "ID=almalinux\nID_LIKE='rhel centos fedora'\n",
                Some(SystemStore::Fedora),
            ),
            ("ID=arch\n", None),
            ("ID=alpine\n", None),
            ("", None),
        ];
        for (release, expected) in cases {
            assert_eq!(
                SystemStore::detect("linux", Some(release)),
                expected,
                "{release:?}"
            );
        }
        assert_eq!(SystemStore::detect("linux", None), None);
        assert_eq!(SystemStore::detect("macos", None), Some(SystemStore::MacOs));
        assert_eq!(SystemStore::detect("freebsd", Some("ID=debian")), None);
    }

    #[test]
    fn nickname_is_per_user_and_safe() {
        assert_eq!(nickname("alice"), "sandbox-ca-alice");
        assert_eq!(nickname("first.last_1"), "sandbox-ca-first.last_1");
        assert_eq!(nickname("DOMAIN\\bob smith"), "sandbox-ca-DOMAIN-bob-smith");
        assert_eq!(nickname("  "), "sandbox-ca-user");
        assert_ne!(nickname("alice"), nickname("bob"));
    }

    #[test]
    fn plans_by_platform_and_tools() {
        let root = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let tools = tool_dir(&["update-ca-certificates", "certutil"]);
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/os-release"),
            "ID=ubuntu\nID_LIKE=debian\n",
        )
        .unwrap();
        let firefox = home.path().join(".mozilla/firefox");
        for (profile, db) in [("b.default", true), ("a.dev", true), ("c.empty", false)] {
            fs::create_dir_all(firefox.join(profile)).unwrap();
            if db {
                fs::write(firefox.join(profile).join("cert9.db"), "").unwrap();
            }
        }
        let mut h = host(root.path(), home.path(), "linux");
        h.path = vec![tools.path().to_path_buf()];
        let ca = Path::new("/ca/ca.crt");
        let p = plan(&h, ca, None);
        assert_eq!(p.nickname, "sandbox-ca-me");
        let labels: Vec<&str> = p.stores.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "system (debian)",
                "nss (chromium)",
                "nss (firefox a.dev)",
                "nss (firefox b.default)"
            ]
        );
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        assert_eq!(
            p.stores[0].location,
            root.path()
                .join("usr/local/share/ca-certificates/sandbox-ca-me.crt")
        );
        assert_eq!(p.stores[1].kind, StoreKind::Nss { create: true });
        assert_eq!(p.stores[1].location, home.path().join(".pki/nssdb"));
        assert_eq!(p.stores[2].kind, StoreKind::Nss { create: false });
        assert!(p.stores[0].needs_root() && !p.stores[1].needs_root());
        // the commands name their programs: nothing found on PATH is written into them
        let tools_dir = tools.path().display().to_string();
        let with_ca = Plan {
            ca_pem: Some(PEM.into()),
            ..p.clone()
        };
        for store in &with_ca.stores {
            let planned = [
                store.install_commands(&with_ca),
                store.uninstall_commands(&with_ca),
            ];
            for cmd in planned.iter().flatten() {
                assert!(!cmd.program.contains('/'), "{cmd}");
                let run_as = if store.needs_root() {
                    cmd.elevated()
                } else {
                    cmd.clone()
                };
                assert!(!run_as.to_string().contains(&tools_dir), "{run_as}");
            }
        }

        // No tools: the system store and NSS are skipped, saying why.
        h.path = Vec::new();
        let fedora = tempfile::tempdir().unwrap();
        fs::create_dir_all(fedora.path().join("etc")).unwrap();
        fs::write(fedora.path().join("etc/os-release"), "ID=fedora\n").unwrap();
        h.root = fedora.path().to_path_buf();
        let p = plan(&h, ca, None);
        // update-ca-trust may exist in the real sbin dirs; certutil is only looked up there too
        if h.find("update-ca-trust").is_none() {
            assert_eq!(p.skipped[0].label, "system (fedora)");
            assert_eq!(p.skipped[0].reason, "update-ca-trust not found");
        }
        if h.find("certutil").is_none() {
            assert!(p
                .skipped
                .iter()
                .any(|s| s.reason.contains("certutil not found")));
        }

        // An unknown distribution: no system store.
        h.root = home.path().to_path_buf();
        let p = plan(&h, ca, None);
        assert_eq!(p.skipped[0].label, "system");
        assert!(p.skipped[0].reason.contains("no supported trust store"));

        // macOS: the System keychain; Chromium uses it, so no NSS database of its own.
        let mut mac = host(Path::new("/"), home.path(), "macos");
        mac.path = vec![tools.path().to_path_buf()];
        fs::write(tools.path().join("security"), "").unwrap();
        fs::set_permissions(
            tools.path().join("security"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let p = plan(&mac, ca, None);
        assert_eq!(p.stores[0].kind, StoreKind::System(SystemStore::MacOs));
        assert_eq!(p.stores[0].location, Path::new(MACOS_KEYCHAIN));
        assert!(!p.stores.iter().any(|s| s.label == "nss (chromium)"));
    }

    /// The text of the CA in [`plan_with`]'s plan.
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn plan_with(stores: Vec<Store>) -> Plan {
        Plan {
            nickname: "sandbox-ca-me".into(),
            ca_path: PathBuf::from("/home/me/.local/share/sandbox/ca/ca.crt"),
            ca_pem: Some(PEM.into()),
            common_name: Some("sandbox local CA (me@host)".into()),
            stores,
            skipped: Vec::new(),
        }
    }

    fn commands(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(|c| c.to_string()).collect()
    }

    /// The stores of every kind, as planned for the user `me` on `/`.
    fn every_store() -> [Store; 5] {
        [
            Store {
                kind: StoreKind::System(SystemStore::Debian),
                label: "system (debian)".into(),
                location: "/usr/local/share/ca-certificates/sandbox-ca-me.crt".into(),
            },
            Store {
                kind: StoreKind::System(SystemStore::Fedora),
                label: "system (fedora)".into(),
                location: "/etc/pki/ca-trust/source/anchors/sandbox-ca-me.pem".into(),
            },
            Store {
                kind: StoreKind::System(SystemStore::MacOs),
                label: "system (macos)".into(),
                location: MACOS_KEYCHAIN.into(),
            },
            Store {
                kind: StoreKind::Nss { create: true },
                label: "nss (chromium)".into(),
                location: "/home/me/.pki/nssdb".into(),
            },
            Store {
                kind: StoreKind::Nss { create: false },
                label: "nss (firefox x)".into(),
                location: "/home/me/Library/Application Support/Firefox/Profiles/x".into(),
            },
        ]
    }

    /// The CA as fed to a command: `plan`'s text, shown as read from its file.
    fn input(plan: &Plan) -> Option<CertInput> {
        Some(CertInput {
            pem: plan.ca_pem.clone().unwrap(),
            file: plan.ca_path.clone(),
        })
    }

    #[test]
    fn commands_per_store() {
        let [debian, fedora, macos, chromium, firefox] = every_store();
        let p = plan_with(vec![]);
        let ca = "/home/me/.local/share/sandbox/ca/ca.crt";
        let debian_install = debian.install_commands(&p);
        assert_eq!(
            commands(&debian_install),
            [
                format!("tee /usr/local/share/ca-certificates/sandbox-ca-me.crt < {ca}"),
                "chmod 0644 /usr/local/share/ca-certificates/sandbox-ca-me.crt".into(),
                "update-ca-certificates".into(),
            ]
        );
        assert_eq!(debian_install[0].input, input(&p));
        assert_eq!(
            commands(&debian.uninstall_commands(&p)),
            [
                "rm -f /usr/local/share/ca-certificates/sandbox-ca-me.crt",
                "update-ca-certificates --fresh"
            ]
        );
        assert_eq!(
            commands(&fedora.install_commands(&p)),
            [
                format!("tee /etc/pki/ca-trust/source/anchors/sandbox-ca-me.pem < {ca}"),
                "chmod 0644 /etc/pki/ca-trust/source/anchors/sandbox-ca-me.pem".into(),
                "update-ca-trust extract".into(),
            ]
        );
        assert_eq!(
            commands(&fedora.uninstall_commands(&p)),
            [
                "rm -f /etc/pki/ca-trust/source/anchors/sandbox-ca-me.pem",
                "update-ca-trust extract"
            ]
        );
        let mac_install = macos.install_commands(&p);
        assert_eq!(
            commands(&mac_install),
            [
                "security delete-certificate -c 'sandbox local CA (me@host)' -t /Library/Keychains/System.keychain".to_string(),
                format!("tee /var/root/sandbox-ca-me.pem < {ca}"),
                "security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain /var/root/sandbox-ca-me.pem".into(),
                "rm -f /var/root/sandbox-ca-me.pem".into(),
            ]
        );
        let may_fail: Vec<bool> = mac_install.iter().map(|c| c.may_fail).collect();
        assert_eq!(may_fail, [true, false, false, false]);
        let mac_uninstall = macos.uninstall_commands(&p);
        assert_eq!(
            commands(&mac_uninstall),
            [
                format!("tee /var/root/sandbox-ca-me.pem < {ca}"),
                "security remove-trusted-cert -d /var/root/sandbox-ca-me.pem".into(),
                "rm -f /var/root/sandbox-ca-me.pem".into(),
                "security delete-certificate -c 'sandbox local CA (me@host)' -t /Library/Keychains/System.keychain".into(),
            ]
        );
        let may_fail: Vec<bool> = mac_uninstall.iter().map(|c| c.may_fail).collect();
        assert_eq!(may_fail, [true, true, true, false]);
        // without the CA's file, macOS goes by its name alone (and without either, there is
        // nothing to name)
        let unknown = Plan {
            ca_pem: None,
            ..plan_with(vec![])
        };
        assert_eq!(
            commands(&macos.uninstall_commands(&unknown)),
            ["security delete-certificate -c 'sandbox local CA (me@host)' -t /Library/Keychains/System.keychain"]
        );
        let chromium_install = chromium.install_commands(&p);
        assert_eq!(
            commands(&chromium_install),
            [
                "certutil -N --empty-password -d sql:/home/me/.pki/nssdb".to_string(),
                format!("certutil -A -d sql:/home/me/.pki/nssdb -t C,, -n sandbox-ca-me < {ca}"),
            ]
        );
        assert_eq!(chromium_install[1].input, input(&p));
        let ff = firefox.install_commands(&p);
        assert_eq!(
            commands(&ff),
            [
                "certutil -D -d 'sql:/home/me/Library/Application Support/Firefox/Profiles/x' -n sandbox-ca-me".to_string(),
                format!("certutil -A -d 'sql:/home/me/Library/Application Support/Firefox/Profiles/x' -t C,, -n sandbox-ca-me < {ca}"),
            ]
        );
        assert!(ff[0].may_fail);
        assert_eq!(
            commands(&chromium.uninstall_commands(&p)),
            ["certutil -D -d sql:/home/me/.pki/nssdb -n sandbox-ca-me"]
        );
    }

    #[test]
    fn root_runs_programs_by_name_and_reads_the_ca_on_stdin() {
        let p = plan_with(vec![]);
        for store in every_store() {
            let planned = [store.install_commands(&p), store.uninstall_commands(&p)];
            for cmd in planned.iter().flatten() {
                // never the user's file: the bytes sandbox checked, on standard input
                assert!(
                    !cmd.args.iter().any(|a| Path::new(a) == p.ca_path),
                    "{cmd} reads the user's file"
                );
                if let Some(input) = &cmd.input {
                    assert_eq!(input.pem, PEM, "{cmd}");
                }
                if !store.needs_root() {
                    continue;
                }
                let elevated = cmd.elevated();
                assert_eq!(elevated.program, "sudo");
                assert_eq!(elevated.args[0], "--", "{elevated}");
                assert_eq!(elevated.args[1], cmd.program, "{elevated}");
                assert!(!cmd.program.contains('/'), "{elevated}: a path, not a name");
                assert_eq!(elevated.args[2..], cmd.args[..]);
                assert_eq!(elevated.input, cmd.input);
                assert_eq!(elevated.to_string(), format!("sudo -- {cmd}"));
            }
            // what writes the CA into a system store is fed the CA
            if store.needs_root() {
                let install = store.install_commands(&p);
                let tee = install.iter().find(|c| c.program == "tee").unwrap();
                assert_eq!(tee.input, input(&p), "{}", store.label);
            }
        }
    }

    #[test]
    fn sudo_gets_the_program_by_name_and_the_ca_on_stdin() {
        let root = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        // the tools on the user's PATH, and a sudo there that logs what it is asked to run
        // (its arguments, then what `tee` would read) instead of running it
        let tools = tool_dir(&["update-ca-certificates"]);
        let log = tools.path().join("sudo.log");
        let sudo = tools.path().join("sudo");
        fs::write(
            &sudo,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\n[ \"$2\" = tee ] && cat >> '{log}'\nexit 0\n",
                log = log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&sudo, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/os-release"), "ID=debian\n").unwrap();
        let mut h = host(root.path(), home.path(), "linux");
        h.path = vec![tools.path().to_path_buf()];
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(ca_dir.path(), &[]).unwrap();
        let mut p = plan(&h, ca.cert_path(), Some(ca.ca_pem()));
        p.stores.retain(|s| s.needs_root());
        assert_eq!(p.stores.len(), 1, "{:?}", p.stores);
        let location = p.stores[0].location.display().to_string();

        let reports = apply(&h, &p, Action::Install);
        assert_eq!(reports[0].outcome, StoreOutcome::Installed, "{reports:?}");
        let logged = fs::read_to_string(&log).unwrap();
        assert_eq!(
            logged,
            format!(
                "-- tee {location}\n{pem}-- chmod 0644 {location}\n-- update-ca-certificates\n",
                pem = ca.ca_pem()
            )
        );
        // no path from the user's PATH reaches root, nor the user's CA file
        let tools_dir = tools.path().display().to_string();
        assert!(!logged.contains(&tools_dir), "{logged}");
        assert!(!logged.contains(&ca.cert_path().display().to_string()));

        // uninstall: by name too (the file the stub did not write is put there by hand)
        fs::remove_file(&log).unwrap();
        fs::create_dir_all(p.stores[0].location.parent().unwrap()).unwrap();
        fs::write(&p.stores[0].location, ca.ca_pem()).unwrap();
        let reports = apply(&h, &p, Action::Uninstall);
        assert_eq!(reports[0].outcome, StoreOutcome::Removed, "{reports:?}");
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!("-- rm -f {location}\n-- update-ca-certificates --fresh\n")
        );
    }

    #[test]
    fn a_reset_reinstalls_where_the_old_ca_was_removed() {
        let [debian, _, _, chromium, firefox] = every_store();
        let p = Plan {
            skipped: vec![Skipped {
                label: "nss (chromium, firefox)".into(),
                reason: "certutil not found".into(),
            }],
            ..plan_with(vec![debian.clone(), chromium.clone(), firefox.clone()])
        };
        let report = |store: &Store, outcome| StoreReport {
            label: store.label.clone(),
            location: Some(store.location.clone()),
            outcome,
        };
        let old = [
            report(&debian, StoreOutcome::Removed),
            report(&chromium, StoreOutcome::NotPresent),
            report(&firefox, StoreOutcome::Removed),
        ];
        let again = where_removed(p.clone(), &old);
        assert_eq!(again.stores, [debian, firefox]);
        assert!(again.skipped.is_empty());
        assert!(where_removed(p, &[]).stores.is_empty());
    }

    #[test]
    fn incomplete_says_which_stores_and_what_to_run() {
        let err = TrustError::Incomplete {
            failed: vec!["system (debian): needs root".into()],
            manual: vec!["tee b < a".into(), "update-ca-certificates".into()],
            retry: "sandbox trust",
        };
        assert_eq!(
            err.to_string(),
            "1 trust store not updated: system (debian): needs root"
        );
        assert_eq!(
            err.hint().unwrap(),
            "run as root, then `sandbox trust` again: tee b < a && update-ca-certificates"
        );
        let err = TrustError::Incomplete {
            failed: vec!["a: failed".into(), "b: failed".into()],
            manual: Vec::new(),
            retry: "sandbox trust reset",
        };
        assert_eq!(
            err.to_string(),
            "2 trust stores not updated: a: failed; b: failed"
        );
        assert_eq!(err.hint(), None);
    }

    #[test]
    fn quoting_and_pem_matching() {
        assert_eq!(shell_quote("/a/b.crt"), "/a/b.crt");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), &[]).unwrap();
        let pem = ca.ca_pem();
        // certutil -a prints CRLF line ends; bundles hold other certificates around it
        let crlf = pem.replace('\n', "\r\n");
        assert!(contains_cert(&crlf, pem));
        assert!(contains_cert(&format!("# comment\n{pem}\n{pem}"), pem));
        assert!(!contains_cert("", pem));
        let other = Ca::load_or_create(&tmp.path().join("other"), &[]).unwrap();
        assert!(!contains_cert(other.ca_pem(), pem));
        assert!(common_name(pem).unwrap().starts_with("sandbox local CA ("));
    }

    #[test]
    fn without_root_or_sudo_the_system_store_gives_the_commands() {
        let root = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        // a stub update-ca-certificates and no sudo: nothing of the real system can run
        let tools = tool_dir(&["update-ca-certificates"]);
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/os-release"), "ID=debian\n").unwrap();
        let mut h = host(root.path(), home.path(), "linux");
        h.path = vec![tools.path().to_path_buf()];
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(ca_dir.path(), &[]).unwrap();
        let p = plan(&h, ca.cert_path(), Some(ca.ca_pem()));
        let system = p.stores[0].clone();
        assert_eq!(system.kind, StoreKind::System(SystemStore::Debian));
        let reports = apply(
            &h,
            &Plan {
                stores: vec![system.clone()],
                ..p.clone()
            },
            Action::Install,
        );
        assert_eq!(reports.len(), 1 + p.skipped.len());
        assert_eq!(
            reports[0].outcome,
            StoreOutcome::NeedsRoot(system.install_commands(&p))
        );
        assert!(reports[0].outcome.is_failure());
        assert!(!system.location.exists());
        // nothing there to uninstall: not present, whatever the privileges
        let reports = apply(
            &h,
            &Plan {
                stores: vec![system],
                ..p
            },
            Action::Uninstall,
        );
        assert_eq!(reports[0].outcome, StoreOutcome::NotPresent);
    }

    #[test]
    fn bundle_holds_the_system_cas_and_the_ca() {
        let root = tempfile::tempdir().unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(ca_dir.path(), &[]).unwrap();
        // the "system" CAs: another CA, in a fake root
        let system_ca = Ca::load_or_create(&root.path().join("other"), &[]).unwrap();
        let certs = root.path().join("etc/ssl/certs");
        fs::create_dir_all(&certs).unwrap();
        fs::write(certs.join("ca-certificates.crt"), system_ca.ca_pem()).unwrap();
        let h = host(root.path(), root.path(), "linux");
        let exports = write_bundle(&h, ca.cert_path(), ca.ca_pem()).unwrap();
        assert_eq!(exports.bundle, ca_dir.path().join(BUNDLE_FILE));
        assert_eq!(
            exports.system_bundle,
            Some(certs.join("ca-certificates.crt"))
        );
        let bundle = fs::read_to_string(&exports.bundle).unwrap();
        assert!(contains_cert(&bundle, ca.ca_pem()) && contains_cert(&bundle, system_ca.ca_pem()));
        assert_eq!(
            fs::metadata(&exports.bundle).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // written again: the same content, the CA not repeated
        write_bundle(&h, ca.cert_path(), ca.ca_pem()).unwrap();
        assert_eq!(fs::read_to_string(&exports.bundle).unwrap(), bundle);

        let shell = exports.shell();
        let ca_path = ca.cert_path().display().to_string();
        let bundle_path = exports.bundle.display().to_string();
        assert_eq!(
            shell,
            format!(
                "export NODE_EXTRA_CA_CERTS={ca_path}\nexport SSL_CERT_FILE={bundle_path}\n\
                 export REQUESTS_CA_BUNDLE={bundle_path}\nexport CURL_CA_BUNDLE={bundle_path}\n"
            )
        );

        // openssl, as the tools reading SSL_CERT_FILE would, accepts the CA's leaves
        let leaf = ca.issue(&["app.127.0.0.1.nip.io".to_string()]).unwrap();
        let leaf_path = ca_dir.path().join("leaf.crt");
        fs::write(&leaf_path, &leaf.cert_pem).unwrap();
        for bundle in [&exports.bundle, &certs.join("ca-certificates.crt")] {
            let out = Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(bundle)
                .arg(&leaf_path)
                .output()
                .expect("openssl runs");
            let trusted = out.status.success();
            // the bundle verifies; the system's bundle alone does not
            assert_eq!(
                trusted,
                bundle == &exports.bundle,
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // no system bundle: the CA alone
        let bare = tempfile::tempdir().unwrap();
        let h = host(bare.path(), bare.path(), "linux");
        let exports = write_bundle(&h, ca.cert_path(), ca.ca_pem()).unwrap();
        assert_eq!(exports.system_bundle, None);
        assert_eq!(fs::read_to_string(&exports.bundle).unwrap(), ca.ca_pem());
    }

    /// `certutil -L` of a database: the nicknames it lists.
    fn nss_list(db: &Path) -> String {
        let out = Command::new("certutil")
            .arg("-L")
            .arg("-d")
            .arg(format!("sql:{}", db.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn without_a_home_there_are_no_per_user_stores() {
        let root = tempfile::tempdir().unwrap();
        let mut h = host(root.path(), root.path(), "linux");
        h.home = None;
        assert!(nss_databases(&h).is_empty());
    }

    #[test]
    fn nss_install_and_uninstall_in_a_temporary_home() {
        let Some(certutil) = Host::from_process().find("certutil") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "certutil is required in CI (./install.sh --for-tests installs libnss3-tools)"
            );
            eprintln!("skipped: certutil not found (apt-get install libnss3-tools)");
            return;
        };
        let home = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(ca_dir.path(), &[]).unwrap();
        let pem = ca.ca_pem();
        // a Firefox profile with a database of its own
        let profile = home.path().join(".mozilla/firefox/abc.default-release");
        fs::create_dir_all(&profile).unwrap();
        let status = Command::new(&certutil)
            .args(["-N", "--empty-password", "-d"])
            .arg(format!("sql:{}", profile.display()))
            .status()
            .unwrap();
        assert!(status.success());
        // an empty root: no system store, so nothing of this machine's is touched; only
        // certutil's directory on PATH (no sudo)
        let mut h = host(root.path(), home.path(), "linux");
        h.path = vec![certutil.parent().unwrap().to_path_buf()];
        h.user = "tester".into();
        let chromium = home.path().join(".pki/nssdb");

        let p = plan(&h, ca.cert_path(), Some(pem));
        assert_eq!(p.nickname, "sandbox-ca-tester");
        assert!(p.stores.iter().all(|s| !s.needs_root()), "{:?}", p.stores);
        assert_eq!(p.stores.len(), 2, "{:?}", p.stores);
        let outcomes = |reports: &[StoreReport]| -> Vec<(String, StoreOutcome)> {
            reports
                .iter()
                .filter(|r| r.label.starts_with("nss"))
                .map(|r| (r.label.clone(), r.outcome.clone()))
                .collect()
        };
        let both = |o: StoreOutcome| {
            vec![
                ("nss (chromium)".to_string(), o.clone()),
                ("nss (firefox abc.default-release)".to_string(), o),
            ]
        };

        let reports = apply(&h, &p, Action::Install);
        assert_eq!(outcomes(&reports), both(StoreOutcome::Installed));
        for db in [&chromium, &profile] {
            let listed = nss_list(db);
            assert!(listed.contains("sandbox-ca-tester"), "{listed}");
            assert!(listed.contains("C,,"), "{listed}");
        }
        assert_eq!(
            fs::metadata(&chromium).unwrap().permissions().mode() & 0o777,
            0o700
        );

        // again: already there
        let p = plan(&h, ca.cert_path(), Some(pem));
        assert_eq!(p.stores[0].kind, StoreKind::Nss { create: false });
        let reports = apply(&h, &p, Action::Install);
        assert_eq!(outcomes(&reports), both(StoreOutcome::AlreadyPresent));

        // a new CA under the same name replaces the old one
        let new_dir = tempfile::tempdir().unwrap();
        let new_ca = Ca::load_or_create(new_dir.path(), &[]).unwrap();
        let p2 = plan(&h, new_ca.cert_path(), Some(new_ca.ca_pem()));
        let reports = apply(&h, &p2, Action::Install);
        assert_eq!(outcomes(&reports), both(StoreOutcome::Installed));
        let out = Command::new(&certutil)
            .arg("-L")
            .arg("-d")
            .arg(format!("sql:{}", chromium.display()))
            .args(["-n", "sandbox-ca-tester", "-a"])
            .output()
            .unwrap();
        let held = String::from_utf8_lossy(&out.stdout);
        assert!(contains_cert(&held, new_ca.ca_pem()) && !contains_cert(&held, pem));

        // uninstall removes it; a second uninstall finds nothing
        let reports = apply(&h, &p2, Action::Uninstall);
        assert_eq!(outcomes(&reports), both(StoreOutcome::Removed));
        for db in [&chromium, &profile] {
            let listed = nss_list(db);
            assert!(!listed.contains("sandbox-ca-tester"), "{listed}");
        }
        let reports = apply(&h, &p2, Action::Uninstall);
        assert_eq!(outcomes(&reports), both(StoreOutcome::NotPresent));
        // the system store was skipped, not attempted
        assert!(reports
            .iter()
            .any(|r| r.label == "system" && matches!(r.outcome, StoreOutcome::Skipped(_))));
    }
}
