//! Manifests: files, directories and globs; `${VAR}` substitution; multi-document YAML
//! parsed with each document's file and line kept for errors. Pure except for reading files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Variables sandbox defines itself; users cannot redefine them.
pub const BUILTIN_VARIABLES: &[&str] = &[
    "SANDBOX_NAME",
    "SANDBOX_NAMESPACE",
    "SANDBOX_DOMAIN",
    "SANDBOX_IP",
    "MINIKUBE_IP",
    "SANDBOX_HTTP_PORT",
    "SANDBOX_HTTPS_PORT",
    "SANDBOX_SMTP_HOST",
    "SANDBOX_SMTP_PORT",
];

/// `${SANDBOX_URL_<NAME>}`: the public URL of the project's Ingress (or fixed node port)
/// `<NAME>`, known from the manifests themselves; users cannot define such names.
pub const URL_VARIABLE_PREFIX: &str = "SANDBOX_URL_";

/// `SANDBOX_URL_<NAME>` for an object name: uppercase, anything else than a letter or a
/// digit becomes `_`.
pub fn url_variable(object: &str) -> String {
    let name: String = object
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{URL_VARIABLE_PREFIX}{name}")
}

/// Errors loading or parsing manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A `manifests:` entry matched no file.
    #[error("manifests entry {entry:?} matches no .yaml/.yml/.json file (looked in {base})")]
    NoMatch {
        /// The entry as written.
        entry: String,
        /// The directory it is relative to.
        base: PathBuf,
    },
    /// A glob pattern is malformed.
    #[error("manifests entry {entry:?} is not a valid glob: {message}")]
    BadGlob {
        /// The entry.
        entry: String,
        /// What is wrong.
        message: String,
    },
    /// `${NAME}` names no variable.
    #[error("{path}:{line}: unknown variable ${{{name}}} (define it under `variables:` in sandbox.yaml, or write $${{{name}}} for a literal)")]
    UnknownVariable {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The variable name.
        name: String,
    },
    /// `${SANDBOX_URL_<NAME>}` names no URL the manifests give.
    #[error("{path}:{line}: ${{{name}}} names no URL of this project ({})", known_urls(.known))]
    UnknownUrl {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The variable name.
        name: String,
        /// The URL variables there are.
        known: Vec<String>,
    },
    /// A document is not valid YAML.
    #[error("{path}:{line}:{column}: document {document}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based document index within the file.
        document: usize,
        /// 1-based line in the file.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A kustomization could not be rendered.
    #[error(transparent)]
    Kustomize(#[from] crate::kustomize::KustomizeError),
    /// A document is YAML but not a Kubernetes object.
    #[error("{path}:{line}: document {document}: {message}")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// 1-based document index.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
        /// What is missing.
        message: String,
    },
}

/// One Kubernetes object read from a manifest, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Source file.
    pub path: PathBuf,
    /// 1-based document index within the file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// Whether kustomize rendered it from the directory `path`: `line` is then a line of
    /// kustomize's output.
    pub kustomized: bool,
    /// The object.
    pub object: Value,
}

impl Document {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
    /// `file:line (document N, Kind/name)` for messages.
    pub fn describe(&self) -> String {
        if self.line == 0 {
            // made from sandbox.yaml (secrets), not read from a manifest
            return format!("{} ({}/{})", self.path.display(), self.kind(), self.name());
        }
        if self.kustomized {
            // its lines are those of kustomize's output: the object names it
            return format!(
                "{} (kustomize output, line {}, document {}, {}/{})",
                self.path.display(),
                self.line,
                self.index,
                self.kind(),
                self.name()
            );
        }
        format!(
            "{}:{} (document {}, {}/{})",
            self.path.display(),
            self.line,
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// The values of the built-in variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtins {
    /// Sandbox name.
    pub name: String,
    /// Default namespace.
    pub namespace: String,
    /// The sandbox's wildcard domain (`127.0.0.1.nip.io`).
    pub domain: String,
    /// The address the laptop reaches the ingress on.
    pub ip: String,
    /// Host port of ingress HTTP.
    pub http_port: u16,
    /// Host port of ingress HTTPS.
    pub https_port: u16,
    /// Where pods reach maildev's SMTP server (a cluster DNS name, or its Service's address
    /// on nodes without cluster DNS).
    pub smtp_host: String,
    /// maildev's SMTP port.
    pub smtp_port: u16,
}

/// Every variable available to `${VAR}`: built-ins plus the user's.
pub fn variables(builtins: &Builtins, user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = user.clone();
    for (k, v) in [
        ("SANDBOX_NAME", builtins.name.clone()),
        ("SANDBOX_NAMESPACE", builtins.namespace.clone()),
        ("SANDBOX_DOMAIN", builtins.domain.clone()),
        ("SANDBOX_IP", builtins.ip.clone()),
        ("MINIKUBE_IP", builtins.ip.clone()),
        ("SANDBOX_HTTP_PORT", builtins.http_port.to_string()),
        ("SANDBOX_HTTPS_PORT", builtins.https_port.to_string()),
        ("SANDBOX_SMTP_HOST", builtins.smtp_host.clone()),
        ("SANDBOX_SMTP_PORT", builtins.smtp_port.to_string()),
    ] {
        vars.insert(k.to_string(), v);
    }
    vars
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Where a project's manifests come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A manifest file.
    File(PathBuf),
    /// A directory holding a kustomization, rendered by kustomize.
    Kustomization(PathBuf),
}

impl Source {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Source::File(p) | Source::Kustomization(p) => p,
        }
    }
}

/// Resolves `manifests:` entries to sources, in order: a file as is, a directory holding a
/// kustomization as that kustomization, another directory's manifest files sorted by name
/// (not recursive), a glob's matching files sorted. Duplicates are dropped.
pub fn resolve(entries: &[String], base: &Path) -> Result<Vec<Source>, ManifestError> {
    let mut files: Vec<Source> = Vec::new();
    for entry in entries {
        let path = base.join(entry);
        let mut found: Vec<Source> = if entry.contains(['*', '?', '[']) {
            let pattern = path.to_string_lossy().to_string();
            glob::glob(&pattern)
                .map_err(|e| ManifestError::BadGlob {
                    entry: entry.clone(),
                    message: e.to_string(),
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file() && is_manifest_file(p))
                .map(Source::File)
                .collect()
        } else if path.is_dir() && crate::kustomize::kustomization_in(&path).is_some() {
            vec![Source::Kustomization(path)]
        } else if path.is_dir() {
            let read = std::fs::read_dir(&path).map_err(|source| ManifestError::Read {
                path: path.clone(),
                source,
            })?;
            read.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_manifest_file(p))
                .map(Source::File)
                .collect()
        } else if path.is_file() {
            vec![Source::File(path)]
        } else {
            Vec::new()
        };
        if found.is_empty() {
            return Err(ManifestError::NoMatch {
                entry: entry.clone(),
                base: base.to_path_buf(),
            });
        }
        found.sort_by(|a, b| a.path().cmp(b.path()));
        for f in found {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    Ok(files)
}

fn known_urls(known: &[String]) -> String {
    if known.is_empty() {
        return "it has none: a URL variable is SANDBOX_URL_ and the name of an Ingress with a host"
            .to_string();
    }
    format!("it has {}", known.join(", "))
}

/// Replaces `${NAME}` with its value; `$${` stands for a literal `${`. Unknown names are
/// errors carrying the line.
pub fn substitute(
    text: &str,
    vars: &BTreeMap<String, String>,
    path: &Path,
) -> Result<String, ManifestError> {
    substitute_with(text, |name, line| {
        vars.get(name)
            .cloned()
            .ok_or_else(|| unknown(name, line, path, vars))
    })
}

/// The error for an unknown `${name}`.
fn unknown(name: &str, line: usize, path: &Path, vars: &BTreeMap<String, String>) -> ManifestError {
    if name.starts_with(URL_VARIABLE_PREFIX) {
        return ManifestError::UnknownUrl {
            path: path.to_path_buf(),
            line,
            name: name.to_string(),
            known: vars
                .keys()
                .filter(|k| k.starts_with(URL_VARIABLE_PREFIX))
                .cloned()
                .collect(),
        };
    }
    ManifestError::UnknownVariable {
        path: path.to_path_buf(),
        line,
        name: name.to_string(),
    }
}

/// [`substitute`] with the values from `value(name, line)`.
fn substitute_with(
    text: &str,
    value: impl Fn(&str, usize) -> Result<String, ManifestError>,
) -> Result<String, ManifestError> {
    let comments = comment_spans(text);
    let in_comment = |at: usize| comments.iter().any(|c| c.contains(&at));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(i) = rest.find('$') {
        let at = text.len() - rest.len() + i;
        let (before, after) = rest.split_at(i);
        line += before.matches('\n').count();
        out.push_str(before);
        if in_comment(at) {
            // a comment is kept as written: it may mention a variable it does not use
            out.push('$');
            rest = &after[1..];
        } else if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            match tail.find('}') {
                Some(end) if crate::config::is_variable_name(&tail[..end]) => {
                    out.push_str(&value(&tail[..end], line)?);
                    rest = &tail[end + 1..];
                }
                // not a variable reference (e.g. `${ x }` in a script): keep as written
                _ => {
                    out.push_str("${");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The byte ranges of YAML comments in `text`: from a `#` that starts a line's content or
/// follows a space or tab, outside quotes, to the end of its line. Lines of a block scalar
/// (`|`, `>`) are content, never comments.
fn comment_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    // the indentation of the line that opened the block scalar we are in
    let mut block: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start_matches([' ', '\t']).len();
        if let Some(parent) = block {
            if body.trim().is_empty() || indent > parent {
                continue;
            }
            block = None;
        }
        let comment = comment_start(body);
        if let Some(at) = comment {
            spans.push(start + at..start + body.len());
        }
        let content = body[..comment.unwrap_or(body.len())].trim_end();
        // `key: |`, `- >-`, `key: |2`: the last token is a block scalar header
        let opens_block = content.split_whitespace().last().is_some_and(|token| {
            token.len() <= 3
                && token.starts_with(['|', '>'])
                && token[1..].chars().all(|c| "-+123456789".contains(c))
        });
        if opens_block {
            block = Some(indent);
        }
    }
    spans
}

/// Where a comment starts in one line, outside single and double quotes.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if c == '\\' => {}
            Some(q) if c == q && !(q == '"' && previous == '\\') => quote = None,
            Some(_) => {}
            None if c == '#' && (previous == ' ' || previous == '\t') => return Some(i),
            // `''` inside single quotes is a quote: the closing one is followed by a reopening
            None if (c == '"' || c == '\'')
                && (previous == ' '
                    || "[{:,-".contains(previous)
                    || (c == '\'' && previous == c)) =>
            {
                quote = Some(c)
            }
            None => {}
        }
        previous = c;
    }
    None
}

/// Splits YAML text into documents at `---` lines, returning each document's text and
/// its 1-based starting line.
fn split_documents(text: &str) -> Vec<(String, usize)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace());
        if is_separator || line == "..." {
            docs.push((std::mem::take(&mut current), start));
            start = i + 2;
            // `--- {inline}` keeps content after the marker
            let inline = if is_separator { line[3..].trim() } else { "" };
            if !inline.is_empty() && !inline.starts_with('#') {
                current.push_str(inline);
                current.push('\n');
                start = i + 1;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((current, start));
    docs
}

/// Parses the text of the `index`th document of `path`, which starts at line `start`, into
/// a JSON value. Kept apart from [`parse`] so that the error mapping (a YAML error's line
/// counted from the file's start, not the document's) sits with the parsing it describes.
fn parse_value(
    doc_text: &str,
    path: &Path,
    index: usize,
    start: usize,
) -> Result<Value, ManifestError> {
    let yaml_error = |e: serde_yaml::Error| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ManifestError::Yaml {
            path: path.to_path_buf(),
            document: index,
            line: start + line - 1,
            column,
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    };
    let value: Value = if doc_text.contains("<<") {
        // merge keys (`<<: *defaults`) are YAML 1.1, which kubectl follows: merged here
        let mut yaml: serde_yaml::Value = serde_yaml::from_str(doc_text).map_err(yaml_error)?;
        yaml.apply_merge().map_err(yaml_error)?;
        serde_json::to_value(yaml).map_err(|e| ManifestError::NotAnObject {
            path: path.to_path_buf(),
            document: index,
            line: start,
            message: format!("not representable as JSON: {e}"),
        })?
    } else {
        serde_yaml::from_str(doc_text).map_err(yaml_error)?
    };
    Ok(value)
}

/// Checks that `object` says what it is and what it is called (`apiVersion`, `kind`,
/// `metadata.name`), the fields apply finds an object by; `not_object` makes the error for
/// the document it came from.
fn check_identity(
    object: &Value,
    not_object: impl Fn(String) -> ManifestError,
) -> Result<(), ManifestError> {
    for field in ["apiVersion", "kind"] {
        if !object[field].is_string() {
            return Err(not_object(format!("missing `{field}`")));
        }
    }
    if !object["metadata"]["name"].is_string() {
        let what = if object["metadata"]["generateName"].is_string() {
            "has only `metadata.generateName`: apply finds an object by its name, so \
             every `up` would create another one; set `metadata.name`"
        } else {
            "missing `metadata.name`"
        };
        return Err(not_object(format!(
            "{} {what}",
            object["kind"].as_str().unwrap_or_default()
        )));
    }
    Ok(())
}

/// Parses manifest text (already substituted) into objects. Empty documents are skipped;
/// `kind: List` is expanded into its items.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Document>, ManifestError> {
    // a byte-order mark, as some Windows editors write
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut index = 0;
    for (doc_text, start) in split_documents(text) {
        if doc_text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        index += 1;
        let value = parse_value(&doc_text, path, index, start)?;
        let not_object = |message: String| ManifestError::NotAnObject {
            path: path.to_path_buf(),
            document: index,
            line: start,
            message,
        };
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(not_object(
                "expected a Kubernetes object (a mapping)".into(),
            ));
        }
        let items = if value["kind"] == "List" {
            value["items"]
                .as_array()
                .cloned()
                .ok_or_else(|| not_object("`kind: List` without `items`".into()))?
        } else {
            vec![value]
        };
        for mut object in items {
            check_identity(&object, not_object)?;
            // a `kubectl get -o yaml` dump applies as what it describes
            crate::normalize::strip_server_fields(&mut object);
            crate::normalize::fold_string_data(&mut object);
            out.push(Document {
                path: path.to_path_buf(),
                index,
                line: start,
                kustomized: false,
                object,
            });
        }
    }
    Ok(out)
}

/// What a `${SANDBOX_URL_<NAME>}` stands for while the URLs are being found.
const URL_PLACEHOLDER: &str = "https://url.sandbox.invalid/";

/// Reads, substitutes and parses every manifest of the project. `${SANDBOX_URL_<NAME>}`
/// variables come from `urls`, given the documents: when a manifest uses one, the files
/// are read once with a placeholder for them, `urls` finds the URLs in those documents
/// (an Ingress's host does not depend on a URL), and the files are substituted again.
pub fn load(
    entries: &[String],
    base: &Path,
    vars: &BTreeMap<String, String>,
    urls: impl FnOnce(&[Document]) -> BTreeMap<String, String>,
) -> Result<Vec<Document>, ManifestError> {
    let mut files = Vec::new();
    for source in resolve(entries, base)? {
        let text = match &source {
            Source::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
                    path: path.clone(),
                    source,
                })?
            }
            Source::Kustomization(dir) => crate::kustomize::render(dir)?,
        };
        let kustomized = matches!(source, Source::Kustomization(_));
        files.push((source.path().to_path_buf(), kustomized, text));
    }
    let parse_all = |vars: &BTreeMap<String, String>, placeholder: bool| {
        let mut docs = Vec::new();
        for (path, kustomized, text) in &files {
            let text = substitute_with(text, |name, line| match vars.get(name) {
                Some(v) => Ok(v.clone()),
                None if placeholder && name.starts_with(URL_VARIABLE_PREFIX) => {
                    Ok(URL_PLACEHOLDER.to_string())
                }
                None => Err(unknown(name, line, path, vars)),
            })?;
            let parsed = parse(&text, path)?;
            docs.extend(parsed.into_iter().map(|d| Document {
                kustomized: *kustomized,
                ..d
            }));
        }
        Ok::<_, ManifestError>(docs)
    };
    let uses_urls = files
        .iter()
        .any(|(_, _, text)| text.contains(&format!("${{{URL_VARIABLE_PREFIX}")));
    let docs = parse_all(vars, uses_urls)?;
    if !uses_urls {
        return Ok(docs);
    }
    let mut with_urls = vars.clone();
    with_urls.extend(urls(&docs));
    parse_all(&with_urls, false)
}

/// The pod spec inside a workload object, by kind.
fn pod_spec_mut(object: &mut Value) -> Option<&mut Value> {
    let kind = object["kind"].as_str()?.to_string();
    let spec = object.get_mut("spec")?;
    match kind.as_str() {
        "Pod" => Some(spec),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => spec.get_mut("template")?.get_mut("spec"),
        "CronJob" => spec
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?
            .get_mut("spec"),
        _ => None,
    }
}

/// The repository part of an image reference (no tag, no digest).
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    crate::docker::split_tag(no_digest).0
}

fn same_repository(reference: &str, configured: &str) -> bool {
    let repo = repository(reference);
    repo == configured
        || repo.strip_prefix("docker.io/") == Some(configured)
        || repo.strip_prefix("docker.io/library/") == Some(configured)
}

/// Points every container image that names a configured image (`repo` → full reference
/// with sandbox's tag) at sandbox's tag, with pull policy `policy` (`Never` for an image
/// loaded into the node, `IfNotPresent` for one pushed to a registry). Returns the
/// references rewritten, as `(before, after)`.
pub fn rewrite_images(
    object: &mut Value,
    images: &BTreeMap<String, String>,
    policy: &str,
) -> Vec<(String, String)> {
    let mut changed = Vec::new();
    let Some(spec) = pod_spec_mut(object) else {
        return changed;
    };
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(current) = c["image"].as_str().map(str::to_string) else {
                continue;
            };
            if let Some((_, target)) = images
                .iter()
                .find(|(repo, _)| same_repository(&current, repo))
            {
                c["image"] = Value::String(target.clone());
                c["imagePullPolicy"] = Value::String(policy.into());
                changed.push((current, target.clone()));
            }
        }
    }
    changed
}

/// `sandbox dev --fast-rollout`: every Deployment of `docs` that rolls (not `Recreate`) gets
/// `maxSurge: 100%, maxUnavailable: 0`, so a rollout starts all its new pods at once and
/// takes the time of one pod's start, not one per pod in turn; its old pods go as the new
/// ones become available, so the app keeps serving. Returns how many were changed. The
/// next plain `up` applies the user's strategy again (server-side apply drops the fields).
pub fn fast_rollout(docs: &mut [Document]) -> usize {
    let mut changed = 0;
    for doc in docs.iter_mut() {
        if doc.object["kind"] != "Deployment"
            || doc.object["spec"]["strategy"]["type"] == "Recreate"
            || !doc.object["spec"].is_object()
        {
            continue;
        }
        doc.object["spec"]["strategy"] = serde_json::json!({
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0},
        });
        changed += 1;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        variables(
            &Builtins {
                name: "demo".into(),
                namespace: "default".into(),
                domain: "127.0.0.1.nip.io".into(),
                ip: "127.0.0.1".into(),
                http_port: 80,
                https_port: 443,
                smtp_host: "maildev.sandbox-system.svc.cluster.local".into(),
                smtp_port: 1025,
            },
            &BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        )
    }

    #[test]
    fn substitutes_builtins_aliases_and_user_variables() {
        let out = substitute(
            "host: app.${SANDBOX_DOMAIN}\nip: ${MINIKUBE_IP}\nmsg: ${GREETING}\n",
            &vars(),
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(out, "host: app.127.0.0.1.nip.io\nip: 127.0.0.1\nmsg: hi\n");
    }

    #[test]
    fn unknown_variable_names_line() {
        let err = substitute(
            "a: 1\nb: 2\nc: ${NOPE}\n",
            &vars(),
            Path::new("k8s/app.yaml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "k8s/app.yaml:3: unknown variable ${NOPE} (define it under `variables:` in sandbox.yaml, or write $${NOPE} for a literal)"
        );
    }

    #[test]
    fn url_variables_are_shell_names() {
        assert_eq!(url_variable("hello"), "SANDBOX_URL_HELLO");
        assert_eq!(url_variable("demo-app.v2"), "SANDBOX_URL_DEMO_APP_V2");
    }

    /// `load` of one file `all.yaml` holding `text`, the URLs found by [`crate::urls`].
    fn load_text(text: &str) -> Result<Vec<Document>, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), text).unwrap();
        load(&["all.yaml".to_string()], dir.path(), &vars(), |docs| {
            crate::urls::variables(&crate::urls::planned(docs, 8443, None, "default"))
        })
    }

    #[test]
    fn url_variables_come_from_the_manifests_ingresses() {
        // the app needs its own URL (mailed links); its Ingress is defined after it
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n\
            data: {url: \"${SANDBOX_URL_WEB}\", signin: \"${SANDBOX_URL_WEB}signin\"}\n---\n\
            apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n\
            spec: {rules: [{host: \"app.${SANDBOX_DOMAIN}\"}]}\n";
        let docs = load_text(text).unwrap();
        assert_eq!(
            docs[0].object["data"],
            serde_json::json!({"url": "https://app.127.0.0.1.nip.io:8443/",
                               "signin": "https://app.127.0.0.1.nip.io:8443/signin"})
        );
        // a file with no URL variable is read once and needs no Ingress
        let plain = load_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n").unwrap();
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn unknown_url_variables_name_the_ones_there_are() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n\
            spec: {rules: [{host: \"app.${SANDBOX_DOMAIN}\"}]}\n---\n\
            apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {url: \"${SANDBOX_URL_API}\"}\n";
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.ends_with("all.yaml:9: ${SANDBOX_URL_API} names no URL of this project (it has SANDBOX_URL_WEB)"), "{err}");
        let none = load_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {u: \"${SANDBOX_URL_X}\"}\n")
            .unwrap_err()
            .to_string();
        assert!(none.contains("it has none: a URL variable is SANDBOX_URL_ and the name of an Ingress with a host"), "{none}");
    }

    #[test]
    fn comments_are_kept_as_written() {
        let text = "# uses ${NOPE} one day\n\
            a: ${GREETING} # not ${NOPE}\n\
            b: \"# ${GREETING}\"\n\
            c: 'it''s # ${GREETING}'\n\
            d: x#${GREETING}\n\
            script: |\n  # ${GREETING}\n  echo\n\
            e: 1 # ${NOPE}\n\
            list:\n  - >-\n    # ${GREETING}\n  - # ${NOPE}\n";
        let out = substitute(text, &vars(), Path::new("a.yaml")).unwrap();
        assert_eq!(
            out,
            "# uses ${NOPE} one day\n\
            a: hi # not ${NOPE}\n\
            b: \"# hi\"\n\
            c: 'it''s # hi'\n\
            d: x#hi\n\
            script: |\n  # hi\n  echo\n\
            e: 1 # ${NOPE}\n\
            list:\n  - >-\n    # hi\n  - # ${NOPE}\n"
        );
    }

    #[test]
    fn escapes_and_shell_forms_are_kept() {
        let out = substitute(
            "a: $${HOME} $HOME ${ not a var } $",
            &vars(),
            Path::new("a"),
        )
        .unwrap();
        assert_eq!(out, "a: ${HOME} $HOME ${ not a var } $");
    }

    #[test]
    fn parses_multi_document_yaml_with_lines() {
        let text = "# leading comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: web\n";
        let docs = parse(text, Path::new("all.yaml")).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].kind(), docs[0].name(), docs[0].line, docs[0].index),
            ("ConfigMap", "a", 3, 1)
        );
        assert_eq!(
            (
                docs[1].kind(),
                docs[1].namespace(),
                docs[1].line,
                docs[1].index
            ),
            ("Service", Some("web"), 8, 2)
        );
        assert_eq!(docs[1].describe(), "all.yaml:8 (document 2, Service/b)");
    }

    #[test]
    fn yaml_errors_carry_file_line_and_document() {
        let text =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [\n";
        let err = parse(text, Path::new("bad.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml:"), "{err}");
        assert!(err.contains("document 2"), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!(line >= 5, "{err}");
    }

    #[test]
    fn objects_need_kind_and_name() {
        let err = parse("apiVersion: v1\nmetadata: {name: a}\n", Path::new("x.yaml")).unwrap_err();
        assert!(err.to_string().contains("missing `kind`"), "{err}");
        let err = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {generateName: a-}\n",
            Path::new("x.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("generateName"), "{err}");
        let err = parse("- a\n- b\n", Path::new("x.yaml")).unwrap_err();
        assert!(err.to_string().contains("mapping"), "{err}");
    }

    #[test]
    fn kustomize_output_is_named_by_its_directory_and_object() {
        let doc = Document {
            path: PathBuf::from("k8s/overlays/dev"),
            index: 2,
            line: 7,
            kustomized: true,
            object: serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "dev-a"}}),
        };
        assert_eq!(
            doc.describe(),
            "k8s/overlays/dev (kustomize output, line 7, document 2, ConfigMap/dev-a)"
        );
        // a file's documents keep the file:line form
        let file = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            Path::new("k8s/cm.yaml"),
        )
        .unwrap();
        assert!(!file[0].kustomized);
        assert_eq!(
            file[0].describe(),
            "k8s/cm.yaml:1 (document 1, ConfigMap/a)"
        );
    }

    #[test]
    fn merge_keys_are_merged() {
        let text = "x-labels: &labels {app: web, tier: front}\n\
            apiVersion: v1\nkind: ConfigMap\n\
            metadata: {name: a, labels: {<<: *labels, tier: back}}\n\
            data:\n  <<: [{A: '1'}, {B: '2'}]\n  C: '3'\n";
        let docs = parse(text, Path::new("m.yaml")).unwrap();
        assert_eq!(
            docs[0].object["metadata"]["labels"],
            serde_json::json!({"app": "web", "tier": "back"})
        );
        assert_eq!(
            docs[0].object["data"],
            serde_json::json!({"A": "1", "B": "2", "C": "3"})
        );
        // a string that merely contains `<<` is left alone
        let docs = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {heredoc: 'cat <<EOF'}\n",
            Path::new("m.yaml"),
        )
        .unwrap();
        assert_eq!(docs[0].object["data"]["heredoc"], "cat <<EOF");
    }

    #[test]
    fn lists_are_expanded() {
        let docs = parse(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n",
            Path::new("l.yaml"),
        )
        .unwrap();
        assert_eq!(
            docs.iter().map(Document::name).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn resolve_files_dirs_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("k8s")).unwrap();
        for f in [
            "k8s/b.yaml",
            "k8s/a.yml",
            "k8s/readme.md",
            "one.yaml",
            "two.json",
        ] {
            std::fs::write(base.join(f), "").unwrap();
        }
        let files = resolve(
            &[
                "one.yaml".into(),
                "k8s".into(),
                "*.json".into(),
                "k8s/a.yml".into(),
            ],
            base,
        )
        .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.path().strip_prefix(base).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["one.yaml", "k8s/a.yml", "k8s/b.yaml", "two.json"]);
        let err = resolve(&["missing.yaml".into()], base).unwrap_err();
        assert!(err.to_string().contains("matches no"), "{err}");
    }

    #[test]
    fn rewrites_configured_images_only() {
        let mut deploy: Value = serde_yaml::from_str(
            "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers: [{name: migrate, image: 'hello:0.0.1'}]
      containers:
      - {name: web, image: hello, imagePullPolicy: Always}
      - {name: side, image: 'docker.io/library/redis:7'}
",
        )
        .unwrap();
        let images = BTreeMap::from([(
            "hello".to_string(),
            "hello:sandbox-0123456789ab".to_string(),
        )]);
        let changed = rewrite_images(&mut deploy, &images, "Never");
        assert_eq!(changed.len(), 2);
        let spec = &deploy["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["image"], "hello:sandbox-0123456789ab");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(
            spec["initContainers"][0]["image"],
            "hello:sandbox-0123456789ab"
        );
        assert_eq!(spec["containers"][1]["image"], "docker.io/library/redis:7");
        let mut cm: Value =
            serde_yaml::from_str("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n").unwrap();
        assert!(rewrite_images(&mut cm, &images, "Never").is_empty());
    }

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(repository("hello:1"), "hello");
        assert_eq!(repository("reg:5000/a/b:2"), "reg:5000/a/b");
        assert_eq!(repository("a@sha256:abc"), "a");
    }

    #[test]
    fn fast_rollout_surges_rolling_deployments_only() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  strategy: {rollingUpdate: {maxSurge: 1}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  strategy: {type: Recreate}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {}\n";
        let mut docs = parse(text, Path::new("all.yaml")).unwrap();
        assert_eq!(fast_rollout(&mut docs), 1);
        assert_eq!(
            docs[0].object["spec"]["strategy"],
            serde_json::json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}})
        );
        assert_eq!(docs[0].object["spec"]["replicas"], 2);
        assert_eq!(docs[1].object["spec"]["strategy"]["type"], "Recreate");
        assert!(docs[2].object["spec"].get("strategy").is_none());
    }
}
