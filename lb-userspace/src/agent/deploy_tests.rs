//! deploy/ checked against the agent: every manifest is the Kubernetes
//! object it claims to be (no field the type does not know, which would be
//! a typo the API server silently drops), the ClusterRole grants exactly
//! what the agent uses ([`API_ACCESS`]), and the DaemonSet runs the agent
//! the way the issue and docs/agent.md say.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::Value;

use crate::source::kube::API_ACCESS;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML manifest of deploy/, by file name.
fn manifests() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(deploy_dir()).expect("deploy/ exists") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let value: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not one YAML document: {e}"));
        out.insert(name, value);
    }
    out
}

/// Drops nulls and empty maps, which typed objects do not keep.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Paths of `written` that `parsed` lacks or holds differently.
fn differences(written: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, parsed) {
        (Value::Object(w), Value::Object(p)) => {
            for (k, wv) in w {
                let sub = format!("{path}.{k}");
                match p.get(k) {
                    Some(pv) => differences(wv, pv, &sub, out),
                    None => out.push(sub),
                }
            }
        }
        (Value::Array(w), Value::Array(p)) if w.len() == p.len() => {
            for (i, (wv, pv)) in w.iter().zip(p).enumerate() {
                differences(wv, pv, &format!("{path}[{i}]"), out);
            }
        }
        (w, p) if w != p => out.push(path.to_string()),
        _ => {}
    }
}

/// Parses `v` as `T`, and proves nothing was ignored: the typed object
/// serializes back to the same document.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{file} does not parse as its kind: {e}"));
    let back = serde_json::to_value(&t).expect("serializable");
    let mut lost = Vec::new();
    differences(&normalized(v), &normalized(&back), "", &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: fields unknown to its kind (typos?): {lost:?}"
    );
    t
}

#[test]
fn kube_every_manifest_is_the_kind_it_claims() {
    let all = manifests();
    let mut kinds = BTreeSet::new();
    for (file, v) in &all {
        let kind = v["kind"].as_str().unwrap_or_default();
        match kind {
            "DaemonSet" => drop(typed::<DaemonSet>(file, v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(file, v)),
            "ClusterRole" => drop(typed::<ClusterRole>(file, v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, v)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        kinds.insert(kind.to_string());
    }
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
}

fn one<T: DeserializeOwned + Serialize>(kind: &str) -> T {
    let all = manifests();
    let (file, v) = all
        .iter()
        .find(|(_, v)| v["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    typed(file, v)
}

#[test]
fn kube_cluster_role_grants_exactly_what_the_agent_uses() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        granted.insert((group.clone(), resource.clone(), verb.clone())),
                        "{group}/{resource} {verb} granted twice"
                    );
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, used);
    assert!(role.aggregation_rule.is_none());
}

#[test]
fn kube_binding_ties_the_role_to_the_daemonsets_account() {
    let sa: ServiceAccount = one("ServiceAccount");
    let role: ClusterRole = one("ClusterRole");
    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    let ds: DaemonSet = one("DaemonSet");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn kube_daemonset_runs_the_agent_on_every_node_without_privileged() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint: {tolerations:?}"
    );
    let [c] = pod.containers.as_slice() else {
        panic!("one container");
    };
    let args = c.args.clone().unwrap_or_default();
    assert!(args.contains(&"agent".to_string()), "{args:?}");
    // The flags parse as the real command line does.
    let argv = std::iter::once("ferry".to_string()).chain(args.iter().cloned());
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(argv).expect("valid flags");
    let crate::cli::Command::Agent {
        healthz_bind_address,
        datapath,
        ..
    } = cli.command
    else {
        panic!("not `ferry agent`");
    };
    assert_eq!(healthz_bind_address.port(), 10256);

    let env = c.env.clone().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));

    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe(&c.liveness_probe),
        ("/livez".to_string(), IntOrString::Int(10256))
    );
    assert_eq!(
        probe(&c.readiness_probe),
        ("/healthz".to_string(), IntOrString::Int(10256))
    );

    let sc = c.security_context.clone().expect("a security context");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    // Exactly these (tests/tests/agent.rs runs the agent with them).
    let want: BTreeSet<String> = ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
        .map(String::from)
        .into();
    assert_eq!(added, want);
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));

    // bpffs and the cgroup2 hierarchy come from the host, where --bpffs-dir
    // and --cgroup point.
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.unwrap_or_default();
    let host_path_at = |dir: &Path| {
        let m = mounts
            .iter()
            .find(|m| dir.starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
        volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("{} is not a hostPath", m.name))
    };
    assert_eq!(host_path_at(&datapath.bpffs_dir), "/sys/fs/bpf");
    assert_eq!(
        host_path_at(datapath.cgroup.as_deref().expect("--cgroup")),
        "/sys/fs/cgroup"
    );
    // The explain socket: writable (the root file system is not), and the
    // host's, so that `ferry explain` on the node reaches the agent.
    assert_eq!(
        host_path_at(Path::new(crate::explain::RUN_DIR)),
        crate::explain::RUN_DIR
    );
}

#[test]
fn kube_containerfile_builds_from_scratch_without_a_registry() {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).expect("Containerfile");
    let froms: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    // No base image to pull (tests/tests/image.rs builds it here).
    assert_eq!(froms, ["FROM scratch"]);
    assert!(
        text.contains("COPY rootfs/ /"),
        "the staged root filesystem"
    );
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/ferry"]"#));
    assert!(!text.contains("RUN "), "nothing to run in an empty image");
}

#[test]
fn kube_daemonsets_commented_external_ip_policy_parses() {
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset");
    let example: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# - --external-ip-cidr="))
        .map(|cidr| format!("--external-ip-cidr={cidr}"))
        .collect();
    assert_eq!(example.len(), 1, "one commented example");
    let argv = ["ferry", "agent"]
        .map(String::from)
        .into_iter()
        .chain(example);
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(argv).expect("valid flags");
    assert!(matches!(
        cli.command,
        crate::cli::Command::Agent { external_ip_cidrs, .. } if external_ip_cidrs.len() == 1
    ));
}
