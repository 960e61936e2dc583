import Host
import Identity
import Libp2p
import NIOCore

/// A host as `Libp2pHostBuilder` makes it (TCP, /ws, /quic-v1; Noise, then
/// TLS), with what a bench sets: its own transports or security protocols
/// replace the defaults.
func makeBenchHost(
    key: PrivateKey, configuration: TransportConfiguration = .init(), group: any EventLoopGroup,
    transports: [any Transport]? = nil, security: [any SecurityProtocol]? = nil, limits: HostLimits = .init()
) throws -> Libp2pHost {
    var builder = Libp2pHostBuilder(key: key).group(group).configuration(configuration).limits(limits)
    if let transports { builder = builder.transports(transports.map { .transport($0) }) }
    if let security { builder = builder.security(security) }
    return try builder.build()
}
