//! Every label and annotation key sandbox writes, on Docker objects (the node, its network
//! and volume, built images) and on Kubernetes objects: one place, one prefix.

/// The prefix of every key.
pub const PREFIX: &str = "dev.sandbox";
/// The sandbox an object belongs to: on Docker objects, and on every Kubernetes object
/// `up` applies (what `down`, pruning and the warm check select by).
pub const SANDBOX: &str = "dev.sandbox/sandbox";
/// The object's role: `node`, `network`, `data` on Docker objects, `image` on built
/// images; the add-ons' role on their Kubernetes objects.
pub const ROLE: &str = "dev.sandbox/role";
/// The node's profile name.
pub const PROFILE: &str = "dev.sandbox/profile";
/// How the node was granted its privileges (`privileged` or `capabilities`).
pub const SECURITY: &str = "dev.sandbox/security";
/// The sandbox version that created the object.
pub const VERSION: &str = "dev.sandbox/version";
/// On a node: whose DNS server it keeps running, a digest of the state directory of the
/// `up` that created it (see [`crate::dns_daemon::owner`]).
pub const DNS_OWNER: &str = "dev.sandbox/dns-owner";
/// On an Ingress sandbox made for a Service's HTTP port: the Service's name.
pub const URL_OF: &str = "dev.sandbox/url-of";
/// Annotation of such an Ingress: which kind of Service port it serves.
pub const URL_KIND: &str = "dev.sandbox/url-kind";

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_has_the_prefix() {
        for key in [
            super::SANDBOX,
            super::ROLE,
            super::PROFILE,
            super::SECURITY,
            super::VERSION,
            super::DNS_OWNER,
            super::URL_OF,
            super::URL_KIND,
        ] {
            assert!(key.starts_with(&format!("{}/", super::PREFIX)), "{key}");
        }
    }
}
