//! Registry credentials as `docker push` finds them: the Docker CLI's config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), where a registry's
//! credential helper (`credHelpers`), else the default store (`credsStore`), else the
//! inline `auths` entry gives them. A helper is the program `docker-credential-<name>`,
//! asked with `get` and the registry on stdin, answering `{"Username", "Secret"}`
//! (`<token>` as the user name for an identity token).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// The key Docker Hub's credentials are kept under.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// Errors finding credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The config file does not parse.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What it said.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The Docker CLI's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; an error when neither `DOCKER_CONFIG` nor `HOME` is set.
pub fn config_path() -> Result<PathBuf, crate::paths::PathError> {
    Ok(crate::paths::docker_config()?.join("config.json"))
}

/// The key a registry host is looked up under (Docker Hub's is its v1 URL).
pub fn key(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// Credentials for `host` (`registry.example.com:5000`) from the config file at `path`, as
/// `docker push` would use them; `None` when there are none (or no file).
pub fn for_host(path: &Path, host: &str) -> Result<Option<DockerCredentials>, CredentialsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let config: ConfigFile = serde_json::from_str(&text).map_err(|e| CredentialsError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let key = key(host);
    let entry = config.auths.iter().find(|(k, _)| same_registry(k, key));
    if let Some(helper) = config.cred_helpers.get(key).or_else(|| {
        config
            .cred_helpers
            .iter()
            .find(|(k, _)| same_registry(k, key))
            .map(|(_, v)| v)
    }) {
        return ask_helper(helper, key, host);
    }
    if let Some(store) = &config.creds_store {
        if let Some(found) = ask_helper(store, key, host)? {
            return Ok(Some(found));
        }
    }
    let Some((_, entry)) = entry else {
        return Ok(None);
    };
    let (username, password) = match (&entry.auth, &entry.username) {
        (Some(auth), _) if !auth.is_empty() => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| CredentialsError::Config {
                    path: path.to_path_buf(),
                    message: format!("auths.{key}.auth is not base64 of user:password"),
                })?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| CredentialsError::Config {
                    path: path.to_path_buf(),
                    message: format!("auths.{key}.auth is not base64 of user:password"),
                })?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        (_, Some(u)) => (Some(u.clone()), entry.password.clone()),
        _ => (None, None),
    };
    if username.is_none() && entry.identitytoken.is_none() {
        return Ok(None);
    }
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(key.to_string()),
        ..Default::default()
    }))
}

/// Whether two `auths` keys name one registry (`https://host/v1/` and `host` do).
fn same_registry(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        s.trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    a == b || bare(a) == bare(b)
}

/// Asks `docker-credential-<helper>` for `key`'s credentials; `None` when it has none.
fn ask_helper(
    helper: &str,
    key: &str,
    host: &str,
) -> Result<Option<DockerCredentials>, CredentialsError> {
    let failed = |message: String| CredentialsError::Helper {
        helper: helper.to_string(),
        registry: host.to_string(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // the helpers' way of saying "none stored"
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(said.trim().to_string()));
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its answer: {e}")))?;
    Ok(Some(if answer.username == "<token>" {
        DockerCredentials {
            identitytoken: Some(answer.secret),
            serveraddress: Some(key.to_string()),
            ..Default::default()
        }
    } else {
        DockerCredentials {
            username: Some(answer.username),
            password: Some(answer.secret),
            serveraddress: Some(key.to_string()),
            ..Default::default()
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn inline_auths_as_docker_login_writes_them() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret:with:colons");
        let (_dir, path) = config(&format!(
            r#"{{"auths": {{"registry.example.com:5000": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"identitytoken": "tok"}}}}}}"#
        ));
        let c = for_host(&path, "registry.example.com:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.username.as_deref(), Some("ci"));
        assert_eq!(c.password.as_deref(), Some("s3cret:with:colons"));
        assert_eq!(
            c.serveraddress.as_deref(),
            Some("registry.example.com:5000")
        );
        let hub = for_host(&path, "docker.io").unwrap().unwrap();
        assert_eq!(hub.identitytoken.as_deref(), Some("tok"));
        assert!(for_host(&path, "elsewhere.example").unwrap().is_none());
        // no file: no credentials; a broken one: an error naming it
        assert!(for_host(&path.with_file_name("absent.json"), "x")
            .unwrap()
            .is_none());
        let (_d, broken) = config("{not json");
        let err = for_host(&broken, "x").unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn a_key_with_a_scheme_names_the_same_registry() {
        assert!(same_registry(
            "https://registry.example.com/v1/",
            "registry.example.com"
        ));
        assert!(!same_registry(
            "registry.example.com",
            "registry.example.org"
        ));
        assert_eq!(key("docker.io"), DOCKER_HUB);
    }

    #[test]
    fn a_missing_helper_is_an_error_naming_it() {
        let (_dir, path) =
            config(r#"{"credHelpers": {"registry.example.com": "sandbox-test-no-such-helper"}}"#);
        let err = for_host(&path, "registry.example.com")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker-credential-sandbox-test-no-such-helper")
                && err.contains("registry.example.com"),
            "{err}"
        );
    }
}
