import XCTest

final class NoiseTestsPlaceholder: XCTestCase {}
