//! The seeds' Rails-style demo end to end: PostgreSQL on a PVC with `strategy: Recreate`, a
//! setup Job `up` waits for, 2 app replicas migrating on start, the password from the
//! environment; data written survives `kubectl delete pod` of the database and `down` +
//! `up`; only `down --purge` deletes it.

use std::time::Duration;

use crate::support::{assert_success, eventually, http_get, TestSandbox};

fn notes(url: &str, query: &str) -> Result<String, String> {
    match http_get(&format!("{url}cgi-bin/notes{query}")) {
        Ok((200, body)) => Ok(body.trim().to_string()),
        Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn database_data_survives_pod_deletion_and_down_up() {
    let sb = TestSandbox::new("rails");
    let (file, _) = sb.fixture("rails-style");
    let up = |sb: &TestSandbox| {
        let out = sb
            .command(&["up", "-f", &file, "-o", "json"])
            .env("DEMOAPP_DB_PASSWORD", "s3cret-for-tests")
            .output()
            .unwrap();
        assert_success(&out, "sandbox up (rails-style)");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("s3cret-for-tests")
                && !String::from_utf8_lossy(&out.stdout).contains("s3cret-for-tests"),
            "the secret value was printed"
        );
        let v = crate::support::json_document(&out.stdout);
        v["urls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "default/demoapp")
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // without the secret's variable, up fails before creating anything
    let missing = sb.run(&["up", "-f", &file]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("DEMOAPP_DB_PASSWORD is not set"));
    assert!(sb.leftovers("container").is_empty());

    let url = up(&sb);
    // up waited for the setup Job
    let job = sb.kubectl(&[
        "get",
        "job",
        "demoapp-db-setup",
        "-o",
        "jsonpath={.status.succeeded}",
    ]);
    assert_eq!(String::from_utf8_lossy(&job.stdout), "1");
    let pvc = sb.kubectl(&[
        "get",
        "pvc",
        "demoapp-db-data",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(String::from_utf8_lossy(&pvc.stdout), "Bound");

    // one request (not idempotent: a retry after a slow first insert would count 2)
    let wait = Duration::from_secs(90);
    assert_eq!(notes(&url, "?add=first"), Ok("1".to_string()));

    // the database pod is deleted: Recreate brings a new one on the same claim
    assert_success(
        &sb.kubectl(&["delete", "pod", "-l", "app=demoapp-db", "--wait=true"]),
        "delete db pod",
    );
    let after_delete = eventually("notes after db pod deletion", wait, || {
        notes(&url, "").and_then(|n| {
            if n == "1" {
                Ok(n)
            } else {
                Err(format!("count {n}"))
            }
        })
    });
    assert_eq!(after_delete, "1");

    // down keeps the data volume; up brings the same data back
    assert_success(&sb.run(&["down"]), "sandbox down");
    let url = up(&sb);
    assert_eq!(notes(&url, ""), Ok("1".to_string()), "right after down/up");

    // down --purge deletes it: a new sandbox starts empty
    assert_success(&sb.run(&["down", "--purge"]), "sandbox down --purge");
    let url = up(&sb);
    assert_eq!(
        notes(&url, ""),
        Ok("0".to_string()),
        "right after the purge and up"
    );
}
