//! Dropping what the model never reads from Services as they arrive, before
//! a source stores them.
//!
//! Every Service stays in memory for as long as it exists. Gone are the
//! server's bookkeeping (managedFields, which is often larger than the
//! object, and annotations such as last-applied-configuration). Vectors
//! are shrunk to their length: deserializing a sequence of unknown length
//! grows its vector by doubling. (EndpointSlices, the larger part, are
//! kept as `model::EndpointSliceInfo` instead.)

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
}

pub fn service(service: &mut Service) {
    metadata(&mut service.metadata);
    if let Some(ports) = service.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints, ForZone};

    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::model::{self, ClusterState};

    fn full_slice() -> EndpointSlice {
        let endpoint = |i: u8, node: &str| Endpoint {
            addresses: vec![format!("10.244.0.{i}")],
            conditions: Some(EndpointConditions {
                ready: Some(i.is_multiple_of(2)),
                serving: Some(true),
                terminating: Some(!i.is_multiple_of(2)),
            }),
            hostname: Some(format!("pod-{i}")),
            node_name: Some(node.into()),
            zone: Some("zone-a".into()),
            hints: Some(EndpointHints {
                for_zones: Some(vec![ForZone {
                    name: "zone-a".into(),
                }]),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(format!("pod-{i}")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "now"},
                "managedFields": [{"manager": "kube-controller-manager"}]
            },
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        slice.endpoints = Some(
            (1..=5)
                .map(|i| endpoint(i, if i < 3 { "node-a" } else { "node-b" }))
                .collect(),
        );
        slice
    }

    fn full_service() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "clusterIP": "10.96.0.10", "type": "LoadBalancer",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 30500,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
        }))
        .unwrap()
    }

    /// Slimming must not change what kube-proxy's rules say: the model's
    /// result is the same for the full and the slimmed objects.
    #[test]
    fn slimmed_objects_compute_the_same() {
        let service = full_service();
        let mut slim_service = service.clone();
        super::service(&mut slim_service);
        assert!(slim_service.metadata.managed_fields.is_none());
        assert!(slim_service.metadata.annotations.is_none());

        let node = model::node_info(None, "node-a", &["10.0.0.1".parse().unwrap()]);
        let state = |svc: Service| ClusterState {
            services: vec![Arc::new(svc)],
            endpoint_slices: vec![Arc::new(full_slice().into())],
        };
        let full = model::compute(&state(service), &node);
        let slim = model::compute(&state(slim_service), &node);
        assert!(!full.desired.frontends.is_empty());
        assert_eq!(full.desired, slim.desired);
        assert_eq!(full.invalid, slim.invalid);
    }
}
