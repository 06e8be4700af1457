#!/usr/bin/env python3
"""The pods' floor under a cold `up`: what the workloads alone take once the node takes pods.

floor.py KUBECONFIG NODE OBJECTS.json START: waits (polling every 20 ms) until the default
ServiceAccount exists and NODE is Ready with no node.kubernetes.io/ scheduling taint (what
sandbox waits for before its pod-making objects), then creates the Deployments of
OBJECTS.json (kubectl's JSON output; its other objects are created before the wait) and
polls every 20 ms until every Deployment among them is rolled out.
Prints two figures: the node's boot (from START, seconds since the epoch, to the node
taking pods) and the pods' floor (from then to the last Deployment rolled out). No tool's
start is inside the floor: any tool that applies and waits takes at least this long.
"""
import base64
import http.client
import json
import os
import re
import ssl
import sys
import tempfile
import time

POLL = 0.02
DEADLINE = 180


def client(kubeconfig):
    text = open(kubeconfig).read()

    def field(name):
        return re.search(r"^\s*%s:\s*(\S+)\s*$" % name, text, re.M).group(1)

    server = re.match(r"https://([^:/]+):(\d+)", field("server"))
    # the ssl module reads certificates and keys from files only: kept while it reads them
    with tempfile.TemporaryDirectory() as files:
        paths = {}
        for name in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            paths[name] = os.path.join(files, name)
            with open(paths[name], "wb") as f:
                f.write(base64.b64decode(field(name)))
        context = ssl.create_default_context(cafile=paths["certificate-authority-data"])
        context.check_hostname = False
        context.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
    return http.client.HTTPSConnection(server.group(1), int(server.group(2)), context=context)


def call(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, body=body and json.dumps(body), headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0, None
    return response.status, json.loads(data) if data else None


def until(what, check):
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            sys.exit("floor.py: gave up waiting for " + what)
        time.sleep(POLL)


def takes_pods(conn, node):
    status, obj = call(conn, "GET", "/api/v1/nodes/" + node)
    if status != 200:
        return False
    ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    held = [
        t
        for t in obj.get("spec", {}).get("taints", [])
        if t["key"].startswith("node.kubernetes.io/") and t["effect"] != "PreferNoSchedule"
    ]
    return bool(ready) and ready[0]["status"] == "True" and not held


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace"}


def path_of(obj):
    group_version = obj["apiVersion"]
    base = "/api/v1" if group_version == "v1" else "/apis/" + group_version
    if obj["kind"] in CLUSTER_SCOPED:
        return "%s/%ss" % (base, obj["kind"].lower())
    namespace = obj["metadata"].get("namespace", "default")
    return "%s/namespaces/%s/%ss" % (base, namespace, obj["kind"].lower())


def rolled_out(conn, obj):
    status, current = call(conn, "GET", path_of(obj) + "/" + obj["metadata"]["name"])
    if status != 200:
        return False
    want = current["spec"].get("replicas", 1)
    got = current.get("status", {})
    return (
        got.get("observedGeneration", 0) >= current["metadata"]["generation"]
        and got.get("updatedReplicas", 0) == want
        and got.get("availableReplicas", 0) == want
        and got.get("replicas", 0) == want
    )


def create(conn, objects):
    for obj in objects:
        status, answer = call(conn, "POST", path_of(obj), obj)
        if status != 201:
            sys.exit("floor.py: creating %s: %s %s" % (obj["metadata"]["name"], status, answer))


def main():
    kubeconfig, node, objects, started = sys.argv[1:5]
    # kubectl prints one JSON document after the other
    items, text, at, decoder = [], open(objects).read(), 0, json.JSONDecoder()
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        obj, at = decoder.raw_decode(text, at)
        items.extend(obj.get("items", [obj]))
    conn = client(kubeconfig)
    until(
        "the default ServiceAccount",
        lambda: call(conn, "GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
    )
    deployments = [o for o in items if o["kind"] == "Deployment"]
    # like sandbox: what makes no pod goes in at once, the Deployments once the node takes pods
    create(conn, [o for o in items if o["kind"] != "Deployment"])
    until("node " + node, lambda: takes_pods(conn, node))
    boot = time.time() - float(started)
    start = time.monotonic()
    create(conn, deployments)
    until("the Deployments", lambda: all(rolled_out(conn, d) for d in deployments))
    print("%.3f %.3f" % (boot, time.monotonic() - start))


main()
