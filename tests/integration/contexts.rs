//! The environment a command finds its engine and its directories in, as a user sets it
//! up: a Docker context of the CLI's own files (config.json's `currentContext`, its
//! meta.json) whose endpoint reaches the real engine by another path, `DOCKER_CONTEXT`
//! choosing a context whose socket is not there (exit 3 naming both), and HOME unset
//! (a clear error before anything is touched). No node: `down` of a sandbox that does not
//! exist is the cheapest command that talks to the engine and succeeds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{assert_success, json_document};

/// The socket of the engine the other tests use (`DOCKER_HOST` when it is a socket).
fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Writes context `name` with endpoint `host` into the Docker config directory `config`.
fn write_context(config: &Path, name: &str, host: &str) {
    let digest = sandbox::warm::digest(name.as_bytes());
    let dir = config.join("contexts/meta").join(digest);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = serde_json::json!({
        "Name": name,
        "Metadata": {"Description": "written by the contexts test"},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}},
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}

/// `sandbox ARGS` for a sandbox that does not exist, in `dir`, with the Docker CLI's
/// configuration in `dir/docker` and neither DOCKER_HOST nor DOCKER_CONTEXT set.
fn sandbox(dir: &Path, args: &[&str]) -> Command {
    let name = format!("t{}-contexts", std::process::id() % 100000);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox"));
    cmd.arg("--name")
        .arg(name)
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", dir.join("docker"))
        .env("KUBECONFIG", dir.join("kube/config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("CI", "true")
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("SANDBOX_NAME")
        .env_remove("SANDBOX_FILE")
        .env_remove("SANDBOX_PROFILE")
        .env_remove("SANDBOX_NAMESPACE");
    cmd
}

fn run(mut command: Command) -> Output {
    command.output().expect("the sandbox binary runs")
}

#[test]
fn the_current_context_reaches_the_engine_and_a_dead_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("docker");
    // the engine's socket by another path: only the context leads there
    let link = dir.path().join("engine/docker.sock");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(engine_socket(), &link).unwrap();
    write_context(&config, "via-link", &format!("unix://{}", link.display()));
    std::fs::write(
        config.join("config.json"),
        r#"{"auths": {}, "currentContext": "via-link"}"#,
    )
    .unwrap();

    let out = run(sandbox(dir.path(), &["down", "-o", "json"]));
    assert_success(&out, "sandbox down through context via-link");
    assert_eq!(json_document(&out.stdout)["kind"], "DownResult", "{out:?}");

    // DOCKER_CONTEXT comes before currentContext: a context whose socket is not there
    // fails with exit 3, naming the context, what chose it and the socket
    let absent = dir.path().join("nowhere/docker.sock");
    write_context(&config, "dead", &format!("unix://{}", absent.display()));
    let mut dead = sandbox(dir.path(), &["down", "-o", "json"]);
    dead.env("DOCKER_CONTEXT", "dead");
    let out = run(dead);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let error = json_document(&out.stdout);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "cannot reach the Docker engine at unix://{} (Docker context \"dead\", selected by DOCKER_CONTEXT",
            absent.display()
        )),
        "{message}"
    );
    let causes = error["causes"].to_string();
    assert!(causes.contains(&absent.display().to_string()), "{causes}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\nhint: "),
        "{out:?}"
    );

    // a currentContext that names no context: the missing file is named
    std::fs::write(config.join("config.json"), r#"{"currentContext": "gone"}"#).unwrap();
    let out = run(sandbox(dir.path(), &["down", "-o", "json"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let message = json_document(&out.stdout)["message"]
        .as_str()
        .unwrap()
        .to_string();
    let meta = config
        .join("contexts/meta")
        .join(sandbox::warm::digest(b"gone"))
        .join("meta.json");
    assert!(
        message.contains("Docker context \"gone\"")
            && message.contains(&meta.display().to_string()),
        "{message}"
    );
}

#[test]
fn without_home_a_command_says_what_to_set_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = sandbox(dir.path(), &["down", "-o", "json"]);
    command
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("DOCKER_CONFIG");
    let out = run(command);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = json_document(&out.stdout)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        message,
        "HOME is not set, and sandbox's state directory (~/.local/state/sandbox) needs it: \
         set HOME, or XDG_STATE_HOME"
    );
    // XDG_STATE_HOME, XDG_DATA_HOME and KUBECONFIG are enough for sandbox's own files; the
    // engine is then found through DOCKER_HOST (the Docker CLI's files have no place)
    let mut command = sandbox(dir.path(), &["down", "-o", "json"]);
    command.env_remove("HOME").env_remove("DOCKER_CONFIG");
    let out = run(command);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let message = json_document(&out.stdout)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("DOCKER_CONFIG"), "{message}");
    let mut command = sandbox(dir.path(), &["down", "-o", "json"]);
    command.env_remove("HOME").env_remove("DOCKER_CONFIG").env(
        "DOCKER_HOST",
        format!("unix://{}", engine_socket().display()),
    );
    let out = run(command);
    assert_success(&out, "sandbox down without HOME, through DOCKER_HOST");
    assert!(!dir.path().join(".local").exists());
}
