//! `sandbox.yaml` text → [`SandboxConfig::parse`], then what `up` derives from a valid
//! config without I/O (names, labels, the Secret documents from the environment).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sandbox::config::SandboxConfig;
use sandbox::error::Error;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // a directory that does not exist: `namespace: auto` then fails to run git there
    let config = match SandboxConfig::parse(text, Path::new("/nonexistent/sandbox.yaml")) {
        Ok(config) => config,
        Err(e) => {
            let _ = Error::from(e).json();
            return;
        }
    };
    let _ = sandbox::plan::Names::of(&config.name);
    let _ = sandbox::plan::labels(&config.name, "node");
    // `fromFile` reads files (which may be /dev/zero); only the environment is fuzzed
    let mut secrets = config.secrets.clone();
    for s in &mut secrets {
        s.from_file.clear();
    }
    let found = sandbox::secrets::documents(&secrets, &config.origin(), &config.base_dir, |v| {
        (v.len() % 2 == 0).then(|| v.to_string())
    });
    if let Err(e) = found {
        let _ = Error::from(e).json();
    }
});
