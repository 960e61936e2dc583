import XCTest

final class TransportTestsPlaceholder: XCTestCase {}
