import Foundation
import Synchronization
import VMFactoryCore

/// QEMU's monitor (QMP) on the supervisor's end of a socket pair: commands one at a time,
/// each answered by `return` or `error`; events in between are skipped. QEMU is the trusted
/// side here, but what it says is read within a limit all the same.
final class QEMUMonitor: Sendable {
    private let fd: Int32
    /// One command at a time, and the greeting negotiated once.
    private let state = Mutex<(ready: Bool, pending: [UInt8])>((false, []))

    init(fd: Int32) {
        self.fd = fd
    }

    /// Runs `command` (such as "stop" or "cont"); nil when it succeeded, else QEMU's words.
    func execute(_ command: String) -> String? {
        state.withLock { state in
            if !state.ready {
                // QEMU greets first; commands are refused until capabilities are negotiated.
                guard let greeting = readMessage(&state.pending), greeting["QMP"] != nil else { return "QEMU's monitor did not greet" }
                if let failure = run("qmp_capabilities", &state.pending) { return failure }
                state.ready = true
            }
            return run(command, &state.pending)
        }
    }

    private func run(_ command: String, _ pending: inout [UInt8]) -> String? {
        let line = Array("{\"execute\":\"\(command)\"}\n".utf8)
        guard line.withUnsafeBytes({ SocketIO.writeAll(fd, $0) }) else { return "QEMU's monitor is gone" }
        while let message = readMessage(&pending) {
            if message["return"] != nil { return nil }
            if let error = message["error"] as? [String: Any] { return error["desc"] as? String ?? "QEMU refused \(command)" }
        }
        return "QEMU's monitor is gone"
    }

    /// The next JSON object QEMU wrote (one a line); nil at the end or past 1 MiB.
    private func readMessage(_ pending: inout [UInt8]) -> [String: Any]? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let newline = pending.firstIndex(of: 0x0a) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                if let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] { return object }
                continue
            }
            guard pending.count < 1 << 20 else { return nil }
            let count = read(fd, &buffer, buffer.count)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return nil }
            pending += buffer[..<count]
        }
    }
}
