//! What the model reads the same way in every kind of object: the
//! namespace, the labels that take an object away from kube-proxy, port
//! numbers. Below `service`, `endpoints` and `slice_info`, which all use it
//! (so that none of them imports another for it).

use std::collections::BTreeMap;

/// Services (and EndpointSlices) with this label belong to another proxy.
pub(super) const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set on the EndpointSlices of headless Services; kube-proxy skips objects
/// carrying it.
pub(super) const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// kube-proxy lists Services and EndpointSlices with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`.
pub(super) fn has_skip_label(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

/// An object without a namespace lives in "default" (what `kubectl apply`
/// would do with such a file).
pub(super) fn namespace_or_default(ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !ns.is_empty() => ns.to_owned(),
        _ => "default".to_owned(),
    }
}

/// A port number from the API (i32) if it is a usable port (1-65535).
pub(super) fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_port_table() {
        let cases = [
            (0, None),
            (1, Some(1)),
            (80, Some(80)),
            (65535, Some(65535)),
            (65536, None),
            (-1, None),
            (i32::MIN, None),
            (i32::MAX, None),
        ];
        for (n, want) in cases {
            assert_eq!(valid_port(n), want, "{n}");
        }
    }
}
