import Host
import Identity
import TestSupport
import XCTest

@testable import PubSub

/// The configuration's constraints (gossipsub spec and our bounds): each one
/// broken alone is named by the error.
final class PubSubConfigurationTests: XCTestCase {
    typealias Constraint = PubSubConfigurationError.Constraint

    /// The default configuration with only `constraint` broken.
    static func breaking(_ constraint: Constraint) -> PubSubConfiguration {
        var c = PubSubConfiguration()
        switch constraint {
        case .dLowAtMostD: c.dLow = c.d + 1
        case .dAtMostDHigh: c.dHigh = c.d - 1
        case .dOutBelowDLow: (c.dLow, c.dOut) = (2, 2)
        case .dOutAtMostHalfD: c.dOut = c.d / 2 + 1
        case .dScoreAtMostD: c.dScore = c.d + 1
        case .degreesNotNegative: c.dLazy = -1
        case .historyLengthPositive: (c.historyLength, c.historyGossip) = (0, 0)
        case .historyGossipWithinHistory: c.historyGossip = c.historyLength + 1
        case .heartbeatPositive: c.heartbeatInterval = .zero
        case .fanoutTTLPositive: c.fanoutTTL = .zero
        case .seenTTLPositive: c.seenTTL = .seconds(-1)
        case .pruneBackoffWholeSeconds: c.pruneBackoff = .milliseconds(500)
        case .iwantFollowupTimePositive: c.iwantFollowupTime = .zero
        case .gossipThresholdNotPositive: c.scoreThresholds.gossipThreshold = 1
        case .publishThresholdAtMostGossip: c.scoreThresholds.publishThreshold = c.scoreThresholds.gossipThreshold + 1
        case .graylistThresholdAtMostPublish:
            c.scoreThresholds.graylistThreshold = c.scoreThresholds.publishThreshold + 1
        case .acceptPXThresholdNotNegative: c.scoreThresholds.acceptPXThreshold = -1
        case .opportunisticGraftThresholdNotNegative: c.scoreThresholds.opportunisticGraftThreshold = -1
        case .opportunisticGraftTicksPositive: c.opportunisticGraftTicks = 0
        case .messageSizePositive: c.maxMessageSize = 0
        case .limitsNotNegative: c.prunePeers = -1
        case .outboundQueuePositive: c.maxQueuedRPCsPerPeer = 0
        case .rpcCompletionTimeoutPositive: c.rpcCompletionTimeout = .zero
        case .replacedStreamDrainTimeNotNegative: c.replacedStreamDrainTime = .seconds(-1)
        }
        return c
    }

    func testDefaultIsValid() throws {
        try PubSubConfiguration().validate()
        var floodsub = PubSubConfiguration()
        floodsub.router = .floodsub
        try floodsub.validate()
    }

    func testEachBrokenConstraintIsNamed() {
        for constraint in Constraint.allCases {
            XCTAssertThrowsError(try Self.breaking(constraint).validate(), "\(constraint)") { error in
                guard let error = error as? PubSubConfigurationError else { return XCTFail("\(error)") }
                XCTAssertEqual(error.constraint, constraint)
                XCTAssertTrue(error.description.contains(constraint.rawValue), error.description)
            }
        }
    }

    /// The limits of the spec's inequalities are allowed.
    func testBoundaryValuesAreValid() throws {
        var c = PubSubConfiguration()
        (c.d, c.dLow, c.dHigh, c.dOut, c.dScore) = (6, 6, 6, 3, 6)
        c.historyGossip = c.historyLength
        c.scoreThresholds.gossipThreshold = 0
        c.scoreThresholds.publishThreshold = 0
        c.scoreThresholds.graylistThreshold = 0
        c.scoreThresholds.acceptPXThreshold = 0
        c.scoreThresholds.opportunisticGraftThreshold = 0
        c.pruneBackoff = .seconds(1)
        try c.validate()
    }

    /// The service refuses an invalid configuration when it is built.
    func testServiceRefusesAnInvalidConfiguration() async throws {
        let host = try Libp2pHost(key: .generateEd25519(), security: testSecurity)
        var configuration = PubSubConfiguration()
        configuration.dOut = configuration.dLow
        do {
            _ = try PubSubService(host: host, configuration: configuration)
            XCTFail("an invalid configuration was accepted")
        } catch {
            XCTAssertEqual(error.constraint, .dOutBelowDLow)
        }
        await host.close()
    }
}
