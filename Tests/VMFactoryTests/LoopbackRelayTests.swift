import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryRun

/// Sockets for the relay's tests: IPv4 servers standing in for QEMU's forwards, IPv6 clients.
private enum Sockets {
    static func address4(_ port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        return address
    }

    static func address6(_ port: Int) -> sockaddr_in6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = in_port_t(UInt16(port).bigEndian)
        address.sin6_addr = in6addr_loopback
        return address
    }

    /// A socket bound to 127.0.0.1 on a free port (listening, for TCP), and the port.
    static func server4(_ type: Int32) throws -> (Int32, Int) {
        let fd = socket(AF_INET, type, 0)
        var address = address4(0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        try #require(fd >= 0 && bound)
        if type == Int32(SOCK_STREAM.rawValue) { try #require(listen(fd, 8) == 0) }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    static func connect6(_ port: Int) -> Int32 {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        var address = address6(port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        if connected != 0 {
            close(fd)
            return -1
        }
        return fd
    }

    static func readAll(_ fd: Int32) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n <= 0 { return result }
            result += chunk[0..<n]
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }
}

@Suite("-p on the host's IPv6 loopback: connections and datagrams relayed to QEMU's IPv4 forward", .tags(.unit))
struct LoopbackRelayTests {
    @Test("a TCP connection to [::1]:PORT reaches the IPv4 forward: 4 MiB each way byte for byte, the client's half-close passed on, then the server's")
    func tcpRelay() async throws {
        let (server, port) = try Sockets.server4(Int32(SOCK_STREAM.rawValue))
        defer { close(server) }
        // The stand-in for QEMU's forward: echoes what it reads, then says a last word after the client's end of file.
        let echo = Thread {
            let connection = accept(server, nil, nil)
            guard connection >= 0 else { return }
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(connection, $0.baseAddress!, $0.count) }
                if n <= 0 { break }
                Sockets.writeAll(connection, Array(chunk[0..<n]))
            }
            Sockets.writeAll(connection, Array("end of file seen\n".utf8))
            close(connection)
        }
        echo.start()

        let relay = LoopbackRelay()
        #expect(try relay.add(PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 80, proto: .tcp, ipv6Loopback: true)))
        relay.start()
        defer { relay.stop() }

        let client = Sockets.connect6(port)
        try #require(client >= 0, "cannot connect to [::1]:\(port)")
        defer { close(client) }
        let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        let sender = Thread {
            Sockets.writeAll(client, payload)
            shutdown(client, Int32(SHUT_WR))
        }
        sender.start()
        let received = await Task.detached { Sockets.readAll(client) }.value
        #expect(received.count == payload.count + 17)
        #expect(Array(received.prefix(payload.count)) == payload)
        #expect(String(decoding: received.suffix(17), as: UTF8.self) == "end of file seen\n")
    }

    @Test("nothing listening on the IPv4 side: the [::1] connection is closed, and the relay goes on serving")
    func refusedUpstream() async throws {
        let (probe, port) = try Sockets.server4(Int32(SOCK_STREAM.rawValue))
        close(probe)
        let relay = LoopbackRelay()
        #expect(try relay.add(PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 80, proto: .tcp, ipv6Loopback: true)))
        relay.start()
        defer { relay.stop() }
        for _ in 0..<3 {
            let client = Sockets.connect6(port)
            try #require(client >= 0)
            let answer = await Task.detached { Sockets.readAll(client) }.value
            close(client)
            #expect(answer.isEmpty)
        }
    }

    @Test("a port already taken on [::1] is reported, so that port 0 can choose another")
    func portTaken() throws {
        let holder = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = Sockets.address6(0)
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) == 0 && getsockname(holder, $0, &length) == 0 }
        }
        try #require(bound && listen(holder, 1) == 0)
        let port = Int(UInt16(bigEndian: address.sin6_port))
        #expect(try LoopbackRelay().add(PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 80, proto: .tcp, ipv6Loopback: true)) == false)
    }

    @Test("UDP: a datagram to [::1]:PORT reaches the IPv4 forward and its answer comes back to the client that sent it")
    func udpRelay() async throws {
        let (server, port) = try Sockets.server4(Int32(SOCK_DGRAM.rawValue))
        defer { close(server) }
        let echo = Thread {
            var buffer = [UInt8](repeating: 0, count: 2048)
            for _ in 0..<2 {
                var from = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let n = buffer.withUnsafeMutableBytes { bytes in
                    withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(server, bytes.baseAddress!, bytes.count, 0, $0, &length) } }
                }
                guard n > 0 else { return }
                let answer = Array("echo: ".utf8) + buffer[0..<n]
                _ = answer.withUnsafeBytes { bytes in
                    withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(server, bytes.baseAddress!, bytes.count, 0, $0, length) } }
                }
            }
        }
        echo.start()
        let relay = LoopbackRelay()
        #expect(try relay.add(PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 53, proto: .udp, ipv6Loopback: true)))
        relay.start()
        defer { relay.stop() }

        for word in ["one", "two"] {
            let client = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(client) }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = Sockets.address6(port)
            let sent = Array(word.utf8).withUnsafeBytes { bytes in
                withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(client, bytes.baseAddress!, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
            }
            #expect(sent == word.utf8.count)
            var buffer = [UInt8](repeating: 0, count: 2048)
            let n = await Task.detached { [buffer] in
                var buffer = buffer
                let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress!, $0.count, 0) }
                return n > 0 ? Array(buffer[0..<n]) : []
            }.value
            buffer = n
            #expect(String(decoding: buffer, as: UTF8.self) == "echo: " + word)
        }
    }
}
