// swift-tools-version: 6.1
import PackageDescription

// One target per concern, in layers; the dependency graph is acyclic, not a tree (most
// targets depend on several below them):
// Multiformats <- Identity <- LibP2PSecurity <- Noise, TLS ; Multistream ; Yamux
//   <- Transport (the seam: TCP, memory, the upgrade) <- WebSocket (/ws), QUICTransport (/quic-v1)
//   Host (on the seams only: no transport or security protocol of its own)
//   <- Identify, Ping, Perf, PubSub, KadDHT, RequestResponse, Relay, AutoNAT, DCUtR ; MDNS
//   <- Libp2p (the umbrella, and Libp2pHostBuilder: the defaults, TCP, /ws, /quic-v1, Noise, TLS)
//   <- Examples, P2PBench, TransportInterop, P2PChat
// RequestResponse <- FileShare, ChatHistory (the chat's own protocols, outside the umbrella) <- P2PChat
// MetricsExporter (swift-metrics at /metrics) ; WebChat (NIO only: the chat's web page) <- P2PChat
// RedisRESP (NIO only) <- TransportInterop <- P2PInterop (p2pchat-interop)
let package = Package(
    name: "p2pchat",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "p2pchat", targets: ["P2PChat"]),
        .executable(name: "p2pbench", targets: ["P2PBench"]),
        // One side of libp2p's transport-interop ping test (interop/README.md).
        .executable(name: "p2pchat-interop", targets: ["P2PInterop"]),
        // Fuzz targets of the network decoders (Fuzz/run.sh; replays its corpus without libFuzzer).
        .executable(name: "p2pfuzz", targets: ["P2PFuzz"]),
        .executable(name: "echo-example", targets: ["EchoExample"]),
        .executable(name: "pubsub-example", targets: ["PubSubExample"]),
        // The whole stack in one import.
        .library(name: "Libp2p", targets: ["Libp2p"]),
        // Each protocol on its own.
        .library(name: "Multiformats", targets: ["Multiformats"]),
        .library(name: "Identity", targets: ["Identity"]),
        .library(name: "Multistream", targets: ["Multistream"]),
        .library(name: "LibP2PSecurity", targets: ["LibP2PSecurity"]),
        .library(name: "Noise", targets: ["Noise"]),
        .library(name: "TLS", targets: ["TLS"]),
        .library(name: "Yamux", targets: ["Yamux"]),
        .library(name: "Transport", targets: ["Transport"]),
        .library(name: "WebSocket", targets: ["WebSocket"]),
        .library(name: "QUICTransport", targets: ["QUICTransport"]),
        .library(name: "Host", targets: ["Host"]),
        .library(name: "Identify", targets: ["Identify"]),
        .library(name: "Ping", targets: ["Ping"]),
        .library(name: "Perf", targets: ["Perf"]),
        .library(name: "PubSub", targets: ["PubSub"]),
        .library(name: "MDNS", targets: ["MDNS"]),
        .library(name: "MetricsExporter", targets: ["MetricsExporter"]),
        .library(name: "RequestResponse", targets: ["RequestResponse"]),
        .library(name: "FileShare", targets: ["FileShare"]),
        .library(name: "ChatHistory", targets: ["ChatHistory"]),
        .library(name: "KadDHT", targets: ["KadDHT"]),
        .library(name: "Relay", targets: ["Relay"]),
        .library(name: "AutoNAT", targets: ["AutoNAT"]),
        .library(name: "DCUtR", targets: ["DCUtR"]),
        .library(name: "RedisRESP", targets: ["RedisRESP"]),
        .library(name: "WebChat", targets: ["WebChat"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // Service and ServiceGroup: one lifetime shape for the long-lived services, graceful shutdown on signals.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // `swift package generate-documentation --target NAME` (DocC); a plugin, not linked into anything.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "Multiformats", path: "Sources/Core/Multiformats"),
        .target(name: "EventBroadcast", path: "Sources/Core/EventBroadcast"),
        .target(
            name: "Identity",
            dependencies: [
                "Multiformats",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            path: "Sources/Core/Identity",
            exclude: ["keys.proto", "envelope.proto", "peer_record.proto"]
        ),
        .target(
            name: "Multistream",
            dependencies: ["Multiformats", .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/Connection/Multistream"
        ),
        // ChaCha20-Poly1305 from the system's libcrypto, loaded at run time
        // (no headers or library needed to build); Noise falls back to swift-crypto.
        .target(
            name: "CLibcryptoAEAD",
            path: "Sources/Connection/CLibcryptoAEAD",
            linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux]))]
        ),
        // Not named "Security": swift-certificates' X509 does `#if canImport(Security)
        // import Security` (Apple's framework), which on Linux would find this module.
        .target(
            name: "LibP2PSecurity",
            dependencies: ["Identity", .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/Connection/LibP2PSecurity"
        ),
        .target(
            name: "Noise",
            dependencies: [
                "Identity", "LibP2PSecurity", "CLibcryptoAEAD",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Sources/Connection/Noise",
            exclude: ["payload.proto"]
        ),
        .target(
            name: "TLS",
            dependencies: [
                "Identity", "LibP2PSecurity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            path: "Sources/Connection/TLS"
        ),
        // QUIC v1 (RFC 9000/9001) as sans-IO state machines. CNIOBoringSSL (its QUIC TLS API,
        // AES_encrypt, CRYPTO_chacha_20) is no product of swift-nio-ssl: NIOSSL brings it as a
        // transitive module, so NIOSSL is the dependency that makes `import CNIOBoringSSL` work.
        .target(
            name: "QUIC",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Sources/Connection/QUIC"
        ),
        .target(
            name: "Yamux",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/Connection/Yamux"
        ),
        .target(
            name: "Transport",
            dependencies: [
                "Multiformats", "Identity", "Multistream", "LibP2PSecurity", "Yamux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            path: "Sources/Connection/Transport"
        ),
        .target(
            name: "WebSocket",
            dependencies: [
                "Transport", "Multiformats", "Identity", "LibP2PSecurity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Connection/WebSocket"
        ),
        // libp2p's /quic-v1: the QUIC core under the Transport seam, one UDP socket per listen address.
        .target(
            name: "QUICTransport",
            dependencies: [
                "QUIC", "Transport", "TLS", "Identity", "Multiformats", "Multistream",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Connection/QUICTransport"
        ),
        .target(
            name: "Host",
            dependencies: [
                "Transport", "LibP2PSecurity", "EventBroadcast",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Host/Host"
        ),
        .target(
            name: "Identify",
            dependencies: [
                "Host",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Sources/Protocols/Identify",
            exclude: ["identify.proto"]
        ),
        .target(name: "Ping", dependencies: ["Host"], path: "Sources/Protocols/Ping"),
        .target(
            name: "DCUtR",
            dependencies: [
                "Host", "Transport", "Identity", "Multiformats", "LibP2PSecurity", "EventBroadcast",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/DCUtR",
            exclude: ["holepunch.proto"]
        ),
        .target(
            name: "AutoNAT",
            dependencies: [
                "Host", "Transport", "Identity", "Multiformats", "EventBroadcast",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/AutoNAT",
            exclude: ["autonat.proto"]
        ),
        .target(
            name: "Relay",
            dependencies: [
                "Host", "Transport", "Identity", "Multiformats", "LibP2PSecurity", "EventBroadcast",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/Relay",
            exclude: ["circuit.proto", "voucher.proto"]
        ),
        .target(name: "Perf", dependencies: ["Host"], path: "Sources/Protocols/Perf"),
        .target(
            name: "PubSub",
            dependencies: [
                "Host", "EventBroadcast",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            path: "Sources/Protocols/PubSub",
            exclude: ["rpc.proto"]
        ),
        .target(
            name: "RequestResponse",
            dependencies: [
                "Host", "Transport", "Multistream", "Identity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/RequestResponse"
        ),
        .target(
            name: "FileShare",
            dependencies: [
                "Host", "Transport", "RequestResponse", "Multiformats", "Multistream", "Identity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/App/FileShare",
            exclude: ["file.proto"]
        ),
        .target(
            name: "ChatHistory",
            dependencies: [
                "Host", "PubSub", "RequestResponse", "Multiformats", "Identity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/App/ChatHistory",
            exclude: ["history.proto"]
        ),
        .target(
            name: "KadDHT",
            dependencies: [
                "Multiformats", "Identity", "Host",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/KadDHT",
            exclude: ["dht.proto"]
        ),
        .target(
            name: "MDNS",
            dependencies: [
                "Multiformats", "Identity", "EventBroadcast",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Protocols/MDNS"
        ),
        // Prometheus text at /metrics over a small HTTP/1 server, for any swift-metrics user.
        .target(
            name: "MetricsExporter",
            dependencies: [
                "Multiformats", "Transport",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/App/MetricsExporter"
        ),
        // The chat as a local web page (`p2pchat --web`): HTTP and a WebSocket on swift-nio, the page embedded.
        .target(
            name: "WebChat",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/App/WebChat",
            resources: [.embedInCode("Page/index.html"), .embedInCode("Page/style.css"), .embedInCode("Page/app.js")]
        ),
        .executableTarget(
            name: "P2PChat",
            dependencies: [
                "Libp2p", "Host", "Identify", "Ping", "Perf", "PubSub", "MDNS", "LibP2PSecurity", "MetricsExporter", "WebChat",
                "FileShare", "ChatHistory", "KadDHT", "Relay", "AutoNAT", "DCUtR", "Transport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/App/P2PChat"
        ),
        .executableTarget(
            name: "P2PFuzz",
            dependencies: [
                "Multiformats", "Multistream", "Yamux", "Noise", "TLS", "LibP2PSecurity", "Identity", "MDNS", "Identify",
                "PubSub", "KadDHT", "Relay", "DCUtR", "AutoNAT", "FileShare", "ChatHistory", "RedisRESP", "QUIC", "WebChat",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/P2PFuzz"
        ),
        .executableTarget(
            name: "P2PBench",
            dependencies: [
                "Libp2p", "Host", "Ping", "Perf", "Noise", "TLS", "LibP2PSecurity", "PubSub", "FileShare", "ChatHistory", "KadDHT", "Identify", "Relay",
                "QUICTransport", "DCUtR",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/App/P2PBench"
        ),
        // A minimal RESP2 client (PING, DEL, RPUSH, BLPOP): the transport-interop harness's coordination.
        .target(
            name: "RedisRESP",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            path: "Sources/App/RedisRESP"
        ),
        // The transport-interop ping test (both harnesses' environments and outputs) on our stack.
        .target(
            name: "TransportInterop",
            dependencies: [
                "Libp2p", "Host", "Identify", "Identity", "LibP2PSecurity", "Multiformats", "Ping", "RedisRESP", "Transport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/App/TransportInterop"
        ),
        .executableTarget(
            name: "P2PInterop",
            dependencies: ["TransportInterop", .product(name: "Logging", package: "swift-log")],
            path: "Sources/App/P2PInterop"
        ),
        // Re-exports what an application needs (`import Libp2p`), and `Libp2pHostBuilder`: the
        // defaults (which transports and security protocols), which the host itself does not know.
        .target(
            name: "Libp2p",
            dependencies: [
                "AutoNAT", "DCUtR", "Host", "Identify", "Identity", "KadDHT", "LibP2PSecurity", "MDNS",
                "Multiformats", "Noise", "Perf", "Ping", "PubSub", "QUICTransport", "Relay", "RequestResponse", "TLS", "Transport",
                "WebSocket",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(name: "Libp2pTests", dependencies: ["Libp2p", "TestSupport"]),
        .executableTarget(name: "EchoExample", dependencies: ["Libp2p"], path: "Examples/Echo"),
        .executableTarget(name: "PubSubExample", dependencies: ["Libp2p"], path: "Examples/PubSubSubscriber"),
        .testTarget(
            name: "ExamplesTests",
            dependencies: ["ChildProcess", "Host", "Multiformats", "PubSub", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .testTarget(name: "MultiformatsTests", dependencies: ["Multiformats", "TestKit"], path: "Tests/Core/MultiformatsTests"),
        .testTarget(name: "EventBroadcastTests", dependencies: ["EventBroadcast", "TestSupport"], path: "Tests/Core/EventBroadcastTests"),
        .testTarget(name: "IdentityTests", dependencies: ["Identity", "TestKit"], path: "Tests/Core/IdentityTests"),
        .testTarget(name: "MultistreamTests", dependencies: ["Multistream", "TestKit"], path: "Tests/Connection/MultistreamTests"),
        .testTarget(name: "NoiseTests", dependencies: ["Noise", "TestKit"], path: "Tests/Connection/NoiseTests"),
        .testTarget(
            name: "TLSTests",
            dependencies: [
                "TLS", "LibP2PSecurity", "Identity", "TestKit",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            path: "Tests/Connection/TLSTests"
        ),
        .testTarget(name: "QUICTests", dependencies: ["QUIC", "TLS", "Identity", "ChildProcess", "TestKit"]),
        .testTarget(name: "YamuxTests", dependencies: ["Yamux", "TestKit"], path: "Tests/Connection/YamuxTests"),
        .testTarget(
            name: "QUICTransportTests",
            dependencies: [
                "QUICTransport", "QUIC", "Host", "Identify", "Ping", "Transport", "Identity", "Multiformats", "TestSupport", "ChildProcess",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "MDNSTests", dependencies: ["MDNS", "TestKit"], path: "Tests/Protocols/MDNSTests"),
        .testTarget(name: "KadDHTTests", dependencies: ["KadDHT", "Host", "Identify", "Transport", "Noise", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")], path: "Tests/Protocols/KadDHTTests"),
        .testTarget(
            name: "NamespaceTests",
            dependencies: ["ChildProcess", "FileShare", "PubSub", "Host", "Multiformats", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .target(name: "ChildProcess", path: "Tests/ChildProcess"),
        // What tests share that needs none of our modules: polling with a deadline, seeded randomness, hex.
        .target(name: "TestKit", path: "Tests/TestKit"),
        .testTarget(
            name: "PubSubTests",
            dependencies: ["PubSub", "TestSupport", .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/Protocols/PubSubTests"
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "Host", "Identify", "Ping", "Noise", "LibP2PSecurity", "Relay", "TestKit",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "HostTests", dependencies: ["Host", "Identify", "Ping", "Transport", "LibP2PSecurity", "Noise", "TLS", "WebSocket", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")], path: "Tests/Host/HostTests"),
        .testTarget(
            name: "TransportTests",
            dependencies: [
                "Transport", "Host", "Identify", "Ping", "Noise", "TLS", "Multistream", "LibP2PSecurity", "TestSupport",
                "WebSocket",
            ],
            path: "Tests/Connection/TransportTests"
        ),
        .testTarget(name: "IdentifyTests", dependencies: ["Identify", "Host", "Ping", "TestSupport"], path: "Tests/Protocols/IdentifyTests"),
        .testTarget(name: "PingTests", dependencies: ["Ping", "Host", "Identify", "TestSupport"], path: "Tests/Protocols/PingTests"),
        .testTarget(name: "RelayTests", dependencies: ["Relay", "Host", "Ping", "TestSupport"], path: "Tests/Protocols/RelayTests"),
        .testTarget(name: "AutoNATTests", dependencies: ["AutoNAT", "Host", "QUICTransport", "TestSupport"], path: "Tests/Protocols/AutoNATTests"),
        .testTarget(name: "DCUtRTests", dependencies: ["DCUtR", "Relay", "Host", "QUICTransport", "TestSupport"], path: "Tests/Protocols/DCUtRTests"),
        .testTarget(name: "PerfTests", dependencies: ["Perf", "Host", "TestSupport"], path: "Tests/Protocols/PerfTests"),
        .testTarget(
            name: "WebSocketTests",
            dependencies: [
                "WebSocket", "Transport", "Ping", "TestSupport",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/Connection/WebSocketTests"
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: [
                "Host", "Identify", "Ping", "Perf", "PubSub", "KadDHT", "RequestResponse", "Relay", "AutoNAT", "DCUtR", "TLS", "WebSocket", "TestSupport",
                "ChildProcess",
            ]
        ),
        .testTarget(
            name: "TransportInteropTests",
            dependencies: [
                "TransportInterop", "RedisRESP", "ChildProcess", "Identity", "Multiformats", "TestKit",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/App/TransportInteropTests"
        ),
        .testTarget(
            name: "FileShareTests",
            dependencies: ["FileShare", "Host", "Identity", "Transport", "Multiformats", "TestSupport", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/App/FileShareTests"
        ),
        .testTarget(
            name: "ChatHistoryTests",
            dependencies: ["ChatHistory", "PubSub", "Host", "Transport", "Identity", "RequestResponse", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")],
            path: "Tests/App/ChatHistoryTests"
        ),
        .testTarget(
            name: "MetricsExporterTests",
            dependencies: [
                "MetricsExporter", "Multiformats", "TestSupport", .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/App/MetricsExporterTests"
        ),
        .testTarget(
            name: "WebChatTests",
            dependencies: [
                "WebChat", "ChildProcess", "TestSupport",
            ],
            // The browser test's Selenium driver and its pinned requirements (WebChatBrowserTests runs it).
            exclude: ["browser"]
        ),
        .testTarget(
            name: "RequestResponseTests",
            dependencies: ["RequestResponse", "Host", "Transport", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")],
            path: "Tests/Protocols/RequestResponseTests"
        ),
    ]
)
