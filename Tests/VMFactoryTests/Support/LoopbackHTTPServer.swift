import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.0 server on 127.0.0.1 and an ephemeral port, serving fixed bodies,
/// so that downloads are tested over a real socket without leaving the machine.
final class LoopbackHTTPServer: @unchecked Sendable {
    private let listener: Int32
    let port: UInt16
    private let routes: [String: Data]
    private var thread: Thread?
    private let lock = NSLock()
    private var stopped = false
    private(set) var requests: [String] = []

    init(routes: [String: Data]) throws {
        self.routes = routes
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = UInt16(bigEndian: address.sin_port)
        let thread = Thread { [self] in serve() }
        self.thread = thread
        thread.start()
    }

    private func serve() {
        while !isStopped {
            let client = accept(listener, nil, nil)
            if client < 0 { break }
            handle(client, routes: routes)
        }
    }

    var isStopped: Bool { lock.withLock { stopped } }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }

    private func handle(_ client: Int32, routes: [String: Data]) {
        defer { close(client) }
        var request = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.contains(Data("\r\n\r\n".utf8)) {
            let count = read(client, &buffer, buffer.count)
            if count <= 0 { return }
            request.append(buffer, count: count)
        }
        let line = String(decoding: request.prefix { $0 != 13 }, as: UTF8.self)
        let path = line.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
        lock.withLock { requests.append(path) }
        var response: Data
        if let body = routes[path] {
            response = Data("HTTP/1.0 200 OK\r\nContent-Length: \(body.count)\r\nContent-Type: application/octet-stream\r\n\r\n".utf8)
            response.append(body)
        } else {
            response = Data("HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".utf8)
        }
        response.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(client, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { return }
                offset += written
            }
        }
    }

    func stop() {
        lock.withLock { stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    deinit { stop() }
}
