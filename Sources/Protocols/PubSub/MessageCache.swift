/// The gossipsub message cache (spec: "Message Cache"): windows of recent
/// messages, one per heartbeat. IWANTs are answered from all `history`
/// windows; IHAVEs announce the newest `gossip` ones.
struct MessageCache {
    private var messages: [MessageID: RawMessage] = [:]
    private var windows: [[(MessageID, String)]]
    private let gossip: Int

    init(history: Int, gossip: Int) {
        windows = Array(repeating: [], count: max(1, history))
        self.gossip = gossip
    }

    mutating func put(_ id: MessageID, _ message: RawMessage) {
        guard messages[id] == nil else { return }
        messages[id] = message
        windows[0].append((id, message.topic))
    }

    func get(_ id: MessageID) -> RawMessage? { messages[id] }

    func gossipIDs(topic: String) -> [MessageID] {
        windows.prefix(gossip).flatMap { $0.filter { $0.1 == topic }.map(\.0) }
    }

    /// A heartbeat: the oldest window's messages are forgotten.
    mutating func shift() {
        for (id, _) in windows.removeLast() { messages[id] = nil }
        windows.insert([], at: 0)
    }
}
