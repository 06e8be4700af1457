//! What `sandbox dev` watches and how a burst of changes becomes one update: the files an
//! `up` reads (every image's build context as its `.dockerignore` leaves it, the
//! manifests and kustomizations, sandbox.yaml, the files Secrets are read from), as
//! directories to watch and a test of each changed path. Pure; the watcher itself (the
//! `notify` crate: inotify, FSEvents, no polling) is in `cli::dev`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::SandboxConfig;
use crate::images::IgnoreRules;

/// What a changed file is an input of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    /// The build context of this image.
    Image(String),
    /// The manifests (a file, a glob's match, a kustomization).
    Manifests,
    /// sandbox.yaml, or a build context's `.dockerignore`: what is watched may change.
    Config,
    /// A file a Secret is read from.
    Secret,
}

/// One image's build context.
#[derive(Debug)]
struct Context {
    image: String,
    dir: PathBuf,
    dockerfile: String,
    ignore: IgnoreRules,
    sync: Vec<crate::config::SyncRule>,
}

/// A file to copy into the running containers of an image (or, `exists` false, to remove
/// there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFile {
    /// The image.
    pub image: String,
    /// The file on this machine.
    pub local: PathBuf,
    /// Where it is in the container (absolute).
    pub remote: String,
    /// The index of its rule in the image's `sync:`.
    pub rule: usize,
}

/// One entry of `manifests:` as watched.
#[derive(Debug)]
enum Manifest {
    /// A file (or a directory: everything under it).
    Path(PathBuf),
    /// A glob: a file it matches, now or once created.
    Pattern(glob::Pattern),
}

/// The inputs of an `up` of `config`.
#[derive(Debug)]
pub struct Inputs {
    contexts: Vec<Context>,
    manifests: Vec<Manifest>,
    config: Option<PathBuf>,
    secrets: Vec<PathBuf>,
    /// Directories to watch, with whether their subdirectories are watched too.
    roots: Vec<(PathBuf, bool)>,
}

impl Inputs {
    /// The inputs of `config` (paths as sandbox.yaml names them, under its directory).
    pub fn of(config: &SandboxConfig) -> Inputs {
        let base = &config.base_dir;
        let mut roots = Vec::new();
        let contexts: Vec<Context> = config
            .images
            .iter()
            .map(|image| {
                let dir = base.join(&image.context);
                let ignore = std::fs::read_to_string(dir.join(".dockerignore"))
                    .map(|t| IgnoreRules::parse(&t))
                    .unwrap_or_default();
                roots.push((dir.clone(), true));
                Context {
                    image: image.name.clone(),
                    dir,
                    dockerfile: image.dockerfile.clone(),
                    ignore,
                    sync: image.sync.clone(),
                }
            })
            .collect();
        let mut manifests = Vec::new();
        for entry in &config.manifests {
            let path = base.join(entry);
            if entry.contains(['*', '?', '[']) {
                // the directory above the first wildcard, and all under it
                let fixed: PathBuf = Path::new(entry)
                    .components()
                    .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                    .collect();
                roots.push((base.join(fixed), true));
                if let Ok(pattern) = glob::Pattern::new(&path.to_string_lossy()) {
                    manifests.push(Manifest::Pattern(pattern));
                }
            } else {
                if path.is_dir() {
                    roots.push((path.clone(), true));
                } else if let Some(parent) = path.parent() {
                    roots.push((parent.to_path_buf(), false));
                }
                manifests.push(Manifest::Path(path));
            }
        }
        let mut secrets = Vec::new();
        for secret in &config.secrets {
            for file in secret.from_file.values() {
                let path = base.join(file);
                if let Some(parent) = path.parent() {
                    roots.push((parent.to_path_buf(), false));
                }
                secrets.push(path);
            }
        }
        if let Some(source) = &config.source {
            if let Some(parent) = source.parent() {
                roots.push((parent.to_path_buf(), false));
            }
        }
        Inputs {
            contexts,
            manifests,
            config: config.source.clone(),
            secrets,
            roots: minimal_roots(roots),
        }
    }

    /// The directories to watch, each with whether its subdirectories are watched too; none
    /// lies under another watched recursively.
    pub fn roots(&self) -> &[(PathBuf, bool)] {
        &self.roots
    }

    /// What a change of `path` is an input of (nothing: it is not watched for).
    pub fn touched(&self, path: &Path) -> BTreeSet<Touched> {
        let mut touched = BTreeSet::new();
        if self.config.as_deref() == Some(path) {
            touched.insert(Touched::Config);
        }
        if self.secrets.iter().any(|s| s == path) {
            touched.insert(Touched::Secret);
        }
        for c in &self.contexts {
            let Ok(rel) = path.strip_prefix(&c.dir) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == ".dockerignore" {
                touched.insert(Touched::Config);
                touched.insert(Touched::Image(c.image.clone()));
            } else if rel == c.dockerfile || !c.ignore.excluded(&rel) {
                touched.insert(Touched::Image(c.image.clone()));
            }
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        for m in &self.manifests {
            let hit = match m {
                Manifest::Path(p) => path == p || path.starts_with(p),
                Manifest::Pattern(p) => p.matches_path_with(path, options),
            };
            if hit {
                touched.insert(Touched::Manifests);
            }
        }
        touched
    }
}

impl Inputs {
    /// Where a change of `path` goes when it is synced: the image, the file in its
    /// containers and the rule; `None` when no sync rule covers it (a Dockerfile or
    /// `.dockerignore` never is).
    pub fn synced(&self, path: &Path) -> Option<SyncFile> {
        for c in &self.contexts {
            let Ok(rel) = path.strip_prefix(&c.dir) else {
                continue;
            };
            let name = rel.to_string_lossy().replace('\\', "/");
            if name == c.dockerfile || name == ".dockerignore" || c.ignore.excluded(&name) {
                return None;
            }
            for (i, rule) in c.sync.iter().enumerate() {
                let from: PathBuf = rule.from.components().collect();
                let Ok(under) = rel.strip_prefix(&from) else {
                    continue;
                };
                let under = under.to_string_lossy().replace('\\', "/");
                let remote = if under.is_empty() {
                    // the rule names the file itself
                    rule.to.clone()
                } else {
                    format!("{}/{under}", rule.to.trim_end_matches('/'))
                };
                return Some(SyncFile {
                    image: c.image.clone(),
                    local: path.to_path_buf(),
                    remote,
                    rule: i,
                });
            }
        }
        None
    }

    /// The files of a burst to sync, when every change of it is covered by a sync rule
    /// (only image files changed); `None` when it needs a rebuild.
    pub fn sync_plan(&self, burst: &Burst) -> Option<Vec<SyncFile>> {
        if !burst.touched.iter().all(|t| matches!(t, Touched::Image(_))) {
            return None;
        }
        burst.paths.iter().map(|p| self.synced(p)).collect()
    }
}

/// `roots` without duplicates and without those under a recursive one (a directory named
/// both ways is watched recursively).
fn minimal_roots(mut roots: Vec<(PathBuf, bool)>) -> Vec<(PathBuf, bool)> {
    // recursive first, then shorter paths first: a root is kept when nothing kept covers it
    roots.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(a.0.components().count().cmp(&b.0.components().count()))
    });
    let mut kept: Vec<(PathBuf, bool)> = Vec::new();
    for (path, recursive) in roots {
        let covered = kept
            .iter()
            .any(|(k, r)| k == &path || (*r && path.starts_with(k)));
        if !covered {
            kept.push((path, recursive));
        }
    }
    kept.sort();
    kept
}

/// Changes gathered into one update: it is due once `quiet` has passed since the last
/// change (an editor's save, a `git checkout` of many files), or `longest` since the first.
#[derive(Debug)]
pub struct Burst {
    first: Instant,
    last: Instant,
    /// The changed paths, in the order first seen.
    pub paths: Vec<PathBuf>,
    /// What they are inputs of.
    pub touched: BTreeSet<Touched>,
}

/// The quiet time that ends a burst. An editor's save or a `git checkout` sends its events
/// within a few milliseconds of each other; a change that comes later than this only makes
/// one more update (the build reads the files after the quiet), so it is short: it is
/// part of every update's time.
pub const QUIET: Duration = Duration::from_millis(50);
/// The longest a burst waits for quiet.
pub const LONGEST: Duration = Duration::from_secs(2);

impl Burst {
    /// A burst that began with `path` at `now`.
    pub fn new(now: Instant) -> Burst {
        Burst {
            first: now,
            last: now,
            paths: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    /// Adds a change of `path`, an input of `touched`, seen at `now`.
    pub fn add(&mut self, path: PathBuf, touched: BTreeSet<Touched>, now: Instant) {
        self.last = now;
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
        self.touched.extend(touched);
    }

    /// When the update is due.
    pub fn due(&self) -> Instant {
        (self.last + QUIET).min(self.first + LONGEST)
    }

    /// What triggered it, for the progress line: the first paths (relative to `base`) and
    /// how many more.
    pub fn describe(&self, base: &Path) -> String {
        let shown: Vec<String> = self
            .paths
            .iter()
            .take(3)
            .map(|p| p.strip_prefix(base).unwrap_or(p).display().to_string())
            .collect();
        match self.paths.len().saturating_sub(shown.len()) {
            0 => shown.join(", "),
            more => format!("{} and {more} more", shown.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> (tempfile::TempDir, SandboxConfig) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("app/www")).unwrap();
        std::fs::create_dir_all(base.join("k8s/overlays/dev")).unwrap();
        std::fs::write(base.join("app/.dockerignore"), "*.log\nnode_modules\n").unwrap();
        std::fs::write(
            base.join("k8s/overlays/dev/kustomization.yaml"),
            "resources: []\n",
        )
        .unwrap();
        let text = "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nname: demo\n\
                    manifests: [k8s/app.yaml, 'k8s/extra/*.yaml', k8s/overlays/dev]\n\
                    images: [{name: web, context: app}]\n\
                    secrets: [{name: s, fromFile: {key: secrets/key.txt}}]\n";
        std::fs::write(base.join("sandbox.yaml"), text).unwrap();
        let config = SandboxConfig::parse(text, &base.join("sandbox.yaml")).unwrap();
        (dir, config)
    }

    #[test]
    fn a_change_is_an_input_of_what_reads_it() {
        let (dir, config) = project();
        let base = dir.path();
        let inputs = Inputs::of(&config);
        let web = || BTreeSet::from([Touched::Image("web".into())]);
        assert_eq!(inputs.touched(&base.join("app/www/index.html")), web());
        assert_eq!(inputs.touched(&base.join("app/Dockerfile")), web());
        // what .dockerignore leaves out is not an input
        assert!(inputs.touched(&base.join("app/debug.log")).is_empty());
        assert!(inputs
            .touched(&base.join("app/node_modules/x/index.js"))
            .is_empty());
        assert!(inputs
            .touched(&base.join("app/.dockerignore"))
            .contains(&Touched::Config));
        let manifests = BTreeSet::from([Touched::Manifests]);
        assert_eq!(inputs.touched(&base.join("k8s/app.yaml")), manifests);
        assert_eq!(inputs.touched(&base.join("k8s/extra/new.yaml")), manifests);
        assert!(inputs.touched(&base.join("k8s/extra/notes.txt")).is_empty());
        assert_eq!(
            inputs.touched(&base.join("k8s/overlays/dev/patch.yaml")),
            manifests
        );
        assert!(inputs.touched(&base.join("k8s/other.yaml")).is_empty());
        assert_eq!(
            inputs.touched(&base.join("sandbox.yaml")),
            BTreeSet::from([Touched::Config])
        );
        assert_eq!(
            inputs.touched(&base.join("secrets/key.txt")),
            BTreeSet::from([Touched::Secret])
        );
        assert!(inputs.touched(&base.join(".git/index")).is_empty());
    }

    #[test]
    fn each_directory_is_watched_once() {
        let (dir, config) = project();
        let base = dir.path();
        let roots = Inputs::of(&config).roots().to_vec();
        assert_eq!(
            roots,
            [
                (base.to_path_buf(), false),
                (base.join("app"), true),
                (base.join("k8s"), false),
                (base.join("k8s/extra"), true),
                (base.join("k8s/overlays/dev"), true),
                (base.join("secrets"), false),
            ]
        );
        let nested = minimal_roots(vec![
            (PathBuf::from("/p/app/www"), false),
            (PathBuf::from("/p/app"), true),
            (PathBuf::from("/p/app"), false),
        ]);
        assert_eq!(nested, [(PathBuf::from("/p/app"), true)]);
    }

    #[test]
    fn a_burst_ends_after_quiet_or_at_the_longest() {
        let t0 = Instant::now();
        let mut burst = Burst::new(t0);
        let web = BTreeSet::from([Touched::Image("web".into())]);
        for i in 0..50u64 {
            let at = t0 + Duration::from_millis(i * 10);
            burst.add(PathBuf::from(format!("/p/app/f{i}")), web.clone(), at);
        }
        assert_eq!(burst.due(), t0 + Duration::from_millis(490) + QUIET);
        assert_eq!(burst.paths.len(), 50);
        assert_eq!(
            burst.describe(Path::new("/p")),
            "app/f0, app/f1, app/f2 and 47 more"
        );
        let mut endless = Burst::new(t0);
        endless.add(PathBuf::from("/p/a"), web, t0 + Duration::from_secs(5));
        assert_eq!(endless.due(), t0 + LONGEST);
    }

    #[test]
    fn changes_under_sync_rules_are_synced_and_the_rest_rebuilds() {
        let (dir, mut config) = project();
        let base = dir.path();
        config.images[0].sync = vec![
            crate::config::SyncRule {
                from: PathBuf::from("www/"),
                to: "/srv/www/".into(),
                run: None,
            },
            crate::config::SyncRule {
                from: PathBuf::from("conf/app.ini"),
                to: "/etc/app.ini".into(),
                run: None,
            },
        ];
        let inputs = Inputs::of(&config);
        let page = base.join("app/www/css/site.css");
        assert_eq!(
            inputs.synced(&page),
            Some(SyncFile {
                image: "web".into(),
                local: page.clone(),
                remote: "/srv/www/css/site.css".into(),
                rule: 0,
            })
        );
        assert_eq!(
            inputs
                .synced(&base.join("app/conf/app.ini"))
                .unwrap()
                .remote,
            "/etc/app.ini"
        );
        assert_eq!(inputs.synced(&base.join("app/src/main.rs")), None);
        assert_eq!(inputs.synced(&base.join("app/Dockerfile")), None);
        assert_eq!(inputs.synced(&base.join("app/debug.log")), None);

        let at = Instant::now();
        let mut burst = Burst::new(at);
        burst.add(page.clone(), inputs.touched(&page), at);
        assert_eq!(inputs.sync_plan(&burst).map(|p| p.len()), Some(1));
        // one file outside the rules: the whole burst rebuilds
        let main = base.join("app/src/main.rs");
        burst.add(main.clone(), inputs.touched(&main), at);
        assert_eq!(inputs.sync_plan(&burst), None);
        // a manifest too: rebuilds (and re-applies)
        let mut burst = Burst::new(at);
        burst.add(page.clone(), inputs.touched(&page), at);
        let manifest = base.join("k8s/app.yaml");
        burst.add(manifest.clone(), inputs.touched(&manifest), at);
        assert_eq!(inputs.sync_plan(&burst), None);
    }
}
