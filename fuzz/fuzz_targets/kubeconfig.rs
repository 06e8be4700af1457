//! Kubeconfig text, as the node's admin kubeconfig ([`kubeconfig::for_host`]) and as the
//! user's file that `up` merges into and `down` removes from ([`kubeconfig::install`],
//! [`kubeconfig::uninstall`]).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox::error::Error;
use sandbox::kubeconfig;

/// The user's kubeconfig file, rewritten with each input.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("sandbox-fuzz-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir.join("config")
    })
}

const ADMIN: &str = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: default\nusers:\n- name: default\n  user:\n    token: t\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let context = "sandbox-fuzz";
    let server = "https://127.0.0.1:40123";
    if let Err(e) = kubeconfig::for_host(text, context, server) {
        let _ = Error::from(e).json();
    }
    let sandbox = kubeconfig::for_host(ADMIN, context, server).expect("the fixed admin kubeconfig");
    let path = file();
    std::fs::write(path, data).expect("write the input");
    match kubeconfig::install(path, &sandbox) {
        Ok(()) => {
            let removed = kubeconfig::uninstall(path, context).map_err(Error::from);
            assert!(
                matches!(removed, Ok(true)),
                "install then uninstall: {removed:?}"
            );
        }
        Err(e) => {
            let _ = Error::from(e).json();
        }
    }
});
