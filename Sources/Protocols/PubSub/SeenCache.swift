/// Message ids seen recently, with their time, expired after the TTL (at each
/// heartbeat): a message seen again within the TTL is a duplicate.
struct SeenCache {
    private var entries: [MessageID: ContinuousClock.Instant] = [:]

    func contains(_ id: MessageID) -> Bool { entries[id] != nil }

    mutating func insert(_ id: MessageID, now: ContinuousClock.Instant) { entries[id] = now }

    mutating func expire(now: ContinuousClock.Instant, ttl: Duration) {
        entries = entries.filter { now - $0.value < ttl }
    }

    var count: Int { entries.count }
}
