import Multiformats
import NIOPosix
import XCTest

/// What the classes that run a py-libp2p peer script share: the peers a test
/// starts, stopped after it, and the arguments every start carries.
class PythonPeerTestCase: XCTestCase {
    // The process-wide group, as the host uses by default: it is never shut down,
    // so tasks that outlive a test (identify, handlers) never find a dead loop.
    let group = MultiThreadedEventLoopGroup.singleton
    var peers: [PythonPeer] = []
    /// The script (in Tests/Interop/py) that `startPython` runs.
    var pythonScript: String { "peer.py" }
    /// Arguments before each start's own (a transport, a security protocol).
    var pythonArguments: [String] { [] }

    override func tearDown() async throws {
        for peer in peers { peer.stop() }
    }

    func startPython(_ arguments: [String]) throws -> PythonPeer {
        let peer = try PythonPeer(script: pythonScript, pythonArguments + arguments)
        peers.append(peer)
        return peer
    }

    /// py-libp2p dials `target` and runs `action`; returns its `event` line
    /// once it has exited cleanly.
    func pythonDials(_ target: Multiaddr, _ action: [String], expect event: String, within seconds: Double)
        async throws -> [String: any Sendable]
    {
        let python = try startPython(["dial", "\(target)"] + action + ["--timeout", "\(Int(seconds))"])
        defer { if testRun?.hasSucceeded == false { print("python stderr:\n\(python.stderrTail)") } }
        let result = try await python.next(event, within: seconds)
        let status = try await python.waitForExit(within: 30)
        XCTAssertEqual(status, 0, python.stderrTail)
        return result
    }
}
