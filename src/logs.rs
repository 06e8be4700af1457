//! Pod logs, each line prefixed `[pod/container]`: printed once, or followed across a
//! rollout (the pods that come later are followed from their first line), for
//! `sandbox logs` and `sandbox dev`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};

/// Which lines of each container's log to print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    /// Only this container of each pod.
    pub container: Option<String>,
    /// At most this many lines from the end (`None`: all).
    pub tail: Option<i64>,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// The previous (terminated) instance of each container instead of the current one.
    pub previous: bool,
}

/// Parses a duration as kubectl's `--since` takes it: a sequence of numbers with units `h`,
/// `m`, `s` or `ms` (`90s`, `5m`, `1h30m`), rounded up to whole seconds, at least 1.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a duration (like 30s, 5m, 1h30m)");
    let mut millis: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(bad()),
        };
        millis = number
            .checked_mul(scale)
            .and_then(|m| millis.checked_add(m))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if millis == 0 {
        return Err(format!("{text:?}: the duration must be more than 0"));
    }
    i64::try_from(millis.div_ceil(1000)).map_err(|_| bad())
}

/// The statuses of `pod`'s init containers and containers.
fn statuses(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
    })
}

/// The containers of `pod` to read, init containers first, in the pod's order; with
/// `previous`, only those that have a terminated instance to read.
pub fn containers(pod: &Pod, lines: &Lines) -> Vec<String> {
    let restarted: BTreeSet<&str> = statuses(pod)
        .filter(|c| {
            c.last_state
                .as_ref()
                .is_some_and(|last| last.terminated.is_some())
        })
        .map(|c| c.name.as_str())
        .collect();
    pod.spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .map(|c| c.name.clone())
        .filter(|c| lines.container.as_ref().is_none_or(|only| only == c))
        .filter(|c| !lines.previous || restarted.contains(c.as_str()))
        .collect()
}

fn params(container: &str, lines: &Lines, follow: bool) -> LogParams {
    LogParams {
        container: Some(container.to_string()),
        tail_lines: lines.tail,
        since_seconds: lines.since_seconds,
        previous: lines.previous,
        follow,
        ..Default::default()
    }
}

/// Prints the chosen lines of every chosen container of `pods`, one container after the
/// other. A container with no log to read (not started yet) is a warning through `warn`.
pub async fn print(api: &Api<Pod>, pods: &[Pod], lines: &Lines, warn: &dyn Fn(String)) {
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        for container in containers(pod, lines) {
            let prefix = format!("[{name}/{container}]");
            match api.logs(&name, &params(&container, lines, false)).await {
                Ok(text) => {
                    for line in text.lines() {
                        crate::report::stdout(&format!("{prefix} {line}\n"));
                    }
                }
                Err(e) => warn(format!(
                    "{name}/{container}: {}",
                    crate::apply::api_message(&e)
                )),
            }
        }
    }
}

/// Follows the chosen containers of one pod from the chosen lines until each ends.
pub async fn follow_pod(api: &Api<Pod>, pod: &Pod, lines: &Lines, warn: &dyn Fn(String)) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut streams = Vec::new();
    for container in containers(pod, lines) {
        let prefix = format!("[{name}/{container}]");
        match api
            .log_stream(&name, &params(&container, lines, true))
            .await
        {
            Ok(stream) => streams.push(
                stream
                    .lines()
                    .map_ok(move |line| format!("{prefix} {line}"))
                    .boxed(),
            ),
            // a container that has not started has no log yet
            Err(e) => warn(format!(
                "{name}/{container}: {}",
                crate::apply::api_message(&e)
            )),
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(line) = all.next().await {
        match line {
            Ok(line) => crate::report::stdout(&format!("{line}\n")),
            Err(e) => warn(format!("log stream ended: {e}")),
        }
    }
}

/// Follows the logs of the pods `selector` chooses (every pod with `None`), printing each
/// line as it comes until the caller stops it. The pods running when it starts are read
/// from `lines` (their last lines); pods that appear later, as a rollout makes them, from
/// their first line. Pods are looked up once a second.
pub async fn follow(api: Api<Pod>, selector: Option<String>, lines: Lines) {
    let mut followed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut first = true;
    let list = match &selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    loop {
        if let Ok(pods) = api.list(&list).await {
            for pod in pods.items {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let running: BTreeSet<String> = statuses(&pod)
                    .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                    .map(|c| c.name.clone())
                    .collect();
                for container in containers(&pod, &lines) {
                    if !running.contains(&container)
                        || !followed.insert((uid.clone(), container.clone()))
                    {
                        continue;
                    }
                    let from = if first {
                        lines.clone()
                    } else {
                        // a new pod: all of it
                        Lines {
                            tail: None,
                            since_seconds: None,
                            ..lines.clone()
                        }
                    };
                    let params = params(&container, &from, true);
                    let (api, name) = (api.clone(), name.clone());
                    let prefix = format!("[{name}/{container}]");
                    tokio::spawn(async move {
                        let Ok(stream) = api.log_stream(&name, &params).await else {
                            return;
                        };
                        let mut lines = stream.lines();
                        while let Some(Ok(line)) = lines.next().await {
                            crate::report::stdout(&format!("{prefix} {line}\n"));
                        }
                    });
                }
            }
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_kubectl_durations() {
        assert_eq!(parse_since("30s"), Ok(30));
        assert_eq!(parse_since("5m"), Ok(300));
        assert_eq!(parse_since("1h30m"), Ok(5400));
        assert_eq!(parse_since("1500ms"), Ok(2));
        assert_eq!(parse_since("1ms"), Ok(1));
        for bad in ["", "5", "m", "5d", "-5m", "1.5h", "5m3", "0s"] {
            assert!(parse_since(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn containers_are_read_init_first_and_previous_only_when_one_ended() {
        let p = pod(r#"
metadata: {name: web-1}
spec:
  initContainers: [{name: migrate}]
  containers: [{name: app}, {name: sidecar}]
status:
  containerStatuses:
    - {name: app, ready: true, restartCount: 2, image: a, imageID: a,
       lastState: {terminated: {exitCode: 1}}}
    - {name: sidecar, ready: true, restartCount: 0, image: a, imageID: a}
"#);
        assert_eq!(
            containers(&p, &Lines::default()),
            ["migrate", "app", "sidecar"]
        );
        let only = Lines {
            container: Some("sidecar".into()),
            ..Default::default()
        };
        assert_eq!(containers(&p, &only), ["sidecar"]);
        let previous = Lines {
            previous: true,
            ..Default::default()
        };
        assert_eq!(containers(&p, &previous), ["app"]);
    }
}
