//! WireHub on Kubernetes, the pure half: the `WireHubNetwork` and
//! `WireHubNode` resources ([`crd`]), the network's conversions to and from
//! the network file ([`convert`]), address and pod CIDR allocation
//! ([`alloc`]), the pins that keep a node's key and addresses ([`pins`]),
//! the merge of other clusters' members ([`mesh`]) and the agent's plan
//! from a snapshot of the cluster ([`plan`]).
//!
//! Promises: every function here is fed the objects the API server showed
//! (and the time, where it matters) as values and returns what to write or
//! report as values. Never: a Kubernetes client, a watch, an API call, an
//! await: those are the `wirehub` crate's agent (`k8s::agent`,
//! `k8s::remote`), which re-exports these modules under the same paths.

pub mod alloc;
pub mod convert;
pub mod crd;
pub mod mesh;
pub mod pins;
pub mod plan;

/// Fixtures shared by the Kubernetes tests of this crate and of the agent.
#[doc(hidden)]
pub mod fixtures;
