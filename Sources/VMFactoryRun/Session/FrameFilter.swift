import Foundation
import Synchronization
import VMFactoryCore
import VMFactoryLifecycle

/// Sits between QEMU's stream network device and passt and decides which of the guest's frames
/// passt gets. passt maps the gateway address, 10.0.2.2, to the host's loopback: that is how
/// `-p` connections and datagrams from the host come in, and how their replies go back. The
/// filter lets through, towards the gateway, only those replies: TCP segments that do not open
/// a connection, and UDP datagrams answering one that came in through a `-p` port. Frames to a
/// loopback or unspecified address in any form (127.0.0.0/8, 0.0.0.0/8, ::1, ::, the
/// IPv4-mapped, -compatible, NAT64 and 6to4 forms) never pass: passt would open those from the
/// host. The frames come as QEMU writes them (a 4-byte big-endian length, then the Ethernet
/// frame): the guest chooses their bytes, not their framing.
final class FrameFilter: Sendable {
    /// What the guest may reach besides the replies.
    enum Policy: Sendable {
        /// The outside world (`--network user`).
        case world
        /// Nothing (`--network restricted`).
        case nothing
        /// Everything, the host's loopback through the gateway too (`--network host-loopback`).
        case everything
    }

    /// The largest frame QEMU sends (its network buffer, 68 KiB); a longer length ends the
    /// relay.
    static let largestFrame = 69_632
    /// How long a datagram from the host through a `-p` port may be answered.
    static let replyWindow: Duration = .seconds(180)
    /// The most such conversations remembered (the oldest goes first).
    static let rememberedReplies = 4096

    struct Conversation: Hashable, Sendable {
        var guestPort: UInt16
        var hostPort: UInt16
    }

    private let guest: Int32
    private let passt: Int32
    let policy: Policy
    let gateway: [UInt8]
    let guestAddress: [UInt8]
    /// The guest ports of the `-p` UDP forwards.
    let udpPorts: Set<UInt16>
    private let dropped = Mutex<Int>(0)
    private let replies = Mutex<[Conversation: ContinuousClock.Instant]>([:])
    /// The directions still running: the last one to end closes both descriptors, so that no
    /// thread ever uses a number that was closed (and perhaps reused) under it.
    private let running = Mutex<Int>(2)

    /// `guest`: our end of QEMU's socket pair; `passt`: our end of passt's. The filter owns
    /// both from here on.
    init(guest: Int32, passt: Int32, policy: Policy, gateway: String, guestAddress: String, udpPorts: Set<UInt16>) {
        self.guest = guest
        self.passt = passt
        self.policy = policy
        self.gateway = gateway.split(separator: ".").compactMap { UInt8($0) }
        self.guestAddress = guestAddress.split(separator: ".").compactMap { UInt8($0) }
        self.udpPorts = udpPorts
    }

    /// How many frames were dropped.
    var droppedFrames: Int { dropped.withLock { $0 } }

    /// Starts the two directions' threads; each ends when its side closes, and then closes
    /// the other direction so that the other thread ends too.
    func start() {
        Thread.detachNewThread { [self] in
            Self.forEachFrame(guest) { record in
                let frame = UnsafeRawBufferPointer(rebasing: record[4...])
                guard allows(frame) else {
                    dropped.withLock { $0 += 1 }
                    return true
                }
                return SocketIO.writeAll(passt, record)
            }
            shutdown(passt, Int32(SHUT_WR))
            shutdown(guest, Int32(SHUT_RD))
            directionEnded()
        }
        Thread.detachNewThread { [self] in
            Self.forEachFrame(passt) { record in
                noteIncoming(UnsafeRawBufferPointer(rebasing: record[4...]))
                return SocketIO.writeAll(guest, record)
            }
            shutdown(guest, Int32(SHUT_WR))
            shutdown(passt, Int32(SHUT_RD))
            directionEnded()
        }
    }

    /// Ends both directions (QEMU is gone); the threads then close the descriptors.
    func stop() {
        shutdown(guest, Int32(SHUT_RDWR))
        shutdown(passt, Int32(SHUT_RDWR))
    }

    private func directionEnded() {
        let last = running.withLock { count -> Bool in
            count -= 1
            return count == 0
        }
        if last {
            close(guest)
            close(passt)
        }
    }

    /// Each whole record (length and frame) read from `fd`, until the end, a length past
    /// `largestFrame`, or `body` returning false.
    static func forEachFrame(_ fd: Int32, _ body: (UnsafeRawBufferPointer) -> Bool) {
        var pending: [UInt8] = []
        var start = 0
        PipeReader.forEachChunk(fd) { chunk in
            pending.append(contentsOf: chunk)
            while pending.count - start >= 4 {
                let length = Int(pending[start]) << 24 | Int(pending[start + 1]) << 16 | Int(pending[start + 2]) << 8 | Int(pending[start + 3])
                guard length <= largestFrame else { return false }
                guard pending.count - start >= 4 + length else { break }
                let going = pending[start..<(start + 4 + length)].withUnsafeBytes { body($0) }
                guard going else { return false }
                start += 4 + length
            }
            if start > 0, start == pending.count || start > 1 << 20 {
                pending.removeSubrange(0..<start)
                start = 0
            }
            return true
        }
    }

    /// A datagram from the host through a `-p` UDP port (from the gateway to one of those
    /// guest ports) may be answered for a while.
    func noteIncoming(_ frame: UnsafeRawBufferPointer) {
        guard let packet = IPv4Packet(frame), packet.proto == 17, Array(packet.source) == gateway,
              Array(packet.destination) == guestAddress, let ports = packet.ports, udpPorts.contains(ports.destination) else { return }
        let now = ContinuousClock.now
        replies.withLock { table in
            if table.count >= Self.rememberedReplies, let oldest = table.min(by: { $0.value < $1.value }) { table[oldest.key] = nil }
            table[Conversation(guestPort: ports.destination, hostPort: ports.source)] = now
        }
    }

    func isReply(_ conversation: Conversation) -> Bool {
        replies.withLock { table in
            guard let seen = table[conversation] else { return false }
            return ContinuousClock.now - seen < Self.replyWindow
        }
    }

    /// Whether a frame from the guest may reach passt.
    func allows(_ frame: UnsafeRawBufferPointer) -> Bool {
        Self.allows(frame, policy: policy, gateway: gateway) { isReply($0) }
    }

    static func allows(_ frame: UnsafeRawBufferPointer, policy: Policy, gateway: [UInt8], isReply: (Conversation) -> Bool) -> Bool {
        guard frame.count >= 14 else { return false }
        let type = UInt16(frame[12]) << 8 | UInt16(frame[13])
        switch type {
        case 0x0806:
            return true
        case 0x0800:
            guard let packet = IPv4Packet(frame) else { return false }
            if isHostOnly(ipv4: packet.destination.first!) { return false }
            if policy == .everything { return true }
            let toGateway = Array(packet.destination) == gateway
            guard toGateway || policy == .nothing else { return true }
            // Towards the gateway (the host's loopback), or anywhere when nothing is allowed:
            // only the replies of what came in through -p.
            guard toGateway, !packet.isFragment, let ports = packet.ports else { return false }
            switch packet.proto {
            case 6:
                guard let flags = packet.tcpFlags else { return false }
                return !(flags & 0x02 != 0 && flags & 0x10 == 0)
            case 17:
                return isReply(Conversation(guestPort: ports.source, hostPort: ports.destination))
            default:
                return false
            }
        case 0x86DD:
            guard frame.count >= 14 + 40 else { return false }
            let destination = Array(frame[38..<54])
            if isHostOnly(ipv6: destination) { return false }
            if policy == .everything { return true }
            let nextHeader = frame[20]
            let linkLocal = destination[0] == 0xfe && destination[1] & 0xc0 == 0x80
            let multicast = destination[0] == 0xff
            // The host's side of the link (passt maps its gateway there) gets neighbour
            // discovery and nothing else; -p comes in over IPv4.
            if linkLocal || policy == .nothing { return nextHeader == 58 && (linkLocal || multicast) }
            return true
        default:
            return false
        }
    }

    /// 127.0.0.0/8 and 0.0.0.0/8, by their first byte: both reach the host's own loopback.
    static func isHostOnly(ipv4 first: UInt8) -> Bool { first == 127 || first == 0 }

    /// ::/96 (::, ::1 and the IPv4-compatible forms), ::ffff:0:0/96 (IPv4-mapped), and NAT64's
    /// 64:ff9b::/96 and 6to4's 2002::/16 around a loopback or unspecified IPv4 address.
    static func isHostOnly(ipv6 destination: [UInt8]) -> Bool {
        let compatible = destination[0..<12].allSatisfy { $0 == 0 }
        let mapped = destination[0..<10].allSatisfy { $0 == 0 } && destination[10] == 0xff && destination[11] == 0xff
        let nat64 = destination[0..<12] == [0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] && isHostOnly(ipv4: destination[12])
        let sixToFour = destination[0] == 0x20 && destination[1] == 0x02 && isHostOnly(ipv4: destination[2])
        return compatible || mapped || nat64 || sixToFour
    }
}

/// The fields of an IPv4 packet in an Ethernet frame that the filter reads, bounds-checked.
struct IPv4Packet {
    var source: ArraySlice<UInt8>
    var destination: ArraySlice<UInt8>
    var proto: UInt8
    var isFragment: Bool
    /// The transport header's bytes (at least its first 4), when the packet has them.
    private var transport: ArraySlice<UInt8>

    init?(_ frame: UnsafeRawBufferPointer) {
        guard frame.count >= 14 + 20, frame[12] == 0x08, frame[13] == 0x00, frame[14] >> 4 == 4 else { return nil }
        let headerLength = Int(frame[14] & 0x0f) * 4
        guard headerLength >= 20, frame.count >= 14 + headerLength else { return nil }
        // The headers only: the payload is never read (nor copied).
        let bytes = Array(frame.prefix(14 + headerLength + 20))
        source = bytes[26..<30]
        destination = bytes[30..<34]
        proto = bytes[23]
        let fragment = UInt16(bytes[20]) << 8 | UInt16(bytes[21])
        isFragment = fragment & 0x3fff != 0
        transport = bytes[(14 + headerLength)...]
    }

    var ports: (source: UInt16, destination: UInt16)? {
        guard transport.count >= 4 else { return nil }
        let t = Array(transport.prefix(4))
        return (UInt16(t[0]) << 8 | UInt16(t[1]), UInt16(t[2]) << 8 | UInt16(t[3]))
    }

    var tcpFlags: UInt8? {
        guard proto == 6, transport.count >= 14 else { return nil }
        return transport[transport.startIndex + 13]
    }
}
