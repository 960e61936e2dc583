import ChildProcess
import Foundation
import XCTest

/// A lab network with real NAT, made of network namespaces (root and nft needed):
///
///     relay 203.0.113.10 ─┐
///                         ├─ public segment 203.0.113.0/24 (a bridge)
///     router1 203.0.113.1 ┤   router2 203.0.113.2
///       │ NAT (masquerade; new inbound connections dropped, as most home
///       │ routers do, or refused with a TCP reset: `Firewall`)
///     home1 10.0.1.2          home2 10.0.2.2
///
/// Addresses come from TEST-NET-3 and RFC 1918 space and exist only inside
/// these namespaces.
final class NATTestbed {
    let prefix: String
    private(set) var namespaces: [String] = []
    private var processes: [ChildProcess] = []

    static let nft = "/usr/sbin/nft"
    static let relayIP = "203.0.113.10"

    /// What a router does with a new connection from outside.
    enum Firewall {
        /// Drops it silently (most home routers).
        case drop
        /// Answers a TCP SYN with a reset (some routers and hosts).
        case reset
    }
    let firewall: Firewall

    init(firewall: Firewall = .drop) throws {
        self.firewall = firewall
        guard getuid() == 0 else {
            print("SKIPPED: the NAT testbed needs root (ip netns, nft)")
            throw XCTSkip("SKIPPED: the NAT testbed needs root")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.nft) else {
            throw XCTSkip("SKIPPED: the NAT testbed needs nft (Debian's nftables)")
        }
        prefix = "p2pn\(getpid() % 100_000)"
        do {
            try build()
        } catch {
            tearDown()
            throw error
        }
    }

    func name(_ role: String) -> String { "\(prefix)-\(role)" }

    private func addNamespace(_ role: String) throws -> String {
        let namespace = name(role)
        try TestNetwork.ip(["netns", "add", namespace])
        namespaces.append(namespace)
        try TestNetwork.ip(["-n", namespace, "link", "set", "lo", "up"])
        return namespace
    }

    /// A veth pair with one end in each namespace, named in each.
    private func link(_ a: String, _ aName: String, _ b: String, _ bName: String) throws {
        try TestNetwork.ip(["link", "add", "name", aName, "netns", a, "type", "veth", "peer", "name", bName, "netns", b])
        try TestNetwork.ip(["-n", a, "link", "set", aName, "up"])
        try TestNetwork.ip(["-n", b, "link", "set", bName, "up"])
    }

    private func exec(_ namespace: String, _ command: [String]) throws {
        let status = try ChildProcess.run(TestNetwork.ipPath, ["netns", "exec", namespace] + command).status
        guard status == 0 else {
            throw NSError(domain: "testbed", code: Int(status), userInfo: [
                NSLocalizedDescriptionKey: "\(command.joined(separator: " ")) in \(namespace) failed"
            ])
        }
    }

    private func build() throws {
        let segment = try addNamespace("pub")
        try TestNetwork.ip(["-n", segment, "link", "add", "br0", "type", "bridge"])
        try TestNetwork.ip(["-n", segment, "link", "set", "br0", "up"])
        func attach(_ namespace: String, _ port: String, address: String) throws {
            try link(namespace, "wan", segment, port)
            try TestNetwork.ip(["-n", segment, "link", "set", port, "master", "br0"])
            try TestNetwork.ip(["-n", namespace, "addr", "add", address, "dev", "wan"])
        }
        let relay = try addNamespace("relay")
        try attach(relay, "relay", address: "\(Self.relayIP)/24")
        for index in 1...2 {
            let router = try addNamespace("router\(index)")
            try attach(router, "router\(index)", address: "203.0.113.\(index)/24")
            let home = try addNamespace("home\(index)")
            try link(router, "lan", home, "eth0")
            try TestNetwork.ip(["-n", router, "addr", "add", "10.0.\(index).1/24", "dev", "lan"])
            try TestNetwork.ip(["-n", home, "addr", "add", "10.0.\(index).2/24", "dev", "eth0"])
            try TestNetwork.ip(["-n", home, "route", "add", "default", "via", "10.0.\(index).1"])
            try exec(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            // Masquerade the home network; drop or refuse new connections from outside
            // (to the router and through it). Replies and what a hole punch opened pass.
            let refuse = switch firewall {
            case .drop: #"iifname "wan" ct state new drop;"#
            case .reset: #"iifname "wan" ct state new meta l4proto tcp reject with tcp reset; iifname "wan" ct state new drop;"#
            }
            let rules = """
                table ip nat {
                  chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
                }
                table inet filter {
                  chain input { type filter hook input priority 0; \(refuse) }
                  chain forward { type filter hook forward priority 0; \(refuse) }
                }
                """
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-router\(index).nft")
            try rules.write(to: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: file) }
            try exec(router, [Self.nft, "-f", file.path])
        }
    }

    /// Runs the p2pchat binary in a namespace of the testbed.
    func start(_ role: String, _ arguments: [String]) throws -> ChatProcess {
        let process = try ChatProcess(namespace: name(role), arguments: arguments, network: nil)
        processes.append(process.process)
        return process
    }

    /// Runs py-libp2p's Tests/Interop/py/relay_peer.py in a namespace of the testbed.
    func startPython(_ role: String, _ arguments: [String]) throws -> ChatProcess {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: py-libp2p in the NAT testbed needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/relay_peer.py").path
        let process = try ChatProcess(
            namespace: name(role), executable: python, arguments: [script] + arguments, network: nil)
        processes.append(process.process)
        return process
    }

    func tearDown() {
        for process in processes { process.terminate() }
        for process in processes { process.stop() }
        for namespace in namespaces.reversed() { _ = try? TestNetwork.ip(["netns", "del", namespace]) }
    }
}
