//! The connection layer's metrics ([`ServerMetrics`]): clients connected,
//! connections and requests served, and every way a peer is turned away or
//! dropped. Names are part of the operator interface (`rafs stats`,
//! dashboards): keep them stable.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An `op` label: the request kind (`hello`, `open`, `fetch`, `used`,
/// `close`, `ping`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// The request kind.
    pub op: &'static str,
}

/// Counters and gauges of the manager's connection layer.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Clients connected now (past the peer check and the cap).
    pub clients: Gauge,
    /// Connections served (past the peer check and the cap).
    pub connections: Counter,
    /// Requests received, by kind.
    pub requests: Family<Op, Counter>,
    /// Connections dropped for a protocol error (including a Hello that
    /// did not come in time).
    pub protocol_errors: Counter,
    /// Connections closed unanswered: the peer's uid is not allowed.
    pub denied_peers: Counter,
    /// Connections closed because `max_connections` were served.
    pub refused_connections: Counter,
    /// Clients dropped because they did not read their replies.
    pub slow_clients: Counter,
    /// `accept` failures (fd exhaustion, ...).
    pub accept_errors: Counter,
    /// Used or CloseBlob naming a handle the connection does not have.
    pub unknown_handles: Counter,
}

impl ServerMetrics {
    /// Counts one request of kind `op`.
    pub fn request(&self, op: &'static str) {
        self.requests.get_or_create(&Op { op }).inc();
    }

    /// Registers every metric (as `rafs_blobmgr_*`) in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "rafs_blobmgr_clients",
            "Clients connected to the blob manager",
            self.clients.clone(),
        );
        let counters: [(&str, &str, &Counter); 7] = [
            (
                "rafs_blobmgr_connections",
                "Blob manager connections served",
                &self.connections,
            ),
            (
                "rafs_blobmgr_protocol_errors",
                "Blob manager connections dropped for a protocol error",
                &self.protocol_errors,
            ),
            (
                "rafs_blobmgr_denied_peers",
                "Blob manager connections closed because the peer's uid is not allowed",
                &self.denied_peers,
            ),
            (
                "rafs_blobmgr_refused_connections",
                "Blob manager connections closed because too many clients were connected",
                &self.refused_connections,
            ),
            (
                "rafs_blobmgr_slow_clients",
                "Blob manager clients dropped because they did not read their replies",
                &self.slow_clients,
            ),
            (
                "rafs_blobmgr_accept_errors",
                "Blob manager accept failures (e.g. out of file descriptors)",
                &self.accept_errors,
            ),
            (
                "rafs_blobmgr_unknown_handles",
                "Used or CloseBlob requests naming a handle the connection does not have",
                &self.unknown_handles,
            ),
        ];
        for (name, help, c) in counters {
            reg.register(name, help, c.clone());
        }
        reg.register(
            "rafs_blobmgr_requests",
            "Blob manager requests received, by kind",
            self.requests.clone(),
        );
    }
}
