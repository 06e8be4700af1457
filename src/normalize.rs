//! Manifests written for kubectl, made fit for server-side apply. Pure.
//!
//! Two things kubectl hides that server-side apply does not:
//! - objects read back from a cluster (`kubectl get -o yaml`) carry what the server wrote
//!   (status, uid, resourceVersion, managedFields, an allocated clusterIP...): applying those
//!   fails or binds the copy to the old cluster. [`strip_server_fields`] drops them, for
//!   every object as it is read.
//! - before Kubernetes 1.21, server-side apply rejects a list-map entry that omits one of
//!   its keys, even a key the server would default (structured-merge-diff#130): `protocol`
//!   of a Service port or a container port. [`fill_list_keys`] writes that default, where
//!   [`Server::fills_list_keys`] says the target server needs it.

use serde_json::{Map, Value};

/// Metadata fields only a server writes; an applied copy must not carry them.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generation",
];

/// Annotations a server or kubectl writes on the objects it holds: in a dump they describe
/// the old cluster (a revision, a bound volume, kubectl's own apply record).
const SERVER_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// List-map keys that Kubernetes 1.20's OpenAPI declares (`x-kubernetes-list-map-keys`,
/// or the patch merge key) without requiring them, and that its defaulting fills: the
/// entries server-side apply rejects before 1.21 when they are omitted. Each is
/// `(what the list is, key, default)`; the integration test
/// `normalize::list_keys_the_server_needs` compares this table with the node's OpenAPI.
pub const DEFAULTED_LIST_KEYS: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.ServicePort", "protocol", "TCP"),
    ("io.k8s.api.core.v1.ContainerPort", "protocol", "TCP"),
];

/// Whether an object looks read back from a cluster (`kubectl get -o yaml`), not written.
pub fn is_dump(object: &Value) -> bool {
    let metadata = &object["metadata"];
    object.get("status").is_some_and(|s| !s.is_null())
        || ["uid", "resourceVersion", "managedFields", "selfLink"]
            .iter()
            .any(|f| metadata.get(*f).is_some())
        || metadata["creationTimestamp"].is_string()
}

/// Drops what only a server writes: `status`, the server's metadata (also in pod and
/// claim templates, where `kubectl create --dry-run -o yaml` leaves `creationTimestamp:
/// null`) and, in a dump, what binds the object to the cluster it came from (a Service's
/// allocated `clusterIP`, a claim's `volumeName`, a Pod's `nodeName`, server annotations).
pub fn strip_server_fields(object: &mut Value) {
    let dump = is_dump(object);
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(top) = object.as_object_mut() else {
        return;
    };
    top.remove("status");
    if let Some(metadata) = top.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            metadata.remove(*field);
        }
        if dump {
            drop_server_annotations(metadata);
        }
    }
    if dump && kind == "ServiceAccount" {
        // the token Secrets of the old cluster
        top.remove("secrets");
    }
    // `creationTimestamp: null` in the templates, as `kubectl create --dry-run -o yaml` writes
    drop_null_timestamps(object);
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(claims) = spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for claim in claims.iter_mut().filter_map(Value::as_object_mut) {
            claim.remove("status");
        }
    }
    if !dump {
        return;
    }
    match kind.as_str() {
        "Service" => {
            // an allocated address of another cluster; `None` (headless) is the user's choice
            let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
            if !headless {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        "PersistentVolumeClaim" => {
            spec.remove("volumeName");
        }
        "Pod" => {
            spec.remove("nodeName");
        }
        _ => {}
    }
}

/// Folds a Secret's `stringData` into `data` (base64), as the API server does on every
/// write: applied as is, `stringData` makes each apply rewrite the Secret, so every `up`
/// would report it changed. A key in both takes `stringData`'s value, as on the server.
pub fn fold_string_data(object: &mut Value) {
    use base64::Engine as _;
    if object["kind"] != "Secret" {
        return;
    }
    let Some(top) = object.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = top.remove("stringData") else {
        return;
    };
    let data = top
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if data.is_null() {
        *data = Value::Object(Map::new());
    }
    let Some(data) = data.as_object_mut() else {
        return;
    };
    for (key, value) in strings {
        let text = match value {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        data.insert(
            key,
            Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
        );
    }
}

/// Removes `creationTimestamp: null` from every `metadata` mapping inside `value`.
fn drop_null_timestamps(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                if metadata
                    .get("creationTimestamp")
                    .is_some_and(Value::is_null)
                {
                    metadata.remove("creationTimestamp");
                }
            }
            map.values_mut().for_each(drop_null_timestamps);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_timestamps),
        _ => {}
    }
}

fn drop_server_annotations(metadata: &mut Map<String, Value>) {
    let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for a in SERVER_ANNOTATIONS {
        annotations.remove(*a);
    }
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
}

/// Calls `f` with each pod template of a workload's `spec` (a Pod's spec itself is not a
/// template: `f` gets none for it).
fn for_each_template(
    kind: &str,
    spec: &mut Map<String, Value>,
    f: &mut dyn FnMut(&mut Map<String, Value>),
) {
    let template = match kind {
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => spec.get_mut("template"),
        "CronJob" => spec
            .get_mut("jobTemplate")
            .and_then(|j| j.get_mut("spec"))
            .and_then(|s| s.get_mut("template")),
        _ => None,
    };
    if let Some(template) = template.and_then(Value::as_object_mut) {
        f(template);
    }
}

/// What sandbox knows of the API server it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Kubernetes major version.
    pub major: u32,
    /// Kubernetes minor version.
    pub minor: u32,
}

impl Server {
    /// From `/version`'s `major` and `minor` (`"20"`, or `"20+"` as some distributions
    /// write it); `None` when they are not numbers.
    pub fn parse(major: &str, minor: &str) -> Option<Server> {
        let number = |s: &str| s.trim_end_matches('+').parse().ok();
        Some(Server {
            major: number(major)?,
            minor: number(minor)?,
        })
    }

    /// Whether server-side apply on this server needs the defaulted list-map keys written
    /// out (structured-merge-diff#130, fixed in Kubernetes 1.21).
    pub fn fills_list_keys(&self) -> bool {
        (self.major, self.minor) < (1, 21)
    }

    /// Whether this server's token controller gives each ServiceAccount a token Secret
    /// that the ServiceAccount admission plugin requires of a Pod mounting one (before
    /// Kubernetes 1.24, LegacyServiceAccountTokenNoAutoGeneration).
    pub fn makes_token_secrets(&self) -> bool {
        (self.major, self.minor) < (1, 24)
    }
}

/// Writes the default of every list-map key in [`DEFAULTED_LIST_KEYS`] that an entry
/// omits: `protocol: TCP` in a Service's `spec.ports` and in the `ports` of every
/// container, init container and ephemeral container of a Pod or a pod template. Returns
/// how many entries it filled.
pub fn fill_list_keys(object: &mut Value) -> usize {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return 0;
    };
    let mut filled = 0;
    if kind == "Service" {
        filled += fill_protocol(spec.get_mut("ports"));
        return filled;
    }
    let mut fill_pod = |pod: &mut Map<String, Value>| {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for container in pod
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                filled += fill_protocol(container.get_mut("ports"));
            }
        }
    };
    if kind == "Pod" {
        fill_pod(spec);
    } else {
        for_each_template(&kind, spec, &mut |template| {
            if let Some(pod) = template.get_mut("spec").and_then(Value::as_object_mut) {
                fill_pod(pod);
            }
        });
    }
    filled
}

/// `protocol: TCP` in each port entry of `ports` that has none.
fn fill_protocol(ports: Option<&mut Value>) -> usize {
    let mut filled = 0;
    for port in ports
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        if port.get("protocol").is_none_or(Value::is_null) {
            port.insert("protocol".into(), Value::String("TCP".into()));
            filled += 1;
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn fills_protocol_in_service_ports() {
        let mut svc = yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: frontend}\n\
             spec: {type: NodePort, ports: [{port: 80}, {port: 53, protocol: UDP}, {port: 443, protocol: null}]}\n",
        );
        assert_eq!(fill_list_keys(&mut svc), 2);
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"},
                   {"port": 443, "protocol": "TCP"}])
        );
        // a second pass changes nothing
        assert_eq!(fill_list_keys(&mut svc), 0);
    }

    #[test]
    fn fills_protocol_in_every_kind_of_pod_template() {
        let container = json!({"name": "c", "image": "x", "ports": [{"containerPort": 80}]});
        let pod_spec = json!({"containers": [container.clone()],
                              "initContainers": [container.clone()],
                              "ephemeralContainers": [container.clone()]});
        let template = json!({"metadata": {"labels": {"a": "b"}}, "spec": pod_spec.clone()});
        let mut objects = vec![json!({"kind": "Pod", "spec": pod_spec.clone()})];
        for kind in [
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "ReplicationController",
        ] {
            objects.push(json!({"kind": kind, "spec": {"template": template.clone()}}));
        }
        objects.push(json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template.clone()}}}}));
        for mut object in objects {
            let kind = object["kind"].clone();
            assert_eq!(fill_list_keys(&mut object), 3, "{kind}");
            let text = object.to_string();
            assert_eq!(
                text.matches("\"protocol\":\"TCP\"").count(),
                3,
                "{kind}: {text}"
            );
        }
    }

    #[test]
    fn leaves_other_objects_and_lists_alone() {
        for text in [
            // a ConfigMap whose data happens to be called ports
            "kind: ConfigMap\nmetadata: {name: a}\ndata: {ports: '80'}\n",
            // an Endpoints object's ports are not a list-map
            "kind: Endpoints\nmetadata: {name: a}\nsubsets: [{ports: [{port: 80}]}]\n",
            // a custom resource with a pod-like spec
            "kind: Widget\nmetadata: {name: a}\nspec: {containers: [{ports: [{containerPort: 1}]}]}\n",
            // a Service without ports, a Deployment without a template
            "kind: Service\nmetadata: {name: a}\nspec: {type: ExternalName, externalName: x.example.com}\n",
            "kind: Deployment\nmetadata: {name: a}\nspec: {replicas: 1}\n",
        ] {
            let mut object = yaml(text);
            let before = object.clone();
            assert_eq!(fill_list_keys(&mut object), 0, "{text}");
            assert_eq!(object, before);
        }
    }

    #[test]
    fn string_data_is_folded_into_data() {
        let mut secret = yaml(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n\
             data: {a: b2xk, keep: eA==}\nstringData: {a: new, user: admin}\n",
        );
        fold_string_data(&mut secret);
        assert_eq!(
            secret,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "data": {"a": "bmV3", "keep": "eA==", "user": "YWRtaW4="}})
        );
        let mut only = yaml("kind: Secret\nmetadata: {name: s}\nstringData: {p: 'x y'}\n");
        fold_string_data(&mut only);
        assert_eq!(only["data"], json!({"p": "eCB5"}));
        // other kinds keep a field of that name
        let mut cm = yaml("kind: ConfigMap\nmetadata: {name: c}\nstringData: {p: x}\n");
        let before = cm.clone();
        fold_string_data(&mut cm);
        assert_eq!(cm, before);
    }

    #[test]
    fn the_versions_that_need_it() {
        assert!(Server::parse("1", "20").unwrap().fills_list_keys());
        assert!(Server::parse("1", "18+").unwrap().fills_list_keys());
        assert!(!Server::parse("1", "21").unwrap().fills_list_keys());
        assert!(!Server::parse("1", "31").unwrap().fills_list_keys());
        assert!(!Server::parse("2", "0").unwrap().fills_list_keys());
        assert!(Server::parse("1", "23").unwrap().makes_token_secrets());
        assert!(!Server::parse("1", "24").unwrap().makes_token_secrets());
        assert_eq!(Server::parse("1", ""), None);
    }

    const DEPLOYMENT_DUMP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    deployment.kubernetes.io/revision: "1"
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"apps/v1","kind":"Deployment"}
    team: web
  creationTimestamp: "2021-03-04T10:11:12Z"
  generation: 3
  labels: {app: web}
  managedFields:
  - apiVersion: apps/v1
    fieldsType: FieldsV1
    manager: kubectl-client-side-apply
    operation: Update
  name: web
  namespace: shop
  resourceVersion: "123456"
  selfLink: /apis/apps/v1/namespaces/shop/deployments/web
  uid: 0b6f3c1e-2f1d-4c2b-9a55-5d6a1a8e9f00
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      creationTimestamp: null
      labels: {app: web}
    spec:
      containers:
      - image: web:1
        name: web
        ports: [{containerPort: 8080, protocol: TCP}]
status:
  availableReplicas: 2
  observedGeneration: 3
"#;

    #[test]
    fn a_deployment_dump_keeps_only_what_was_written() {
        let mut d = yaml(DEPLOYMENT_DUMP);
        assert!(is_dump(&d));
        strip_server_fields(&mut d);
        assert_eq!(d.get("status"), None);
        assert_eq!(
            d["metadata"],
            json!({"annotations": {"team": "web"}, "labels": {"app": "web"},
                   "name": "web", "namespace": "shop"})
        );
        assert_eq!(
            d["spec"]["template"]["metadata"],
            json!({"labels": {"app": "web"}})
        );
        assert_eq!(d["spec"]["replicas"], 2);
    }

    #[test]
    fn a_service_dump_loses_its_address_but_headless_stays_headless() {
        let mut svc = yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, uid: x, resourceVersion: '1'}\n\
             spec: {clusterIP: 10.43.12.7, clusterIPs: [10.43.12.7], ports: [{port: 80, nodePort: 30080}]}\n\
             status: {loadBalancer: {}}\n",
        );
        strip_server_fields(&mut svc);
        assert_eq!(
            svc,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
                   "spec": {"ports": [{"port": 80, "nodePort": 30080}]}})
        );
        let mut headless = yaml(
            "kind: Service\nmetadata: {name: a, uid: x}\nspec: {clusterIP: None, clusterIPs: [None]}\n",
        );
        strip_server_fields(&mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
        // written by hand (no sign of a cluster): a fixed address is the user's choice
        let mut fixed = yaml("kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.43.0.20}\n");
        strip_server_fields(&mut fixed);
        assert_eq!(fixed["spec"]["clusterIP"], "10.43.0.20");
    }

    #[test]
    fn claim_pod_and_account_dumps_are_unbound_from_their_cluster() {
        let mut pvc = yaml(
            "kind: PersistentVolumeClaim\nmetadata: {name: data, uid: x, annotations: \
             {pv.kubernetes.io/bind-completed: 'yes', volume.beta.kubernetes.io/storage-provisioner: rancher.io/local-path}}\n\
             spec: {volumeName: pvc-0b6f, accessModes: [ReadWriteOnce]}\nstatus: {phase: Bound}\n",
        );
        strip_server_fields(&mut pvc);
        assert_eq!(
            pvc,
            json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                   "spec": {"accessModes": ["ReadWriteOnce"]}})
        );
        let mut pod = yaml(
            "kind: Pod\nmetadata: {name: p, uid: x}\nspec: {nodeName: old-node, containers: []}\n",
        );
        strip_server_fields(&mut pod);
        assert_eq!(pod["spec"], json!({"containers": []}));
        let mut sa = yaml(
            "kind: ServiceAccount\nmetadata: {name: s, uid: x}\nsecrets: [{name: s-token-abcde}]\n",
        );
        strip_server_fields(&mut sa);
        assert_eq!(
            sa,
            json!({"kind": "ServiceAccount", "metadata": {"name": "s"}})
        );
    }

    #[test]
    fn statefulset_claim_templates_and_cronjob_templates_are_cleaned() {
        let mut sts = yaml(
            "kind: StatefulSet\nmetadata: {name: db}\nspec:\n  template:\n    metadata: {creationTimestamp: null}\n\
             \x20 volumeClaimTemplates:\n  - metadata: {name: data, creationTimestamp: null}\n    spec: {}\n    status: {phase: Pending}\n",
        );
        strip_server_fields(&mut sts);
        assert_eq!(
            sts["spec"],
            json!({"template": {"metadata": {}},
                   "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]})
        );
        let mut cron = yaml(
            "kind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: {metadata: {creationTimestamp: null}, spec: {template: {metadata: {creationTimestamp: null}}}}}\n",
        );
        strip_server_fields(&mut cron);
        assert_eq!(
            cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
            json!({})
        );
    }

    #[test]
    fn written_objects_are_left_as_written() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations: \
                    {kubectl.kubernetes.io/last-applied-configuration: kept}\n\
                    spec: {clusterIP: 10.43.0.20, ports: [{port: 80}]}\n";
        let mut svc = yaml(text);
        assert!(!is_dump(&svc));
        strip_server_fields(&mut svc);
        assert_eq!(svc, yaml(text));
    }
}
