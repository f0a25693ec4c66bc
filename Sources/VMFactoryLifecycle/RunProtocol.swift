import Foundation
import VMFactoryCore

/// The run protocol between vmfactory and the guest's init (docs/run-protocol.md; the
/// init's side is Sources/guest-init/protocol.h): frames on one virtio-serial port, each a
/// 12-byte header (payload length, type, flags, stream; network byte order) and a payload.
public enum RunProtocol {
    /// The version this vmfactory speaks. The init says its own in its hello; the two must be
    /// equal (a kernel and initrd from another vmfactory are refused with both numbers).
    public static let version: UInt32 = 3
    /// The virtio-serial port's name.
    public static let port = "vmf.channel"
    /// The word on the kernel command line that puts the init in container mode.
    public static let runWord = "vmf.run"
    public static let headerSize = 12
    /// The largest payload vmfactory sends (a run's settings, an exec's request).
    public static let largestPayload = 1 << 20
    /// The largest data payload either side sends.
    public static let largestData = 65536
    /// The largest frame vmfactory takes from the guest: data, or a message of a few KiB. The
    /// guest is not trusted; a larger frame ends the run.
    public static let largestGuestPayload = largestData
    /// Bytes a stream may have in flight before its reader grants more (both directions).
    public static let window: UInt32 = 256 * 1024

    /// Stream 0 is the run itself; 1 its command; 2 and up the execs.
    public static let commandStream: UInt32 = 1
    public static let firstExecStream: UInt32 = 2

    public enum FrameType: UInt16, Sendable, CaseIterable {
        case hello = 1, settings, exec, started, stdin, stdout, stderr, windowSize, signal, credit, exit, error, end, bye, taken, clock
        /// Between vmfactory's own processes on the host (a command and a run's supervisor),
        /// never on the guest's channel: a request (text), and its reply (u32 status, text).
        case request = 100, reply

        /// Whether the guest's channel carries it.
        public var isGuestFrame: Bool { rawValue < 100 }
    }

    public struct Frame: Sendable, Equatable {
        public var type: FrameType
        public var stream: UInt32
        public var payload: [UInt8]

        public init(_ type: FrameType, stream: UInt32 = 0, payload: [UInt8] = []) {
            self.type = type
            self.stream = stream
            self.payload = payload
        }

        /// A frame whose payload is one u32, then optional text.
        public init(_ type: FrameType, stream: UInt32 = 0, number: UInt32, text: String = "") {
            self.init(type, stream: stream, payload: RunProtocol.bytes(number) + Array(text.utf8))
        }

        /// The host's `CLOCK_REALTIME` now: u64 seconds, u32 nanoseconds (the answer to taken).
        public static func clockNow() -> Frame {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let seconds = UInt64(max(0, now.tv_sec))
            return Frame(.clock, payload: RunProtocol.bytes(UInt32(seconds >> 32)) + RunProtocol.bytes(UInt32(seconds & 0xffff_ffff)) + RunProtocol.bytes(UInt32(now.tv_nsec)))
        }

        /// Header and payload, as they go on the channel.
        public var encoded: [UInt8] {
            var bytes = RunProtocol.bytes(UInt32(payload.count))
            bytes += [UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xff), 0, 0]
            bytes += RunProtocol.bytes(stream)
            return bytes + payload
        }

        /// The leading u32 of the payload, when it has one.
        public var number: UInt32? {
            payload.count >= 4 ? RunProtocol.number(payload, at: 0) : nil
        }

        /// The payload after the leading u32, as text (invalid UTF-8 repaired).
        public var text: String {
            String(decoding: payload.dropFirst(4), as: UTF8.self)
        }
    }

    static func bytes(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)]
    }

    static func number<C: Collection>(_ bytes: C, at offset: Int) -> UInt32 where C.Element == UInt8, C.Index == Int {
        let start = bytes.startIndex + offset
        return UInt32(bytes[start]) << 24 | UInt32(bytes[start + 1]) << 16 | UInt32(bytes[start + 2]) << 8 | UInt32(bytes[start + 3])
    }

    /// Settings as the init reads them: `key=value` lines, with line breaks and backslashes in
    /// values escaped.
    public static func keyValueText(_ pairs: [(String, String)]) -> String {
        SettingsText.lines(pairs)
    }

    /// `key=value` lines back into pairs (the inverse of `keyValueText`); nil when a line is not
    /// one, or an escape is unknown.
    public static func keyValuePairs(_ text: String) -> [(String, String)]? {
        var pairs: [(String, String)] = []
        // By Unicode scalar: a value ending in "\r" makes "\r\n" one Character with the line break.
        for scalars in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: true) where scalars.first != "#" {
            guard let equals = scalars.firstIndex(of: "=") else { return nil }
            var value = ""
            var escaping = false
            for scalar in scalars[scalars.index(after: equals)...] {
                if escaping {
                    switch scalar {
                    case "n": value += "\n"
                    case "\\": value += "\\"
                    default: return nil
                    }
                    escaping = false
                } else if scalar == "\\" {
                    escaping = true
                } else {
                    value.unicodeScalars.append(scalar)
                }
            }
            guard !escaping else { return nil }
            pairs.append((String(String.UnicodeScalarView(scalars[..<equals])), value))
        }
        return pairs
    }

    /// Why the guest's frames cannot be read any more.
    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Cuts the guest's bytes into frames. Everything is checked as if an attacker wrote it:
    /// the length against `limit`, the flags, the type; after a malformed frame nothing more is
    /// taken.
    public struct Decoder: Sendable {
        private var pending: [UInt8] = []
        private var start = 0
        public let limit: Int
        /// Whether the host's own request and reply frames are taken (a supervisor's control
        /// socket), or refused as on the guest's channel.
        public let local: Bool
        public private(set) var failure: Malformed?

        public init(limit: Int = RunProtocol.largestGuestPayload, local: Bool = false) {
            self.limit = limit
            self.local = local
        }

        /// Bytes waiting that do not yet make a whole frame.
        public var buffered: Int { pending.count - start }

        public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
            guard failure == nil else { return }
            if start > 0, start >= pending.count / 2 {
                pending.removeSubrange(0..<start)
                start = 0
            }
            pending.append(contentsOf: bytes)
        }

        public mutating func feed(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { feed($0) }
        }

        /// The next whole frame; nil when more bytes are needed. Throws once the stream is
        /// malformed, and again on every later call.
        public mutating func next() throws -> Frame? {
            if let failure { throw failure }
            guard pending.count - start >= RunProtocol.headerSize else { return nil }
            let length = Int(RunProtocol.number(pending, at: start))
            let rawType = UInt16(pending[start + 4]) << 8 | UInt16(pending[start + 5])
            let flags = UInt16(pending[start + 6]) << 8 | UInt16(pending[start + 7])
            let stream = RunProtocol.number(pending, at: start + 8)
            guard length <= limit else { return try fail("a frame of \(length) bytes, more than the \(limit) the guest may send") }
            guard flags == 0 else { return try fail("a frame with flags \(flags), which version \(RunProtocol.version) does not have") }
            guard let type = FrameType(rawValue: rawType), local || type.isGuestFrame else { return try fail("a frame of unknown type \(rawType)") }
            guard pending.count - start >= RunProtocol.headerSize + length else { return nil }
            let payloadStart = start + RunProtocol.headerSize
            let frame = Frame(type, stream: stream, payload: Array(pending[payloadStart..<(payloadStart + length)]))
            start = payloadStart + length
            if start == pending.count {
                pending.removeAll(keepingCapacity: true)
                start = 0
            }
            return frame
        }

        private mutating func fail(_ message: String) throws -> Frame? {
            let malformed = Malformed(description: message)
            failure = malformed
            throw malformed
        }
    }

    /// How a process ended, as the init's exit frame says it (`code=N signal=N out=B err=B oom=N`).
    public struct ExitReport: Sendable, Equatable {
        public var code: Int32
        public var signal: Int32
        public var stdoutBytes: UInt64
        public var stderrBytes: UInt64
        public var oomKills: UInt64

        /// nil unless every word is known and in range: the guest wrote it.
        public init?(_ payload: [UInt8]) {
            guard payload.count <= 512 else { return nil }
            var values: [String: UInt64] = [:]
            for word in String(decoding: payload, as: UTF8.self).split(separator: " ") {
                let pair = word.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, let value = UInt64(pair[1]), values[String(pair[0])] == nil else { return nil }
                values[String(pair[0])] = value
            }
            guard let code = values["code"], code <= 255, let signal = values["signal"], signal < 65,
                  let out = values["out"], let err = values["err"], let oom = values["oom"], values.count == 5 else { return nil }
            self.code = Int32(code)
            self.signal = Int32(signal)
            stdoutBytes = out
            stderrBytes = err
            oomKills = oom
        }
    }

    /// An error frame: the status the process would have had (125, 126, 127) and the init's
    /// message, made safe to print (no control characters, at most 2,000 characters).
    public struct StartFailure: Sendable, Equatable {
        public var code: Int32
        public var message: String

        public init?(_ frame: Frame) {
            guard let number = frame.number, number <= 255 else { return nil }
            code = Int32(number)
            message = RunProtocol.printable(frame.text)
        }
    }

    /// The guest's text for a terminal: control characters become spaces, and it is cut short.
    public static func printable(_ text: String, limit: Int = 2000) -> String {
        var cleaned = String.UnicodeScalarView()
        for scalar in text.unicodeScalars.prefix(limit) {
            cleaned.append(scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format ? " " : scalar)
        }
        return String(cleaned)
    }

    /// Reads the next frame from a client; nil at its end or when it sent something malformed.
    public static func readFrame(_ fd: Int32, _ decoder: inout Decoder) -> Frame? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let frame: Frame?
            do { frame = try decoder.next() } catch { return nil }
            if let frame { return frame }
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return nil }
            decoder.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}
