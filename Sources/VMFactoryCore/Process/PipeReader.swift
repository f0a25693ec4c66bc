import Foundation

/// Reads a pipe on a thread of its own: a blocking read never occupies one of the
/// cooperative pool's few threads.
public enum PipeReader {
    /// Everything until the end of file, at most `limit` bytes kept (the rest is read and
    /// dropped, so that the writer never blocks). Closes `fd`. With `onLine`, each line is also
    /// handed over as soon as it is complete (for messages that must be acted on while the
    /// writer still runs); a line is cut at 4 KiB.
    public static func readAll(_ fd: Int32, limit: Int = 64 << 20, onLine: (@Sendable (String) -> Void)? = nil) async -> Data {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var data = Data()
                var line: [UInt8] = []
                forEachChunk(fd) { chunk in
                    if data.count < limit { data.append(contentsOf: chunk.prefix(limit - data.count)) }
                    guard let onLine else { return true }
                    for byte in chunk {
                        if byte == 0x0a {
                            onLine(String(decoding: line, as: UTF8.self))
                            line.removeAll(keepingCapacity: true)
                        } else if line.count < 4096 {
                            line.append(byte)
                        }
                    }
                    return true
                }
                if let onLine, !line.isEmpty { onLine(String(decoding: line, as: UTF8.self)) }
                close(fd)
                continuation.resume(returning: data)
            }
        }
    }

    /// Hands each line (without its newline and trailing carriage returns) to `onLine` as soon
    /// as it is complete, until the end of file or until `onLine` returns false. Closes `fd`.
    /// The longest line `readLines` hands on; a longer one comes in pieces.
    public static let longestLine = 64 << 10

    public static func readLines(_ fd: Int32, _ onLine: @escaping @Sendable (String) -> Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                var pending: [UInt8] = []
                func emit(_ bytes: ArraySlice<UInt8>) -> Bool {
                    var text = String(decoding: bytes, as: UTF8.self)
                    while text.hasSuffix("\r") { text.removeLast() }
                    return onLine(text)
                }
                var going = true
                forEachChunk(fd) { chunk in
                    pending.append(contentsOf: chunk)
                    while going, let newline = pending.firstIndex(of: 0x0a) {
                        going = emit(pending[..<newline])
                        pending.removeSubrange(...newline)
                    }
                    // A line is at most `longestLine` bytes: what a writer sends without a
                    // line break arrives in pieces of that size, never all held at once.
                    while going, pending.count >= longestLine {
                        going = emit(pending[..<longestLine])
                        pending.removeSubrange(..<longestLine)
                    }
                    return going
                }
                if going, !pending.isEmpty { _ = emit(pending[...]) }
                close(fd)
                continuation.resume()
            }
        }
    }

    /// Blocking reads until the end of file or until `body` returns false.
    public static func forEachChunk(_ fd: Int32, _ body: (UnsafeRawBufferPointer) -> Bool) {
        let size = 1 << 16
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = read(fd, buffer.baseAddress, size)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return }
            if !body(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) { return }
        }
    }
}
