// swift-tools-version: 6.1
import PackageDescription

// One target per concern; the dependency graph is a tree:
// Multiformats <- Identity <- LibP2PSecurity <- Noise, TLS ; Multistream ; Yamux
//   <- Transport (TCP, memory, the upgrade) <- WebSocket (/ws) ; Host <- Identify, Ping, Perf, PubSub ; MDNS <- P2PChat
let package = Package(
    name: "p2pchat",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "p2pchat", targets: ["P2PChat"]),
        .executable(name: "p2pbench", targets: ["P2PBench"]),
        // Fuzz targets of the network decoders (Fuzz/run.sh; replays its corpus without libFuzzer).
        .executable(name: "p2pfuzz", targets: ["P2PFuzz"]),
        .library(name: "Multiformats", targets: ["Multiformats"]),
        .library(name: "Identity", targets: ["Identity"]),
        .library(name: "Host", targets: ["Host"]),
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
    ],
    targets: [
        .target(name: "Multiformats"),
        .target(
            name: "Identity",
            dependencies: [
                "Multiformats",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            exclude: ["keys.proto", "envelope.proto", "peer_record.proto"]
        ),
        .target(
            name: "Multistream",
            dependencies: ["Multiformats", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .systemLibrary(
            name: "COpenSSLAEAD",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // Not named "Security": swift-certificates' X509 does `#if canImport(Security)
        // import Security` (Apple's framework), which on Linux would find this module.
        .target(
            name: "LibP2PSecurity",
            dependencies: ["Identity", .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/Security"
        ),
        .target(
            name: "Noise",
            dependencies: [
                "Identity", "LibP2PSecurity", "COpenSSLAEAD",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
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
            ]
        ),
        .target(
            name: "Yamux",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "Transport",
            dependencies: [
                "Multiformats", "Identity", "Multistream", "LibP2PSecurity", "Noise", "Yamux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "WebSocket",
            dependencies: [
                "Transport", "Multiformats", "Identity", "LibP2PSecurity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Host",
            dependencies: [
                "Transport", "LibP2PSecurity", "Noise", "TLS", "WebSocket",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Identify",
            dependencies: [
                "Host",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["identify.proto"]
        ),
        .target(name: "Ping", dependencies: ["Host"]),
        .target(name: "Perf", dependencies: ["Host"]),
        .target(
            name: "PubSub",
            dependencies: [
                "Host",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["rpc.proto"]
        ),
        .target(
            name: "MDNS",
            dependencies: [
                "Multiformats", "Identity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "P2PChat",
            dependencies: [
                "Host", "Identify", "Ping", "Perf", "PubSub", "MDNS", "LibP2PSecurity", "Noise", "TLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "P2PFuzz",
            dependencies: [
                "Multiformats", "Multistream", "Yamux", "Noise", "Identity", "MDNS", "Identify", "PubSub",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/P2PFuzz"
        ),
        .executableTarget(
            name: "P2PBench",
            dependencies: [
                "Host", "Ping", "Perf", "Noise", "TLS", "LibP2PSecurity", "PubSub",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "MultiformatsTests", dependencies: ["Multiformats"]),
        .testTarget(name: "IdentityTests", dependencies: ["Identity"]),
        .testTarget(name: "MultistreamTests", dependencies: ["Multistream"]),
        .testTarget(name: "NoiseTests", dependencies: ["Noise"]),
        .testTarget(
            name: "TLSTests",
            dependencies: [
                "TLS", "LibP2PSecurity", "Identity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(name: "YamuxTests", dependencies: ["Yamux"]),
        .testTarget(name: "MDNSTests", dependencies: ["MDNS"]),
        .testTarget(name: "NamespaceTests", dependencies: ["ChildProcess"]),
        .target(name: "ChildProcess", path: "Tests/ChildProcess"),
        .testTarget(
            name: "PubSubTests",
            dependencies: ["PubSub", "TestSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "Host", "Identify", "Ping", "Noise", "LibP2PSecurity", .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "HostTests", dependencies: ["Host", "Identify", "Ping", "Transport", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(
            name: "TransportTests",
            dependencies: [
                "Transport", "Host", "Identify", "Ping", "Noise", "TLS", "Multistream", "LibP2PSecurity", "TestSupport",
            ]
        ),
        .testTarget(name: "IdentifyTests", dependencies: ["Identify", "Host", "Ping", "TestSupport"]),
        .testTarget(name: "PingTests", dependencies: ["Ping", "Host", "Identify", "TestSupport"]),
        .testTarget(name: "PerfTests", dependencies: ["Perf", "Host", "TestSupport"]),
        .testTarget(
            name: "WebSocketTests",
            dependencies: [
                "WebSocket", "Transport", "Ping", "TestSupport", "LibP2PSecurity", "Noise",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: ["Host", "Identify", "Ping", "Perf", "PubSub", "TLS", "WebSocket", "TestSupport", "ChildProcess"]
        ),
    ]
)
