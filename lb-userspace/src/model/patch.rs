//! The last desired state, updated for Services whose plans changed only
//! in their backends, without merging every Service again.
//!
//! `merge` settles conflicts from what each plan claims: its ClusterIPs,
//! frontend addresses with the selection and set key serving them, its
//! NodePorts and health check port, and for clients outside the node the
//! selection (from externalTrafficPolicy) and the source ranges. When every
//! replanned Service claims exactly what its old plan claimed (and the
//! Services and node addresses are the same), every conflict is settled as
//! before: the same frontends, external frontends, ClusterIPs, NodePorts
//! and health checks exist, naming the same set keys, with the same
//! reports. Only what the claims do not cover can differ: the contents of
//! the sets (socket and external) and the health checks' local endpoint
//! counts.

use super::plan::{FamilyPlan, PortPlan, ServicePlan};
use super::types::DesiredState;

/// Whether `merge` would settle `new` exactly as it settled `old`.
pub(super) fn same_claims(old: &ServicePlan, new: &ServicePlan) -> bool {
    old.service == new.service
        && old.health_check.as_ref().map(|hc| hc.node_port)
            == new.health_check.as_ref().map(|hc| hc.node_port)
        && old.families.len() == new.families.len()
        && old
            .families
            .iter()
            .zip(&new.families)
            .all(|(old, new)| same_family_claims(old, new))
}

fn same_family_claims(old: &FamilyPlan, new: &FamilyPlan) -> bool {
    old.family == new.family
        && old.cluster_ip == new.cluster_ip
        && old.source_ranges == new.source_ranges
        && old.ports.len() == new.ports.len()
        && old
            .ports
            .iter()
            .zip(&new.ports)
            .all(|(old, new)| same_port_claims(old, new))
}

fn same_port_claims(old: &PortPlan, new: &PortPlan) -> bool {
    old.name == new.name
        && old.protocol == new.protocol
        && old.node_port == new.node_port
        && old.cluster_ip_frontend == new.cluster_ip_frontend
        && old.external_frontends == new.external_frontends
        && old.external_selection == new.external_selection
        && old.sets.len() == new.sets.len()
        && old.sets.iter().zip(&new.sets).all(
            |((old_selection, old_key, _), (new_selection, new_key, _))| {
                old_selection == new_selection && old_key == new_key
            },
        )
}

/// Puts the sets and health check count of `plan` into a desired state
/// merged from a plan with the same claims (see `same_claims`). A set
/// that no frontend used then is still unused; one that only external
/// frontends used still is in `external_sets` only.
pub(super) fn patch(desired: &mut DesiredState, plan: &ServicePlan) {
    let sets = plan
        .families
        .iter()
        .flat_map(|family| &family.ports)
        .flat_map(|port| &port.sets);
    for (_, key, set) in sets {
        if let Some(current) = desired.backend_sets.get_mut(key) {
            current.clone_from(set);
        }
        if let Some(current) = desired.external_sets.get_mut(key) {
            current.clone_from(set);
        }
    }
    if let Some(hc) = &plan.health_check
        && let Some(current) = desired.health_checks.get_mut(&hc.node_port)
        // The port may have gone to an earlier Service's health check.
        && current.service == plan.service
    {
        current.local_endpoints = hc.local_endpoints;
    }
}
