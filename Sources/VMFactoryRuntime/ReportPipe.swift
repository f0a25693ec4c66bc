import Foundation
import Synchronization
import VMFactoryCore

/// The pipe on which a supervisor or an exec's relay tells the call that started it how far it
/// got ("created", "started", "error: …"): said once, then closed, so that the call reads to
/// its end. A helper started without one (-1) says nothing.
final class ReportPipe: Sendable {
    private let fd: Int32
    private let said = Atomic<Bool>(false)

    init(fd: Int32) {
        self.fd = fd
    }

    /// Whether something was said already.
    var hasSaid: Bool { said.load(ordering: .acquiring) }

    func say(_ text: String) {
        guard fd >= 0, !said.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = Array(text.utf8).withUnsafeBytes { try? FileStore.writeAll(fd, $0, path: "the report pipe") }
        close(fd)
    }

    /// Whether stdin is a pipe or a socket (an engine's `-i`), not /dev/null.
    static var stdinIsStream: Bool {
        var st = stat()
        return fstat(STDIN_FILENO, &st) == 0 && (st.st_mode & S_IFMT == S_IFIFO || st.st_mode & S_IFMT == S_IFSOCK)
    }
}
