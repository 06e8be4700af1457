//! The project's images: build with the engine, tag by content, load into the node's
//! containerd over exec stdin, skipping what the node already holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};

use crate::buildkit::{Builder, Failure};
use crate::config::ImageConfig;
use crate::docker::{DockerError, Engine};
use crate::profile::Profile;
use crate::report::Reporter;

/// Lines of build output shown when a build fails.
const BUILD_LOG_TAIL: usize = 25;

/// Errors building or loading images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A Docker operation failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The build context could not be read.
    #[error("image {image}: cannot read build context {path}")]
    Context {
        /// Image name.
        image: String,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile is missing.
    #[error("image {image}: no Dockerfile at {path}")]
    NoDockerfile {
        /// Image name.
        image: String,
        /// Expected path.
        path: PathBuf,
    },
    /// The build failed.
    #[error("image {image}: build failed at {dockerfile}{}: {message}\nlast build output:\n{log}",
        line.map(|l| format!(":{l}")).unwrap_or_default())]
    BuildFailed {
        /// Image name.
        image: String,
        /// Dockerfile path.
        dockerfile: PathBuf,
        /// Line of the failing instruction in the Dockerfile, when found.
        line: Option<usize>,
        /// The engine's message.
        message: String,
        /// Tail of the build output.
        log: String,
    },
    /// A build secret cannot be read.
    #[error("image {image}: build secret {id}: {problem}")]
    Secret {
        /// Image name.
        image: String,
        /// The secret's id.
        id: String,
        /// What is wrong, naming the file or variable.
        problem: String,
    },
    /// The image has build secrets, and the build would use the classic builder.
    #[error("image {image} has build secrets ({ids}), which need BuildKit, but {why}")]
    SecretsNeedBuildKit {
        /// Image name.
        image: String,
        /// Its secrets' ids.
        ids: String,
        /// Why the classic builder is used.
        why: String,
    },
    /// `DOCKER_BUILDKIT` asks for what cannot be.
    #[error("cannot build image {image}: {problem}")]
    Builder {
        /// Image name.
        image: String,
        /// What is wrong.
        problem: String,
    },
    /// `sandbox apply` needs an image that was never built.
    #[error("image {image} has never been built here; run `sandbox build` or `sandbox up` first")]
    NeverBuilt {
        /// Image name.
        image: String,
    },
    /// The node's import command failed.
    #[error("image {image}: import into node {node} failed (exit {code}): {stderr}")]
    ImportFailed {
        /// Image reference.
        image: String,
        /// Node container.
        node: String,
        /// Exit code.
        code: i64,
        /// Its stderr.
        stderr: String,
    },
    /// The node's container runtime did not answer while it booted.
    #[error("node {node}: its container runtime did not answer within {seconds} s: {last}")]
    RuntimeNotReady {
        /// Node container.
        node: String,
        /// The deadline.
        seconds: u64,
        /// The last thing the image listing said (or the container's state).
        last: String,
    },
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuiltImage {
    /// Repository name as configured.
    pub name: String,
    /// Full reference with the content tag, as written into the manifests.
    pub reference: String,
    /// Image ID.
    pub id: String,
    /// Digest of what it was built from (see [`crate::warm::image_inputs`]); `None` when
    /// not built by this command or not known.
    #[serde(skip)]
    pub inputs: Option<String>,
}

/// The content tag of an image ID: `sandbox-` and the first 12 hex digits.
pub fn content_tag(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    format!("sandbox-{}", &hex[..hex.len().min(12)])
}

/// How containerd names an image reference (`hello:1` → `docker.io/library/hello:1`).
pub fn containerd_ref(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        reference.to_string()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

/// `.dockerignore` rules.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<(glob::Pattern, bool)>,
}

impl IgnoreRules {
    /// Parses `.dockerignore` text (comments, `!` exceptions, leading `/` ignored).
    pub fn parse(text: &str) -> IgnoreRules {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (negate, pattern) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
                let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
                glob::Pattern::new(pattern).ok().map(|p| (p, negate))
            })
            .collect();
        IgnoreRules { rules }
    }

    /// Whether a context-relative path (with `/` separators) is excluded. A path is also
    /// excluded when one of its parent directories matches.
    pub fn excluded(&self, rel: &str) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut excluded = false;
        for (pattern, negate) in &self.rules {
            let mut prefix = String::new();
            let mut matched = false;
            for part in rel.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if pattern.matches_with(&prefix, options) {
                    matched = true;
                    break;
                }
            }
            if matched {
                excluded = !negate;
            }
        }
        excluded
    }
}

/// Packs a build context into a tar, honouring `.dockerignore`; the Dockerfile and
/// `.dockerignore` are always sent (the engine needs the first, as the docker CLI does).
pub fn context_tar(dir: &Path, dockerfile: &str) -> std::io::Result<Vec<u8>> {
    write_context_tar(dir, dockerfile, Vec::new())
}

/// Writes the build context of [`context_tar`] as a tar into `out`, one file at a time.
pub fn write_context_tar<W: std::io::Write>(
    dir: &Path,
    dockerfile: &str,
    out: W,
) -> std::io::Result<W> {
    let rules = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => IgnoreRules::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(e),
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("walked from dir")
                .to_string_lossy()
                .replace('\\', "/");
            if rules.excluded(&rel) && rel != dockerfile && rel != ".dockerignore" {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(path.clone());
            }
            files.push((path, rel));
        }
    }
    // stable order gives a stable context (and so a stable build cache)
    files.sort_by(|a, b| a.1.cmp(&b.1));
    for (path, rel) in files {
        builder.append_path_with_name(&path, &rel)?;
    }
    builder.into_inner()
}

/// A SHA-256 of what is written through it.
struct Hashing(ring::digest::Context);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The digest of an image's build context as [`pack`] gives it, without holding the tar:
/// streamed through the hash (a context of 10,000 files is megabytes of tar headers, which
/// `sandbox dev` would otherwise keep as resident memory while it waits).
pub async fn context_digest(image: &ImageConfig, base_dir: &Path) -> Result<String, ImageError> {
    let context = base_dir.join(&image.context);
    let context_dir = context.clone();
    let dockerfile_rel = image.dockerfile.trim_start_matches("./").to_string();
    tokio::task::spawn_blocking(move || {
        let hashing = Hashing(ring::digest::Context::new(&ring::digest::SHA256));
        let hashing = write_context_tar(&context_dir, &dockerfile_rel, hashing)?;
        Ok(crate::warm::hex(hashing.0.finish().as_ref()))
    })
    .await
    .expect("context hashing does not panic")
    .map_err(|source| ImageError::Context {
        image: image.name.clone(),
        path: context,
        source,
    })
}

/// Checks that an image's Dockerfile exists and its build secrets can be read (before
/// anything is started).
pub fn check(image: &ImageConfig, base_dir: &Path) -> Result<(), ImageError> {
    checked_secrets(image, base_dir).map(drop)
}

/// The image's build secrets, once its Dockerfile is known to exist.
fn checked_secrets(
    image: &ImageConfig,
    base_dir: &Path,
) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    let dockerfile = base_dir.join(&image.context).join(&image.dockerfile);
    if !dockerfile.is_file() {
        return Err(ImageError::NoDockerfile {
            image: image.name.clone(),
            path: dockerfile,
        });
    }
    read_secrets(image, base_dir, |var| std::env::var(var).ok())
}

/// The values of an image's build secrets, by id: files relative to `base_dir`, variables
/// read with `lookup`.
pub fn read_secrets(
    image: &ImageConfig,
    base_dir: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    let error = |id: &str, problem: String| ImageError::Secret {
        image: image.name.clone(),
        id: id.to_string(),
        problem,
    };
    let mut values = BTreeMap::new();
    for (id, file) in &image.secrets.from_file {
        let path = base_dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| error(id, format!("cannot read {}: {e}", path.display())))?;
        values.insert(id.clone(), bytes);
    }
    for (id, var) in &image.secrets.from_env {
        let value = lookup(var)
            .ok_or_else(|| error(id, format!("environment variable {var} is not set")))?;
        values.insert(id.clone(), value.into_bytes());
    }
    Ok(values)
}

/// The builder for this engine, saying once per process when it is the classic one
/// because the engine has no BuildKit.
async fn builder(
    engine: &Engine,
    image: &ImageConfig,
    reporter: &Reporter,
) -> Result<Builder, ImageError> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let version = crate::buildkit::builder_version(engine.dial()).await?;
    let forced = std::env::var("DOCKER_BUILDKIT").ok();
    let builder =
        crate::buildkit::choose(version.as_deref(), forced.as_deref()).map_err(|problem| {
            ImageError::Builder {
                image: image.name.clone(),
                problem,
            }
        })?;
    let engine_lacks = !crate::buildkit::engine_has_buildkit(version.as_deref());
    if builder == Builder::Classic && !image.secrets.is_empty() {
        return Err(ImageError::SecretsNeedBuildKit {
            image: image.name.clone(),
            ids: image.secrets.ids().cloned().collect::<Vec<_>>().join(", "),
            why: if engine_lacks {
                NO_BUILDKIT.to_string()
            } else {
                "DOCKER_BUILDKIT=0 asks for the classic builder".to_string()
            },
        });
    }
    if builder == Builder::Classic && engine_lacks {
        SAID.call_once(|| {
            reporter.warn(format!(
                "{NO_BUILDKIT}: building with the classic builder (no RUN --mount)"
            ))
        });
    }
    Ok(builder)
}

const NO_BUILDKIT: &str = "the engine has no BuildKit (turn it on with \
    {\"features\": {\"buildkit\": true}} in its daemon.json)";

/// Builds one image; returns its content-tagged reference.
pub async fn build(
    engine: &Engine,
    image: &ImageConfig,
    base_dir: &Path,
    reporter: &Reporter,
) -> Result<BuiltImage, ImageError> {
    // read once: the secrets go to BuildKit as they were checked
    let secrets = checked_secrets(image, base_dir)?;
    let context = base_dir.join(&image.context);
    let dockerfile = context.join(&image.dockerfile);
    let builder = builder(engine, image, reporter).await?;
    let step = reporter.step(format!("building image {}", image.name));
    let (tar, context_digest) = pack(image, base_dir).await?;
    let mut log: Vec<String> = Vec::new();
    let mut on_line = |line: &str| {
        reporter.detail(format!("{}: {line}", image.name));
        if let Some(label) = step_label(line) {
            step.update(format!("building image {}: {label}", image.name));
        }
        log.push(line.to_string());
    };
    let outcome = match builder {
        Builder::BuildKit => {
            crate::buildkit::build(
                engine.dial(),
                &image.name,
                &build_query(image),
                tar,
                secrets,
                &mut on_line,
            )
            .await?
        }
        Builder::Classic => engine
            .build_image(&image.name, classic_options(image), tar, &mut on_line)
            .await?
            .map_err(|message| Failure {
                message,
                step: None,
            }),
    };
    let id = match outcome {
        Ok(id) => id,
        Err(failure) => {
            let start = log.len().saturating_sub(BUILD_LOG_TAIL);
            let text = std::fs::read_to_string(&dockerfile).unwrap_or_default();
            let line = match &failure.step {
                Some(step) => crate::buildkit::instruction(step).and_then(|i| line_of(i, &text)),
                None => failing_line(&log, &text),
            };
            return Err(ImageError::BuildFailed {
                image: image.name.clone(),
                line,
                dockerfile,
                message: failure.message.trim().to_string(),
                log: log[start..].join("\n"),
            });
        }
    };
    let tag = content_tag(&id);
    engine.tag(&id, &image.name, &tag).await?;
    let reference = format!("{}:{tag}", image.name);
    let inputs = inputs(engine, image, base_dir, &context_digest).await;
    step.done(format!("built {reference}"));
    Ok(BuiltImage {
        name: image.name.clone(),
        reference,
        id,
        inputs,
    })
}

/// What a line of build output shows in the step's label: the classic builder's
/// `Step 2/5 : RUN make`, BuildKit's `[stage-0 2/3] RUN make` (printed as `#7 ...`).
fn step_label(line: &str) -> Option<&str> {
    if line.starts_with("Step ") {
        return Some(line);
    }
    let (number, name) = line.strip_prefix('#')?.split_once(' ')?;
    (number.bytes().all(|b| b.is_ascii_digit()) && crate::buildkit::is_instruction(name))
        .then_some(name)
}

fn build_args(image: &ImageConfig) -> std::collections::HashMap<String, String> {
    image
        .args
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn image_labels() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([(crate::labels::SANDBOX.to_string(), "image".to_string())])
}

/// The classic builder's options.
fn classic_options(image: &ImageConfig) -> bollard::query_parameters::BuildImageOptions {
    let (args, labels) = (build_args(image), image_labels());
    let mut options = bollard::query_parameters::BuildImageOptionsBuilder::new()
        .dockerfile(&image.dockerfile)
        .rm(true)
        .forcerm(true)
        .buildargs(&args)
        .labels(&labels);
    if let Some(target) = &image.target {
        options = options.target(target);
    }
    options.build()
}

/// `/build`'s query for BuildKit: the same build as [`classic_options`] (pure).
pub fn build_query(image: &ImageConfig) -> Vec<(&'static str, String)> {
    let json = |m| serde_json::to_string(&m).expect("a map of strings is JSON");
    let mut query = vec![
        ("dockerfile", image.dockerfile.clone()),
        ("buildargs", json(build_args(image))),
        ("labels", json(image_labels())),
    ];
    if let Some(target) = &image.target {
        query.push(("target", target.clone()));
    }
    query
}

/// The digest of everything an image is built from (see [`crate::warm::image_inputs`]),
/// its context packed as `context_digest`; `None` when a base image is not in the engine
/// or the Dockerfile cannot be read.
pub async fn inputs(
    engine: &Engine,
    image: &ImageConfig,
    base_dir: &Path,
    context_digest: &str,
) -> Option<String> {
    let dockerfile = base_dir.join(&image.context).join(&image.dockerfile);
    let text = std::fs::read_to_string(&dockerfile).ok()?;
    crate::warm::image_inputs(engine, image, &text, context_digest).await
}

/// An image's build context packed as the engine receives it, and its digest.
pub async fn pack(image: &ImageConfig, base_dir: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let context = base_dir.join(&image.context);
    let context_dir = context.clone();
    let dockerfile_rel = image.dockerfile.trim_start_matches("./").to_string();
    tokio::task::spawn_blocking(move || {
        let tar = context_tar(&context_dir, &dockerfile_rel)?;
        let digest = crate::warm::digest(&tar);
        Ok((tar, digest))
    })
    .await
    .expect("context packing does not panic")
    .map_err(|source| ImageError::Context {
        image: image.name.clone(),
        path: context,
        source,
    })
}

/// The Dockerfile line of the step the classic builder was running when it failed: the
/// last `Step N/M : INSTRUCTION` of the log, found in the Dockerfile's text.
pub fn failing_line(log: &[String], dockerfile: &str) -> Option<usize> {
    let step = log.iter().rev().find(|l| l.starts_with("Step "))?;
    line_of(step.split_once(" : ")?.1, dockerfile)
}

/// The line of `instruction` (as a builder shows it) in the Dockerfile's text.
pub fn line_of(instruction: &str, dockerfile: &str) -> Option<usize> {
    let instruction = instruction.trim();
    let normalise = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let wanted = normalise(instruction);
    dockerfile
        .lines()
        .position(|l| {
            let l = normalise(l);
            // the builder shows the instruction keyword upper-cased
            l.eq_ignore_ascii_case(&wanted)
                || (!l.is_empty() && wanted.starts_with(&l) && l.len() > 4)
        })
        .map(|i| i + 1)
}

/// Builds every configured image, in order.
pub async fn build_all(
    engine: &Engine,
    images: &[ImageConfig],
    base_dir: &Path,
    reporter: &Reporter,
) -> Result<Vec<BuiltImage>, ImageError> {
    let mut built = Vec::new();
    for image in images {
        built.push(build(engine, image, base_dir, reporter).await?);
    }
    Ok(built)
}

/// The most recent content-tagged build of each configured image, for commands that
/// apply without building (`sandbox apply`).
pub async fn latest_builds(
    engine: &Engine,
    images: &[ImageConfig],
) -> Result<Vec<BuiltImage>, ImageError> {
    let mut out = Vec::new();
    for image in images {
        let found = engine
            .repo_tags(&image.name)
            .await?
            .into_iter()
            .find(|(tag, id)| tag.ends_with(&format!(":{}", content_tag(id))));
        match found {
            Some((reference, id)) => out.push(BuiltImage {
                name: image.name.clone(),
                reference,
                id,
                inputs: None,
            }),
            None => {
                return Err(ImageError::NeverBuilt {
                    image: image.name.clone(),
                })
            }
        }
    }
    Ok(out)
}

/// What to load for built images.
pub fn load_requests(built: &[BuiltImage]) -> Vec<LoadRequest> {
    built
        .iter()
        .map(|b| LoadRequest {
            reference: b.reference.clone(),
            id: b.id.clone(),
        })
        .collect()
}

/// The rewrite map for manifests: repository → content-tagged reference.
pub fn rewrite_map(built: &[BuiltImage]) -> BTreeMap<String, String> {
    built
        .iter()
        .map(|b| (b.name.clone(), b.reference.clone()))
        .collect()
}

/// Whether the node holds an image, judged by digest as kind does: containerd's CRI
/// plugin names every image it manages by its ID (`sha256:<config digest>`) too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The reference names exactly this image.
    Held,
    /// The content is there under another name: tagging it is enough.
    ContentOnly,
    /// Not there (or the reference names other content).
    Absent,
}

/// Judges presence from the node's image table (`ctr images ls`: REF, TYPE, DIGEST, ...).
pub fn presence(listing: &str, reference: &str, image_id: &str) -> Presence {
    let digest_of = |name: &str| {
        listing.lines().skip(1).find_map(|line| {
            let mut cols = line.split_whitespace();
            let r = cols.next()?;
            let d = cols.nth(1)?;
            (r == name).then_some(d)
        })
    };
    let by_id = digest_of(image_id);
    match (digest_of(&containerd_ref(reference)), by_id) {
        (Some(a), Some(b)) if a == b => Presence::Held,
        (_, Some(_)) => Presence::ContentOnly,
        _ => Presence::Absent,
    }
}

/// An image to load: its reference and its ID in the local engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// Reference (`hello:sandbox-0123456789ab`).
    pub reference: String,
    /// Image ID (`sha256:...`).
    pub id: String,
}

/// Loads images into the node unless it already holds them. Returns the references
/// streamed or tagged in.
pub async fn load(
    engine: &Engine,
    node: &str,
    profile: &Profile,
    images: &[LoadRequest],
    reporter: &Reporter,
) -> Result<Vec<String>, ImageError> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let listed = listing(engine, node, profile).await?;
    load_listed(engine, node, profile, &listed, images, reporter).await
}

/// [`load`] against the node's image listing taken before (see [`listing`]).
pub async fn load_listed(
    engine: &Engine,
    node: &str,
    profile: &Profile,
    listing: &str,
    images: &[LoadRequest],
    reporter: &Reporter,
) -> Result<Vec<String>, ImageError> {
    // a few at once: the engine's export and the node's import overlap (two add-on images
    // load in 6.4 s instead of 8.0 s on 2 cores)
    let loads = futures_util::stream::iter(images)
        .map(|image| load_one(engine, node, profile, listing, image, reporter))
        .buffered(LOADS_AT_ONCE);
    let loaded: Vec<Option<String>> = loads.try_collect().await?;
    Ok(loaded.into_iter().flatten().collect())
}

/// How many images load into a node at once.
const LOADS_AT_ONCE: usize = 3;

/// Loads one image unless the node's `listing` shows it held; returns its reference when
/// loaded (or tagged from content the node had).
async fn load_one(
    engine: &Engine,
    node: &str,
    profile: &Profile,
    listing: &str,
    image: &LoadRequest,
    reporter: &Reporter,
) -> Result<Option<String>, ImageError> {
    let reference = &image.reference;
    let failed = |out: crate::docker::ExecOutput| ImageError::ImportFailed {
        image: reference.clone(),
        node: node.to_string(),
        code: out.code,
        stderr: out.stderr.trim().to_string(),
    };
    match presence(listing, reference, &image.id) {
        Presence::Held => return Ok(None),
        Presence::ContentOnly => {
            let mut tag = profile.node.image_tag.clone();
            tag.extend([image.id.clone(), containerd_ref(reference)]);
            let out = engine.exec_simple(node, &tag).await?;
            if out.code != 0 {
                return Err(failed(out));
            }
            reporter.info(format!("{reference}: content already in {node}, tagged"));
        }
        Presence::Absent => {
            let step = reporter.step(format!("loading {reference} into {node}"));
            let out = engine
                .exec(
                    node,
                    &profile.node.image_import,
                    Some(engine.export_image(reference)),
                )
                .await?;
            if out.code != 0 {
                return Err(failed(out));
            }
            step.done(format!("loaded {reference}"));
        }
    }
    Ok(Some(reference.clone()))
}

/// The node's image listing, waiting for its container runtime to answer: a node that is
/// still booting takes images as soon as its runtime is up, long before its API server.
pub async fn listing(engine: &Engine, node: &str, profile: &Profile) -> Result<String, ImageError> {
    let deadline = profile.node.boot_timeout;
    let started = std::time::Instant::now();
    loop {
        let out = engine.exec_simple(node, &profile.node.image_list).await;
        let last = match out {
            Ok(out) if out.code == 0 => return Ok(out.stdout),
            Ok(out) => out.stderr.trim().to_string(),
            // exec refused: the container is not running (yet, or any more)
            Err(e) => match engine.container_state(node).await? {
                Some(state) if state == "running" || state == "created" => e.to_string(),
                state => {
                    return Err(ImageError::RuntimeNotReady {
                        node: node.to_string(),
                        seconds: deadline.as_secs(),
                        last: format!("the container is {}", state.as_deref().unwrap_or("gone")),
                    })
                }
            },
        };
        if started.elapsed() > deadline {
            return Err(ImageError::RuntimeNotReady {
                node: node.to_string(),
                seconds: deadline.as_secs(),
                last,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_tags_are_short_digests() {
        assert_eq!(
            content_tag("sha256:0123456789abcdef0123"),
            "sandbox-0123456789ab"
        );
        assert_eq!(content_tag("abc"), "sandbox-abc");
    }

    #[test]
    fn containerd_normalises_references() {
        assert_eq!(containerd_ref("hello:1"), "docker.io/library/hello:1");
        assert_eq!(containerd_ref("team/app:1"), "docker.io/team/app:1");
        assert_eq!(containerd_ref("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(containerd_ref("localhost:5000/a:1"), "localhost:5000/a:1");
        assert_eq!(containerd_ref("localhost/a:1"), "localhost/a:1");
    }

    const LISTING: &str = "REF TYPE DIGEST SIZE PLATFORMS LABELS
docker.io/library/hello:v1 application/vnd.docker.distribution.manifest.v2+json sha256:aaa 2.0 MiB linux/amd64 io.cri-containerd.image=managed
sha256:1111 application/vnd.docker.distribution.manifest.v2+json sha256:aaa 2.0 MiB linux/amd64 io.cri-containerd.image=managed
docker.io/library/hello:v2 application/vnd.docker.distribution.manifest.v2+json sha256:bbb 2.0 MiB linux/amd64 io.cri-containerd.image=managed
";

    #[test]
    fn presence_compares_digests_not_names() {
        assert_eq!(presence(LISTING, "hello:v1", "sha256:1111"), Presence::Held);
        // same name, other content (rebuilt under the same tag): load it
        assert_eq!(
            presence(LISTING, "hello:v2", "sha256:2222"),
            Presence::Absent
        );
        // same content, new name: tag it
        assert_eq!(
            presence(LISTING, "hello:v3", "sha256:1111"),
            Presence::ContentOnly
        );
        assert_eq!(
            presence("REF TYPE DIGEST\n", "hello:v1", "sha256:1111"),
            Presence::Absent
        );
    }

    #[test]
    fn failing_step_is_found_in_the_dockerfile() {
        let log: Vec<String> = [
            "Step 1/2 : FROM base",
            " ---> abc",
            "Step 2/2 : RUN echo compiling && exit 42",
            "compiling",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dockerfile = "# comment\nFROM base\n\nrun  echo compiling && exit 42\n";
        assert_eq!(failing_line(&log, dockerfile), Some(4));
        assert_eq!(failing_line(&log, "FROM base\n"), None);
        assert_eq!(failing_line(&[], dockerfile), None);
    }

    #[test]
    fn dockerignore_rules() {
        let rules = IgnoreRules::parse(
            "# comment\nnode_modules\n*.log\n!keep.log\n/build/\ndocs/**/*.md\n",
        );
        assert!(rules.excluded("node_modules"));
        assert!(rules.excluded("node_modules/x/y.js"));
        assert!(rules.excluded("app.log"));
        assert!(!rules.excluded("keep.log"));
        assert!(rules.excluded("build/out.bin"));
        assert!(rules.excluded("docs/a/b.md"));
        assert!(!rules.excluded("src/main.rs"));
        assert!(
            !rules.excluded("sub/app.log"),
            "`*` does not cross directories"
        );
    }

    #[test]
    fn context_tar_skips_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "secret\nDockerfile\n").unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.txt"), "a").unwrap();
        let tar = context_tar(dir.path(), "Dockerfile").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "src", "src/a.txt"]);
    }

    #[tokio::test]
    async fn the_streamed_context_digest_is_the_packed_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("src/{i}.txt")), "x".repeat(i * 100)).unwrap();
        }
        let image: ImageConfig =
            serde_yaml::from_str("{name: app, context: ., dockerfile: Dockerfile}").unwrap();
        let (_, packed) = pack(&image, dir.path()).await.unwrap();
        assert_eq!(context_digest(&image, dir.path()).await.unwrap(), packed);
    }
}
