//! A pod builder for the ranking and choice tables, and label helpers.

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

/// A pod builder for the tables below.
#[derive(Clone)]
pub(crate) struct P {
    pub(crate) name: &'static str,
    pub(crate) node: bool,
    pub(crate) phase: &'static str,
    pub(crate) ready_at: Option<i64>,
    pub(crate) restarts: i32,
    pub(crate) created: i64,
    pub(crate) sidecar: bool,
    pub(crate) deleting: bool,
}

pub(crate) const BASE: P = P {
    name: "p",
    node: true,
    phase: "Running",
    ready_at: Some(10),
    restarts: 0,
    created: 0,
    sidecar: true,
    deleting: false,
};

impl P {
    pub(crate) fn pod(&self) -> Pod {
        let mut containers = vec![Container {
            name: "app".into(),
            ..Default::default()
        }];
        if self.sidecar {
            containers.push(Container {
                name: "rpf-sidecar".into(),
                ..Default::default()
            });
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                creation_timestamp: Some(t(self.created)),
                deletion_timestamp: self.deleting.then(|| t(100)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: self.node.then(|| "vm".to_owned()),
                containers,
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(self.phase.into()),
                conditions: self.ready_at.map(|at| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(t(at)),
                        ..Default::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    restart_count: self.restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

/// A label map from pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A selector requirement (`values` empty for Exists/DoesNotExist).
pub(crate) fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}
