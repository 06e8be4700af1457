//! `sandbox dev`'s sync (an image's `sync:` rules): changed files copied into every running
//! container of the image as a tar stream through the API server's exec (no kubectl, no
//! build, no restart), files removed there with `rm`, then each rule's `run` command.
//! Needs `sh`, `head` and `tar` (and `rm`) in the container, as `kubectl cp` needs `tar`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ImageConfig;
use crate::watch::SyncFile;

/// A running container to sync into: pod and container names, and the image it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The configured image's name.
    pub image: String,
}

/// The running containers of `pods` whose image is one of `references` (configured image
/// name → the reference the manifests run), not in pods being deleted (pure).
pub fn targets(pods: &[Pod], references: &BTreeMap<String, String>) -> Vec<Target> {
    let mut out = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let running = statuses.iter().any(|s| {
                s.name == container.name && s.state.as_ref().is_some_and(|st| st.running.is_some())
            });
            let image = references
                .iter()
                .find(|(_, reference)| container.image.as_deref() == Some(reference.as_str()));
            if let (true, Some((image, _))) = (running, image) {
                out.push(Target {
                    pod: name.clone(),
                    container: container.name.clone(),
                    image: image.clone(),
                });
            }
        }
    }
    out
}

/// A tar of the files of `files` that exist (each at its container path, relative to `/`),
/// and the container paths of those that no longer do.
pub fn pack(files: &[SyncFile]) -> std::io::Result<(Vec<u8>, Vec<String>)> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut removed = Vec::new();
    for f in files {
        match std::fs::metadata(&f.local) {
            Ok(meta) if meta.is_file() => {
                let name = f.remote.trim_start_matches('/');
                builder.append_path_with_name(&f.local, name)?;
            }
            // a directory's own event: its files come as events of their own
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(f.remote.clone()),
            Err(e) => return Err(e),
        }
    }
    let mut tar = builder.into_inner()?;
    if tar.iter().all(|b| *b == 0) {
        tar.clear();
    }
    Ok((tar, removed))
}

/// What a sync did.
#[derive(Debug)]
pub struct Synced {
    /// Files copied or removed.
    pub files: usize,
    /// Containers they went into.
    pub containers: usize,
}

/// Copies `files` into every running container of their images in `namespace` (images by
/// their `references`), then runs the rules' `run` commands there. `Err` says why not all
/// went in (the caller rebuilds instead).
pub async fn sync(
    client: &kube::Client,
    namespace: &str,
    images: &[ImageConfig],
    references: &BTreeMap<String, String>,
    files: &[SyncFile],
) -> Result<Synced, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| crate::apply::api_message(&e))?
        .items;
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.image.as_str()).collect();
    let refs: BTreeMap<String, String> = references
        .iter()
        .filter(|(name, _)| wanted.contains(name.as_str()))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    let targets = targets(&listed, &refs);
    for image in &wanted {
        if !targets.iter().any(|t| t.image == *image) {
            return Err(format!("no running container of image {image}"));
        }
    }
    for target in &targets {
        let mine: Vec<SyncFile> = files
            .iter()
            .filter(|f| f.image == target.image)
            .cloned()
            .collect();
        let (tar, removed) = pack(&mine).map_err(|e| format!("reading the changed files: {e}"))?;
        if !tar.is_empty() {
            // `head` ends the input at the archive's length: a 1.20 API server cannot close
            // an exec's stdin without ending the exec, and tar(1) reads to the end of its
            // input
            let script = format!("head -c {} | tar -xf - -C /", tar.len());
            run(&pods, target, &["sh", "-c", &script], Some(tar)).await?;
        }
        if !removed.is_empty() {
            let mut argv = vec!["rm", "-rf", "--"];
            argv.extend(removed.iter().map(String::as_str));
            run(&pods, target, &argv, None).await?;
        }
        let rules: BTreeSet<usize> = mine.iter().map(|f| f.rule).collect();
        let config = images.iter().find(|i| i.name == target.image);
        for rule in rules {
            if let Some(command) = config
                .and_then(|c| c.sync.get(rule))
                .and_then(|r| r.run.as_ref())
            {
                let argv = command.argv();
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                run(&pods, target, &argv, None).await?;
            }
        }
    }
    Ok(Synced {
        files: files.len(),
        containers: targets.len(),
    })
}

/// How long a command of a sync may run.
const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `argv` in `target`'s container (with `stdin` written to it); `Err` with its stderr
/// when it fails.
async fn run(
    pods: &Api<Pod>,
    target: &Target,
    argv: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<(), String> {
    let params = AttachParams::default()
        .container(target.container.clone())
        .stdin(stdin.is_some())
        .stdout(false)
        .stderr(true);
    let what = format!("{} in {}/{}", argv.join(" "), target.pod, target.container);
    let mut process = pods
        .exec(&target.pod, argv.to_vec(), &params)
        .await
        .map_err(|e| format!("{what}: {}", crate::apply::api_message(&e)))?;
    // stdin stays open: closing it ends the whole exec on servers before 1.29
    let _input = match (stdin, process.stdin()) {
        (Some(bytes), Some(mut input)) => {
            input
                .write_all(&bytes)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            input.flush().await.map_err(|e| format!("{what}: {e}"))?;
            Some(input)
        }
        _ => None,
    };
    let status = match process.take_status() {
        Some(status) => tokio::time::timeout(EXEC_TIMEOUT, status)
            .await
            .map_err(|_| format!("{what}: no answer within {EXEC_TIMEOUT:?}"))?,
        None => None,
    };
    let mut stderr = String::new();
    if let Some(mut err) = process.stderr() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            err.read_to_string(&mut stderr),
        )
        .await;
    }
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => Err(format!(
            "{what} failed: {} {}",
            s.message.unwrap_or_default(),
            stderr.trim()
        )),
        None => Err(format!("{what}: no exit status ({})", stderr.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, image: &str, running: bool, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "web", "image": image}, {"name": "proxy", "image": "envoy:1"}]},
            "status": {"containerStatuses": [
                {"name": "web", "image": image, "imageID": "", "ready": running, "restartCount": 0,
                 "state": if running { serde_json::json!({"running": {}}) } else { serde_json::json!({"waiting": {}}) }},
                {"name": "proxy", "image": "envoy:1", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
            ]},
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        pod
    }

    #[test]
    fn only_running_containers_of_the_current_image_are_synced_into() {
        let refs = BTreeMap::from([("web".to_string(), "web:sandbox-new".to_string())]);
        let pods = [
            pod("web-1", "web:sandbox-new", true, false),
            pod("web-2", "web:sandbox-new", false, false),
            pod("web-old", "web:sandbox-old", true, false),
            pod("web-3", "web:sandbox-new", true, true),
        ];
        assert_eq!(
            targets(&pods, &refs),
            [Target {
                pod: "web-1".into(),
                container: "web".into(),
                image: "web".into()
            }]
        );
    }

    #[test]
    fn changed_files_go_in_a_tar_at_their_container_paths_and_gone_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "new").unwrap();
        let file = |local: &str, remote: &str| SyncFile {
            image: "web".into(),
            local: dir.path().join(local),
            remote: remote.into(),
            rule: 0,
        };
        let (tar, removed) = pack(&[
            file("a.txt", "/srv/www/a.txt"),
            file("gone.txt", "/srv/www/gone.txt"),
        ])
        .unwrap();
        assert_eq!(removed, ["/srv/www/gone.txt"]);
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["srv/www/a.txt"]);
    }
}
