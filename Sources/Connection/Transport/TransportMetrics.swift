import CoreMetrics

/// The connection layer's metrics, through swift-metrics: nothing is recorded
/// unless the application bootstraps a metrics backend (then, e.g., Prometheus
/// names `libp2p_connections{direction,transport,security}`).
///
/// Handles are made per connection (the backend is looked up then, not per
/// byte), and bytes are counted per read or write batch of the socket.
struct ConnectionMetrics {
    let bytesReceived = Counter(label: "libp2p_bytes_received_total")
    let bytesSent = Counter(label: "libp2p_bytes_sent_total")

    /// A connection finished its upgrade: counted, and open until `closed`.
    func established(direction: ConnectionDirection, transport: String, security: String) {
        let dimensions = Self.dimensions(direction: direction, transport: transport, security: security)
        Counter(label: "libp2p_connections_opened_total", dimensions: dimensions).increment()
        Meter(label: "libp2p_connections", dimensions: dimensions).increment()
    }

    func closed(direction: ConnectionDirection, transport: String, security: String) {
        Meter(label: "libp2p_connections", dimensions: Self.dimensions(direction: direction, transport: transport, security: security))
            .decrement()
    }

    /// A stream negotiated `protocolID` (only protocols we serve or asked for: the set is bounded).
    func streamOpened(protocolID: String, inbound: Bool) {
        Counter(
            label: "libp2p_streams_opened_total",
            dimensions: [("protocol", protocolID), ("direction", inbound ? "inbound" : "outbound")]
        ).increment()
    }

    /// An upgrade (security handshake, muxer negotiation) that failed, by reason.
    func handshakeFailed(_ error: TransportError) {
        Counter(label: "libp2p_handshake_failures_total", dimensions: [("reason", Self.reason(error))]).increment()
    }

    static func reason(_ error: TransportError) -> String {
        switch error {
        case .upgradeTimeout: return "timeout"
        case .negotiationFailed: return "negotiation"
        case .securityFailed: return "security"
        case .peerIDMismatch: return "peer_id_mismatch"
        case .connectionClosed, .io: return "closed"
        default: return "other"
        }
    }

    static func dimensions(direction: ConnectionDirection, transport: String, security: String) -> [(String, String)] {
        [("direction", direction.rawValue), ("transport", transport), ("security", security)]
    }
}
