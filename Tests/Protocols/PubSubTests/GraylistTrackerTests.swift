import XCTest

@testable import PubSub

final class GraylistTrackerTests: XCTestCase {
    let start = ContinuousClock.now

    func testAPeerThatStaysGraylistedIsDisconnectedAfterTheWait() {
        var tracker = GraylistTracker<Int>(after: .seconds(30))
        for second in 0..<30 {
            XCTAssertEqual(tracker.check([1, 2], now: start + .seconds(second)) { $0 == 1 }, [], "at \(second) s")
        }
        XCTAssertEqual(tracker.check([1, 2], now: start + .seconds(30)) { $0 == 1 }, [1])
    }

    func testAPeerWhoseScoreRecoversForAMomentBetweenOffencesIsStillDisconnected() {
        // Graylisted 4 s out of every 5: its penalty decays while its RPCs are
        // ignored, it crosses back for a second, then offends again.
        var tracker = GraylistTracker<Int>(after: .seconds(30))
        var disconnected: [Int] = []
        for second in 0..<40 where disconnected.isEmpty {
            disconnected = tracker.check([7], now: start + .seconds(second)) { _ in second % 5 != 4 }
        }
        XCTAssertEqual(disconnected, [7])
    }

    func testAPeerThatRecoversForTheWholeWaitIsForgiven() {
        var tracker = GraylistTracker<Int>(after: .seconds(10))
        for second in 0..<5 { _ = tracker.check([3], now: start + .seconds(second)) { _ in true } }
        for second in 5...15 { XCTAssertEqual(tracker.check([3], now: start + .seconds(second)) { _ in false }, []) }
        XCTAssertEqual(tracker.trackedCount, 0, "forgiven after staying above the threshold for the wait")
        // A new offence starts a new wait.
        for second in 16..<26 { XCTAssertEqual(tracker.check([3], now: start + .seconds(second)) { _ in true }, []) }
        XCTAssertEqual(tracker.check([3], now: start + .seconds(26)) { _ in true }, [3])
    }

    func testPeersThatLeftAreForgotten() {
        var tracker = GraylistTracker<Int>(after: .seconds(10))
        _ = tracker.check([1, 2, 3], now: start) { _ in true }
        XCTAssertEqual(tracker.trackedCount, 3)
        _ = tracker.check([2], now: start + .seconds(1)) { _ in true }
        XCTAssertEqual(tracker.trackedCount, 1)
    }
}
