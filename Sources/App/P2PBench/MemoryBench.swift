import Foundation
import Host
import Multiformats

// MARK: Memory

func residentBytes(pid: Int32) -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return 0 }
    let fields = statm.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Starts `p2pchat` (next to this binary), returns its RSS idle and per connection.
func memory(connections: Int) async throws -> (idle: Int, perConnection: Int)? {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appendingPathComponent("p2pchat").path
    guard FileManager.default.isExecutableFile(atPath: binary) else { return nil }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = ["chat", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0"]
    let output = Pipe()
    let input = Pipe()
    process.standardOutput = output
    process.standardInput = input
    try process.run()
    defer { process.terminate() }
    var text = ""
    let deadline = clock.now + .seconds(10)
    while !(text.contains("Listening on") && text.contains("\n", after: "Listening on")) && clock.now < deadline {
        text += String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
    }
    guard let peerLine = text.split(separator: "\n").first(where: { $0.hasPrefix("Local peer id: ") }),
        let listenLine = text.split(separator: "\n").first(where: { $0.hasPrefix("Listening on ") })
    else { return nil }
    let peer = peerLine.dropFirst("Local peer id: ".count)
    let address = try Multiaddr(String(listenLine.dropFirst("Listening on ".count)) + "/p2p/" + peer)
    try await Task.sleep(for: .milliseconds(500))
    let idle = residentBytes(pid: process.processIdentifier)
    var clients: [Libp2pHost] = []
    for _ in 0..<connections {
        let client = try makeBenchHost(key: .generateEd25519(), group: group)
        _ = try await client.connect(address)
        clients.append(client)
    }
    try await Task.sleep(for: .milliseconds(500))
    let loaded = residentBytes(pid: process.processIdentifier)
    for client in clients { await client.close() }
    try? input.fileHandleForWriting.close()
    return (idle, (loaded - idle) / connections)
}

extension String {
    func contains(_ other: String, after marker: String) -> Bool {
        guard let range = range(of: marker) else { return false }
        return self[range.upperBound...].contains(other)
    }
}
