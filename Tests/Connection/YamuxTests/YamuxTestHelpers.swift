import NIOCore
import Yamux

extension YamuxSession {
    /// Everything there is to send, as pieces in order, with no data budget
    /// (the driver always passes one: the room its socket has).
    mutating func takeOutputPieces() -> [ByteBuffer] {
        takeOutput(dataBudget: .max).pieces
    }

    /// Everything there is to send, in one buffer.
    mutating func takeOutput() -> ByteBuffer {
        var all = ByteBuffer()
        for var piece in takeOutputPieces() { all.writeBuffer(&piece) }
        return all
    }
}
