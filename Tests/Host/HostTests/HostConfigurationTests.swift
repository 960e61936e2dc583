import Host
import Identity
import Noise
import Transport
import XCTest

/// A configuration that breaks a constraint is refused, with what is wrong,
/// when the host is made: not a trap at the first connection.
final class HostConfigurationTests: XCTestCase {
    func makeHost(_ configuration: TransportConfiguration) throws(TransportConfigurationError) -> Libp2pHost {
        try Libp2pHost(key: .generateEd25519(), configuration: configuration, security: [NoiseSecurity()])
    }

    func testDefaultConfigurationMakesAHost() async throws {
        let host = try makeHost(TransportConfiguration())
        await host.close()
    }

    func testYamuxWindowBelowTheProtocolsIsRefusedAtCreation() {
        var configuration = TransportConfiguration()
        // Below the spec's 256 KiB: the session's window arithmetic would trap on it.
        configuration.yamux.initialWindow = 128 * 1024
        XCTAssertThrowsError(try makeHost(configuration)) { error in
            guard case .yamux = error as? TransportConfigurationError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("initialWindow 131072"), "\(error)")
        }
        configuration = TransportConfiguration()
        configuration.yamux.maxStreams = 0
        XCTAssertThrowsError(try makeHost(configuration)) { error in
            XCTAssertTrue("\(error)".contains("maxStreams must be above zero"), "\(error)")
        }
    }

    func testTransportValuesAreChecked() async throws {
        var configuration = TransportConfiguration()
        configuration.dialTimeout = .zero
        XCTAssertThrowsError(try makeHost(configuration)) { error in
            guard case .notPositive("dialTimeout", _) = error as? TransportConfigurationError else { return XCTFail("\(error)") }
        }
        configuration = TransportConfiguration()
        configuration.maxInboundHandshakesPerAddress = 0
        XCTAssertThrowsError(try makeHost(configuration)) { error in
            XCTAssertEqual(error as? TransportConfigurationError, .notPositive("maxInboundHandshakesPerAddress", "0"))
            XCTAssertEqual(
                "\(error)", "transport configuration: maxInboundHandshakesPerAddress must be above zero, is 0")
        }
        configuration = TransportConfiguration()
        configuration.writeStallTimeout = .seconds(-1)
        XCTAssertThrowsError(try makeHost(configuration))
        configuration.writeStallTimeout = nil
        try await makeHost(configuration).close()
    }
}
