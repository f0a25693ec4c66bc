import CLinux
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
    /// `passing` goes with the command (SCM_RIGHTS), for `getfd`.
    func execute(_ command: String, arguments: [String: any Sendable] = [:], passing descriptor: Int32? = nil) -> String? {
        switch query(command, arguments: arguments, passing: descriptor) {
        case .success: nil
        case .failure(let said): said.message
        }
    }

    /// What QEMU said to a command, or said against it.
    struct Refusal: Error {
        var message: String
    }

    /// Runs `command` and returns what QEMU answered (the `return` object; an empty one for a
    /// command that returns nothing or a list).
    func query(_ command: String, arguments: [String: any Sendable] = [:], passing descriptor: Int32? = nil) -> Result<[String: Any], Refusal> {
        state.withLock { state in
            if !state.ready {
                // QEMU greets first; commands are refused until capabilities are negotiated.
                guard let greeting = readMessage(&state.pending), greeting["QMP"] != nil else { return .failure(Refusal(message: "QEMU's monitor did not greet")) }
                if case .failure(let refusal) = run("qmp_capabilities", [:], nil, &state.pending) { return .failure(refusal) }
                state.ready = true
            }
            return run(command, arguments, descriptor, &state.pending)
        }
    }

    private func run(_ command: String, _ arguments: [String: any Sendable], _ descriptor: Int32?, _ pending: inout [UInt8]) -> Result<[String: Any], Refusal> {
        var message: [String: Any] = ["execute": command]
        if !arguments.isEmpty { message["arguments"] = arguments }
        guard var line = try? JSONSerialization.data(withJSONObject: message) else { return .failure(Refusal(message: "cannot encode \(command)")) }
        line.append(0x0a)
        let sent = line.withUnsafeBytes { bytes in
            if let descriptor { return vmf_send_with_fd(fd, descriptor, bytes.baseAddress, bytes.count) == 0 }
            return SocketIO.writeAll(fd, bytes)
        }
        guard sent else { return .failure(Refusal(message: "QEMU's monitor is gone")) }
        while let answer = readMessage(&pending) {
            if let returned = answer["return"] { return .success(returned as? [String: Any] ?? [:]) }
            if let error = answer["error"] as? [String: Any] { return .failure(Refusal(message: error["desc"] as? String ?? "QEMU refused \(command)")) }
        }
        return .failure(Refusal(message: "QEMU's monitor is gone"))
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
