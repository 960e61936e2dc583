// A protocol of our own on the host, in a few dozen lines: `/echo/1.0.0` sends
// back what it reads. `echo-example` listens and prints its address;
// `echo-example ADDR TEXT` dials it, sends TEXT and prints the answer.
import Foundation
import Libp2p

let echoProtocol = "/echo/1.0.0"
let host = try Libp2pHostBuilder(key: .generateEd25519()).build()

// Serve: read until the dialer closes its side, writing each piece back.
host.setStreamHandler(echoProtocol) { stream in
    while let piece = try? await stream.read() {
        try? await stream.write(piece)
    }
}

let arguments = CommandLine.arguments.dropFirst()
if let target = arguments.first, let text = arguments.dropFirst().first {
    // Dial: one stream, send, close our side, read the answer to the end.
    let connection = try await host.connect(Multiaddr(target))
    let stream = try await connection.newStream(protocols: [echoProtocol])
    try await stream.write(Array(text.utf8))
    try await stream.closeWrite()
    var answer = ByteBuffer()
    while var piece = try await stream.read() { answer.writeBuffer(&piece) }
    print("echo: \(String(buffer: answer))")
} else {
    try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
    for address in host.listenAddresses {
        print("Listening on \(address.encapsulating(.p2p(host.localPeer.bytes)))")
    }
    fflush(nil)  // stdout may be a pipe: show each line at once
    // Serve until stdin closes.
    while readLine() != nil {}
}
await host.close()
