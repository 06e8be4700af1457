//! Kubeconfig: rewrite the node's admin kubeconfig for the host, merge it into the user's
//! kubeconfig as context `sandbox-<name>`, and remove it again.
//!
//! The user's file is edited as a YAML tree so that fields this program does not know
//! (extensions, preferences, other tools' entries) survive untouched.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// Errors reading, rewriting or writing kubeconfigs.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The node's admin kubeconfig is not what was expected.
    #[error("the node's admin kubeconfig is invalid: {0}")]
    InvalidAdmin(String),
    /// The user's kubeconfig cannot be parsed.
    #[error("{path}: not a kubeconfig: {message}")]
    InvalidUser {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The merged tree cannot be written as YAML: serde_yaml cannot emit a tagged mapping
    /// key (`!tag key: value`), which a user's kubeconfig may hold.
    #[error("cannot write {path}: the YAML cannot be written back ({message}); a tagged mapping key such as `!tag key:` is the likely cause")]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// The emitter's message.
        message: String,
    },
    /// File I/O failed.
    #[error("cannot {action} {path}")]
    Io {
        /// read / write.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The file sandbox merges into: the first entry of `KUBECONFIG`, else `~/.kube/config`
/// (see [`crate::paths::kubeconfig`]).
///
/// # Panics
/// When neither `KUBECONFIG` nor `HOME` names it: [`crate::paths::check`], which every
/// command passes first, has then failed already.
pub fn user_kubeconfig_path() -> PathBuf {
    crate::paths::kubeconfig()
        .unwrap_or_else(|e| panic!("paths::check passes before the kubeconfig is used: {e}"))
}

fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_mapping()?.get(key)
}

/// Turns the node's admin kubeconfig into a standalone one for the host: one cluster,
/// user and context, all named after `context`, the server set to `server`.
pub fn for_host(admin: &str, context: &str, server: &str) -> Result<Value, KubeconfigError> {
    let doc: Value =
        serde_yaml::from_str(admin).map_err(|e| KubeconfigError::InvalidAdmin(e.to_string()))?;
    let first = |key: &str, inner: &str| -> Result<Value, KubeconfigError> {
        get(&doc, key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(|e| get(e, inner))
            .cloned()
            .ok_or_else(|| KubeconfigError::InvalidAdmin(format!("no {key}[0].{inner}")))
    };
    let mut cluster = first("clusters", "cluster")?;
    let user = first("users", "user")?;
    cluster
        .as_mapping_mut()
        .ok_or_else(|| KubeconfigError::InvalidAdmin("clusters[0].cluster is not a map".into()))?
        .insert("server".into(), server.into());
    let user_name = format!("admin@{context}");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\npreferences: {{}}\ncurrent-context: {context}\n\
         contexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {user_name}\n"
    );
    let mut out: Value = serde_yaml::from_str(&yaml).expect("static kubeconfig skeleton");
    let map = out.as_mapping_mut().expect("mapping");
    map.insert("clusters".into(), named_list(context, "cluster", cluster));
    map.insert("users".into(), named_list(&user_name, "user", user));
    Ok(out)
}

fn named_list(name: &str, key: &str, body: Value) -> Value {
    let mut entry = Mapping::new();
    entry.insert("name".into(), name.into());
    entry.insert(key.into(), body);
    Value::Sequence(vec![Value::Mapping(entry)])
}

/// Merges the entries of `sandbox` (as made by [`for_host`]) into `user`, replacing entries
/// of the same names, and makes its context current.
pub fn merge(user: Option<Value>, sandbox: &Value) -> Value {
    let mut user = match user {
        Some(Value::Mapping(m)) => Value::Mapping(m),
        _ => serde_yaml::from_str("apiVersion: v1\nkind: Config\npreferences: {}\n")
            .expect("skeleton"),
    };
    let map = user.as_mapping_mut().expect("mapping");
    for key in ["clusters", "users", "contexts"] {
        let incoming = get(sandbox, key)
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let list = map
            .entry(key.into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if !list.is_sequence() {
            *list = Value::Sequence(Vec::new());
        }
        let seq = list.as_sequence_mut().expect("sequence");
        for entry in incoming {
            let name = get(&entry, "name").cloned();
            seq.retain(|e| get(e, "name") != name.as_ref());
            seq.push(entry);
        }
    }
    if let Some(current) = get(sandbox, "current-context").cloned() {
        map.insert("current-context".into(), current);
    }
    user
}

/// Removes context `context` and the cluster and user it names from `user`. Returns
/// whether anything was removed.
pub fn remove(user: &mut Value, context: &str) -> bool {
    let Some(map) = user.as_mapping_mut() else {
        return false;
    };
    let user_name = format!("admin@{context}");
    let mut removed = false;
    for (key, name) in [
        ("clusters", context),
        ("users", &user_name),
        ("contexts", context),
    ] {
        if let Some(seq) = map.get_mut(key).and_then(Value::as_sequence_mut) {
            let before = seq.len();
            seq.retain(|e| get(e, "name").and_then(Value::as_str) != Some(name));
            removed |= seq.len() != before;
        }
    }
    if map.get("current-context").and_then(Value::as_str) == Some(context) {
        map.insert("current-context".into(), "".into());
    }
    removed
}

/// A kubeconfig of `context` of `user` alone (its cluster and user, made current), with
/// `namespace` as the context's namespace; `None` when `user` has no such context.
pub fn narrow(user: &Value, context: &str, namespace: &str) -> Option<Value> {
    let named = |key: &str, name: &str| -> Option<Value> {
        get(user, key)?
            .as_sequence()?
            .iter()
            .find(|e| get(e, "name").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    let mut entry = named("contexts", context)?;
    let body = entry
        .as_mapping_mut()?
        .get_mut("context")?
        .as_mapping_mut()?;
    body.insert("namespace".into(), namespace.into());
    let cluster = body
        .get("cluster")
        .and_then(Value::as_str)
        .map(str::to_string);
    let user_name = body.get("user").and_then(Value::as_str).map(str::to_string);
    let mut out: Value =
        serde_yaml::from_str("apiVersion: v1\nkind: Config\npreferences: {}\n").expect("skeleton");
    let map = out.as_mapping_mut().expect("mapping");
    for (key, name) in [("clusters", cluster), ("users", user_name)] {
        let list = name.and_then(|n| named(key, &n)).into_iter().collect();
        map.insert(key.into(), Value::Sequence(list));
    }
    map.insert("contexts".into(), Value::Sequence(vec![entry]));
    map.insert("current-context".into(), context.into());
    Some(out)
}

/// Reads a kubeconfig file; `None` when it does not exist or is empty.
pub fn read(path: &Path) -> Result<Option<Value>, KubeconfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => {
            serde_yaml::from_str(&text)
                .map(Some)
                .map_err(|e| KubeconfigError::InvalidUser {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KubeconfigError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a kubeconfig atomically with mode 0600, creating its directory.
pub fn write(path: &Path, doc: &Value) -> Result<(), KubeconfigError> {
    let io = |source| KubeconfigError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let text = serde_yaml::to_string(doc).map_err(|e| KubeconfigError::Unwritable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Merges `sandbox` into the user's kubeconfig file.
pub fn install(path: &Path, sandbox: &Value) -> Result<(), KubeconfigError> {
    let merged = merge(read(path)?, sandbox);
    write(path, &merged)
}

/// Removes `context` from the user's kubeconfig file, if present. Returns whether it was.
pub fn uninstall(path: &Path, context: &str) -> Result<bool, KubeconfigError> {
    let Some(mut doc) = read(path)? else {
        return Ok(false);
    };
    let removed = remove(&mut doc, context);
    if removed {
        write(path, &doc)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: Q0E=
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
contexts:
- name: sandbox
  context: {cluster: sandbox, user: kubernetes-admin}
current-context: sandbox
";

    #[test]
    fn for_host_rewrites_server_and_names() {
        let k = for_host(ADMIN, "sandbox-demo", "https://127.0.0.1:40001").unwrap();
        let text = serde_yaml::to_string(&k).unwrap();
        assert!(text.contains("server: https://127.0.0.1:40001"), "{text}");
        assert!(!text.contains(":6443"), "{text}");
        assert!(text.contains("certificate-authority-data: Q0E="), "{text}");
        assert!(text.contains("client-key-data: S0VZ"), "{text}");
        assert_eq!(get(&k, "current-context").unwrap(), "sandbox-demo");
        let ctx = &get(&k, "contexts").unwrap()[0];
        assert_eq!(ctx["context"]["user"], "admin@sandbox-demo");
        assert_eq!(ctx["context"]["cluster"], "sandbox-demo");
    }

    #[test]
    fn for_host_rejects_garbage() {
        assert!(for_host("kind: Config\n", "c", "https://x").is_err());
        assert!(for_host(": :", "c", "https://x").is_err());
    }

    #[test]
    fn merge_keeps_other_entries_and_replaces_own() {
        let user: Value = serde_yaml::from_str(
            "apiVersion: v1
kind: Config
current-context: prod
clusters: [{name: prod, cluster: {server: 'https://prod'}}, {name: sandbox-demo, cluster: {server: 'https://old'}}]
users: [{name: me, user: {token: t}}]
contexts: [{name: prod, context: {cluster: prod, user: me}}]
extensions: [{name: keep-me, extension: {a: 1}}]
",
        )
        .unwrap();
        let sandbox = for_host(ADMIN, "sandbox-demo", "https://127.0.0.1:40001").unwrap();
        let merged = merge(Some(user), &sandbox);
        let clusters = get(&merged, "clusters").unwrap().as_sequence().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[1]["cluster"]["server"], "https://127.0.0.1:40001");
        assert_eq!(get(&merged, "current-context").unwrap(), "sandbox-demo");
        assert!(get(&merged, "extensions").is_some());
        assert_eq!(
            get(&merged, "users").unwrap().as_sequence().unwrap().len(),
            2
        );
        // merging twice changes nothing
        assert_eq!(merge(Some(merged.clone()), &sandbox), merged);
    }

    #[test]
    fn remove_takes_out_only_the_sandbox() {
        let sandbox = for_host(ADMIN, "sandbox-demo", "https://127.0.0.1:40001").unwrap();
        let other = for_host(ADMIN, "sandbox-other", "https://127.0.0.1:40002").unwrap();
        let mut doc = merge(Some(merge(None, &other)), &sandbox);
        assert!(remove(&mut doc, "sandbox-demo"));
        assert!(!remove(&mut doc, "sandbox-demo"));
        for key in ["clusters", "users", "contexts"] {
            let seq = get(&doc, key).unwrap().as_sequence().unwrap();
            assert_eq!(seq.len(), 1, "{key}");
            assert!(get(&seq[0], "name")
                .unwrap()
                .as_str()
                .unwrap()
                .ends_with("sandbox-other"));
        }
        assert_eq!(get(&doc, "current-context").unwrap(), "");
    }

    #[test]
    fn files_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/config");
        let sandbox = for_host(ADMIN, "sandbox-demo", "https://127.0.0.1:40001").unwrap();
        install(&path, &sandbox).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(uninstall(&path, "sandbox-demo").unwrap());
        assert!(!uninstall(&path, "sandbox-demo").unwrap());
        assert!(!uninstall(&dir.path().join("absent"), "sandbox-demo").unwrap());
    }

    #[test]
    fn a_tagged_key_is_an_error_not_a_panic() {
        // found by fuzzing (fuzz/fuzz_targets/kubeconfig.rs): serde_yaml reads a tagged
        // mapping key but cannot emit it, and writing the merged file panicked
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let text = "apiVersion: v1\nkind: Config\nusers:\n- name: me\n  user:\n    ! exec: {}\n";
        std::fs::write(&path, text).unwrap();
        let sandbox = for_host(ADMIN, "sandbox-demo", "https://127.0.0.1:40001").unwrap();
        let err = install(&path, &sandbox).unwrap_err();
        assert!(matches!(err, KubeconfigError::Unwritable { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with(&format!("cannot write {}: ", path.display())));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "left untouched"
        );
    }

    #[test]
    fn a_narrowed_kubeconfig_holds_one_context_in_the_environment() {
        let user: Value = serde_yaml::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: prod\n\
             clusters:\n- {name: prod, cluster: {server: 'https://prod:6443'}}\n- {name: team, cluster: {server: 'https://team:6443'}}\n\
             users:\n- {name: ops, user: {token: secret}}\n- {name: dev, user: {token: t}}\n\
             contexts:\n- {name: prod, context: {cluster: prod, user: ops}}\n- {name: team-shared, context: {cluster: team, user: dev, namespace: default}}\n",
        )
        .unwrap();
        let narrowed = narrow(&user, "team-shared", "pr-7").unwrap();
        assert_eq!(narrowed["current-context"], "team-shared");
        assert_eq!(narrowed["contexts"][0]["context"]["namespace"], "pr-7");
        assert_eq!(narrowed["clusters"].as_sequence().unwrap().len(), 1);
        assert_eq!(
            narrowed["clusters"][0]["cluster"]["server"],
            "https://team:6443"
        );
        assert_eq!(narrowed["users"][0]["name"], "dev");
        assert!(!serde_yaml::to_string(&narrowed).unwrap().contains("secret"));
        assert!(narrow(&user, "absent", "pr-7").is_none());
    }
}
