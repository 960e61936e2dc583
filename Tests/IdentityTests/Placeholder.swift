import XCTest

final class IdentityTestsPlaceholder: XCTestCase {}
