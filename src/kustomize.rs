//! kustomize as a manifest source: a `manifests:` directory holding a kustomization is
//! rendered by `kustomize build DIR`, or `kubectl kustomize DIR` when no standalone
//! kustomize is on `PATH`. The output then goes through the same rendering as any file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file names kustomize accepts for a kustomization, in its own order of preference.
pub const KUSTOMIZATION_FILES: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Errors rendering a kustomization.
#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    /// Neither `kustomize` nor `kubectl` is on `PATH`.
    #[error("{dir} holds a kustomization, but neither `kustomize` nor `kubectl` is on PATH to render it (install kustomize, or kubectl, which has it built in)")]
    Missing {
        /// The kustomization's directory.
        dir: PathBuf,
    },
    /// The renderer could not be started.
    #[error("{dir}: cannot run `{tool}`")]
    Spawn {
        /// The kustomization's directory.
        dir: PathBuf,
        /// The command.
        tool: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The renderer failed.
    #[error("{dir}: `{tool}` failed: {message}")]
    Failed {
        /// The kustomization's directory.
        dir: PathBuf,
        /// The command.
        tool: String,
        /// Its error output (last lines).
        message: String,
    },
}

/// The program that renders kustomizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    /// A standalone `kustomize`: `kustomize build DIR`.
    Kustomize(PathBuf),
    /// `kubectl kustomize DIR` (kubectl has kustomize built in since 1.14).
    Kubectl(PathBuf),
}

impl Tool {
    /// The renderer on `PATH`: a standalone `kustomize` first (it is the one people install
    /// for this, and usually newer than kubectl's), else `kubectl`.
    pub fn find() -> Option<Tool> {
        find_executable("kustomize")
            .map(Tool::Kustomize)
            .or_else(|| find_executable("kubectl").map(Tool::Kubectl))
    }

    /// The command line, for messages: `kustomize build DIR` or `kubectl kustomize DIR`.
    pub fn command_line(&self, dir: &Path) -> String {
        match self {
            Tool::Kustomize(_) => format!("kustomize build {}", dir.display()),
            Tool::Kubectl(_) => format!("kubectl kustomize {}", dir.display()),
        }
    }

    fn command(&self, dir: &Path) -> std::process::Command {
        let (program, verb) = match self {
            Tool::Kustomize(p) => (p, "build"),
            Tool::Kubectl(p) => (p, "kustomize"),
        };
        let mut cmd = std::process::Command::new(program);
        cmd.arg(verb).arg(dir);
        cmd
    }
}

/// The kustomization file in `dir`, if it holds one.
pub fn kustomization_in(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// An executable file called `name` in a directory of `PATH`.
fn find_executable(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Renders of this process, by directory: one `up` reads its manifests up to three times
/// (validation, the no-change check, the apply) and a render takes ~0.1 s.
static RENDERED: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// The YAML that kustomize renders for `dir`.
pub fn render(dir: &Path) -> Result<String, KustomizeError> {
    if let Some(text) = RENDERED
        .lock()
        .expect("not poisoned")
        .as_ref()
        .and_then(|r| r.get(dir))
    {
        return Ok(text.clone());
    }
    let tool = Tool::find().ok_or_else(|| KustomizeError::Missing {
        dir: dir.to_path_buf(),
    })?;
    let output = tool
        .command(dir)
        .output()
        .map_err(|source| KustomizeError::Spawn {
            dir: dir.to_path_buf(),
            tool: tool.command_line(dir),
            source,
        })?;
    if !output.status.success() {
        return Err(KustomizeError::Failed {
            dir: dir.to_path_buf(),
            tool: tool.command_line(dir),
            message: last_lines(&String::from_utf8_lossy(&output.stderr), 8),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    RENDERED
        .lock()
        .expect("not poisoned")
        .get_or_insert_with(HashMap::new)
        .insert(dir.to_path_buf(), text.clone());
    Ok(text)
}

/// The last `n` non-empty lines of `text`, joined with newlines (an error stays one screen).
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let out = lines[start..].join("\n");
    if out.is_empty() {
        "no error output".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kustomization_is_found_by_any_of_its_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kustomization_in(dir.path()), None);
        std::fs::write(dir.path().join("Kustomization"), "resources: []\n").unwrap();
        assert_eq!(
            kustomization_in(dir.path()),
            Some(dir.path().join("Kustomization"))
        );
        std::fs::write(dir.path().join("kustomization.yaml"), "resources: []\n").unwrap();
        assert_eq!(
            kustomization_in(dir.path()),
            Some(dir.path().join("kustomization.yaml"))
        );
    }

    #[test]
    fn command_lines_name_the_tool() {
        let dir = Path::new("k8s/overlays/dev");
        assert_eq!(
            Tool::Kustomize("/usr/bin/kustomize".into()).command_line(dir),
            "kustomize build k8s/overlays/dev"
        );
        assert_eq!(
            Tool::Kubectl("/usr/bin/kubectl".into()).command_line(dir),
            "kubectl kustomize k8s/overlays/dev"
        );
    }

    #[test]
    fn errors_keep_the_last_lines() {
        let text = (1..=20).map(|i| format!("line {i}\n")).collect::<String>();
        assert_eq!(last_lines(&text, 2), "line 19\nline 20");
        assert_eq!(last_lines("\n \n", 3), "no error output");
    }
}
