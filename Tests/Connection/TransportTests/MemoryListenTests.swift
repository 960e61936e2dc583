import Host
import Multiformats
import NIOPosix
import TestSupport
import Transport
import XCTest

final class MemoryListenTests: XCTestCase {
    /// A taken `/memory/N` is a listen failure that says so, not a dial failure.
    func testListeningOnATakenMemoryPortFailsAsAListen() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let network = MemoryNetwork()
        let (first, address) = try await makeTestHost(
            group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
        let (second, _) = try await makeTestHost(
            group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
        do {
            _ = try await second.listen(on: [address.withoutP2P])
            XCTFail("listened on a taken port")
        } catch let error as TransportError {
            guard case .listenFailed(let taken, _) = error else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(taken, "\(address.withoutP2P)")
            XCTAssertTrue("\(error)".contains("address in use"), "\(error)")
        }
        await first.close()
        await second.close()
    }
}
