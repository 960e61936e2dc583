import Foundation
import Synchronization

/// The chat's terminal: when stdin and stdout are a terminal, input is read in
/// non-canonical mode so that a message arriving while the user types is printed
/// above the line being typed, which is then redrawn intact.
final class ChatTerminal: Sendable {
    static let shared = ChatTerminal()
    static let prompt = "> "

    private struct State {
        var interactive = false
        var line: [Character] = []
        var saved: termios?
    }
    private let state = Mutex(State())

    /// Writes one output line, keeping the line being typed below it.
    func write(_ text: String) {
        state.withLock { state in
            if state.interactive {
                let redraw = "\r\u{1B}[K" + text + "\r\n" + Self.prompt + String(state.line)
                FileHandle.standardOutput.write(Data(redraw.utf8))
            } else {
                FileHandle.standardOutput.write(Data((text + "\n").utf8))
            }
        }
    }

    /// Lines typed or piped in; reading happens on a dedicated thread.
    func lines(into continuation: AsyncStream<String>.Continuation) {
        let interactive = isatty(0) == 1 && isatty(1) == 1
        if interactive { enterRawMode() }
        let thread = Thread { [self] in
            if interactive {
                readInteractively(continuation)
            } else {
                while let line = readLine(strippingNewline: true) { continuation.yield(line) }
            }
            continuation.finish()
        }
        thread.start()
    }

    private func enterRawMode() {
        var original = termios()
        guard tcgetattr(0, &original) == 0 else { return }
        var raw = original
        // No line buffering, no echo; keep signals (Ctrl-C still sends SIGINT).
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(0, TCSANOW, &raw) == 0 else { return }
        state.withLock { state in
            state.interactive = true
            state.saved = original
            FileHandle.standardOutput.write(Data(Self.prompt.utf8))
        }
    }

    /// Puts the terminal back as we found it.
    func restore() {
        state.withLock { state in
            guard var saved = state.saved else { return }
            tcsetattr(0, TCSANOW, &saved)
            state.saved = nil
            if state.interactive { FileHandle.standardOutput.write(Data("\r\n".utf8)) }
            state.interactive = false
        }
    }

    private func readInteractively(_ continuation: AsyncStream<String>.Continuation) {
        var pending: [UInt8] = []  // bytes of an incomplete UTF-8 character
        var byte: UInt8 = 0
        while read(0, &byte, 1) == 1 {
            switch byte {
            case 0x0d, 0x0a:  // Enter
                let line = state.withLock { state -> String in
                    let text = String(state.line)
                    state.line = []
                    FileHandle.standardOutput.write(Data(("\r\n" + Self.prompt).utf8))
                    return text
                }
                continuation.yield(line)
            case 0x7f, 0x08:  // Backspace
                state.withLock { state in
                    guard !state.line.isEmpty else { return }
                    state.line.removeLast()
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[K" + Self.prompt + String(state.line)).utf8))
                }
            case 0x04:  // Ctrl-D on an empty line ends the input
                if state.withLock({ $0.line.isEmpty }) { return }
            case 0x15:  // Ctrl-U clears the line
                state.withLock { state in
                    state.line = []
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[K" + Self.prompt).utf8))
                }
            case 0x00..<0x20:
                continue  // other control characters (and escape sequences' start) are ignored
            default:
                pending.append(byte)
                guard let text = String(validating: pending, as: UTF8.self) else {
                    if pending.count >= 4 { pending = [] }  // not UTF-8: drop it
                    continue
                }
                pending = []
                state.withLock { state in
                    state.line.append(contentsOf: text)
                    FileHandle.standardOutput.write(Data(text.utf8))
                }
            }
        }
    }
}
