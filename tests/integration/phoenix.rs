//! The seeds' Phoenix-style app (cotoami) end to end (issue 6): the app, PostgreSQL and Redis
//! from one all-in-one file come up with one `up`; signing in mails a link through maildev's
//! SMTP; the link, read back through maildev's HTTP API, starts with the app's public URL
//! from `up` (no host edited by hand) and signs in over trusted HTTPS by name, once.

use std::time::Duration;

use serde_json::Value;

use crate::support::{assert_success, eventually, TestSandbox};
use crate::web::{url_of, Browser};

/// The body of a raw HTTP response.
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The text of the newest message maildev holds for `to`.
fn mail_to(browser: &Browser, maildev: &str, to: &str) -> Result<String, String> {
    let (code, response) = browser.request("GET", &format!("{maildev}email"), None)?;
    if code != 200 {
        return Err(format!("HTTP {code}: {response:.200}"));
    }
    let inbox: Value = serde_json::from_str(body(&response)).map_err(|e| e.to_string())?;
    inbox
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| {
            m["to"]
                .as_array()
                .is_some_and(|t| t.iter().any(|a| a["address"] == to))
        })
        .and_then(|m| m["text"].as_str().map(str::to_string))
        .ok_or_else(|| {
            format!(
                "no message to {to} among {} messages",
                inbox.as_array().map_or(0, Vec::len)
            )
        })
}

#[test]
fn sign_in_link_mailed_through_maildev_works_over_https_once() {
    let sb = TestSandbox::new("phoenix");
    let (file, _) = sb.fixture("phoenix-style");
    let out = sb
        .command(&["up", "-f", &file, "-o", "json"])
        .env("COTOAMI_DB_PASSWORD", "s3cret-for-tests")
        .output()
        .unwrap();
    assert_success(&out, "sandbox up (phoenix-style)");
    let up = crate::support::json_document(&out.stdout);
    let browser = Browser::of(&sb, &up);
    // https://cotoami.127.0.0.1.nip.io/, with the HTTPS port when it is not 443
    let app = url_of(&up, "cotoami");
    let maildev = url_of(&up, "maildev");

    let form = browser.get_ok(&app);
    assert!(form.contains(r#"name="email""#), "{form}");
    let email = format!("{}@example.com", sb.name);
    let (code, response) = browser
        .request(
            "POST",
            &format!("{app}cgi-bin/signin"),
            Some(&format!("email={}", email.replace('@', "%40"))),
        )
        .unwrap();
    assert_eq!(code, 200, "{response}");
    assert!(response.contains("Check your mail"), "{response}");

    let text = eventually(
        "the sign-in mail reaches maildev",
        Duration::from_secs(30),
        || mail_to(&browser, &maildev, &email),
    );
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no link in the mail:\n{text}"));
    assert!(
        link.starts_with(&app),
        "the link {link} is not under the app's URL {app}"
    );

    let (code, response) = browser.request("GET", link, None).unwrap();
    assert_eq!(code, 200, "{response}");
    assert!(
        response.contains(&format!("Signed in as {email}")),
        "{response}"
    );
    assert!(response.contains("Sign-ins so far: 1"), "{response}");
    // the token was consumed in Redis: the same link no longer signs in
    let (code, response) = browser.request("GET", link, None).unwrap();
    assert!(
        (400..500).contains(&code),
        "a used link answered {code}: {response}"
    );
}
