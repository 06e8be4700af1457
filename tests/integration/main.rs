//! Integration and end-to-end tests: the real `sandbox` binary against the real Docker
//! engine and the real offline node (`profiles/offline/build.sh` builds it; `./install.sh
//! --for-tests` does everything a fresh machine needs).

mod broken;
mod buildkit;
mod cluster;
mod commands;
mod contexts;
mod dev;
mod drills;
mod environments;
mod exposed;
mod field;
mod hello;
mod images;
mod ingress;
mod kustomize;
mod lifecycle;
mod output_schema;
mod persistence;
mod phoenix;
mod prune;
mod registry;
mod support;
mod web;
