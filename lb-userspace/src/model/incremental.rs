//! `compute` for a control loop that recomputes the whole desired state on
//! every change: the same result, but an object that did not change costs
//! a pointer comparison.
//!
//! Remembered from pass to pass, by object identity (see `memo`):
//! - each Service's identity and reports (it is re-read when planned);
//! - each EndpointSlice's target Service and family, and its reports;
//! - each Service's plan (`plan`), with the slices it was planned from;
//! - the reports of all of these (`reports`), and the last merge: the
//!   desired state and the conflicts.
//!
//! A pass takes the shortest way its changes allow:
//! - Services and slices only replaced by objects of the same
//!   namespace/name (the usual update), so that no Service appears or goes
//!   and no slice changes place: only the plans of the Services touched are
//!   made again, in place. Anything else (an object added or removed, the
//!   node's name or zone changed: plans depend on them) sorts every Service
//!   and slice again, still reusing the plans whose objects did not change
//!   (all plans are made again when the zone or the externalIP policy
//!   changed).
//! - Those plans claiming what they claimed before, on the same node
//!   addresses: the last desired state is patched (`patch`). Else every
//!   plan is merged again, exactly as `compute` does.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::compute::unique_services;
use super::endpoints::{ReadSlice, ServiceEndpoints, duplicate_slice, merge_slices, read_slice};
use super::ip::Cidr;
use super::memo::{ByObject, Changes, Derived};
use super::merge::Merger;
use super::patch::{patch, same_claims};
use super::plan::{ServicePlan, plan_service};
use super::reports::Reports;
use super::service::read_service;
use super::slice_info::EndpointSliceInfo;
use super::types::{
    ClusterState, Computed, DesiredState, InvalidObject, IpFamily, NodeInfo, ServiceRef,
};

/// A memo across passes; `compute` returns what [`super::compute`] returns
/// for the same input.
#[derive(Debug, Default)]
pub struct Incremental {
    /// The node name and zone the memo holds results for.
    node_name: String,
    zone: Option<String>,
    /// The externalIP policy the plans were made with.
    external_ip_cidrs: Vec<Cidr>,
    services: ByObject<ServiceRead>,
    slices: ByObject<SliceRead>,
    /// By Service namespace/name, one per Service served.
    plans: Vec<PlanMemo>,
    /// The namespace/name of every slice defined more than once, sorted:
    /// no copy is used.
    duplicated_slices: Vec<SliceName>,
    /// Of the objects and plans above; the conflicts are in `merged`.
    reports: Reports,
    /// None until the first pass, and when the plans were dropped.
    merged: Option<Merged>,
    last_recompute: Recompute,
}

/// The way a pass took (see the module documentation), shortest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// The plans of changed objects made again, the desired state patched.
    Patched,
    /// The plans of changed objects made again, every plan merged.
    Merged,
    /// Every Service and slice listed again (reusing unchanged plans),
    /// every plan merged.
    #[default]
    Planned,
}

/// A slice's namespace/name as `EndpointSliceInfo::identity` gives it, owned.
type SliceName = (Option<String>, Option<String>);

/// What the last merge gave.
#[derive(Debug)]
struct Merged {
    /// The node addresses merged on (NodePort frontends).
    addresses: Vec<IpAddr>,
    desired: DesiredState,
    conflicts: Vec<InvalidObject>,
}

#[derive(Debug)]
struct ServiceRead {
    object: Arc<Service>,
    /// None when the Service is not served (skipped or invalid).
    service: Option<ServiceRef>,
    invalid: Vec<InvalidObject>,
}

impl Derived for ServiceRead {
    type Object = Service;
    fn object(&self) -> &Arc<Service> {
        &self.object
    }
}

#[derive(Debug)]
struct SliceRead {
    object: Arc<EndpointSliceInfo>,
    /// The Service and family it serves, None when it is not used.
    target: Option<(ServiceRef, IpFamily)>,
    invalid: Vec<InvalidObject>,
}

impl Derived for SliceRead {
    type Object = EndpointSliceInfo;
    fn object(&self) -> &Arc<EndpointSliceInfo> {
        &self.object
    }
}

#[derive(Debug)]
struct PlanMemo {
    read: Arc<ServiceRead>,
    /// The Service's slices the plan was made from, by family and slice
    /// namespace/name (the order they merge in).
    slices: Vec<Arc<SliceRead>>,
    plan: ServicePlan,
}

/// Which plans a pass made again.
enum Replanned {
    /// These (indices into `plans`), each claiming what it claimed before.
    SameClaims(Vec<usize>),
    /// Some plan's claims changed, or all plans were listed again.
    Other,
}

impl Incremental {
    pub fn new() -> Self {
        Self::default()
    }

    /// What this node should serve: equal to `compute(state, node)`.
    pub fn compute(&mut self, state: &ClusterState, node: &NodeInfo) -> Computed {
        if self.node_name != node.name {
            // Slices are read for this node (which endpoints are local).
            self.slices.clear();
            self.plans.clear();
            self.merged = None;
            self.node_name.clone_from(&node.name);
        }
        if self.zone != node.zone || self.external_ip_cidrs != node.external_ip_cidrs {
            // Plans depend on both (topology hints, externalIPs served).
            self.plans.clear();
            self.merged = None;
            self.zone.clone_from(&node.zone);
            self.external_ip_cidrs.clone_from(&node.external_ip_cidrs);
        }

        let service_changes = self.services.update(&state.services, read_service_object);
        let slice_changes = self.slices.update(&state.endpoint_slices, |object| {
            read_slice_object(object, &node.name)
        });
        self.last_recompute = Recompute::Merged;
        let replanned = self
            .merged
            .is_some()
            .then(|| self.replan_changed(&service_changes, &slice_changes, node))
            .flatten()
            .unwrap_or_else(|| {
                self.plan_all(node);
                self.last_recompute = Recompute::Planned;
                Replanned::Other
            });

        let merged = match (self.merged.take(), replanned) {
            (Some(mut merged), Replanned::SameClaims(replanned))
                if merged.addresses == node.addresses =>
            {
                for i in replanned {
                    patch(&mut merged.desired, &self.plans[i].plan);
                }
                self.last_recompute = Recompute::Patched;
                merged
            }
            _ => self.merge_all(node),
        };
        let mut invalid: Vec<InvalidObject> = self.reports.iter().cloned().collect();
        invalid.extend(merged.conflicts.iter().cloned());
        invalid.sort();
        invalid.dedup();
        // Kept to be patched next pass; the caller owns its copy (cloning
        // the maps is most of what a patched pass costs).
        let desired = merged.desired.clone();
        self.merged = Some(merged);
        Computed { desired, invalid }
    }

    /// The way the last `compute` took.
    pub fn last_recompute(&self) -> Recompute {
        self.last_recompute
    }

    /// Plans every Service from scratch but for the plans whose objects are
    /// the same, and counts every report again.
    fn plan_all(&mut self, node: &NodeInfo) {
        let mut invalid = Vec::new();
        let reads = self.services.all();
        let mut services = Vec::with_capacity(reads.len());
        for read in reads {
            invalid.extend(read.invalid.iter().cloned());
            if let Some(service) = &read.service {
                services.push((service, read));
            }
        }
        services.sort_by(|a, b| a.0.cmp(b.0));
        let services = unique_services(services, |entry| entry.0, &mut invalid);

        let (slices, duplicated) = used_slices(self.slices.all(), &mut invalid);
        self.duplicated_slices = duplicated;

        let mut old = std::mem::take(&mut self.plans).into_iter().peekable();
        let mut rest = slices.as_slice();
        for (service, read) in services {
            // Slices sorted by Service, as the Services are: take this
            // one's, skip those of Services that do not exist.
            while let Some((first, tail)) = rest.split_first()
                && first.service() < Some(service)
            {
                rest = tail;
            }
            let n = rest
                .iter()
                .take_while(|s| s.service() == Some(service))
                .count();
            let (own, tail) = rest.split_at(n);
            rest = tail;

            while old.next_if(|memo| memo.service() < service).is_some() {}
            let reused = old.next_if(|memo| {
                Arc::ptr_eq(&memo.read, read)
                    && memo.slices.len() == own.len()
                    && memo.slices.iter().zip(own).all(|(a, b)| Arc::ptr_eq(a, b))
            });
            let memo = reused.unwrap_or_else(|| {
                let own = own.iter().map(|s| Arc::clone(s)).collect();
                PlanMemo::new(service, read.clone(), own, node)
            });
            invalid.extend(memo.plan.invalid.iter().cloned());
            self.plans.push(memo);
        }
        self.reports = invalid.into_iter().collect();
    }

    /// Makes again only the plans of the Services whose objects changed,
    /// and updates the reports. None, having changed nothing, unless every
    /// object changed was replaced by one of the same namespace/name, so
    /// that the Services served and the slices used stay the same.
    fn replan_changed(
        &mut self,
        services: &Changes<ServiceRead>,
        slices: &Changes<SliceRead>,
        node: &NodeInfo,
    ) -> Option<Replanned> {
        if services.is_empty() && slices.is_empty() {
            return Some(Replanned::SameClaims(Vec::new()));
        }
        // Services not served only have reports; served ones must be
        // replaced one for one, or which Services exist (once) changes.
        let served = |read: &&Arc<ServiceRead>| read.service.is_some();
        let service_pairs = pair(
            services.removed.iter().filter(served),
            services.added.iter().filter(served),
            |read| read.service.clone(),
        )?;
        let slice_pairs = pair(&slices.removed, &slices.added, |slice| {
            let (namespace, name) = slice.object.identity();
            (namespace.map(str::to_owned), name.map(str::to_owned))
        })?;

        for read in &services.removed {
            self.reports.remove(&read.invalid);
        }
        for read in &services.added {
            self.reports.add(&read.invalid);
        }
        let mut touched = Vec::new();
        for (old, new) in service_pairs {
            if let Some(i) = self.plan_of(new.service.as_ref())
                && Arc::ptr_eq(&self.plans[i].read, old)
            {
                self.plans[i].read = new.clone();
                touched.push(i);
            }
        }
        for (old, new) in slice_pairs {
            // No copy of a slice defined twice is read, nor reported but as
            // a duplicate (which it still is).
            let identity = old.object.identity();
            if self
                .duplicated_slices
                .binary_search_by(|(ns, name)| (ns.as_deref(), name.as_deref()).cmp(&identity))
                .is_ok()
            {
                continue;
            }
            self.reports.remove(&old.invalid);
            self.reports.add(&new.invalid);
            if let Some(i) = self.plan_of(old.service()) {
                self.plans[i].slices.retain(|s| !Arc::ptr_eq(s, old));
                touched.push(i);
            }
            if let Some(i) = self.plan_of(new.service()) {
                let slices = &mut self.plans[i].slices;
                let at = slices.partition_point(|s| s.merge_order() < new.merge_order());
                slices.insert(at, new.clone());
                touched.push(i);
            }
        }

        touched.sort_unstable();
        touched.dedup();
        let mut claims_kept = true;
        for &i in &touched {
            let memo = &mut self.plans[i];
            let old = memo.replan(node);
            self.reports.remove(&old.invalid);
            self.reports.add(&memo.plan.invalid);
            claims_kept &= same_claims(&old, &memo.plan);
        }
        Some(if claims_kept {
            Replanned::SameClaims(touched)
        } else {
            Replanned::Other
        })
    }

    fn plan_of(&self, service: Option<&ServiceRef>) -> Option<usize> {
        let service = service?;
        self.plans
            .binary_search_by(|memo| memo.service().cmp(service))
            .ok()
    }

    fn merge_all(&self, node: &NodeInfo) -> Merged {
        let mut conflicts = Vec::new();
        let mut merger = Merger::new(node);
        for memo in &self.plans {
            merger.add(&memo.plan, &mut conflicts);
        }
        Merged {
            addresses: node.addresses.clone(),
            desired: merger.finish(),
            conflicts,
        }
    }
}

fn read_service_object(object: &Arc<Service>) -> ServiceRead {
    let mut invalid = Vec::new();
    let service = read_service(object, &mut invalid).map(|info| info.service);
    ServiceRead {
        object: object.clone(),
        service,
        invalid,
    }
}

fn read_slice_object(object: &Arc<EndpointSliceInfo>, node_name: &str) -> SliceRead {
    let mut invalid = Vec::new();
    let target =
        read_slice(object, node_name, &mut invalid).map(|read| (read.service, read.family));
    SliceRead {
        object: object.clone(),
        target,
        invalid,
    }
}

/// Pairs every removed value with an added one of the same key; None when
/// the keys removed and added differ.
fn pair<'a, V: 'a, K: Ord>(
    removed: impl IntoIterator<Item = &'a Arc<V>>,
    added: impl IntoIterator<Item = &'a Arc<V>>,
    key: impl Fn(&V) -> K,
) -> Option<Vec<(&'a Arc<V>, &'a Arc<V>)>> {
    let mut removed: Vec<&Arc<V>> = removed.into_iter().collect();
    let mut added: Vec<&Arc<V>> = added.into_iter().collect();
    if removed.len() != added.len() {
        return None;
    }
    removed.sort_by_cached_key(|v| key(v));
    added.sort_by_cached_key(|v| key(v));
    let same = removed.iter().zip(&added).all(|(r, a)| key(r) == key(a));
    same.then(|| removed.into_iter().zip(added).collect())
}

impl SliceRead {
    /// Only for slices with a target (see `used_slices`).
    fn service(&self) -> Option<&ServiceRef> {
        self.target.as_ref().map(|(service, _)| service)
    }

    /// Where it goes among its Service's slices.
    fn merge_order(&self) -> (Option<IpFamily>, (Option<&str>, Option<&str>)) {
        (
            self.target.as_ref().map(|(_, family)| *family),
            self.object.identity(),
        )
    }
}

/// The slices that serve some Service, sorted by (Service, family, slice
/// namespace/name), and the namespace/name of those defined more than once;
/// reports every slice that is read (not the copies of one defined twice,
/// which `EndpointsIndex::build` never reads either).
fn used_slices<'a>(
    slices: &'a [Arc<SliceRead>],
    invalid: &mut Vec<InvalidObject>,
) -> (Vec<&'a Arc<SliceRead>>, Vec<SliceName>) {
    let mut sorted: Vec<&Arc<SliceRead>> = slices.iter().collect();
    sorted.sort_by(|a, b| a.object.identity().cmp(&b.object.identity()));
    let mut used = Vec::with_capacity(sorted.len());
    let mut duplicated = Vec::new();
    for (i, slice) in sorted.iter().enumerate() {
        let same = |other: Option<&&Arc<SliceRead>>| {
            other.is_some_and(|o| o.object.identity() == slice.object.identity())
        };
        if same(i.checked_sub(1).and_then(|p| sorted.get(p))) {
            continue;
        }
        if same(sorted.get(i + 1)) {
            invalid.push(duplicate_slice(&slice.object));
            let (namespace, name) = slice.object.identity();
            duplicated.push((namespace.map(str::to_owned), name.map(str::to_owned)));
            continue;
        }
        invalid.extend(slice.invalid.iter().cloned());
        if slice.target.is_some() {
            used.push(*slice);
        }
    }
    // Stable: slices of one Service and family stay in namespace/name order,
    // the order they merge in.
    used.sort_by(|a, b| a.target.cmp(&b.target));
    (used, duplicated)
}

impl PlanMemo {
    fn service(&self) -> &ServiceRef {
        &self.plan.service
    }

    fn new(
        service: &ServiceRef,
        read: Arc<ServiceRead>,
        slices: Vec<Arc<SliceRead>>,
        node: &NodeInfo,
    ) -> Self {
        let plan = plan_from(service, &read, &slices, node);
        PlanMemo { read, slices, plan }
    }

    /// Plans again from the objects now held; returns the old plan.
    fn replan(&mut self, node: &NodeInfo) -> ServicePlan {
        let plan = plan_from(self.service(), &self.read, &self.slices, node);
        std::mem::replace(&mut self.plan, plan)
    }
}

/// Plans one Service from its objects (read again: a plan is only remade
/// when they changed).
fn plan_from(
    service: &ServiceRef,
    read: &ServiceRead,
    slices: &[Arc<SliceRead>],
    node: &NodeInfo,
) -> ServicePlan {
    let merged = |family| -> Option<ServiceEndpoints> {
        let reads: Vec<ReadSlice> = slices
            .iter()
            .filter(|s| s.target.as_ref().is_some_and(|(_, f)| *f == family))
            .filter_map(|s| read_slice(&s.object, &node.name, &mut Vec::new()))
            .collect();
        (!reads.is_empty()).then(|| merge_slices(&reads))
    };
    let v4 = merged(IpFamily::V4);
    let v6 = merged(IpFamily::V6);
    let endpoints = |family| match family {
        IpFamily::V4 => v4.as_ref(),
        IpFamily::V6 => v6.as_ref(),
    };
    match read_service(&read.object, &mut Vec::new()) {
        Some(info) => plan_service(&info, endpoints, node),
        // Cannot happen: the same object read the same way before.
        None => ServicePlan {
            service: service.clone(),
            families: Vec::new(),
            health_check: None,
            invalid: Vec::new(),
        },
    }
}
