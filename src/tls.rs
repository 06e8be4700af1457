//! A per-user local certificate authority and the leaf certificates it issues.
//!
//! The CA lives in one directory ([`default_dir`]: `$XDG_DATA_HOME/sandbox/ca`) as
//! [`CA_CERT_FILE`] (PEM, world-readable) and [`CA_KEY_FILE`] (PKCS#8 PEM, created 0600 in
//! a 0700 directory). It is an ECDSA P-256 root, valid ten years, that may only sign end
//! entities (`pathlen:0`), and it carries a critical X.509 *name constraints* extension:
//! it can only vouch for the sandbox zones ([`BASE_ZONES`] plus the custom domains the
//! caller asks for) and for private/loopback addresses ([`PERMITTED_IP_RANGES`]). Even if
//! its key leaks, verifiers that honour name constraints refuse a certificate it signs
//! for a real site (OpenSSL and rustls/webpki are checked by the tests below). A CA found
//! on disk that could vouch for more (no or wider name constraints, no `pathlen:0`) is
//! refused ([`TlsError::CaTooBroad`]) until [`Ca::reset`] replaces it.
//!
//! Leaf certificates ([`Ca::issue`]) are ECDSA P-256 with the `serverAuth` extended key
//! usage and are valid [`LEAF_VALIDITY_DAYS`] days, under the 825-day ceiling macOS and iOS
//! apply; [`Ca::needs_renewal`] tells when a stored one should be replaced.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// File name of the CA certificate (PEM) inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key (PKCS#8 PEM, mode 0600) inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the advisory lock serialising CA creation between processes.
const CA_LOCK_FILE: &str = "ca.lock";

/// DNS zones every sandbox CA may certify (each name and everything below it).
pub const BASE_ZONES: &[&str] = &["nip.io", "sslip.io", "localhost"];
/// Address ranges every sandbox CA may certify, as (network, prefix length): loopback
/// and the RFC 1918 private ranges, where a local cluster's ingress can live.
pub const PERMITTED_IP_RANGES: &[(&str, u8)] = &[
    ("127.0.0.0", 8),
    ("10.0.0.0", 8),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("::1", 128),
];
/// Validity of a new CA, in days (ten years).
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of a leaf certificate, in days: under the 825 days macOS/iOS accept.
pub const LEAF_VALIDITY_DAYS: i64 = 800;
/// A certificate (leaf or CA) expiring within this many days is renewed.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// How far certificates are backdated, to tolerate clocks a little behind ours.
const BACKDATE: Duration = Duration::hours(1);
/// X.520 upper bound on a common name's length.
const MAX_CN_CHARS: usize = 64;

/// Errors of the local CA and of certificate issuance.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA directory could not be created or secured.
    #[error("cannot create the ca directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The lock serialising CA creation could not be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A CA file could not be read.
    #[error("cannot read the ca file {path}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A CA file could not be written.
    #[error("cannot write the ca file {path}")]
    WriteCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A CA file exists but is not what it should be.
    #[error("cannot parse the ca file {path}: {what}")]
    ParseCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
        /// Cause, when a parser reported one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The CA certificate is present but its key is not, or they do not belong together.
    #[error("the ca key {key} is missing or does not match {cert}; `sandbox trust reset` removes the old ca from the trust stores and makes a new one")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The CA on disk may vouch for more than the sandbox zones: it is neither used nor
    /// replaced silently (a replacement would leave it trusted wherever it was installed).
    #[error("the ca in {dir} is refused: {problem}; `sandbox trust reset` removes it from the trust stores and makes a new one")]
    CaTooBroad {
        /// The CA directory.
        dir: PathBuf,
        /// What it may vouch for beyond the sandbox zones, one clause per finding.
        problem: String,
    },
    /// A key pair could not be generated.
    #[error("cannot generate a key pair for {purpose} (ca directory {path})")]
    GenerateKey {
        /// The CA directory.
        path: PathBuf,
        /// What the key was for.
        purpose: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate could not be built or signed.
    #[error("cannot sign a certificate for {subject} with the ca {path}")]
    Sign {
        /// The CA certificate file.
        path: PathBuf,
        /// What the certificate was for.
        subject: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A host or domain is not a valid DNS name or IP address.
    #[error("invalid host name {host:?}: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A host is outside the zones the CA may certify.
    #[error("{host} is outside what the ca {path} may certify ({permitted})")]
    HostNotPermitted {
        /// The host as given.
        host: String,
        /// The CA certificate file.
        path: PathBuf,
        /// The permitted zones and ranges, for the message.
        permitted: String,
    },
    /// No host was given to [`Ca::issue`].
    #[error("a certificate needs at least one host name")]
    NoHosts,
}

/// What [`Ca::load_or_create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaOrigin {
    /// An existing CA that covers the requested domains was loaded.
    Loaded,
    /// No CA existed; a new one was created.
    Created,
    /// A new CA replaced the existing one, which did not cover the requested domains or was
    /// about to expire (see [`Ca::load_or_create`]), or which [`Ca::reset`] was asked to
    /// replace. The old certificate is given so that it can be removed from trust stores;
    /// certificates it issued no longer chain to the CA on disk.
    Replaced {
        /// PEM of the replaced CA certificate.
        previous_ca_pem: String,
    },
}

/// A leaf certificate issued by [`Ca::issue`].
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The certificate alone, PEM (the CA is not appended: clients trust it directly).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The user's local certificate authority, ready to issue leaf certificates.
pub struct Ca {
    dir: PathBuf,
    cert_path: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    permitted: Permitted,
    not_after: OffsetDateTime,
    origin: CaOrigin,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .field("permitted", &self.permitted)
            .field("not_after", &self.not_after)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The user's CA directory: `$XDG_DATA_HOME/sandbox/ca`, else `~/.local/share/sandbox/ca`.
pub fn default_dir() -> PathBuf {
    crate::paths::data_dir().join("ca")
}

impl Ca {
    /// Loads the CA in `dir`, creating it (and `dir`, mode 0700) when there is none, and
    /// replacing it when it does not permit [`BASE_ZONES`] and every domain of
    /// `extra_domains` (or expires within [`RENEW_BEFORE_DAYS`] days). [`Ca::origin`] says
    /// what happened. Concurrent calls are serialised by a lock file in `dir`.
    ///
    /// A CA that may vouch for more than the sandbox zones ([`BASE_ZONES`], the domains of
    /// `extra_domains` and [`PERMITTED_IP_RANGES`]), lacks critical name constraints or may
    /// sign other CAs is refused ([`TlsError::CaTooBroad`]): it is neither used nor replaced,
    /// since it may be trusted where it was installed; [`Ca::reset`] replaces it.
    pub fn load_or_create(dir: &Path, extra_domains: &[String]) -> Result<Ca, TlsError> {
        let mut wanted = Vec::new();
        for domain in extra_domains {
            let domain = normalize_domain(domain)?;
            if !wanted.contains(&domain) {
                wanted.push(domain);
            }
        }
        Self::locked(dir, || Self::load_or_create_locked(dir, &wanted))
    }

    /// Replaces the CA in `dir`, whatever it is (refused, unreadable, without its key, or
    /// fine), by a new one permitting the base zones: [`CaOrigin::Replaced`] with the old
    /// certificate's text when there was one, else [`CaOrigin::Created`]. Removing the old
    /// CA from trust stores is the caller's (`sandbox trust reset` does it first).
    pub fn reset(dir: &Path) -> Result<Ca, TlsError> {
        Self::locked(dir, || {
            let origin = match read_optional(&dir.join(CA_CERT_FILE))? {
                Some(previous_ca_pem) => CaOrigin::Replaced { previous_ca_pem },
                None => CaOrigin::Created,
            };
            // the new files are renamed over the old ones: there is never a certificate
            // without its key
            Self::create(dir, &[], origin)
        })
    }

    /// Runs `f` holding the lock that serialises changes to the CA in `dir` (created
    /// private when missing).
    fn locked(dir: &Path, f: impl FnOnce() -> Result<Ca, TlsError>) -> Result<Ca, TlsError> {
        ensure_private_dir(dir)?;
        let lock_path = dir.join(CA_LOCK_FILE);
        let lock_error = |source| TlsError::Lock {
            path: lock_path.clone(),
            source,
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_error)?;
        lock.lock().map_err(lock_error)?;
        let result = f();
        drop(lock);
        result
    }

    fn load_or_create_locked(dir: &Path, wanted: &[String]) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_optional(&cert_path)?;
        let key_pem = read_optional(&key_path)?;
        let now = OffsetDateTime::now_utc();
        match (cert_pem, key_pem) {
            (Some(cert_pem), Some(key_pem)) => {
                let ca = Self::from_pem(dir, cert_pem, &key_pem, CaOrigin::Loaded)?;
                let problems = scope_problems(&ca.cert_der, wanted);
                if !problems.is_empty() {
                    return Err(TlsError::CaTooBroad {
                        dir: dir.to_path_buf(),
                        problem: problems.join("; "),
                    });
                }
                let covered = BASE_ZONES
                    .iter()
                    .all(|zone| ca.permitted.covers_domain(zone))
                    && wanted.iter().all(|d| ca.permitted.covers_domain(d))
                    && base_ranges()
                        .iter()
                        .all(|r| ca.permitted.ranges.contains(r));
                let fresh = ca.not_after - now > Duration::days(RENEW_BEFORE_DAYS);
                if covered && fresh {
                    return Ok(ca);
                }
                // within scope, its custom domains are among the wanted ones: none is lost
                Self::create(
                    dir,
                    wanted,
                    CaOrigin::Replaced {
                        previous_ca_pem: ca.cert_pem,
                    },
                )
            }
            (Some(_), None) => Err(TlsError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            }),
            // No certificate: nothing was ever trusted, so a lone key (an interrupted
            // creation) is simply replaced.
            (None, _) => Self::create(dir, wanted, CaOrigin::Created),
        }
    }

    fn create(dir: &Path, extra_domains: &[String], origin: CaOrigin) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::GenerateKey {
                path: dir.to_path_buf(),
                purpose: "the ca".into(),
                source,
            }
        })?;
        let now = OffsetDateTime::now_utc();
        let owner = owner();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            truncate_chars(&format!("sandbox local CA ({owner})"), MAX_CN_CHARS),
        );
        name.push(DnType::OrganizationName, "sandbox development CA");
        // Distinguishes successive CAs of one user, which otherwise share a subject.
        name.push(
            DnType::OrganizationalUnitName,
            truncate_chars(
                &format!("{owner} created {}", now.unix_timestamp()),
                MAX_CN_CHARS,
            ),
        );
        params.distinguished_name = name;
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Restricts what the CA vouches for to TLS servers, for verifiers (Windows, macOS,
        // NSS, Go) that read an issuer's extended key usage as a constraint.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut permitted: Vec<GeneralSubtree> = BASE_ZONES
            .iter()
            .map(|z| GeneralSubtree::DnsName((*z).to_string()))
            .collect();
        for domain in extra_domains {
            if !BASE_ZONES.contains(&domain.as_str()) {
                permitted.push(GeneralSubtree::DnsName(domain.clone()));
            }
        }
        for (addr, prefix) in base_ranges() {
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                addr, prefix,
            )));
        }
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
        let cert = params.self_signed(&key).map_err(|source| TlsError::Sign {
            path: cert_path.clone(),
            subject: "the ca itself".into(),
            source,
        })?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        // Both files are written in full beside their final names, then renamed: the key
        // first, so that a certificate on disk never lacks its key.
        let key_tmp = write_new(dir, CA_KEY_FILE, key_pem.as_bytes(), 0o600)?;
        let cert_tmp = write_new(dir, CA_CERT_FILE, cert_pem.as_bytes(), 0o644)?;
        fs::rename(&key_tmp, &key_path).map_err(|source| TlsError::WriteCa {
            path: key_path.clone(),
            source,
        })?;
        fs::rename(&cert_tmp, &cert_path).map_err(|source| TlsError::WriteCa {
            path: cert_path.clone(),
            source,
        })?;
        Self::from_pem(dir, cert_pem, &key_pem, origin)
    }

    fn from_pem(
        dir: &Path,
        cert_pem: String,
        key_pem: &str,
        origin: CaOrigin,
    ) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let parse_error =
            |path: &Path, what: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
                TlsError::ParseCa {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                    source,
                }
            };
        let cert_der = pem_der(&cert_pem)
            .ok_or_else(|| parse_error(&cert_path, "no pem certificate block", None))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            parse_error(&key_path, "not a pkcs#8 pem private key", Some(Box::new(e)))
        })?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| parse_error(&cert_path, "not an x.509 certificate", Some(Box::new(e))))?;
        if !x509.is_ca() {
            return Err(parse_error(&cert_path, "not a ca certificate", None));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let permitted = Permitted::from_x509(&x509);
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| parse_error(&cert_path, "unusable as an issuer", Some(Box::new(e))))?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_path,
            cert_pem,
            cert_der,
            issuer,
            permitted,
            not_after,
            origin,
        })
    }

    /// What [`Ca::load_or_create`] did to obtain this CA.
    pub fn origin(&self) -> &CaOrigin {
        &self.origin
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate file ([`CA_CERT_FILE`] in the CA directory).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The DNS zones this CA may certify (each name and everything below it).
    pub fn permitted_domains(&self) -> &[String] {
        &self.permitted.domains
    }

    /// Whether `host` (a DNS name, possibly a `*.` wildcard, or an IP address) is inside
    /// what this CA may certify.
    pub fn permits(&self, host: &str) -> bool {
        match normalize_host(host) {
            Ok(Host::Dns(name)) => self.permitted.covers_domain(name.trim_start_matches("*.")),
            Ok(Host::Ip(ip)) => self.permitted.covers_ip(ip),
            Err(_) => false,
        }
    }

    /// Issues a certificate for `hosts`: DNS names (a leftmost `*` label is a wildcard)
    /// and IP addresses, all within [`Ca::permits`]. ECDSA P-256, `serverAuth`, valid
    /// [`LEAF_VALIDITY_DAYS`] days (never beyond the CA).
    pub fn issue(&self, hosts: &[String]) -> Result<Leaf, TlsError> {
        let sans = self.requested_sans(hosts)?;
        if sans.is_empty() {
            return Err(TlsError::NoHosts);
        }
        let subject = hosts.join(", ");
        let sign_error = |source| TlsError::Sign {
            path: self.cert_path.clone(),
            subject: subject.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "sandbox development certificate");
        params.distinguished_name = name;
        for san in &sans {
            params.subject_alt_names.push(match san {
                Host::Dns(name) => SanType::DnsName(name.clone().try_into().map_err(sign_error)?),
                Host::Ip(ip) => SanType::IpAddress(*ip),
            });
        }
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        params.not_before = now - BACKDATE;
        params.not_after = (now + Duration::days(LEAF_VALIDITY_DAYS)).min(self.not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::GenerateKey {
                path: self.dir.clone(),
                purpose: subject.clone(),
                source,
            }
        })?;
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_error)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after.into(),
        })
    }

    /// Whether the certificate `cert_pem` should be replaced by a new [`Ca::issue`] for
    /// `hosts` at time `now`: true when it cannot be parsed, expires within
    /// [`RENEW_BEFORE_DAYS`] days (or is not yet valid), does not name exactly `hosts`
    /// (in any order), or was not signed by this CA.
    pub fn needs_renewal(&self, cert_pem: &str, hosts: &[String], now: SystemTime) -> bool {
        let Some(der) = pem_der(cert_pem) else {
            return true;
        };
        let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&der) else {
            return true;
        };
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return true;
        };
        let now = OffsetDateTime::from(now);
        let validity = leaf.validity();
        if validity.not_before.to_datetime() > now
            || validity.not_after.to_datetime() - now <= Duration::days(RENEW_BEFORE_DAYS)
        {
            return true;
        }
        if leaf.issuer().as_raw() != ca.subject().as_raw()
            || leaf.verify_signature(Some(ca.public_key())).is_err()
        {
            return true;
        }
        let Ok(wanted) = hosts
            .iter()
            .map(|h| normalize_host(h))
            .collect::<Result<BTreeSet<_>, _>>()
        else {
            return true;
        };
        certificate_sans(&leaf).is_none_or(|have| have != wanted)
    }

    fn requested_sans(&self, hosts: &[String]) -> Result<BTreeSet<Host>, TlsError> {
        let mut sans = BTreeSet::new();
        for host in hosts {
            let san = normalize_host(host)?;
            let permitted = match &san {
                Host::Dns(name) => self.permitted.covers_domain(name.trim_start_matches("*.")),
                Host::Ip(ip) => self.permitted.covers_ip(*ip),
            };
            if !permitted {
                return Err(TlsError::HostNotPermitted {
                    host: host.clone(),
                    path: self.cert_path.clone(),
                    permitted: self.permitted.describe(),
                });
            }
            sans.insert(san);
        }
        Ok(sans)
    }
}

/// A subject alternative name, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Dns(String),
    Ip(IpAddr),
}

/// What a CA certificate's name constraints permit.
#[derive(Debug, Clone, Default)]
struct Permitted {
    domains: Vec<String>,
    ranges: Vec<(IpAddr, u8)>,
}

impl Permitted {
    fn from_x509(cert: &X509Certificate<'_>) -> Permitted {
        let mut permitted = Permitted::default();
        let Ok(Some(ext)) = cert.name_constraints() else {
            return permitted;
        };
        // Excluded subtrees are never written by this module; a CA with some is not ours
        // to reason about, so it permits nothing here ([`scope_problems`] refuses it).
        if ext.value.excluded_subtrees.is_some() {
            return permitted;
        }
        for subtree in ext.value.permitted_subtrees.iter().flatten() {
            match subtree.base {
                GeneralName::DNSName(name) => {
                    let name = name.trim_start_matches('.').to_ascii_lowercase();
                    if !permitted.domains.contains(&name) {
                        permitted.domains.push(name);
                    }
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(range) = cidr_from_bytes(bytes) {
                        permitted.ranges.push(range);
                    }
                }
                _ => {}
            }
        }
        permitted
    }

    fn covers_domain(&self, name: &str) -> bool {
        self.domains.iter().any(|zone| domain_within(name, zone))
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        self.ranges
            .iter()
            .any(|&(net, prefix)| ip_within(ip, net, prefix))
    }

    fn describe(&self) -> String {
        let ranges = self
            .ranges
            .iter()
            .map(|(ip, prefix)| format!("{ip}/{prefix}"));
        self.domains
            .iter()
            .cloned()
            .chain(ranges)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the CA certificate `cert_der` may vouch for beyond the sandbox zones
/// ([`BASE_ZONES`] and `domains`, [`PERMITTED_IP_RANGES`]), one clause per finding; empty
/// when it is within them. Other kinds of names (e-mail, URI) are not checked: a permitted
/// subtree of such a kind only narrows the CA, and TLS servers are named by DNS and IP.
fn scope_problems(cert_der: &[u8], domains: &[String]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return vec!["it is not an x.509 certificate".into()];
    };
    let mut problems = Vec::new();
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.path_len_constraint == Some(0) => {}
        _ => problems.push("it may sign other CAs (its basic constraints lack pathlen:0)".into()),
    }
    let ext = match cert.name_constraints() {
        Ok(Some(ext)) => ext,
        Ok(None) => {
            problems.push("it has no name constraints, so it could vouch for any site".into());
            return problems;
        }
        Err(e) => {
            problems.push(format!("its name constraints cannot be parsed ({e})"));
            return problems;
        }
    };
    if !ext.critical {
        problems.push(
            "its name constraints are not critical, so a verifier that does not know them ignores them"
                .into(),
        );
    }
    if ext.value.excluded_subtrees.is_some() {
        problems.push("its name constraints exclude names, which a sandbox CA never does".into());
    }
    let zones: Vec<&str> = BASE_ZONES
        .iter()
        .copied()
        .chain(domains.iter().map(String::as_str))
        .collect();
    let SubtreeFindings {
        any_dns,
        any_ip,
        wide_names,
        wide_ranges,
    } = subtree_findings(
        ext.value.permitted_subtrees.as_deref().unwrap_or_default(),
        &zones,
    );
    if !any_dns {
        problems.push("it permits every DNS name (no permitted DNS subtree)".into());
    }
    if !any_ip {
        problems.push("it permits every IP address (no permitted IP subtree)".into());
    }
    if !wide_names.is_empty() {
        problems.push(format!(
            "it permits DNS names outside the sandbox zones ({}): {}",
            zones.join(", "),
            wide_names.join(", ")
        ));
    }
    if !wide_ranges.is_empty() {
        problems.push(format!(
            "it permits addresses outside the private and loopback ranges: {}",
            wide_ranges.join(", ")
        ));
    }
    problems
}

/// What a CA's permitted subtrees allow, as [`scope_problems`] judges it.
struct SubtreeFindings {
    /// Whether a DNS subtree is permitted: without one, every DNS name is.
    any_dns: bool,
    /// Whether an IP subtree is permitted: without one, every address is.
    any_ip: bool,
    /// The permitted DNS subtrees outside the sandbox zones.
    wide_names: Vec<String>,
    /// The permitted IP subtrees outside [`PERMITTED_IP_RANGES`], or malformed.
    wide_ranges: Vec<String>,
}

/// Sorts the permitted `subtrees` of a CA's name constraints against the sandbox `zones`
/// and [`PERMITTED_IP_RANGES`]. Kept apart from [`scope_problems`], which turns the
/// findings into clauses, so that walking the subtrees is read on its own.
fn subtree_findings(
    subtrees: &[x509_parser::extensions::GeneralSubtree<'_>],
    zones: &[&str],
) -> SubtreeFindings {
    let ranges = base_ranges();
    let (mut any_dns, mut any_ip) = (false, false);
    let (mut wide_names, mut wide_ranges) = (Vec::new(), Vec::new());
    for subtree in subtrees {
        match subtree.base {
            GeneralName::DNSName(name) => {
                any_dns = true;
                let name = name.trim_start_matches('.').to_ascii_lowercase();
                if !zones.iter().any(|zone| domain_within(&name, zone)) {
                    wide_names.push(if name.is_empty() {
                        "every name (an empty DNS subtree)".to_string()
                    } else {
                        name
                    });
                }
            }
            GeneralName::IPAddress(bytes) => {
                any_ip = true;
                match cidr_from_bytes(bytes) {
                    Some((net, prefix))
                        if ranges.iter().any(|&(base, base_prefix)| {
                            prefix >= base_prefix && ip_within(net, base, base_prefix)
                        }) => {}
                    Some((net, prefix)) => wide_ranges.push(format!("{net}/{prefix}")),
                    None => wide_ranges.push(format!("a malformed subtree {bytes:02x?}")),
                }
            }
            _ => {}
        }
    }
    SubtreeFindings {
        any_dns,
        any_ip,
        wide_names,
        wide_ranges,
    }
}

fn base_ranges() -> Vec<(IpAddr, u8)> {
    PERMITTED_IP_RANGES
        .iter()
        .map(|(addr, prefix)| (addr.parse().expect("constant addresses parse"), *prefix))
        .collect()
}

/// `name` equals `zone` or lies below it.
fn domain_within(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

fn ip_within(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// An IP subtree (address followed by mask, RFC 5280 4.2.1.10) as network and prefix.
fn cidr_from_bytes(bytes: &[u8]) -> Option<(IpAddr, u8)> {
    let (addr, mask) = bytes.split_at(bytes.len() / 2);
    let mut prefix = 0u8;
    let mut ended = false;
    for &b in mask {
        let ones = b.leading_ones();
        // Once a byte is not all ones, the mask must be zero from there on.
        if (ended && b != 0) || b.count_ones() != ones {
            return None;
        }
        ended |= ones < 8;
        prefix += ones as u8;
    }
    let ip = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some((ip, prefix))
}

/// The DNS and IP subject alternative names of `cert`.
fn certificate_sans(cert: &X509Certificate<'_>) -> Option<BTreeSet<Host>> {
    let ext = cert.subject_alternative_name().ok()??;
    let mut sans = BTreeSet::new();
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(name) => {
                sans.insert(Host::Dns(name.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                    _ => return None,
                };
                sans.insert(Host::Ip(ip));
            }
            _ => {}
        }
    }
    Some(sans)
}

/// Parses a host for a certificate: an IP address (IPv6 possibly in brackets) or a DNS
/// name, lowercased, trailing dot removed, with an optional leading `*.` wildcard.
fn normalize_host(host: &str) -> Result<Host, TlsError> {
    let trimmed = host.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name = trimmed.trim_end_matches('.').to_ascii_lowercase();
    let invalid = |reason| TlsError::InvalidHost {
        host: host.to_string(),
        reason,
    };
    let base = name.strip_prefix("*.").unwrap_or(&name);
    check_dns_name(base).map_err(invalid)?;
    if name.starts_with("*.") && !base.contains('.') {
        return Err(invalid("a wildcard must stand above at least two labels"));
    }
    Ok(Host::Dns(name))
}

/// Parses a custom domain for the CA's name constraints.
fn normalize_domain(domain: &str) -> Result<String, TlsError> {
    let name = domain
        .trim()
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    check_dns_name(&name).map_err(|reason| TlsError::InvalidHost {
        host: domain.to_string(),
        reason,
    })?;
    Ok(name)
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed (use punycode for other characters), and '*' only as a whole leftmost label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// The DER of the first `CERTIFICATE` block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (pem.label == "CERTIFICATE").then_some(pem.contents)
}

/// `user@host` for the CA's subject, from `$USER` and `/etc/hostname`, `$HOSTNAME` or
/// the `hostname` command, with fallbacks.
fn owner() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "user".into());
    let host = fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::process::Command::new("hostname")
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
        })
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Creates `dir` (and missing parents) with mode 0700, and tightens an existing `dir`
/// that others can read.
fn ensure_private_dir(dir: &Path) -> Result<(), TlsError> {
    let error = |source| TlsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(error)?;
    let mode = fs::metadata(dir).map_err(error)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(error)?;
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::ReadCa {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to a fresh temporary file beside `dir/name`, created with `mode` (so a
/// key is never readable by others, not even for an instant), and returns its path.
fn write_new(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    let path = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let error = |source| TlsError::WriteCa {
        path: path.clone(),
        source,
    };
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(error(e)),
        _ => {}
    }
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration as StdDuration;

    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn der(pem: &str) -> Vec<u8> {
        pem_der(pem).expect("pem certificate")
    }

    /// Verifies `leaf_pem` against `ca` with OpenSSL's CLI; returns (success, output).
    fn openssl_verify(ca: &Ca, leaf_pem: &str, hostname: Option<&str>) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("leaf.crt");
        fs::write(&leaf, leaf_pem).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.arg("verify")
            .arg("-CAfile")
            .arg(ca.cert_path())
            .args(["-purpose", "sslserver"]);
        if let Some(host) = hostname {
            cmd.args(["-verify_hostname", host]);
        }
        let out = cmd.arg(&leaf).output().expect("openssl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Verifies `leaf_pem` against `ca` with webpki, as rustls does for a server.
    fn webpki_verify(ca: &Ca, leaf_pem: &str, server_name: &str) -> Result<(), webpki::Error> {
        let ca_der = CertificateDer::from(der(ca.ca_pem()));
        let anchor = webpki::anchor_from_trusted_cert(&ca_der)?;
        let leaf_der = CertificateDer::from(der(leaf_pem));
        let leaf = webpki::EndEntityCert::try_from(&leaf_der)?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )?;
        let name = ServerName::try_from(server_name.to_string()).expect("server name");
        leaf.verify_is_valid_for_subject_name(&name)
    }

    /// Signs a certificate for `hosts` with `ca`'s key, bypassing [`Ca::issue`]'s checks.
    fn sign_by_hand(ca: &Ca, dir: &Path, hosts: &[&str]) -> String {
        let key_pem = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(ca.ca_pem(), KeyPair::from_pem(&key_pem).unwrap()).unwrap();
        let mut params = CertificateParams::new(strings(hosts)).unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30 * 6);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        params.signed_by(&key, &issuer).unwrap().pem()
    }

    #[test]
    fn files_are_private_and_the_ca_is_reused_until_a_new_domain_is_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/sandbox/ca");
        let ca = Ca::load_or_create(&dir, &[]).unwrap();
        assert_eq!(ca.origin(), &CaOrigin::Created);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(ca.cert_path(), dir.join(CA_CERT_FILE));
        assert_eq!(fs::read_to_string(ca.cert_path()).unwrap(), ca.ca_pem());
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(ca.permitted_domains(), &strings(BASE_ZONES));

        let again = Ca::load_or_create(&dir, &strings(&["localhost", "x.nip.io"])).unwrap();
        assert_eq!(again.origin(), &CaOrigin::Loaded);
        assert_eq!(again.ca_pem(), ca.ca_pem());

        let custom = Ca::load_or_create(&dir, &strings(&["Dev.Example.TEST."])).unwrap();
        assert_eq!(
            custom.origin(),
            &CaOrigin::Replaced {
                previous_ca_pem: ca.ca_pem().to_string()
            }
        );
        assert_ne!(custom.ca_pem(), ca.ca_pem());
        assert!(custom
            .permitted_domains()
            .contains(&"dev.example.test".to_string()));
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert!(custom.issue(&strings(&["app.dev.example.test"])).is_ok());

        // A custom domain the caller does not ask for is outside the sandbox zones: refused.
        for asked in [&["other.test"][..], &[]] {
            let err = Ca::load_or_create(&dir, &strings(asked)).unwrap_err();
            assert!(matches!(err, TlsError::CaTooBroad { .. }), "{err:?}");
        }
        // Asked with another one: replaced by a CA permitting both.
        let both = Ca::load_or_create(&dir, &strings(&["dev.example.test", "other.test"])).unwrap();
        assert!(matches!(both.origin(), CaOrigin::Replaced { .. }));
        assert!(both.permits("a.other.test") && both.permits("a.dev.example.test"));
        let again =
            Ca::load_or_create(&dir, &strings(&["other.test", "dev.example.test"])).unwrap();
        assert_eq!(again.origin(), &CaOrigin::Loaded);
        assert_eq!(again.ca_pem(), both.ca_pem());
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "ca.key", "ca.lock"]);
    }

    #[test]
    fn an_existing_loose_directory_is_tightened_and_bad_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join(CA_CERT_FILE), "not a certificate").unwrap();
        fs::write(dir.join(CA_KEY_FILE), "not a key").unwrap();
        let err = Ca::load_or_create(&dir, &[]).unwrap_err();
        assert!(matches!(err, TlsError::ParseCa { .. }), "{err:?}");
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(matches!(
            Ca::load_or_create(&dir, &strings(&["bad domain"])),
            Err(TlsError::InvalidHost { .. })
        ));

        // A key from another CA is a mismatch, not a silent replacement.
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        Ca::load_or_create(&one, &[]).unwrap();
        Ca::load_or_create(&two, &[]).unwrap();
        fs::copy(one.join(CA_CERT_FILE), dir.join(CA_CERT_FILE)).unwrap();
        fs::copy(two.join(CA_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(&dir, &[]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(&dir, &[]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn the_ca_carries_critical_name_constraints_and_pathlen_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), &strings(&["sandbox.test"])).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(ca.cert_path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for expected in [
            "X509v3 Name Constraints: critical",
            "DNS:nip.io",
            "DNS:sslip.io",
            "DNS:localhost",
            "DNS:sandbox.test",
            "IP:127.0.0.0/255.0.0.0",
            "IP:10.0.0.0/255.0.0.0",
            "IP:172.16.0.0/255.240.0.0",
            "IP:192.168.0.0/255.255.0.0",
            "IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF",
            "CA:TRUE, pathlen:0",
            "Certificate Sign, CRL Sign",
            "ASN1 OID: prime256v1",
            "sandbox local CA (",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn a_wildcard_leaf_verifies_with_openssl_and_webpki() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), &[]).unwrap();
        let hosts = strings(&["*.127.0.0.1.nip.io", "127.0.0.1.nip.io"]);
        let leaf = ca.issue(&hosts).unwrap();
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let days = leaf
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!((LEAF_VALIDITY_DAYS - 1..=LEAF_VALIDITY_DAYS).contains(&(days as i64)));

        let (ok, out) = openssl_verify(&ca, &leaf.cert_pem, Some("hello.127.0.0.1.nip.io"));
        assert!(ok, "{out}");
        let (ok, out) = openssl_verify(&ca, &leaf.cert_pem, Some("127.0.0.1.nip.io"));
        assert!(ok, "{out}");
        webpki_verify(&ca, &leaf.cert_pem, "hello.127.0.0.1.nip.io").unwrap();
        webpki_verify(&ca, &leaf.cert_pem, "127.0.0.1.nip.io").unwrap();
        // A wildcard covers one label only.
        assert!(webpki_verify(&ca, &leaf.cert_pem, "a.b.127.0.0.1.nip.io").is_err());

        // The leaf's key is the one returned.
        let key = KeyPair::from_pem(&leaf.key_pem).unwrap();
        let leaf_der = der(&leaf.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert!(!x509.is_ca());

        let leaf_path = tmp.path().join("leaf.crt");
        fs::write(&leaf_path, &leaf.cert_pem).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&leaf_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for expected in [
            "DNS:*.127.0.0.1.nip.io, DNS:127.0.0.1.nip.io",
            "TLS Web Server Authentication",
            "CA:FALSE",
            "X509v3 Key Usage: critical",
            "Digital Signature",
            "X509v3 Authority Key Identifier",
            "ASN1 OID: prime256v1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn ip_and_localhost_leaves_verify_with_openssl_and_webpki() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), &[]).unwrap();
        let leaf = ca
            .issue(&strings(&[
                "localhost",
                "127.0.0.1",
                "[::1]",
                "192.168.49.2",
            ]))
            .unwrap();
        let (ok, out) = openssl_verify(&ca, &leaf.cert_pem, Some("localhost"));
        assert!(ok, "{out}");
        for name in ["localhost", "127.0.0.1", "::1", "192.168.49.2"] {
            webpki_verify(&ca, &leaf.cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn names_outside_the_zones_are_refused_by_issue_and_rejected_by_verifiers() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path(), &[]).unwrap();
        for host in [
            "example.com",
            "nip.io.example.com",
            "evilnip.io",
            "8.8.8.8",
            "::2",
        ] {
            let err = ca.issue(&strings(&[host])).unwrap_err();
            assert!(
                matches!(err, TlsError::HostNotPermitted { .. }),
                "{host}: {err}"
            );
            assert!(!ca.permits(host));
        }
        assert!(matches!(ca.issue(&[]), Err(TlsError::NoHosts)));
        for bad in [
            "*",
            "*.io",
            "a..nip.io",
            "a b.nip.io",
            "x.*.nip.io",
            "-a.nip.io",
        ] {
            assert!(
                matches!(
                    ca.issue(&strings(&[bad])),
                    Err(TlsError::InvalidHost { .. })
                ),
                "{bad}"
            );
        }

        // Signed by the CA's key, by hand: verifiers must refuse it.
        let forged = sign_by_hand(&ca, tmp.path(), &["example.com"]);
        let (ok, out) = openssl_verify(&ca, &forged, None);
        assert!(
            !ok,
            "openssl accepted a certificate outside the name constraints"
        );
        assert!(out.contains("permitted subtree violation"), "{out}");
        assert_eq!(
            webpki_verify(&ca, &forged, "example.com"),
            Err(webpki::Error::NameConstraintViolation)
        );

        let forged_ip = sign_by_hand(&ca, tmp.path(), &["8.8.8.8"]);
        let (ok, out) = openssl_verify(&ca, &forged_ip, None);
        assert!(!ok && out.contains("permitted subtree violation"), "{out}");
        assert_eq!(
            webpki_verify(&ca, &forged_ip, "8.8.8.8"),
            Err(webpki::Error::NameConstraintViolation)
        );

        // The same hand-made path is accepted for a permitted name: the rejection above is
        // the name constraints, not the construction.
        let fine = sign_by_hand(&ca, tmp.path(), &["app.sslip.io"]);
        let (ok, out) = openssl_verify(&ca, &fine, None);
        assert!(ok, "{out}");
        webpki_verify(&ca, &fine, "app.sslip.io").unwrap();
    }

    /// The permitted subtrees of a sandbox CA without custom domains.
    fn sandbox_subtrees() -> Vec<GeneralSubtree> {
        let mut subtrees: Vec<GeneralSubtree> = BASE_ZONES
            .iter()
            .map(|z| GeneralSubtree::DnsName(z.to_string()))
            .collect();
        for (addr, prefix) in base_ranges() {
            subtrees.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                addr, prefix,
            )));
        }
        subtrees
    }

    /// A CA like sandbox's, made by hand: these name constraints, at most one intermediate
    /// below it (`pathlen:0`) unless `pathlen` says otherwise.
    fn hand_made_ca(
        constraints: Option<NameConstraints>,
        pathlen: BasicConstraints,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "hand-made CA");
        params.distinguished_name = name;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        params.is_ca = IsCa::Ca(pathlen);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = constraints;
        params
    }

    fn permitting(subtrees: Vec<GeneralSubtree>) -> Option<NameConstraints> {
        Some(NameConstraints {
            permitted_subtrees: subtrees,
            excluded_subtrees: Vec::new(),
        })
    }

    /// Writes the CA `params` describe, with a new key, into `dir` as sandbox keeps one;
    /// returns its certificate.
    fn write_ca(dir: &Path, params: CertificateParams) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(CA_CERT_FILE), &pem).unwrap();
        fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
        pem
    }

    #[test]
    fn a_ca_wider_than_the_sandbox_zones_is_refused_until_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let with = |extra: Vec<GeneralSubtree>| {
            let mut subtrees = sandbox_subtrees();
            subtrees.extend(extra);
            permitting(subtrees)
        };
        let only_dns = BASE_ZONES
            .iter()
            .map(|z| GeneralSubtree::DnsName(z.to_string()))
            .collect();
        let mut excluding = with(Vec::new()).unwrap();
        excluding.excluded_subtrees = vec![GeneralSubtree::DnsName("evil.nip.io".into())];
        // name constraints permitting nip.io alone, not marked critical (DER by hand: rcgen
        // always marks its own critical)
        let mut not_critical = hand_made_ca(None, BasicConstraints::Constrained(0));
        not_critical.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 30],
            [
                &[0x30, 0x0c, 0xa0, 0x0a, 0x30, 0x08, 0x82, 0x06][..],
                b"nip.io",
            ]
            .concat(),
        )];
        let zero = BasicConstraints::Constrained(0);
        let cases = [
            (
                "none",
                hand_made_ca(None, zero),
                "it has no name constraints, so it could vouch for any site",
            ),
            (
                "tld",
                hand_made_ca(with(vec![GeneralSubtree::DnsName("com".into())]), zero),
                "it permits DNS names outside the sandbox zones (nip.io, sslip.io, localhost): com",
            ),
            (
                "parent",
                hand_made_ca(with(vec![GeneralSubtree::DnsName("io".into())]), zero),
                "outside the sandbox zones (nip.io, sslip.io, localhost): io",
            ),
            (
                "everything",
                hand_made_ca(with(vec![GeneralSubtree::DnsName(String::new())]), zero),
                "outside the sandbox zones (nip.io, sslip.io, localhost): every name (an empty DNS subtree)",
            ),
            (
                "any-ipv4",
                hand_made_ca(
                    with(vec![GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                        "0.0.0.0".parse().unwrap(),
                        0,
                    ))]),
                    zero,
                ),
                "it permits addresses outside the private and loopback ranges: 0.0.0.0/0",
            ),
            (
                "public-range",
                hand_made_ca(
                    with(vec![GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                        "8.8.8.0".parse().unwrap(),
                        24,
                    ))]),
                    zero,
                ),
                "outside the private and loopback ranges: 8.8.8.0/24",
            ),
            (
                "dns-only",
                hand_made_ca(permitting(only_dns), zero),
                "it permits every IP address (no permitted IP subtree)",
            ),
            (
                "excluding",
                hand_made_ca(Some(excluding), zero),
                "its name constraints exclude names, which a sandbox CA never does",
            ),
            (
                "not-critical",
                not_critical,
                "its name constraints are not critical",
            ),
            (
                "pathlen",
                hand_made_ca(with(Vec::new()), BasicConstraints::Unconstrained),
                "it may sign other CAs (its basic constraints lack pathlen:0)",
            ),
        ];
        for (name, params, expected) in cases {
            let dir = tmp.path().join(name);
            let pem = write_ca(&dir, params);
            let err = Ca::load_or_create(&dir, &[]).unwrap_err();
            assert!(
                matches!(err, TlsError::CaTooBroad { .. }),
                "{name}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("the ca in {} is refused: ", dir.display())),
                "{name}: {message}"
            );
            assert!(message.contains(expected), "{name}: {message}");
            assert!(
                message.ends_with(
                    "; `sandbox trust reset` removes it from the trust stores and makes a new one"
                ),
                "{name}: {message}"
            );
            // neither used nor replaced behind the user's back
            assert_eq!(fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), pem);

            // a reset replaces it with one that is accepted
            let new = Ca::reset(&dir).unwrap();
            assert_eq!(
                new.origin(),
                &CaOrigin::Replaced {
                    previous_ca_pem: pem
                },
                "{name}"
            );
            let loaded = Ca::load_or_create(&dir, &[]).unwrap();
            assert_eq!(loaded.origin(), &CaOrigin::Loaded, "{name}");
            assert_eq!(loaded.ca_pem(), new.ca_pem(), "{name}");
        }
    }

    #[test]
    fn a_ca_within_the_sandbox_zones_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        // sandbox's own
        let own = Ca::load_or_create(&tmp.path().join("own"), &[]).unwrap();
        let again = Ca::load_or_create(&tmp.path().join("own"), &[]).unwrap();
        assert_eq!(again.origin(), &CaOrigin::Loaded);
        assert_eq!(again.ca_pem(), own.ca_pem());
        assert!(scope_problems(&der(own.ca_pem()), &[]).is_empty());

        // made by hand with the same constraints, or narrower ones inside them
        let zero = BasicConstraints::Constrained(0);
        let same = tmp.path().join("same");
        let pem = write_ca(&same, hand_made_ca(permitting(sandbox_subtrees()), zero));
        let loaded = Ca::load_or_create(&same, &[]).unwrap();
        assert_eq!(loaded.origin(), &CaOrigin::Loaded);
        assert_eq!(loaded.ca_pem(), pem);
        let mut inside = sandbox_subtrees();
        inside.push(GeneralSubtree::DnsName("app.nip.io".into()));
        inside.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            "10.1.0.0".parse().unwrap(),
            16,
        )));
        let narrower = tmp.path().join("narrower");
        write_ca(&narrower, hand_made_ca(permitting(inside), zero));
        assert_eq!(
            Ca::load_or_create(&narrower, &[]).unwrap().origin(),
            &CaOrigin::Loaded
        );

        // a custom domain is a sandbox zone when the caller asks for it (or a zone above it)
        let mut custom = sandbox_subtrees();
        custom.push(GeneralSubtree::DnsName("dev.example.test".into()));
        let dir = tmp.path().join("custom");
        let pem = write_ca(&dir, hand_made_ca(permitting(custom), zero));
        let ask = |domains: &[&str]| Ca::load_or_create(&dir, &strings(domains));
        assert!(matches!(ask(&[]), Err(TlsError::CaTooBroad { .. })));
        assert!(matches!(
            ask(&["a.dev.example.test"]),
            Err(TlsError::CaTooBroad { .. })
        ));
        let asked = ask(&["dev.example.test"]).unwrap();
        assert_eq!(asked.origin(), &CaOrigin::Loaded);
        assert_eq!(asked.ca_pem(), pem);
        // asked for a zone above it: replaced by one permitting that zone
        let wider = ask(&["example.test"]).unwrap();
        assert!(matches!(wider.origin(), CaOrigin::Replaced { .. }));
        assert!(wider.permits("dev.example.test"));
    }

    #[test]
    fn needs_renewal_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&tmp.path().join("a"), &[]).unwrap();
        let hosts = strings(&["*.10.0.0.1.nip.io", "10.0.0.1.nip.io"]);
        let leaf = ca.issue(&hosts).unwrap();
        let now = SystemTime::now();
        assert!(!ca.needs_renewal(&leaf.cert_pem, &hosts, now));
        // Order, case and a trailing dot do not matter.
        let reordered = strings(&["10.0.0.1.NIP.io.", "*.10.0.0.1.nip.io"]);
        assert!(!ca.needs_renewal(&leaf.cert_pem, &reordered, now));

        // Expiring soon.
        let day = StdDuration::from_secs(86_400);
        let later = now + day * (LEAF_VALIDITY_DAYS as u32 - 31);
        assert!(!ca.needs_renewal(&leaf.cert_pem, &hosts, later));
        let soon = now + day * (LEAF_VALIDITY_DAYS as u32 - 29);
        assert!(ca.needs_renewal(&leaf.cert_pem, &hosts, soon));
        assert!(ca.needs_renewal(&leaf.cert_pem, &hosts, now + day * 1000));
        // Not yet valid.
        assert!(ca.needs_renewal(&leaf.cert_pem, &hosts, now - day));

        // Other hosts: more, fewer, different.
        assert!(ca.needs_renewal(&leaf.cert_pem, &strings(&["10.0.0.1.nip.io"]), now));
        let more = strings(&["*.10.0.0.1.nip.io", "10.0.0.1.nip.io", "localhost"]);
        assert!(ca.needs_renewal(&leaf.cert_pem, &more, now));
        assert!(ca.needs_renewal(&leaf.cert_pem, &strings(&["a.sslip.io"]), now));
        assert!(ca.needs_renewal(&leaf.cert_pem, &strings(&["not a host"]), now));

        // Another CA, even with the same subject and hosts.
        let other = Ca::load_or_create(&tmp.path().join("b"), &[]).unwrap();
        assert!(other.needs_renewal(&leaf.cert_pem, &hosts, now));
        let theirs = other.issue(&hosts).unwrap();
        assert!(ca.needs_renewal(&theirs.cert_pem, &hosts, now));

        // Garbage.
        assert!(ca.needs_renewal("", &hosts, now));
        assert!(ca.needs_renewal(&leaf.key_pem, &hosts, now));
    }

    #[test]
    fn helpers() {
        assert!(domain_within("a.nip.io", "nip.io"));
        assert!(domain_within("nip.io", "nip.io"));
        assert!(!domain_within("evilnip.io", "nip.io"));
        assert!(ip_within(
            "172.31.255.255".parse().unwrap(),
            "172.16.0.0".parse().unwrap(),
            12
        ));
        assert!(!ip_within(
            "172.32.0.0".parse().unwrap(),
            "172.16.0.0".parse().unwrap(),
            12
        ));
        assert!(!ip_within(
            "::ffff:127.0.0.1".parse().unwrap(),
            "127.0.0.0".parse().unwrap(),
            8
        ));
        assert_eq!(
            cidr_from_bytes(&[172, 16, 0, 0, 255, 240, 0, 0]),
            Some(("172.16.0.0".parse().unwrap(), 12))
        );
        assert_eq!(cidr_from_bytes(&[10, 0, 0, 0, 255, 0, 255, 0]), None);
        let dir = default_dir();
        assert!(dir.ends_with("sandbox/ca"), "{}", dir.display());
        assert!(owner().contains('@'));
        fn shareable<T: Send + Sync>() {}
        shareable::<Ca>();
        shareable::<TlsError>();
    }
}
