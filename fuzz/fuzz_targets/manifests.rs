//! Manifest text → what `up` does with it before the first API call: [`manifests::load`]
//! (`${VAR}` substitution with fixed variables, documents split and parsed, URL variables
//! found in the documents), then TLS planning, image rewriting and apply preparation.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox::error::Error;
use sandbox::manifests::{self, Builtins};

/// A directory holding `all.yaml`, rewritten with each input (`load` reads files).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("sandbox-fuzz-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir
    })
}

fn variables() -> BTreeMap<String, String> {
    let builtins = Builtins {
        name: "fuzz".into(),
        namespace: "default".into(),
        domain: "127.0.0.1.nip.io".into(),
        ip: "127.0.0.1".into(),
        http_port: 80,
        https_port: 8443,
        smtp_host: "maildev.sandbox-system.svc.cluster.local".into(),
        smtp_port: 1025,
    };
    let user = BTreeMap::from([
        ("GREETING".to_string(), "hello".to_string()),
        ("REPLICAS".to_string(), "2".to_string()),
    ]);
    manifests::variables(&builtins, &user)
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join("all.yaml"), data).expect("write the input");
    let urls = |docs: &[manifests::Document]| {
        let found = sandbox::urls::planned(docs, 8443, Some("172.18.0.2"), "default");
        sandbox::urls::variables(&found)
    };
    let mut docs = match manifests::load(&["all.yaml".to_string()], dir, &variables(), urls) {
        Ok(docs) => docs,
        Err(e) => {
            let _ = Error::from(e).json();
            return;
        }
    };
    let _ = sandbox::ingress::plan(&mut docs, "127.0.0.1.nip.io", "default");
    let images = BTreeMap::from([(
        "hello".to_string(),
        "hello:sandbox-0123456789ab".to_string(),
    )]);
    // cluster mode's wildcard TLS Secret on the Ingresses without TLS
    sandbox::cli::cluster::use_tls_secret(&mut docs, "wildcard-dev");
    for (i, doc) in docs.iter_mut().enumerate() {
        let _ = doc.describe();
        // loaded into the node, or pushed to a registry
        let policy = if i % 2 == 0 { "Never" } else { "IfNotPresent" };
        manifests::rewrite_images(&mut doc.object, &images, policy);
        let _ = sandbox::apply::phase(doc.kind());
        let _ = sandbox::apply::kind_rank(doc.kind());
        let mut prepared =
            sandbox::apply::prepare(&doc.object, "fuzz", doc.namespace().or(Some("default")));
        sandbox::normalize::fill_list_keys(&mut prepared);
        let _ = sandbox::wait::judge(&prepared);
        let _ = sandbox::wait::waits_on(&prepared);
    }
});
