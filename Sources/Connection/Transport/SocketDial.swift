#if canImport(Glibc)
import Glibc
#endif
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What the socket transports (TCP, and WebSocket on top of TCP) share: the
/// socket options every libp2p connection gets, and a connect that a
/// cancelled task aborts (a host racing several addresses cancels the losers).
public enum SocketDial {
    /// A listener with our socket options; the caller adds its child initializer.
    ///
    /// When accept fails (out of file descriptors: EMFILE, ENFILE), accepting
    /// pauses for `acceptBackoff` and resumes (`AcceptPauseHandler`).
    public static func serverBootstrap(group: EventLoopGroup, configuration: TransportConfiguration) -> ServerBootstrap {
        let backoff = TimeAmount(configuration.acceptBackoff)
        return ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(backoff: backoff))
                }
            }
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .childChannelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
    }

    /// Binds a listener; a failure (the port in use, say) is a `listenFailed` naming `address`.
    public static func bind(_ bootstrap: ServerBootstrap, to socketAddress: SocketAddress, address: Multiaddr) async throws -> Channel {
        do {
            return try await bootstrap.bind(to: socketAddress).get()
        } catch {
            throw TransportError.listenFailed(address: "\(address)", underlying: error)
        }
    }

    /// SO_REUSEPORT: several sockets on one port (a listener and the dials made
    /// from its port, for NAT hole punching).
    static let reusePort = ChannelOptions.Types.SocketOption(
        level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT))

    /// Connects to `target` with our socket options, `initialize` setting up each
    /// new channel's pipeline (which must complete `established`), and waits for
    /// `established`. Cancelling the calling task closes the socket. With
    /// `localAddress` the socket is bound there first (SO_REUSEADDR and
    /// SO_REUSEPORT set), so that it leaves from a listener's port.
    public static func connect(
        _ target: TCPTarget, address: Multiaddr, on eventLoop: EventLoop, configuration: TransportConfiguration,
        localAddress: SocketAddress? = nil, established: EventLoopPromise<Connection>,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) async throws -> Connection {
        // Known once the socket exists, so that a cancelled dial can close it.
        let dialling = NIOLockedValueBox<Channel?>(nil)
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.dialTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .channelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
            .channelInitializer { channel in
                dialling.withLockedValue { $0 = channel }
                return channel.eventLoop.makeCompletedFuture { try initialize(channel) }
            }
        if let localAddress {
            bootstrap = bootstrap.channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(reusePort, value: 1)
                .bind(to: localAddress)
        }
        return try await withTaskCancellationHandler {
            do {
                switch target {
                case .socket(let socketAddress):
                    _ = try await bootstrap.connect(to: socketAddress).get()
                case .host(let host, let port):
                    _ = try await bootstrap.connect(host: host, port: port).get()
                }
            } catch {
                let failure: TransportError =
                    if case ChannelError.connectTimeout(let after) = error {
                        .dialTimeout(address: "\(address)", after: .nanoseconds(after.nanoseconds))
                    } else {
                        .dialFailed(address: "\(address)", underlying: error)
                    }
                // The pipeline may never have been set up: settle the promise here.
                established.fail(failure)
                throw failure
            }
            return try await established.futureResult.get()
        } onCancel: {
            dialling.withLockedValue { $0 }?.close(promise: nil)
        }
    }
}
