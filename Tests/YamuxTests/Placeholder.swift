import XCTest

final class YamuxTestsPlaceholder: XCTestCase {}
