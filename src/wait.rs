//! Readiness of applied workloads: pure judgement of an object's status, and a loop under
//! one deadline, woken by watches of what it waits on, that reports what it last saw.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};
use serde_json::Value;

use crate::apply::Applied;
use crate::report::Step;

/// An object's readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Done: rolled out, complete, running.
    Ready,
    /// Not yet, with what is awaited.
    Pending(String),
    /// Will not become ready (failed Job, exceeded progress deadline).
    Failed(String),
}

/// Errors waiting for workloads.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Some workloads failed or did not become ready in time.
    #[error("{summary}\n{details}")]
    NotReady {
        /// One line.
        summary: String,
        /// One block per failing resource.
        details: String,
    },
    /// A URL did not answer through its route (see [`crate::routes`]).
    #[error(transparent)]
    Unanswered(#[from] crate::routes::Unanswered),
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn generation_observed(object: &Value) -> bool {
    int(&object["status"]["observedGeneration"]) >= int(&object["metadata"]["generation"])
}

/// Judges the readiness of a workload object; `None` for kinds that are ready once applied.
pub fn judge(object: &Value) -> Option<Readiness> {
    // one judge per kind that is not ready as soon as it is applied
    let judge_kind: fn(&Value) -> Readiness = match object["kind"].as_str()? {
        "Deployment" => judge_deployment,
        "StatefulSet" => judge_statefulset,
        "DaemonSet" => judge_daemonset,
        "Job" => judge_job,
        "PersistentVolumeClaim" => judge_claim,
        "Pod" => judge_pod,
        // cert-manager's: Ready once its Secret holds a certificate for the spec
        "Certificate"
            if object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("cert-manager.io/")) =>
        {
            judge_certificate
        }
        _ => return None,
    };
    Some(judge_kind(object))
}

/// The replicas a workload's spec asks for (1 when it does not say, as the API defaults).
fn replicas(object: &Value) -> i64 {
    object["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// A Deployment's readiness: failed once its rollout exceeded its progress deadline (the
/// controller reports it stuck), ready once the controller saw the spec and every replica is updated
/// and available with no old one left.
fn judge_deployment(object: &Value) -> Readiness {
    let status = &object["status"];
    let replicas = replicas(object);
    if let Some(c) = condition(object, "Progressing") {
        if c["reason"] == "ProgressDeadlineExceeded" {
            return Readiness::Failed(format!(
                "rollout exceeded its progress deadline: {}",
                c["message"].as_str().unwrap_or_default()
            ));
        }
    }
    let updated = int(&status["updatedReplicas"]);
    let total = int(&status["replicas"]);
    let available = int(&status["availableReplicas"]);
    if !generation_observed(object) {
        Readiness::Pending("waiting for the controller to see the new spec".into())
    } else if updated < replicas {
        Readiness::Pending(format!("{updated} of {replicas} replicas updated"))
    } else if total > updated {
        Readiness::Pending(format!("{} old replicas terminating", total - updated))
    } else if available < updated {
        Readiness::Pending(format!("{available} of {replicas} replicas available"))
    } else {
        Readiness::Ready
    }
}

/// A StatefulSet's readiness: ready once the controller saw the spec, a rolling update
/// reached every replica (an `OnDelete` one waits for nobody), and every replica is ready.
fn judge_statefulset(object: &Value) -> Readiness {
    let status = &object["status"];
    let replicas = replicas(object);
    let ready = int(&status["readyReplicas"]);
    let updated = int(&status["updatedReplicas"]);
    let rolling = object["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if !generation_observed(object) {
        Readiness::Pending("waiting for the controller to see the new spec".into())
    } else if rolling
        && (updated < replicas || status["updateRevision"] != status["currentRevision"])
    {
        Readiness::Pending(format!("{updated} of {replicas} replicas updated"))
    } else if ready < replicas {
        Readiness::Pending(format!("{ready} of {replicas} replicas ready"))
    } else {
        Readiness::Ready
    }
}

/// A DaemonSet's readiness: ready once the controller saw the spec and every pod it
/// schedules is updated and available.
fn judge_daemonset(object: &Value) -> Readiness {
    let status = &object["status"];
    let desired = int(&status["desiredNumberScheduled"]);
    let updated = int(&status["updatedNumberScheduled"]);
    let available = int(&status["numberAvailable"]);
    if !generation_observed(object) {
        Readiness::Pending("waiting for the controller to see the new spec".into())
    } else if updated < desired {
        Readiness::Pending(format!("{updated} of {desired} pods updated"))
    } else if available < desired {
        Readiness::Pending(format!("{available} of {desired} pods available"))
    } else {
        Readiness::Ready
    }
}

/// A Job's readiness: ready once complete, failed once it gave up (it will not try again),
/// else pending with its completions and failed attempts so far.
fn judge_job(object: &Value) -> Readiness {
    let status = &object["status"];
    if condition(object, "Complete").is_some_and(|c| c["status"] == "True") {
        Readiness::Ready
    } else if let Some(c) = condition(object, "Failed").filter(|c| c["status"] == "True") {
        Readiness::Failed(format!(
            "job failed: {} {}",
            c["reason"].as_str().unwrap_or_default(),
            c["message"].as_str().unwrap_or_default()
        ))
    } else {
        let completions = object["spec"]["completions"].as_i64().unwrap_or(1);
        Readiness::Pending(format!(
            "{} of {completions} completions ({} failed attempts)",
            int(&status["succeeded"]),
            int(&status["failed"])
        ))
    }
}

/// A PersistentVolumeClaim's readiness: ready once bound, failed once its volume is lost
/// (it will not be bound again), else pending with the storage class that should bind it.
fn judge_claim(object: &Value) -> Readiness {
    match object["status"]["phase"].as_str() {
        Some("Bound") => Readiness::Ready,
        Some("Lost") => Readiness::Failed("its volume is lost".into()),
        _ => Readiness::Pending(format!(
            "not bound yet (storage class {})",
            object["spec"]["storageClassName"]
                .as_str()
                .unwrap_or("default")
        )),
    }
}

/// A bare Pod's readiness: ready once it succeeded or runs Ready, failed once it failed
/// (a failed pod's phase is final), else pending with its phase.
fn judge_pod(object: &Value) -> Readiness {
    let status = &object["status"];
    match status["phase"].as_str() {
        Some("Succeeded") => Readiness::Ready,
        Some("Failed") => Readiness::Failed(format!(
            "pod failed: {}",
            status["message"].as_str().unwrap_or_default()
        )),
        Some("Running") if condition(object, "Ready").is_some_and(|c| c["status"] == "True") => {
            Readiness::Ready
        }
        phase => Readiness::Pending(format!("pod {}", phase.unwrap_or("Pending"))),
    }
}

/// A cert-manager Certificate's readiness: ready once its Ready condition is true for the
/// present generation (an older generation's certificate is not the spec's), else pending
/// with what cert-manager says.
fn judge_certificate(object: &Value) -> Readiness {
    match condition(object, "Ready") {
        // the condition says which generation it judged (absent: any)
        Some(c)
            if c["status"] == "True"
                && c.get("observedGeneration")
                    .is_none_or(|g| int(g) >= int(&object["metadata"]["generation"])) =>
        {
            Readiness::Ready
        }
        Some(c) => Readiness::Pending(format!(
            "certificate not issued yet: {}",
            c["message"].as_str().unwrap_or_default()
        )),
        None => Readiness::Pending("waiting for cert-manager to issue it".into()),
    }
}

/// How a container that has restarted last ended, when that was an error.
fn crashed_before(
    cs: &k8s_openapi::api::core::v1::ContainerStatus,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    if cs.restart_count == 0 {
        return None;
    }
    cs.last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
}

/// Why a pod's containers are not running, e.g. `web: CrashLoopBackOff (back-off 10s ...)`.
pub fn pod_problems(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for cs in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        let Some(state) = &cs.state else { continue };
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            if reason != "ContainerCreating" && reason != "PodInitializing" {
                out.push(format!(
                    "container {}: {reason} {}",
                    cs.name,
                    w.message.clone().unwrap_or_default()
                ));
            }
        } else if let Some(t) = &state.terminated {
            if t.exit_code != 0 {
                out.push(format!(
                    "container {}: exited {} ({})",
                    cs.name,
                    t.exit_code,
                    t.reason.clone().unwrap_or_default()
                ));
            }
        } else if state.running.is_some() && !cs.ready {
            out.push(format!("container {}: running but not ready", cs.name));
        }
        // running again after a crash: what killed it is the problem (a deadline can fall
        // in the moment a crash-looping container runs)
        if state.running.is_some() {
            if let Some(t) = crashed_before(cs) {
                out.push(format!(
                    "container {}: restarted {} times, last exited {} ({})",
                    cs.name,
                    cs.restart_count,
                    t.exit_code,
                    t.reason.clone().unwrap_or_default()
                ));
            }
        }
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            out.push(format!(
                "unschedulable: {}",
                c.message.clone().unwrap_or_default()
            ));
        }
    }
    out
}

/// How long a container that has restarted must stay up before its workload counts as
/// ready: a crash-looping container is Ready for a moment after each restart, and its
/// Deployment may report it available then.
pub const STEADY: Duration = Duration::from_secs(10);

/// Why a pod's containers do not look steady at `now`: one that has exited with an error
/// or is waiting to restart, or one that restarted less than [`STEADY`] ago, unless what
/// ended its last run was the node stopping (before `since`, when the node container last
/// started). `None` for a pod being deleted (a rollout's old pods).
pub fn unsteady(
    pod: &Pod,
    now: k8s_openapi::jiff::Timestamp,
    since: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for cs in pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
    {
        let state = cs.state.as_ref();
        let crashed = state.is_some_and(|s| {
            s.terminated.as_ref().is_some_and(|t| t.exit_code != 0)
                || s.waiting
                    .as_ref()
                    .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
        });
        if crashed {
            return Some(format!("pod {name}: container {} is crashing", cs.name));
        }
        let fresh = state
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .is_some_and(|t| now.duration_since(t.0).as_secs() < STEADY.as_secs() as i64);
        // a run that began before the node container started ended with the node, whatever
        // its end says: containerd, started again, marks the containers it finds without a
        // task as exited 255 (Unknown) at that moment, after `since` (API times have whole
        // seconds: compare the seconds)
        let ended_with_node = since.is_some_and(|since| {
            cs.last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .is_none_or(|t| {
                    t.finished_at.as_ref().is_none_or(|f| f.0 < since)
                        || t.started_at
                            .as_ref()
                            .is_some_and(|s| s.0.as_second() < since.as_second())
                })
        });
        if cs.restart_count > 0 && fresh && !ended_with_node {
            return Some(format!(
                "pod {name}: container {} restarted {} times; checking that it stays up",
                cs.name, cs.restart_count
            ));
        }
    }
    None
}

/// Why a pod's status is not the present node's: a container shown running since before
/// `since`, when the node container last started. After a node restart, or a node made again
/// on the same cluster state, the API shows the pods of before as running and Ready at their
/// old addresses until the new kubelet reports; a client sent there would reach no pod.
/// `None` for a pod being deleted.
pub fn from_before(pod: &Value, since: k8s_openapi::jiff::Timestamp) -> Option<String> {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return None;
    }
    // the API's times have whole seconds: a container started in the node's first second
    // shows that second
    let since = since.as_second();
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["state"]["running"]["startedAt"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_second() < since)
        })
        .map(|c| {
            format!(
                "pod {}: container {} shown running since before the node started (its kubelet has not reported yet)",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default()
            )
        })
}

/// How often the wait checks everything it waits on, changes seen or not: what only time
/// settles (a restarted container staying up) and what a watch may have missed.
const BEAT: Duration = Duration::from_millis(500);

/// Waits until every applied workload is ready, failing fast on failed ones, under
/// `deadline`. An object is checked again as soon as a watch says it changed, and
/// everything on every [`BEAT`]. `since`: when the node container started (a pod shown
/// running since before then is not counted, see [`from_before`]).
pub async fn wait_all(
    client: &kube::Client,
    applied: &[Applied],
    deadline: Duration,
    since: Option<k8s_openapi::jiff::Timestamp>,
    step: &Step,
) -> Result<(), WaitError> {
    let start = Instant::now();
    let mut pending: Vec<(&Applied, Readiness)> = applied
        .iter()
        .filter(|a| waits_on(&a.object))
        .map(|a| (a, Readiness::Pending("not checked yet".into())))
        .collect();
    let total = pending.len();
    // opened once something is still pending after the first check (a no-change `up` finds
    // everything ready at once)
    let mut changes: Option<Changes> = None;
    // `None`: check everything
    let mut changed: Option<HashSet<Key>> = None;
    let mut beat = Instant::now();
    loop {
        let full = changed.is_none() || Instant::now() >= beat;
        if full {
            beat = Instant::now() + BEAT;
        }
        check_due(client, &mut pending, full, changed.as_ref(), since, step).await;
        pending.retain(|(_, r)| *r != Readiness::Ready);
        let failed: Vec<(&Applied, Readiness)> = pending
            .iter()
            .filter(|(_, r)| matches!(r, Readiness::Failed(_)))
            .map(|(a, r)| (*a, r.clone()))
            .collect();
        if !failed.is_empty() {
            let summary = format!("{} of {total} workloads failed", failed.len());
            return Err(not_ready(client, &failed, summary).await);
        }
        if pending.is_empty() {
            return Ok(());
        }
        step.update(format!(
            "waiting for {} of {total} workloads",
            pending.len()
        ));
        if start.elapsed() > deadline {
            let summary = format!(
                "{} of {total} workloads not ready within {} s",
                pending.len(),
                deadline.as_secs()
            );
            return Err(not_ready(client, &pending, summary).await);
        }
        let keys: HashSet<Key> = pending.iter().map(|(a, _)| key(a)).collect();
        let changes = changes.get_or_insert_with(|| {
            let waited: Vec<&Applied> = pending.iter().map(|(a, _)| *a).collect();
            Changes::watch(client, &waited)
        });
        let seen = changes.next(beat, &keys).await;
        changed = (!seen.is_empty()).then_some(seen);
    }
}

/// Checks the pending objects that are due, all at once: every one on a `full` check, else
/// those a watch said `changed` (the others keep the state they were last seen in). Reports
/// each one's new state on `step` and records it in `pending`.
async fn check_due(
    client: &kube::Client,
    pending: &mut [(&Applied, Readiness)],
    full: bool,
    changed: Option<&HashSet<Key>>,
    since: Option<k8s_openapi::jiff::Timestamp>,
    step: &Step,
) {
    let due: Vec<usize> = (0..pending.len())
        .filter(|&i| full || changed.is_some_and(|c| c.contains(&key(pending[i].0))))
        .collect();
    let states = join_all(due.iter().map(|&i| check(client, pending[i].0, since))).await;
    for (&i, state) in due.iter().zip(states) {
        let slot = &mut pending[i];
        match &state {
            Readiness::Ready => step.item_done(&slot.0.id(), "ready"),
            Readiness::Pending(m) => step.item(&slot.0.id(), m),
            Readiness::Failed(m) => step.item_done(&slot.0.id(), &format!("failed: {m}")),
        }
        slot.1 = state;
    }
}

/// The error that ends the wait: `summary`, then what each of `items` (the failed
/// workloads, or those not ready in time) last showed, with its recent events and its
/// pods' problems (see [`describe_all`]).
async fn not_ready(
    client: &kube::Client,
    items: &[(&Applied, Readiness)],
    summary: String,
) -> WaitError {
    let details = describe_all(client, items).await;
    WaitError::NotReady { summary, details }
}

/// What a change names: the waited object's kind (a Service's for a change to its
/// Endpoints), namespace and name.
pub(crate) type Key = (String, Option<String>, String);

fn key(a: &Applied) -> Key {
    (a.resource.kind.clone(), a.namespace.clone(), a.name.clone())
}

/// Where a waited object's changes show: its own resource, or for a Service that selects
/// pods, its Endpoints.
fn watched_resource(a: &Applied) -> ApiResource {
    if selects_pods(&a.object) {
        ApiResource::erase::<k8s_openapi::api::core::v1::Endpoints>(&())
    } else {
        a.resource.clone()
    }
}

/// Changes to the objects waited on, as they happen: one metadata-only watch per resource
/// and namespace. They only bring a check forward; the beat checks everything anyway, so a
/// watch that fails or misses an event costs time, never a wrong answer.
pub(crate) struct Changes {
    events: tokio::sync::mpsc::UnboundedReceiver<Key>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

impl Changes {
    fn watch(client: &kube::Client, waited: &[&Applied]) -> Changes {
        let mut scopes: Vec<(ApiResource, Option<String>, String)> = Vec::new();
        for a in waited {
            let scope = (
                watched_resource(a),
                a.namespace.clone(),
                a.resource.kind.clone(),
            );
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Changes::of(client, scopes)
    }

    /// The changes of every object of each `(resource, namespace, kind)` scope, named as
    /// `kind`.
    pub(crate) fn of(
        client: &kube::Client,
        scopes: Vec<(ApiResource, Option<String>, String)>,
    ) -> Changes {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let watches = scopes
            .into_iter()
            .map(|(resource, namespace, kind)| {
                let client = client.clone();
                let sender = sender.clone();
                tokio::spawn(watch_scope(client, resource, namespace, kind, sender))
            })
            .collect();
        Changes { events, watches }
    }

    /// The keys among `waited` that changed, as soon as one did (with those that came
    /// with it); empty when `until` came first.
    pub(crate) async fn next(&mut self, until: Instant, waited: &HashSet<Key>) -> HashSet<Key> {
        let mut changed = HashSet::new();
        let until = tokio::time::Instant::from_std(until);
        while changed.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return changed,
                event = self.events.recv() => match event {
                    Some(k) => {
                        if waited.contains(&k) {
                            changed.insert(k);
                        }
                    }
                    // no watch left: the beat alone
                    None => {
                        tokio::time::sleep_until(until).await;
                        return changed;
                    }
                },
            }
        }
        while let Ok(k) = self.events.try_recv() {
            if waited.contains(&k) {
                changed.insert(k);
            }
        }
        changed
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for w in &self.watches {
            w.abort();
        }
    }
}

/// Sends the key of every object of `resource` in `namespace` that changes, as `kind`,
/// until the receiver is gone. A watch the server ends (they are closed after a while) or
/// refuses is opened again after a pause.
async fn watch_scope(
    client: kube::Client,
    resource: ApiResource,
    namespace: Option<String>,
    kind: String,
    sender: tokio::sync::mpsc::UnboundedSender<Key>,
) {
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    loop {
        if let Ok(stream) = api.watch_metadata(&WatchParams::default(), "0").await {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                let meta = match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                        o.metadata
                    }
                    WatchEvent::Bookmark(_) => continue,
                    WatchEvent::Error(_) => break,
                };
                let changed = (
                    kind.clone(),
                    namespace.clone(),
                    meta.name.unwrap_or_default(),
                );
                if sender.send(changed).is_err() {
                    return;
                }
            }
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(BEAT).await;
    }
}

/// Whether `up` waits for this object: workloads, and Services that select pods.
pub fn waits_on(object: &Value) -> bool {
    judge(object).is_some() || selects_pods(object)
}

/// Whether `object` is a Service that selects pods (its Endpoints are waited on).
pub fn selects_pods(object: &Value) -> bool {
    object["kind"] == "Service"
        && object["spec"]["type"] != "ExternalName"
        && object["spec"]["selector"]
            .as_object()
            .is_some_and(|s| !s.is_empty())
}

/// Judges a Service by its Endpoints: ready when at least one address is ready.
pub fn judge_endpoints(endpoints: Option<&Value>) -> Readiness {
    let subsets = endpoints.and_then(|e| e["subsets"].as_array());
    let ready = subsets
        .into_iter()
        .flatten()
        .any(|s| s["addresses"].as_array().is_some_and(|a| !a.is_empty()));
    if ready {
        Readiness::Ready
    } else {
        Readiness::Pending("no ready endpoints (no pod behind the Service is ready)".into())
    }
}

/// The ready addresses of an Endpoints object that do not belong to a live, ready pod with
/// that address (`pods`: the pods the Service selects). After the node was made again on the same
/// cluster state, its Endpoints still list the pods of before until the endpoints
/// controller catches up, and another pod may hold such an address by then: a client would
/// reach the wrong server.
pub fn stale_addresses(endpoints: &Value, pods: &[Value]) -> Vec<String> {
    let live = |uid: &str, ip: &str| {
        pods.iter().any(|p| {
            p["metadata"]["uid"] == uid
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["podIP"] == ip
                && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
        })
    };
    endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter(|a| a["targetRef"]["kind"] == "Pod")
        .filter(|a| {
            !live(
                a["targetRef"]["uid"].as_str().unwrap_or_default(),
                a["ip"].as_str().unwrap_or_default(),
            )
        })
        .map(|a| {
            format!(
                "{} (pod {})",
                a["ip"].as_str().unwrap_or_default(),
                a["targetRef"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

async fn check(
    client: &kube::Client,
    a: &Applied,
    since: Option<k8s_openapi::jiff::Timestamp>,
) -> Readiness {
    let before = |pod: &Value| since.and_then(|since| from_before(pod, since));
    let cannot = |e: kube::Error| {
        Readiness::Pending(format!("cannot read it: {}", crate::apply::api_message(&e)))
    };
    // what is read is what is watched: a Service that selects pods through its Endpoints
    let resource = watched_resource(a);
    let api: Api<DynamicObject> = match &a.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    if resource.kind == "Endpoints" {
        let endpoints = match api.get_opt(&a.name).await {
            Ok(e) => e.and_then(|e| serde_json::to_value(e).ok()),
            Err(e) => return cannot(e),
        };
        let state = judge_endpoints(endpoints.as_ref());
        if let (Readiness::Ready, Some(endpoints)) = (&state, &endpoints) {
            // the pods the Service selects: an address of any other pod is not its own
            let Some((_, pods)) = workload_pods(client, a).await else {
                return Readiness::Pending("cannot list the pods behind it".into());
            };
            // a pod of before the node started is not at its address yet
            let pods: Vec<Value> = pods
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .filter(|p| before(p).is_none())
                .collect();
            let stale = stale_addresses(endpoints, &pods);
            if !stale.is_empty() {
                return Readiness::Pending(format!(
                    "endpoints not yet updated: {} no longer a ready pod of it",
                    stale.join(", ")
                ));
            }
        }
        return state;
    }
    let object = match api.get(&a.name).await {
        Ok(o) => serde_json::to_value(&o).unwrap_or_default(),
        Err(e) => return cannot(e),
    };
    let state = judge(&object).unwrap_or(Readiness::Ready);
    if state == Readiness::Ready && a.resource.kind == "Pod" {
        if let Some(why) = before(&object) {
            return Readiness::Pending(why);
        }
    }
    if state == Readiness::Ready
        && matches!(
            a.resource.kind.as_str(),
            "Deployment" | "StatefulSet" | "DaemonSet"
        )
    {
        if let Some(why) = pods_unsteady(client, a, since).await {
            return Readiness::Pending(why);
        }
    }
    if a.resource.kind == "PersistentVolumeClaim"
        && matches!(state, Readiness::Pending(_))
        && binds_late(client, &object).await
    {
        // WaitForFirstConsumer (k3s's local-path): it binds when a pod using it is scheduled
        return Readiness::Ready;
    }
    state
}

/// The pods a workload selects, with the API of their namespace; `None` when it selects
/// none by labels or they cannot be listed.
async fn workload_pods(client: &kube::Client, a: &Applied) -> Option<(Api<Pod>, Vec<Pod>)> {
    let ns = a.namespace.as_deref()?;
    let selector = pod_selector(&a.resource.kind, &a.object, &a.name)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    Some((pods, list.items))
}

/// The first reason a workload's pods are not steady (see [`unsteady`]) or not yet the
/// present node's (see [`from_before`]).
async fn pods_unsteady(
    client: &kube::Client,
    a: &Applied,
    since: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    let (_, pods) = workload_pods(client, a).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    pods.iter().find_map(|p| {
        unsteady(p, now, since).or_else(|| {
            let since = since?;
            from_before(&serde_json::to_value(p).ok()?, since)
        })
    })
}

/// Whether a claim's StorageClass binds only when a pod uses it.
async fn binds_late(client: &kube::Client, claim: &Value) -> bool {
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let Ok(list) = classes.list(&ListParams::default()).await else {
        return false;
    };
    let wanted = claim["spec"]["storageClassName"].as_str();
    list.items
        .iter()
        .find(|c| match wanted {
            Some(name) => c.metadata.name.as_deref() == Some(name),
            None => c
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                .is_some_and(|v| v == "true"),
        })
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer")
}

async fn describe_all(client: &kube::Client, items: &[(&Applied, Readiness)]) -> String {
    let mut out = String::new();
    for (a, state) in items {
        let text = match state {
            Readiness::Pending(m) | Readiness::Failed(m) => m.clone(),
            Readiness::Ready => "ready".into(),
        };
        out.push_str(&format!("  {} ({}): {text}\n", a.id(), a.document));
        if let Some(ns) = &a.namespace {
            for event in last_events(client, ns, &a.name, EVENTS_SHOWN).await {
                out.push_str(&format!("    event: {event}\n"));
            }
        }
        for problem in pod_problems_of(client, a).await {
            out.push_str(&format!("    {problem}\n"));
        }
    }
    out
}

/// Events shown per failing object and per failing pod.
const EVENTS_SHOWN: usize = 3;

/// The last `n` events about object `name` in `ns`, oldest first, as `Reason: message`.
pub async fn last_events(client: &kube::Client, ns: &str, name: &str, n: usize) -> Vec<String> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let Ok(list) = api.list(&params).await else {
        return Vec::new();
    };
    let mut events = list.items;
    events.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
    });
    let start = events.len().saturating_sub(n);
    events[start..]
        .iter()
        .map(|e| {
            let count = e
                .count
                .filter(|c| *c > 1)
                .map(|c| format!(" (x{c})"))
                .unwrap_or_default();
            format!(
                "{}: {}{count}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default().trim()
            )
        })
        .collect()
}

/// The label selector of the pods a workload (or Service) owns.
pub fn pod_selector(kind: &str, object: &Value, name: &str) -> Option<String> {
    let labels = match kind {
        "Job" => return Some(format!("job-name={name}")),
        "Service" => object["spec"]["selector"].as_object()?,
        _ => object["spec"]["selector"]["matchLabels"].as_object()?,
    };
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Lines of a failing container's log shown with its problem.
const FAILING_LOG_LINES: i64 = 5;

/// Problems of the pods a workload owns, each with the last log lines of the failing
/// containers.
async fn pod_problems_of(client: &kube::Client, a: &Applied) -> Vec<String> {
    let Some((pods, items)) = workload_pods(client, a).await else {
        return Vec::new();
    };
    let ns = a.namespace.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for pod in &items {
        let problems = pod_problems(pod);
        if problems.is_empty() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        out.extend(problems.iter().map(|m| format!("pod {name}: {m}")));
        for event in last_events(client, ns, &name, EVENTS_SHOWN).await {
            out.push(format!("  event: {event}"));
        }
        let statuses = pod.status.iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        });
        for cs in statuses.filter(|cs| !cs.ready || crashed_before(cs).is_some()) {
            // a container waiting to restart or running again: the logs of the one that died
            let previous =
                cs.restart_count > 0 && cs.state.as_ref().is_some_and(|s| s.terminated.is_none());
            let params = kube::api::LogParams {
                container: Some(cs.name.clone()),
                tail_lines: Some(FAILING_LOG_LINES),
                previous,
                ..Default::default()
            };
            if let Ok(text) = pods.logs(&name, &params).await {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    out.push(format!("  [{name}/{}] {line}", cs.name));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_rollout_states() {
        let d = |gen: i64, observed: i64, updated: i64, total: i64, available: i64| {
            json!({"kind": "Deployment", "metadata": {"generation": gen}, "spec": {"replicas": 2},
                   "status": {"observedGeneration": observed, "updatedReplicas": updated,
                              "replicas": total, "availableReplicas": available}})
        };
        assert!(matches!(
            judge(&d(2, 1, 2, 2, 2)),
            Some(Readiness::Pending(_))
        ));
        assert_eq!(
            judge(&d(2, 2, 1, 2, 2)),
            Some(Readiness::Pending("1 of 2 replicas updated".into()))
        );
        assert_eq!(
            judge(&d(2, 2, 2, 3, 2)),
            Some(Readiness::Pending("1 old replicas terminating".into()))
        );
        assert_eq!(
            judge(&d(2, 2, 2, 2, 1)),
            Some(Readiness::Pending("1 of 2 replicas available".into()))
        );
        assert_eq!(judge(&d(2, 2, 2, 2, 2)), Some(Readiness::Ready));
        let stuck = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {},
            "status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}});
        assert!(matches!(judge(&stuck), Some(Readiness::Failed(m)) if m.contains("too slow")));
    }

    #[test]
    fn fresh_deployment_without_status_is_pending() {
        let d =
            json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 1}});
        assert!(matches!(judge(&d), Some(Readiness::Pending(_))));
    }

    #[test]
    fn job_states() {
        let done = json!({"kind": "Job", "spec": {}, "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(judge(&done), Some(Readiness::Ready));
        let failed = json!({"kind": "Job", "spec": {}, "status": {"failed": 6, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert!(
            matches!(judge(&failed), Some(Readiness::Failed(m)) if m.contains("BackoffLimitExceeded"))
        );
        let running =
            json!({"kind": "Job", "spec": {"completions": 3}, "status": {"succeeded": 1}});
        assert_eq!(
            judge(&running),
            Some(Readiness::Pending(
                "1 of 3 completions (0 failed attempts)".into()
            ))
        );
    }

    #[test]
    fn statefulset_and_daemonset_states() {
        let sts = json!({"kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(judge(&sts), Some(Readiness::Ready));
        let ds = json!({"kind": "DaemonSet", "metadata": {"generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1, "numberAvailable": 0}});
        assert_eq!(
            judge(&ds),
            Some(Readiness::Pending("0 of 1 pods available".into()))
        );
    }

    #[test]
    fn endpoints_of_pods_gone_or_moved_are_stale() {
        let endpoints = json!({"subsets": [{"addresses": [
            {"ip": "10.0.0.5", "targetRef": {"kind": "Pod", "name": "web-1", "uid": "u1"}},
            {"ip": "10.0.0.6", "targetRef": {"kind": "Pod", "name": "web-2", "uid": "u2"}},
            {"ip": "192.168.1.9"}]}]});
        let pod = |uid: &str, ip: &str, ready: &str| {
            json!({"metadata": {"uid": uid}, "status": {"podIP": ip,
                   "conditions": [{"type": "Ready", "status": ready}]}})
        };
        // both pods live at their addresses: nothing stale (an address without a pod is
        // the user's own, as for a Service without a selector)
        let live = [pod("u1", "10.0.0.5", "True"), pod("u2", "10.0.0.6", "True")];
        assert!(stale_addresses(&endpoints, &live).is_empty());
        // web-2 was made again elsewhere; another pod now holds its old address
        let moved = [pod("u1", "10.0.0.5", "True"), pod("u3", "10.0.0.6", "True")];
        assert_eq!(
            stale_addresses(&endpoints, &moved),
            ["10.0.0.6 (pod web-2)"]
        );
        // web-1 exists but is not ready
        let unready = [
            pod("u1", "10.0.0.5", "False"),
            pod("u2", "10.0.0.6", "True"),
        ];
        assert_eq!(
            stale_addresses(&endpoints, &unready),
            ["10.0.0.5 (pod web-1)"]
        );
    }

    #[test]
    fn services_wait_for_endpoints() {
        let svc = json!({"kind": "Service", "spec": {"selector": {"app": "a"}}});
        assert!(waits_on(&svc));
        assert!(!waits_on(
            &json!({"kind": "Service", "spec": {"type": "ExternalName", "selector": {"a": "b"}}})
        ));
        assert!(!waits_on(&json!({"kind": "Service", "spec": {}})));
        assert!(matches!(judge_endpoints(None), Readiness::Pending(_)));
        let not_ready = json!({"subsets": [{"notReadyAddresses": [{"ip": "10.244.0.5"}]}]});
        assert!(matches!(
            judge_endpoints(Some(&not_ready)),
            Readiness::Pending(_)
        ));
        let ready = json!({"subsets": [{"addresses": [{"ip": "10.244.0.5"}]}]});
        assert_eq!(judge_endpoints(Some(&ready)), Readiness::Ready);
    }

    #[test]
    fn claims_wait_until_bound() {
        let pvc = |phase: &str| json!({"kind": "PersistentVolumeClaim", "spec": {"storageClassName": "standard"}, "status": {"phase": phase}});
        assert_eq!(judge(&pvc("Bound")), Some(Readiness::Ready));
        assert_eq!(
            judge(&pvc("Pending")),
            Some(Readiness::Pending(
                "not bound yet (storage class standard)".into()
            ))
        );
        assert!(matches!(judge(&pvc("Lost")), Some(Readiness::Failed(_))));
    }

    #[test]
    fn other_kinds_are_not_waited_on() {
        assert_eq!(judge(&json!({"kind": "ConfigMap"})), None);
        assert_eq!(judge(&json!({"kind": "Service"})), None);
    }

    #[test]
    fn pod_problems_name_the_container() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "web", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}}]}
        }))
        .unwrap();
        assert_eq!(
            pod_problems(&pod),
            vec!["container web: CrashLoopBackOff back-off 20s".to_string()]
        );
        let unready: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "web", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        }))
        .unwrap();
        assert_eq!(
            pod_problems(&unready),
            vec!["container web: running but not ready".to_string()]
        );
        let running_again: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "web", "ready": true, "restartCount": 3, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}
        }))
        .unwrap();
        assert_eq!(
            pod_problems(&running_again),
            vec!["container web: restarted 3 times, last exited 1 (Error)".to_string()]
        );
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-1"}, "status": status})).unwrap()
    }

    #[test]
    fn crashing_and_freshly_restarted_containers_are_not_steady() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let exited = pod(
            json!({"containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
            "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 1}}}]}),
        );
        assert!(unsteady(&exited, now, None)
            .unwrap()
            .contains("container app is crashing"));
        let backoff = pod(
            json!({"containerStatuses": [{"name": "app", "ready": false, "restartCount": 2,
            "image": "i", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        );
        assert!(unsteady(&backoff, now, None).is_some());
        let running = |started: &str, restarts: i32| {
            pod(
                json!({"containerStatuses": [{"name": "app", "ready": true, "restartCount": restarts,
                "image": "i", "imageID": "", "state": {"running": {"startedAt": started}}}]}),
            )
        };
        // restarted 3 s ago: not yet; 30 s ago: steady; never restarted: steady at once
        assert!(unsteady(&running("2026-11-25T11:59:57Z", 1), now, None)
            .unwrap()
            .contains("restarted 1 times"));
        assert_eq!(
            unsteady(&running("2026-11-25T11:59:30Z", 1), now, None),
            None
        );
        assert_eq!(
            unsteady(&running("2026-11-25T11:59:59Z", 0), now, None),
            None
        );
        // restarted 3 s ago because the node restarted (its last run ended before the node
        // started again): steady; a crash since the node started: not yet
        let ended = |finished: &str| {
            pod(
                json!({"containerStatuses": [{"name": "app", "ready": true, "restartCount": 1,
                "image": "i", "imageID": "", "state": {"running": {"startedAt": "2026-11-25T11:59:57Z"}},
                "lastState": {"terminated": {"exitCode": 255, "reason": "Unknown", "finishedAt": finished}}}]}),
            )
        };
        let node_started: k8s_openapi::jiff::Timestamp = "2026-11-25T11:59:50.5Z".parse().unwrap();
        assert_eq!(
            unsteady(&ended("2026-11-25T11:59:40Z"), now, Some(node_started)),
            None
        );
        assert!(unsteady(&ended("2026-11-25T11:59:55Z"), now, Some(node_started)).is_some());
        assert!(unsteady(&ended("2026-11-25T11:59:40Z"), now, None).is_some());
        // what containerd, started again, says of a container of the boot before: exited
        // 255 (Unknown) when it looked, after the node started; the run began before it
        let recovered = |started: &str| {
            pod(
                json!({"containerStatuses": [{"name": "app", "ready": true, "restartCount": 4,
                "image": "i", "imageID": "", "state": {"running": {"startedAt": "2026-11-25T11:59:57Z"}},
                "lastState": {"terminated": {"exitCode": 255, "reason": "Unknown",
                    "startedAt": started, "finishedAt": "2026-11-25T11:59:51Z"}}}]}),
            )
        };
        assert_eq!(
            unsteady(&recovered("2026-11-25T11:59:45Z"), now, Some(node_started)),
            None
        );
        // a run of this boot that crashed: not yet steady (the node's first second counts
        // as this boot's)
        for started in ["2026-11-25T11:59:50Z", "2026-11-25T11:59:52Z"] {
            assert!(
                unsteady(&recovered(started), now, Some(node_started)).is_some(),
                "{started}"
            );
        }
    }

    #[test]
    fn pods_shown_running_since_before_the_node_started_are_not_its_own() {
        let node_started: k8s_openapi::jiff::Timestamp =
            "2026-11-25T12:00:00.700Z".parse().unwrap();
        let pod = |started: &str, deleting: bool| {
            json!({"metadata": {"name": "web-1",
                "deletionTimestamp": if deleting { json!("2026-11-25T12:00:01Z") } else { json!(null) }},
                "status": {"containerStatuses": [
                    {"name": "init-done", "state": {"terminated": {"exitCode": 0, "startedAt": "2026-11-25T11:00:00Z"}}},
                    {"name": "web", "state": {"running": {"startedAt": started}}}]}})
        };
        let why = from_before(&pod("2026-11-25T11:58:00Z", false), node_started).unwrap();
        assert!(why.contains("pod web-1: container web"), "{why}");
        // the API's whole second of the node's start counts as after it
        assert_eq!(
            from_before(&pod("2026-11-25T12:00:00Z", false), node_started),
            None
        );
        assert_eq!(
            from_before(&pod("2026-11-25T12:00:09Z", false), node_started),
            None
        );
        assert_eq!(
            from_before(&pod("2026-11-25T11:58:00Z", true), node_started),
            None
        );
        // no status yet: nothing shown running
        assert_eq!(
            from_before(&json!({"metadata": {"name": "p"}}), node_started),
            None
        );
    }

    #[tokio::test]
    async fn a_change_wakes_the_wait_only_for_what_it_waits_on() {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let mut changes = Changes {
            events,
            watches: Vec::new(),
        };
        let key =
            |kind: &str, name: &str| (kind.to_string(), Some("ns".to_string()), name.to_string());
        let waited: HashSet<Key> = [key("Deployment", "web"), key("Service", "web")].into();
        let far = Instant::now() + Duration::from_secs(30);
        // a change to something else does not wake it; one to a waited object does, with
        // the others already sent
        sender.send(key("Deployment", "other")).unwrap();
        sender.send(key("Service", "web")).unwrap();
        sender.send(key("Deployment", "web")).unwrap();
        let started = Instant::now();
        let changed = changes.next(far, &waited).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(changed, waited);
        // nothing changed: the beat, empty
        let changed = changes
            .next(Instant::now() + Duration::from_millis(20), &waited)
            .await;
        assert!(changed.is_empty());
        // every watch gone: still only the beat, never a busy loop
        drop(sender);
        let beat = Instant::now() + Duration::from_millis(50);
        assert!(changes.next(beat, &waited).await.is_empty());
        assert!(Instant::now() >= beat);
    }

    #[test]
    fn a_certificate_is_ready_once_cert_manager_says_so_for_its_generation() {
        let certificate = |conditions: Value| {
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": "sandbox-tls", "generation": 2},
                   "status": {"conditions": conditions}})
        };
        assert!(matches!(
            judge(&certificate(json!([]))),
            Some(Readiness::Pending(_))
        ));
        assert!(matches!(
            judge(&certificate(json!([{"type": "Ready", "status": "False", "message": "Issuing certificate as Secret does not exist"}]))),
            Some(Readiness::Pending(m)) if m.contains("Secret does not exist")
        ));
        assert!(matches!(
            judge(&certificate(
                json!([{"type": "Ready", "status": "True", "observedGeneration": 1}])
            )),
            Some(Readiness::Pending(_))
        ));
        assert_eq!(
            judge(&certificate(
                json!([{"type": "Ready", "status": "True", "observedGeneration": 2}])
            )),
            Some(Readiness::Ready)
        );
        // another group's Certificate is not waited on
        let mut other = certificate(json!([]));
        other["apiVersion"] = json!("example.com/v1");
        assert_eq!(judge(&other), None);
    }
}
