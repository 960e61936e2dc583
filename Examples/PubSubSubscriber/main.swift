// A gossipsub subscriber: `pubsub-example TOPIC [ADDR]` listens (and dials ADDR,
// if given), prints its address, then every message on TOPIC with its author.
import Foundation
import Libp2p

let arguments = Array(CommandLine.arguments.dropFirst())
guard let topic = arguments.first else {
    print("usage: pubsub-example TOPIC [ADDR]")
    exit(2)
}
let host = try Libp2pHostBuilder(key: .generateEd25519()).build()
let pubsub = try PubSubService(host: host)
pubsub.start()
let messages = await pubsub.subscribe(topic)
try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
for address in host.listenAddresses {
    print("Listening on \(address.encapsulating(.p2p(host.localPeer.bytes)))")
}
if let target = arguments.dropFirst().first {
    _ = try await host.connect(Multiaddr(target))
}
fflush(nil)  // stdout may be a pipe: show each line at once
// Until the process is stopped.
for await message in messages {
    let author = message.from.map { "\($0)" } ?? "anonymous"
    print("\(author): \(String(decoding: message.data, as: UTF8.self))")
    fflush(nil)  // stdout may be a pipe: show each line at once
}
