//! `sandbox`: a production-shaped Kubernetes sandbox on one laptop, with one command.
//!
//! The modules read in the order `sandbox up` runs: [`config`] → [`profile`] → [`plan`]
//! (pure) → [`docker`] and [`node`] (runtime) → [`images`] → [`kubeconfig`] →
//! [`manifests`] → [`apply`] → [`wait`]; [`report`] carries progress and [`cli`] the verbs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addons;
pub mod apply;
pub mod buildkit;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod dns;
pub mod dns_daemon;
pub mod docker;
pub mod error;
pub mod exit;
pub mod forward;
pub mod images;
pub mod ingress;
pub mod ingress_servers;
pub mod kubeconfig;
pub mod kustomize;
pub mod labels;
pub mod lock;
pub mod logs;
pub mod manifests;
pub mod node;
pub mod normalize;
pub mod paths;
pub mod plan;
pub mod profile;
pub mod proxy_rules;
pub mod registry;
pub mod report;
pub mod routes;
pub mod secrets;
pub mod sync;
pub mod tls;
pub mod trust;
pub mod up;
pub mod urls;
pub mod wait;
pub mod warm;
pub mod watch;
