//! `secrets:` from sandbox.yaml: Secrets built from local files and environment
//! variables. Values are read at `up` time, sent only to the API server, never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::json;

use crate::config::SecretConfig;
use crate::manifests::Document;

/// Errors gathering secret values.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A `fromFile` file cannot be read.
    #[error("{config}: secret {secret}, key {key}: cannot read {path}")]
    File {
        /// The config file.
        config: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A `fromEnv` variable is not set.
    #[error("{config}: secret {secret}, key {key}: environment variable {var} is not set")]
    Env {
        /// The config file.
        config: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
        /// The variable.
        var: String,
    },
}

/// Builds the Secret objects, reading every value; `lookup` reads environment variables.
pub fn documents(
    secrets: &[SecretConfig],
    config: &str,
    base_dir: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Document>, SecretError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut docs = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let mut data = BTreeMap::new();
        for (key, file) in &secret.from_file {
            let path = base_dir.join(file);
            let bytes = std::fs::read(&path).map_err(|source| SecretError::File {
                config: config.to_string(),
                secret: secret.name.clone(),
                key: key.clone(),
                path: path.clone(),
                source,
            })?;
            data.insert(key.clone(), engine.encode(bytes));
        }
        for (key, var) in &secret.from_env {
            let value = lookup(var).ok_or_else(|| SecretError::Env {
                config: config.to_string(),
                secret: secret.name.clone(),
                key: key.clone(),
                var: var.clone(),
            })?;
            data.insert(key.clone(), engine.encode(value));
        }
        let mut metadata = json!({"name": secret.name});
        if let Some(ns) = &secret.namespace {
            metadata["namespace"] = json!(ns);
        }
        docs.push(Document {
            path: PathBuf::from(config),
            index: i + 1,
            line: 0,
            kustomized: false,
            object: json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": metadata,
                "type": secret.kind,
                "data": data,
            }),
        });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(from_file: &[(&str, &str)], from_env: &[(&str, &str)]) -> SecretConfig {
        SecretConfig {
            name: "db".into(),
            namespace: None,
            kind: "Opaque".into(),
            from_file: from_file
                .iter()
                .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                .collect(),
            from_env: from_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn values_come_from_files_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw.txt"), "s3cret").unwrap();
        let docs = documents(
            &[secret(&[("password", "pw.txt")], &[("token", "API_TOKEN")])],
            "sandbox.yaml",
            dir.path(),
            |v| (v == "API_TOKEN").then(|| "t0k".to_string()),
        )
        .unwrap();
        let o = &docs[0].object;
        assert_eq!(o["kind"], "Secret");
        assert_eq!(o["data"]["password"], "czNjcmV0");
        assert_eq!(o["data"]["token"], "dDBr");
        assert_eq!(o["type"], "Opaque");
    }

    #[test]
    fn missing_sources_name_the_secret_and_key_but_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let err = documents(
            &[secret(&[("password", "absent.txt")], &[])],
            "sandbox.yaml",
            dir.path(),
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("sandbox.yaml: secret db, key password: cannot read"),
            "{err}"
        );
        let err = documents(
            &[secret(&[], &[("token", "NOPE")])],
            "sandbox.yaml",
            dir.path(),
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "sandbox.yaml: secret db, key token: environment variable NOPE is not set"
        );
    }
}
