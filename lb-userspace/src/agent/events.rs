//! Invalid objects reported as Kubernetes Events (core/v1, type Warning,
//! reason [`REASON`], or `ExternalIPNotAllowed` for an externalIP outside
//! `--external-ip-cidr`: see [`ReportCause`]) on the object itself, so that
//! `kubectl describe` shows why Ferry skips it.
//!
//! One Event per object and reason when it becomes invalid, not one per
//! sync: an object that stays invalid is reported once; one that is fixed
//! and breaks again with the same reason gets its Event's count bumped by a
//! patch (a new Event if that one has expired). Events are best effort: a
//! failed post is logged and not retried, and they are sent from their own
//! task so that the API server's speed never slows the datapath.

use std::{
    collections::{HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    model::{InvalidObject, ObjectKind, ReportCause},
    source::Snapshot,
};

pub const REASON: &str = ReportCause::Invalid.event_reason();
pub const COMPONENT: &str = "ferry";
/// Reports waiting to be posted, at most; more are dropped (and logged).
const QUEUE: usize = 1024;
/// Events remembered for patching, at most.
const REMEMBERED: usize = 10_000;
/// Longest message; the API server limits it too.
const MAX_MESSAGE: usize = 1024;

/// The object an invalid entry names, as an Event's involvedObject. None
/// for what has no API object (a manifest document).
pub fn involved_object(invalid: &InvalidObject, snapshot: &Snapshot) -> Option<ObjectReference> {
    fn reference<K: Resource<DynamicType = ()>>(
        obj: Option<&K>,
    ) -> (Option<String>, Option<String>) {
        obj.map(|o| (o.meta().uid.clone(), o.meta().resource_version.clone()))
            .unwrap_or_default()
    }
    let same_name = |namespace: Option<&str>, name: Option<&str>| {
        name == Some(invalid.name.as_str()) && namespace.unwrap_or_default() == invalid.namespace
    };
    let same = |meta: &ObjectMeta| same_name(meta.namespace.as_deref(), meta.name.as_deref());
    let (api_version, (uid, resource_version)) = match invalid.kind {
        ObjectKind::Service => (
            "v1",
            reference(
                snapshot
                    .cluster
                    .services
                    .iter()
                    .find(|s| same(&s.metadata))
                    .map(std::convert::AsRef::as_ref),
            ),
        ),
        ObjectKind::EndpointSlice => (
            "discovery.k8s.io/v1",
            snapshot
                .cluster
                .endpoint_slices
                .iter()
                .find(|s| same_name(s.namespace.as_deref(), s.name.as_deref()))
                .map(|s| (s.uid.clone(), s.resource_version.clone()))
                .unwrap_or_default(),
        ),
        ObjectKind::Node => (
            "v1",
            reference(
                snapshot
                    .node
                    .as_deref()
                    .filter(|n| n.metadata.name.as_deref() == Some(invalid.name.as_str())),
            ),
        ),
        ObjectKind::Manifest => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(invalid.kind.to_string()),
        name: Some(invalid.name.clone()),
        namespace: (!invalid.namespace.is_empty()).then(|| invalid.namespace.clone()),
        uid,
        resource_version,
        ..Default::default()
    })
}

/// The Event for a newly invalid object.
pub fn event(invalid: &InvalidObject, object: ObjectReference, node: &str) -> Event {
    let now = Time(Timestamp::now());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut message = invalid.reason.clone();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Event {
        metadata: ObjectMeta {
            // As client-go names them: object name, then a unique suffix.
            name: Some(format!("{}.{nanos:x}", invalid.name)),
            namespace: Some(event_namespace(&object)),
            ..Default::default()
        },
        involved_object: object,
        reason: Some(invalid.cause.event_reason().to_string()),
        message: Some(message),
        type_: Some("Warning".to_string()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_string()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some(COMPONENT.to_string()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

/// Events about cluster-scoped objects (the Node) go to "default", as
/// client-go puts them.
fn event_namespace(object: &ObjectReference) -> String {
    object
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

struct Report {
    invalid: InvalidObject,
    object: ObjectReference,
}

/// Sits in the reconcile loop: decides what is newly invalid and hands it
/// to the posting task.
pub struct EventReporter {
    tx: mpsc::Sender<Report>,
    current: HashSet<InvalidObject>,
}

impl EventReporter {
    /// Starts the posting task in `tasks` (must run inside a tokio
    /// runtime); `report` may then be called from any thread.
    pub fn spawn(client: Client, node_name: String, tasks: &mut JoinSet<()>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(post_events(client, node_name, rx));
        EventReporter {
            tx,
            current: HashSet::new(),
        }
    }

    /// Reports the objects of `invalid` that were not invalid (for this
    /// reason) in the previous call.
    pub fn report(&mut self, invalid: &[InvalidObject], snapshot: &Snapshot) {
        let now: HashSet<InvalidObject> = invalid.iter().cloned().collect();
        for obj in now.difference(&self.current) {
            let Some(object) = involved_object(obj, snapshot) else {
                continue;
            };
            let report = Report {
                invalid: obj.clone(),
                object,
            };
            if self.tx.try_send(report).is_err() {
                tracing::warn!(
                    kind = %obj.kind,
                    namespace = %obj.namespace,
                    name = %obj.name,
                    "too many events waiting; not reporting this one"
                );
            }
        }
        self.current = now;
    }
}

async fn post_events(client: Client, node: String, mut rx: mpsc::Receiver<Report>) {
    // Events posted so far: (namespace, name, count).
    let mut posted: HashMap<InvalidObject, (String, String, i32)> = HashMap::new();
    while let Some(Report { invalid, object }) = rx.recv().await {
        if let Some((ns, name, count)) = posted.get(&invalid).cloned() {
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": Time(Timestamp::now()),
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    posted.insert(invalid, (ns, name, count + 1));
                    continue;
                }
                // Expired (Events live an hour): post a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(event = %name, namespace = %ns, error = %e, "cannot update event");
                    continue;
                }
            }
        }
        let ev = event(&invalid, object, &node);
        let ns = ev.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                if posted.len() >= REMEMBERED {
                    posted.clear();
                }
                let name = created
                    .metadata
                    .name
                    .or(ev.metadata.name)
                    .unwrap_or_default();
                posted.insert(invalid, (ns, name, 1));
            }
            Err(e) => tracing::warn!(
                kind = %invalid.kind,
                namespace = %invalid.namespace,
                name = %invalid.name,
                error = %e,
                "cannot post event about invalid object"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn invalid(kind: ObjectKind, ns: &str, name: &str) -> InvalidObject {
        InvalidObject {
            cause: ReportCause::Invalid,
            kind,
            namespace: ns.into(),
            name: name.into(),
            reason: "spec.ports: none".into(),
        }
    }

    #[test]
    fn involved_objects_carry_identity_from_the_snapshot() {
        let mut svc = Service::default();
        svc.metadata.namespace = Some("ns".into());
        svc.metadata.name = Some("bad".into());
        svc.metadata.uid = Some("u-1".into());
        svc.metadata.resource_version = Some("7".into());
        let mut snap = Snapshot::default();
        snap.cluster.services.push(Arc::new(svc));
        let r = involved_object(&invalid(ObjectKind::Service, "ns", "bad"), &snap).unwrap();
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(r.kind.as_deref(), Some("Service"));
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.resource_version.as_deref(), Some("7"));
        let r = involved_object(&invalid(ObjectKind::EndpointSlice, "ns", "s"), &snap).unwrap();
        assert_eq!(r.api_version.as_deref(), Some("discovery.k8s.io/v1"));
        assert_eq!(r.uid, None);
        assert!(involved_object(&invalid(ObjectKind::Manifest, "", "f.yaml"), &snap).is_none());

        let node = involved_object(&invalid(ObjectKind::Node, "", "n1"), &snap).unwrap();
        let ev = event(&invalid(ObjectKind::Node, "", "n1"), node, "n1");
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some(REASON));
        assert!(ev.metadata.name.unwrap().starts_with("n1."));
    }

    #[tokio::test]
    async fn reports_only_what_became_invalid() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut r = EventReporter {
            tx,
            current: HashSet::new(),
        };
        let snap = Snapshot::default();
        let a = invalid(ObjectKind::Service, "ns", "a");
        let b = invalid(ObjectKind::Service, "ns", "b");
        let names = |rx: &mut mpsc::Receiver<Report>| {
            let mut out = Vec::new();
            while let Ok(rep) = rx.try_recv() {
                out.push(rep.invalid.name);
            }
            out.sort();
            out
        };
        r.report(std::slice::from_ref(&a), &snap);
        assert_eq!(names(&mut rx), ["a"]);
        r.report(&[a.clone(), b.clone()], &snap);
        assert_eq!(names(&mut rx), ["b"]);
        r.report(&[a.clone(), b.clone()], &snap);
        assert!(names(&mut rx).is_empty());
        r.report(std::slice::from_ref(&b), &snap);
        r.report(&[a, b], &snap);
        assert_eq!(names(&mut rx), ["a"], "fixed, then broken again");
    }
}
