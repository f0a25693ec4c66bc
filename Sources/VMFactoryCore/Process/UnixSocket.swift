import CLinux
import Foundation

/// A listening UNIX stream socket at a path, mode 0600, in a folder that should be its owner's alone.
public final class UnixListener: Sendable {
    public let path: String
    public let fd: Int32

    /// Listens at `path` (which must not exist; at most 107 bytes).
    public init(path: String) throws {
        guard path.utf8.count < 108 else {
            throw VMFactoryError(.io, "the socket path \(path) is longer than a UNIX socket address allows", hint: "use a shorter --cache-dir")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open a socket for", path: path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in path.utf8.enumerated() { bytes[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        // The folder it is in is its owner's alone (0700); the socket itself is 0600 too.
        guard bound == 0, chmod(path, 0o600) == 0, listen(fd, 64) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw VMFactoryError.io("cannot listen on", path: path, errno: code)
        }
        self.path = path
        self.fd = fd
    }

    /// Blocks until a connection comes; nil once the listener is shut down.
    public func accept() -> Int32? {
        while true {
            let connection = vmf_accept_cloexec(fd)
            if connection >= 0 { return connection }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// Stops accepting (a blocked accept returns) and removes the path.
    public func close() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
    }
}

/// The calls on a connected socket that the standard library has no words for.
public enum SocketIO {
    /// A connected pair of stream sockets, both close-on-exec.
    public static func pair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw VMFactoryError(.io, "cannot create a socket pair: \(String(cString: strerror(errno)))")
        }
        return (fds[0], fds[1])
    }

    /// A close-on-exec connection to the socket at `path`.
    public static func connect(to path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open a socket for", path: path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(fd)
            throw VMFactoryError(.io, "the socket path \(path) is longer than a UNIX socket address allows", hint: "use a shorter --cache-dir")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in path.utf8.enumerated() { bytes[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let code = errno
            Glibc.close(fd)
            throw VMFactoryError.io("cannot connect to", path: path, errno: code)
        }
        return fd
    }

    /// Writes everything; false when the peer is gone.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ data: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < data.count {
            let written = send(fd, data.baseAddress! + offset, data.count - offset, Int32(MSG_NOSIGNAL))
            if written < 0, errno == EINTR { continue }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }

    @discardableResult
    public static func writeAll(_ fd: Int32, _ text: String) -> Bool {
        Array(text.utf8).withUnsafeBytes { writeAll(fd, $0) }
    }

    /// Ends our direction only: the peer reads an end of file after what was sent.
    public static func shutdownWrite(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_WR))
    }
}

/// The controlling terminal of vmfactory's stdin, in raw mode for `run -t` and back.
public final class RawTerminal: @unchecked Sendable {
    private var saved = termios()
    private let fd: Int32

    /// Raw mode on `fd` if it is a terminal; nil otherwise.
    public init?(fd: Int32 = STDIN_FILENO) {
        guard isatty(fd) == 1, tcgetattr(fd, &saved) == 0 else { return nil }
        self.fd = fd
        var raw = saved
        cfmakeraw(&raw)
        tcsetattr(fd, TCSANOW, &raw)
    }

    public func restore() {
        tcsetattr(fd, TCSANOW, &saved)
    }

    /// The size of the terminal at `fd` (rows, columns), if it is one.
    public static func size(of fd: Int32) -> (rows: Int, cols: Int)? {
        var size = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 0, size.ws_col > 0 else { return nil }
        return (Int(size.ws_row), Int(size.ws_col))
    }
}
