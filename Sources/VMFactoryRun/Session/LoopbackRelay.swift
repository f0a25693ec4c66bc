import CLinux
import Foundation
import VMFactoryCore
import VMFactoryLifecycle

/// `-p` on the host's IPv6 loopback as well: QEMU 7.2's user network forwards host ports on
/// IPv4 addresses only, and on hosts where `localhost` is `::1` first, clients try `[::1]:PORT`
/// before 127.0.0.1. For each forward whose address was not given, this listens on `[::1]` at
/// the same port and relays every connection (TCP) or datagram (UDP) to QEMU's forward on
/// 127.0.0.1, from one thread, until stopped.
///
/// What comes back is the guest's, relayed unchanged to the client that asked for it: the
/// relay never reads it. Nothing listens beyond the loopback.
public final class LoopbackRelay: @unchecked Sendable {
    /// A forward's `[::1]` socket, bound (and listening, for TCP) before the boot.
    struct Listener {
        var fd: Int32
        var forward: PortForward
    }

    private var listeners: [Listener] = []
    private var thread: Thread?
    private var wake: (read: Int32, write: Int32) = (-1, -1)
    private let done = DispatchSemaphore(value: 0)

    public init() {}

    deinit {
        stop()
        for listener in listeners { close(listener.fd) }
    }

    public var isEmpty: Bool { listeners.isEmpty }

    /// Listens on the forward's port on `[::1]`. Returns false when the port is taken there (the
    /// caller chooses another for port 0); true when listening, or when the host has no IPv6
    /// loopback for a client to try.
    public func add(_ forward: PortForward) throws -> Bool {
        let fd = socket(AF_INET6, (forward.proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        // A host without IPv6: nothing to listen on, and no client will try it.
        guard fd >= 0 else { return true }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        if forward.proto == .tcp { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = in_port_t(UInt16(forward.hostPort).bigEndian)
        address.sin6_addr = in6addr_loopback
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        if bound != 0 {
            let code = errno
            close(fd)
            if code == EADDRINUSE { return false }
            // No ::1 on this host (IPv6 turned off): clients cannot try it either.
            if code == EADDRNOTAVAIL || code == EAFNOSUPPORT { return true }
            throw VMFactoryError(.invalidArgument, "-p: cannot bind [::1]:\(forward.hostPort)/\(forward.proto.rawValue): \(String(cString: strerror(code)))", hint: "give the host address to listen on, such as 127.0.0.1:\(forward.hostPort):\(forward.guestPort)")
        }
        if forward.proto == .tcp, listen(fd, 128) != 0 {
            let code = errno
            close(fd)
            throw VMFactoryError(.invalidArgument, "-p: cannot listen on [::1]:\(forward.hostPort): \(String(cString: strerror(code)))", hint: "give the host address to listen on, such as 127.0.0.1:\(forward.hostPort):\(forward.guestPort)")
        }
        listeners.append(Listener(fd: fd, forward: forward))
        return true
    }

    /// Starts relaying. The listeners listen from `add` on, so a client that comes before this
    /// waits in the queue; one whose connection QEMU's forward refuses sees it closed.
    public func start() {
        guard thread == nil, !listeners.isEmpty else { return }
        var fds: [Int32] = [-1, -1]
        guard vmf_pipe_cloexec(&fds) == 0 else { return }
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        wake = (fds[0], fds[1])
        let loop = RelayLoop(listeners: listeners, wake: fds[0])
        let done = done
        let thread = Thread {
            loop.run()
            done.signal()
        }
        thread.name = "vmfactory-loopback-relay"
        thread.start()
        self.thread = thread
    }

    /// Ends every relayed connection and waits for the thread.
    public func stop() {
        guard thread != nil else { return }
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
        done.wait()
        close(wake.read)
        close(wake.write)
        thread = nil
    }
}

/// The relay's poll loop: listeners, TCP pairs with a bounded buffer each way, UDP clients.
/// Used by its own thread alone, once started.
private final class RelayLoop: @unchecked Sendable {
    static let bufferSize = 64 * 1024
    /// UDP clients that have said nothing for this long lose their mapping.
    static let udpIdle: Duration = .seconds(180)
    static let maxUDPClients = 256
    static let maxConnections = 1024

    /// One direction of a TCP pair: bytes read from `from`, not yet written to `to`.
    struct Half {
        var buffer: [UInt8] = []
        var offset = 0
        /// `from` reached its end; once the buffer is out, `to` is shut for writing.
        var ended = false
        var shut = false
        var pending: Int { buffer.count - offset }
    }

    final class Pair {
        var client: Int32
        var upstream: Int32
        var connecting = true
        var up = Half()
        var down = Half()
        init(client: Int32, upstream: Int32) {
            self.client = client
            self.upstream = upstream
        }
    }

    final class UDPClient {
        var address: sockaddr_in6
        var upstream: Int32
        var listener: Int32
        var lastHeard: ContinuousClock.Instant
        init(address: sockaddr_in6, upstream: Int32, listener: Int32) {
            self.address = address
            self.upstream = upstream
            self.listener = listener
            self.lastHeard = .now
        }
    }

    let listeners: [LoopbackRelay.Listener]
    let wake: Int32
    var pairs: [Pair] = []
    var udpClients: [UDPClient] = []

    init(listeners: [LoopbackRelay.Listener], wake: Int32) {
        self.listeners = listeners
        self.wake = wake
    }

    func run() {
        defer {
            for pair in pairs { close(pair.client); close(pair.upstream) }
            for client in udpClients { close(client.upstream) }
        }
        var stopping = false
        while !stopping {
            // What is polled now; accepting adds to `pairs` and `udpClients` as it goes.
            let polledPairs = pairs, polledClients = udpClients
            var fds: [pollfd] = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            for listener in listeners { fds.append(pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)) }
            for pair in polledPairs {
                // While the upstream connects, the client waits (its bytes stay in its socket). A
                // socket with nothing to wait for is left out (fd -1): poll would report its
                // hang-up on every call, asked or not, and the loop would spin.
                let clientEvents = pair.connecting ? 0 : events(reading: pair.up, writing: pair.down)
                let upstreamEvents = pair.connecting ? Int16(POLLOUT) : events(reading: pair.down, writing: pair.up)
                fds.append(pollfd(fd: clientEvents == 0 ? -1 : pair.client, events: clientEvents, revents: 0))
                fds.append(pollfd(fd: upstreamEvents == 0 ? -1 : pair.upstream, events: upstreamEvents, revents: 0))
            }
            for client in polledClients { fds.append(pollfd(fd: client.upstream, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), 10_000)
            if ready < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { stopping = true; continue }
            var index = 1 + listeners.count
            var closed: Set<ObjectIdentifier> = []
            for pair in polledPairs {
                let clientEvents = fds[index].revents, upstreamEvents = fds[index + 1].revents
                index += 2
                if !service(pair, clientEvents: clientEvents, upstreamEvents: upstreamEvents) {
                    close(pair.client)
                    close(pair.upstream)
                    closed.insert(ObjectIdentifier(pair))
                }
            }
            pairs.removeAll { closed.contains(ObjectIdentifier($0)) }
            for client in polledClients {
                if fds[index].revents != 0 { answer(client) }
                index += 1
            }
            for (offset, listener) in listeners.enumerated() where fds[1 + offset].revents != 0 {
                accept(listener)
            }
            let now = ContinuousClock.now
            udpClients.removeAll { client in
                guard now - client.lastHeard > Self.udpIdle else { return false }
                close(client.upstream)
                return true
            }
        }
    }

    func events(reading: Half, writing: Half) -> Int16 {
        var events: Int16 = 0
        if !reading.ended && reading.pending == 0 { events |= Int16(POLLIN) }
        if writing.pending > 0 { events |= Int16(POLLOUT) }
        return events
    }

    /// QEMU's forward of the same port on 127.0.0.1.
    func upstreamAddress(_ forward: PortForward) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(forward.hostPort).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        return address
    }

    func connectUpstream(_ fd: Int32, _ forward: PortForward) -> Int32 {
        var address = upstreamAddress(forward)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    func accept(_ listener: LoopbackRelay.Listener) {
        if listener.forward.proto == .udp {
            receive(listener)
            return
        }
        while true {
            let client = vmf_accept_cloexec(listener.fd)
            guard client >= 0 else { return }
            _ = fcntl(client, F_SETFL, O_NONBLOCK)
            guard pairs.count < Self.maxConnections else {
                close(client)
                continue
            }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard upstream >= 0 else {
                close(client)
                continue
            }
            if connectUpstream(upstream, listener.forward) != 0 && errno != EINPROGRESS {
                close(client)
                close(upstream)
                continue
            }
            pairs.append(Pair(client: client, upstream: upstream))
        }
    }

    /// Moves what is ready in a pair; false when the pair is over.
    func service(_ pair: Pair, clientEvents: Int16, upstreamEvents: Int16) -> Bool {
        if pair.connecting {
            guard upstreamEvents != 0 else { return clientEvents & Int16(POLLERR | POLLHUP) == 0 }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(pair.upstream, SOL_SOCKET, SO_ERROR, &error, &length)
            // Refused: the guest or QEMU is not listening; the client sees its connection end.
            guard error == 0 else { return false }
            pair.connecting = false
            return true
        }
        // An error on either socket (a reset) ends the pair: poll would report it again and again.
        if (clientEvents | upstreamEvents) & Int16(POLLERR) != 0 { return false }
        if !move(&pair.up, from: pair.client, to: pair.upstream, readable: clientEvents, writable: upstreamEvents) { return false }
        if !move(&pair.down, from: pair.upstream, to: pair.client, readable: upstreamEvents, writable: clientEvents) { return false }
        // Both directions ended and delivered.
        return !(pair.up.shut && pair.down.shut)
    }

    /// One direction: write what is buffered, read more when the buffer is empty, pass the
    /// end on as a half-close. False on an error (the pair ends).
    func move(_ half: inout Half, from: Int32, to: Int32, readable: Int16, writable: Int16) -> Bool {
        if half.pending > 0 && writable & Int16(POLLOUT | POLLERR | POLLHUP) != 0 {
            // MSG_NOSIGNAL: a client gone away is an error here, never a SIGPIPE for vmfactory.
            let written = half.buffer.withUnsafeBytes { send(to, $0.baseAddress! + half.offset, half.pending, Int32(MSG_NOSIGNAL)) }
            if written < 0 { return errno == EAGAIN || errno == EINTR }
            half.offset += written
            if half.pending == 0 {
                half.buffer.removeAll(keepingCapacity: true)
                half.offset = 0
            }
        }
        if !half.ended && half.pending == 0 && readable & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            var chunk = [UInt8](repeating: 0, count: Self.bufferSize)
            let count = chunk.withUnsafeMutableBytes { read(from, $0.baseAddress!, Self.bufferSize) }
            if count > 0 {
                half.buffer = Array(chunk[0..<count])
                half.offset = 0
            } else if count == 0 {
                half.ended = true
            } else if errno != EAGAIN && errno != EINTR {
                return false
            }
        }
        if half.ended && half.pending == 0 && !half.shut {
            shutdown(to, Int32(SHUT_WR))
            half.shut = true
        }
        return true
    }

    /// A datagram from a client on `[::1]`: sent on from that client's own socket to QEMU's forward.
    func receive(_ listener: LoopbackRelay.Listener) {
        var datagram = [UInt8](repeating: 0, count: 65536)
        while true {
            var from = sockaddr_in6()
            var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            let count = datagram.withUnsafeMutableBytes { bytes in
                withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(listener.fd, bytes.baseAddress!, bytes.count, 0, $0, &length) }
                }
            }
            guard count >= 0 else { return }
            let client: UDPClient
            if let known = udpClients.first(where: { $0.listener == listener.fd && Self.same($0.address, from) }) {
                client = known
            } else {
                guard udpClients.count < Self.maxUDPClients else { continue }
                let upstream = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                guard upstream >= 0 else { continue }
                guard connectUpstream(upstream, listener.forward) == 0 else {
                    close(upstream)
                    continue
                }
                client = UDPClient(address: from, upstream: upstream, listener: listener.fd)
                udpClients.append(client)
            }
            client.lastHeard = .now
            _ = datagram.withUnsafeBytes { send(client.upstream, $0.baseAddress!, count, Int32(MSG_NOSIGNAL)) }
        }
    }

    /// Datagrams back from the guest, to the client they answer.
    func answer(_ client: UDPClient) {
        var datagram = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = datagram.withUnsafeMutableBytes { recv(client.upstream, $0.baseAddress!, $0.count, 0) }
            guard count >= 0 else { return }
            var address = client.address
            _ = datagram.withUnsafeBytes { bytes in
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(client.listener, bytes.baseAddress!, count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
                }
            }
        }
    }

    static func same(_ a: sockaddr_in6, _ b: sockaddr_in6) -> Bool {
        var a = a, b = b
        return a.sin6_port == b.sin6_port && memcmp(&a.sin6_addr, &b.sin6_addr, MemoryLayout<in6_addr>.size) == 0
    }
}

extension PortForward {
    /// `reserved()`, and without an address given, the same port on `[::1]` listened on by
    /// `relay`; port 0 chooses a port free on both.
    public func reserved(relay: LoopbackRelay) throws -> PortForward {
        for _ in 0..<16 {
            let reserved = try reserved()
            guard reserved.ipv6Loopback else { return reserved }
            if try relay.add(reserved) { return reserved }
            // Port 0 chose a port that something holds on [::1]: choose again.
            guard hostPort == 0 else {
                throw VMFactoryError(
                    .invalidArgument, "-p: the host port [::1]:\(hostPort)/\(proto.rawValue) is already in use",
                    hint: "choose another host port, or give 127.0.0.1:\(hostPort):\(guestPort) to listen on IPv4 alone"
                )
            }
        }
        throw VMFactoryError(.invalidArgument, "-p: no host port was free on both 127.0.0.1 and [::1]", hint: "give a host port, as in -p 8080:\(guestPort)")
    }
}
