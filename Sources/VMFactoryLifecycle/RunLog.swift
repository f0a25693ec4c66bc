import Foundation
import Synchronization
import VMFactoryCore

/// A detached run's output: `<run folder>/output.log`, records of `[stream u8][length u32][bytes]`
/// (stream 1 stdout, 2 stderr), so that `logs` gives each stream back to its own descriptor in
/// the order they came. Bounded: past `limit` bytes the file becomes `output.log.1` (replacing
/// the one before) and a new one starts, so a run keeps at most twice the limit.
public final class RunLog: Sendable {
    public static let fileName = "output.log"
    public static let defaultLimit = 32 << 20

    public enum Stream: UInt8, Sendable {
        case stdout = 1, stderr = 2
    }

    let path: String
    let limit: Int
    private let state: Mutex<(fd: Int32, size: Int)>

    /// The log in `folder`, opened at the first write (the folder is made when the run starts).
    public init(folder: String, limit: Int = RunLog.defaultLimit) {
        path = folder + "/" + Self.fileName
        self.limit = limit
        state = Mutex((-1, 0))
    }

    deinit {
        state.withLock { if $0.fd >= 0 { close($0.fd) } }
    }

    public func append(_ stream: Stream, _ data: Data) {
        guard !data.isEmpty else { return }
        var record = Data([stream.rawValue])
        let length = UInt32(data.count)
        record += [UInt8(length >> 24), UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff), UInt8(length & 0xff)]
        record += data
        state.withLock { state in
            if state.fd < 0 {
                state.fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
                state.size = Int(FileStore.fileSize(path) ?? 0)
                guard state.fd >= 0 else { return }
            }
            if state.size > 0, state.size + record.count > limit {
                rename(path, path + ".1")
                let fresh = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
                if fresh >= 0 {
                    close(state.fd)
                    state = (fresh, 0)
                }
            }
            record.withUnsafeBytes { try? FileStore.writeAll(state.fd, $0, path: path) }
            state.size += record.count
        }
    }

    /// A reader of a run's log from the start (the rotated part first).
    public struct Reader {
        let folder: String
        private var fd: Int32 = -1
        private var pending: [UInt8] = []
        private var offset: off_t = 0

        public init(folder: String) {
            self.folder = folder
        }

        /// The records written since the last call.
        public mutating func read() -> [(Stream, Data)] {
            var records: [(Stream, Data)] = []
            if fd < 0 {
                let rotated = folder + "/" + RunLog.fileName + ".1"
                if FileStore.exists(rotated) {
                    records += Self.records(in: [UInt8]((try? FileStore.readData(rotated)) ?? Data())).0
                }
                fd = open(folder + "/" + RunLog.fileName, O_RDONLY | O_CLOEXEC)
                if fd < 0 { return records }
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 1)
            defer { buffer.deallocate() }
            while true {
                while true {
                    let count = pread(fd, buffer.baseAddress, buffer.count, offset)
                    if count <= 0 { break }
                    offset += off_t(count)
                    pending += buffer[0..<count]
                }
                // Rotated since it was opened: the open file is output.log.1 now, read to its
                // end; the new output.log follows from its start.
                var open = stat(), named = stat()
                guard fstat(fd, &open) == 0, stat(folder + "/" + RunLog.fileName, &named) == 0, open.st_ino != named.st_ino else { break }
                let fresh = Glibc.open(folder + "/" + RunLog.fileName, O_RDONLY | O_CLOEXEC)
                guard fresh >= 0 else { break }
                Glibc.close(fd)
                fd = fresh
                offset = 0
            }
            let (parsed, used) = Self.records(in: pending)
            records += parsed
            pending.removeFirst(used)
            return records
        }

        /// The whole records at the start of `bytes`, and how many bytes they took.
        static func records(in bytes: [UInt8]) -> ([(Stream, Data)], Int) {
            var records: [(Stream, Data)] = []
            var start = 0
            while bytes.count - start >= 5 {
                let length = Int(bytes[start + 1]) << 24 | Int(bytes[start + 2]) << 16 | Int(bytes[start + 3]) << 8 | Int(bytes[start + 4])
                guard bytes.count - start - 5 >= length else { break }
                if let stream = Stream(rawValue: bytes[start]) {
                    records.append((stream, Data(bytes[(start + 5)..<(start + 5 + length)])))
                }
                start += 5 + length
            }
            return (records, start)
        }

        public mutating func close() {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }
}
