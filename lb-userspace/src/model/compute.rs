//! Assembling the desired state from scratch: every Service's frontends,
//! the backend sets they serve from, ClusterIPs, NodePorts and health
//! checks. `Incremental` computes the same, reusing what did not change.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::endpoints::EndpointsIndex;
use super::merge::Merger;
use super::plan::{ServicePlan, plan_service, service_invalid};
use super::service::{ServiceInfo, read_service};
use super::types::{ClusterState, Computed, InvalidObject, NodeInfo, ServiceRef};

/// Computes what this node should serve. Pure and deterministic: the same
/// objects in any order give the same result. Never panics.
pub fn compute(state: &ClusterState, node: &NodeInfo) -> Computed {
    let mut invalid = Vec::new();
    let endpoints = EndpointsIndex::build(&state.endpoint_slices, &node.name, &mut invalid);
    let services = read_services(&state.services, &mut invalid);
    let plans: Vec<ServicePlan> = services
        .iter()
        .map(|svc| plan_service(svc, |family| endpoints.get(&svc.service, family), node))
        .collect();

    let mut merger = Merger::new(node);
    for plan in &plans {
        invalid.extend(plan.invalid.iter().cloned());
        merger.add(plan, &mut invalid);
    }
    let desired = merger.finish();

    invalid.sort();
    invalid.dedup();
    Computed { desired, invalid }
}

/// Reads every Service, sorted by namespace/name (the conflict order).
fn read_services(services: &[Arc<Service>], invalid: &mut Vec<InvalidObject>) -> Vec<ServiceInfo> {
    let mut read: Vec<ServiceInfo> = services
        .iter()
        .filter_map(|s| read_service(s, invalid))
        .collect();
    read.sort_by(|a, b| a.service.cmp(&b.service));
    unique_services(read, |s| &s.service, invalid)
}

/// Drops every Service defined more than once, from a list sorted by
/// namespace/name. Two objects with one namespace/name can only come from
/// files. Which one is meant cannot be told (input order must not matter),
/// so every copy is ignored.
pub(super) fn unique_services<T>(
    sorted: Vec<T>,
    service: impl Fn(&T) -> &ServiceRef,
    invalid: &mut Vec<InvalidObject>,
) -> Vec<T> {
    let mut unique: Vec<T> = Vec::with_capacity(sorted.len());
    let mut duplicated: Option<ServiceRef> = None;
    for svc in sorted {
        if duplicated.as_ref() == Some(service(&svc)) {
            continue;
        }
        if unique.last().is_some_and(|u| service(u) == service(&svc)) {
            unique.pop();
            invalid.push(service_invalid(
                service(&svc),
                "defined more than once; every definition is ignored".into(),
            ));
            duplicated = Some(service(&svc).clone());
        } else {
            unique.push(svc);
        }
    }
    unique
}
