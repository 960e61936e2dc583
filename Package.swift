// swift-tools-version: 6.1
import PackageDescription

// One target per concern; the dependency graph is a tree:
// Multiformats <- Identity <- Noise ; Multistream ; Yamux
//   <- Transport (TCP + upgrade) <- WebSocket (/ws) ; Host <- Identify, Ping, Perf, PubSub ; MDNS <- P2PChat
let package = Package(
    name: "p2pchat",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "p2pchat", targets: ["P2PChat"]),
        .executable(name: "p2pbench", targets: ["P2PBench"]),
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
    ],
    targets: [
        .target(name: "Multiformats"),
        .systemLibrary(
            name: "CSecp256k1",
            pkgConfig: "libsecp256k1",
            providers: [.apt(["libsecp256k1-dev"])]
        ),
        .target(
            name: "Identity",
            dependencies: [
                "Multiformats", "CSecp256k1",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
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
        .target(
            name: "Security",
            dependencies: ["Identity", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "Noise",
            dependencies: [
                "Identity", "Security", "COpenSSLAEAD",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["payload.proto"]
        ),
        .target(
            name: "Yamux",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "Transport",
            dependencies: [
                "Multiformats", "Identity", "Multistream", "Security", "Noise", "Yamux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "WebSocket",
            dependencies: [
                "Transport", "Multiformats", "Identity",
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
                "Transport",
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
                "Host", "Identify", "Ping", "Perf", "PubSub", "MDNS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "P2PBench",
            dependencies: [
                "Host", "Ping", "Perf", "Noise", "PubSub",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "MultiformatsTests", dependencies: ["Multiformats"]),
        .testTarget(name: "IdentityTests", dependencies: ["Identity"]),
        .testTarget(name: "MultistreamTests", dependencies: ["Multistream"]),
        .testTarget(name: "NoiseTests", dependencies: ["Noise"]),
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
            dependencies: ["Host", "Identify", "Ping", .product(name: "NIOPosix", package: "swift-nio")],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "TransportTests",
            dependencies: ["Transport", "Host", "Identify", "Ping", "Perf", "Noise", "Multistream", "TestSupport"]
        ),
        .testTarget(
            name: "WebSocketTests",
            dependencies: [
                "WebSocket", "Transport", "Ping", "TestSupport",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "InteropTests",
            dependencies: ["Host", "Identify", "Ping", "Perf", "PubSub", "TestSupport", "ChildProcess", "WebSocket"]
        ),
    ]
)
