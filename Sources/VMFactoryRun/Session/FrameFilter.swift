import Foundation
import Synchronization
import VMFactoryCore

/// Sits between QEMU's stream network device and passt, and drops every frame of the guest's
/// that is addressed to the host itself by a loopback or unspecified address: 127.0.0.0/8,
/// 0.0.0.0/8, ::1, :: and the IPv4-mapped and -compatible forms of them. passt would open
/// such a connection from the host, to the host's loopback. The frames come as QEMU writes
/// them (a 4-byte big-endian length, then the Ethernet frame); the guest chooses their bytes,
/// not their framing. passt's frames to the guest pass as they are.
final class FrameFilter: Sendable {
    /// The largest frame QEMU sends (its network buffer, 68 KiB); a longer length ends the
    /// relay.
    static let largestFrame = 69_632

    private let guest: Int32
    private let passt: Int32
    private let dropped = Mutex<Int>(0)
    /// The directions still running: the last one to end closes both descriptors, so that no
    /// thread ever uses a number that was closed (and perhaps reused) under it.
    private let running = Mutex<Int>(2)

    /// `guest`: our end of QEMU's socket pair; `passt`: our end of passt's. The filter owns
    /// both from here on.
    init(guest: Int32, passt: Int32) {
        self.guest = guest
        self.passt = passt
    }

    /// How many frames were dropped.
    var droppedFrames: Int { dropped.withLock { $0 } }

    /// Starts the two directions' threads; each ends when its side closes, and then closes
    /// the other direction so that the other thread ends too.
    func start() {
        Thread.detachNewThread { [self] in
            filterGuestFrames()
            shutdown(passt, Int32(SHUT_WR))
            shutdown(guest, Int32(SHUT_RD))
            directionEnded()
        }
        Thread.detachNewThread { [self] in
            PipeReader.forEachChunk(passt) { chunk in SocketIO.writeAll(guest, chunk) }
            shutdown(guest, Int32(SHUT_WR))
            shutdown(passt, Int32(SHUT_RD))
            directionEnded()
        }
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

    /// Ends both directions (QEMU is gone); the threads then close the descriptors.
    func stop() {
        shutdown(guest, Int32(SHUT_RDWR))
        shutdown(passt, Int32(SHUT_RDWR))
    }

    private func filterGuestFrames() {
        var pending: [UInt8] = []
        var start = 0
        PipeReader.forEachChunk(guest) { chunk in
            pending.append(contentsOf: chunk)
            while pending.count - start >= 4 {
                let length = Int(pending[start]) << 24 | Int(pending[start + 1]) << 16 | Int(pending[start + 2]) << 8 | Int(pending[start + 3])
                guard length <= Self.largestFrame else { return false }
                guard pending.count - start >= 4 + length else { break }
                let record = pending[start..<(start + 4 + length)]
                let passes = record.withUnsafeBytes { Self.allows(UnsafeRawBufferPointer(rebasing: $0[4...])) }
                if passes {
                    guard record.withUnsafeBytes({ SocketIO.writeAll(passt, $0) }) else { return false }
                } else {
                    dropped.withLock { $0 += 1 }
                }
                start += 4 + length
            }
            if start > 0, start == pending.count || start > 1 << 20 {
                pending.removeSubrange(0..<start)
                start = 0
            }
            return true
        }
    }

    /// Whether a frame from the guest may reach passt: ARP, and IPv4 and IPv6 to anything
    /// but the host's loopback and unspecified addresses; nothing else (no VLAN tags, no
    /// other protocols, nothing too short to read).
    static func allows(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count >= 14 else { return false }
        let type = UInt16(frame[12]) << 8 | UInt16(frame[13])
        switch type {
        case 0x0806:
            return true
        case 0x0800:
            guard frame.count >= 14 + 20 else { return false }
            return !isHostOnly(ipv4: frame[30])
        case 0x86DD:
            guard frame.count >= 14 + 40 else { return false }
            let destination = Array(frame[38..<54])
            // ::/96 holds :: and ::1 and the IPv4-compatible forms; ::ffff:0:0/96 the mapped ones.
            let compatible = destination[0..<12].allSatisfy { $0 == 0 }
            let mapped = destination[0..<10].allSatisfy { $0 == 0 } && destination[10] == 0xff && destination[11] == 0xff
            // NAT64's 64:ff9b::/96 and 6to4's 2002::/16 carry an IPv4 address that a
            // translator on the host would reach: not a loopback or unspecified one.
            let nat64 = destination[0..<12] == [0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] && isHostOnly(ipv4: destination[12])
            let sixToFour = destination[0] == 0x20 && destination[1] == 0x02 && isHostOnly(ipv4: destination[2])
            return !(compatible || mapped || nat64 || sixToFour)
        default:
            return false
        }
    }

    /// 127.0.0.0/8 and 0.0.0.0/8, by their first byte: both reach the host's own loopback.
    static func isHostOnly(ipv4 first: UInt8) -> Bool { first == 127 || first == 0 }
}
