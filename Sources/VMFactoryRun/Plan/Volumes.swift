import Foundation
import VMFactoryCore
import VMFactoryLifecycle

/// A host folder shared into the guest.
public struct Volume: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// virtio-9p, served by QEMU itself.
        case ninep = "9p"
        /// virtio-fs, served by virtiofsd over vhost-user.
        case virtiofs
        /// virtio-9p, served by virtfs-proxy-helper (as root, chrooted into the folder) for an
        /// unprivileged QEMU: the OCI runtime's bind mounts for a guest of the other byte order.
        case ninepProxy = "9p-proxy"

        /// The file system the guest mounts.
        public var guestType: String { self == .virtiofs ? "virtiofs" : "9p" }
    }

    /// An absolute host path that exists.
    public var host: String
    /// An absolute path in the guest.
    public var guest: String
    public var readOnly: Bool
    public var kind: Kind

    public init(host: String, guest: String, readOnly: Bool, kind: Kind) {
        self.host = host
        self.guest = guest
        self.readOnly = readOnly
        self.kind = kind
    }

    /// `-v HOST:GUEST[:OPTIONS]`, OPTIONS a comma-separated list of ro, rw, 9p, virtiofs.
    public static func parse(volume text: String, currentDirectory: String) throws -> Volume {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3 else {
            throw VMFactoryError(.invalidArgument, "-v \(text): expected HOST:GUEST[:ro|rw|9p|virtiofs]", hint: "share a host folder as -v /srv/data:/data:ro")
        }
        var readOnly = false
        var kind = Kind.ninep
        for option in parts.count == 3 ? parts[2].split(separator: ",").map(String.init) : [] {
            switch option {
            case "ro": readOnly = true
            case "rw": readOnly = false
            case "9p": kind = .ninep
            case "virtiofs": kind = .virtiofs
            default:
                throw VMFactoryError(.invalidArgument, "-v \(text): unknown option '\(option)'", hint: "options are ro, rw, 9p (the default) and virtiofs")
            }
        }
        return try checked(host: parts[0], guest: parts[1], readOnly: readOnly, kind: kind, flag: "-v \(text)", currentDirectory: currentDirectory)
    }

    /// `--mount type=virtiofs|9p|bind,source=HOST,target=GUEST[,readonly]`, as docker spells it
    /// (`bind` is 9p; `src`, `dst`, `destination` and `ro` are accepted too).
    public static func parse(mount text: String, currentDirectory: String) throws -> Volume {
        var kind: Kind?
        var source: String?
        var target: String?
        var readOnly = false
        for field in text.split(separator: ",").map(String.init) {
            let pair = field.split(separator: "=", maxSplits: 1).map(String.init)
            let key = pair[0]
            let value = pair.count == 2 ? pair[1] : nil
            switch key {
            case "type":
                switch value {
                case "virtiofs": kind = .virtiofs
                case "9p", "bind": kind = .ninep
                default:
                    throw VMFactoryError(.invalidArgument, "--mount \(text): type \(value ?? "") is not supported", hint: "use type=virtiofs, type=9p or type=bind (9p)")
                }
            case "source", "src": source = value
            case "target", "dst", "destination": target = value
            case "readonly", "ro": readOnly = value == nil || value == "true" || value == "1"
            default:
                throw VMFactoryError(.invalidArgument, "--mount \(text): unknown field '\(key)'", hint: "fields are type, source, target and readonly")
            }
        }
        guard let kind, let source, let target else {
            throw VMFactoryError(.invalidArgument, "--mount \(text): needs type, source and target", hint: "as in --mount type=virtiofs,source=/srv/data,target=/data")
        }
        return try checked(host: source, guest: target, readOnly: readOnly, kind: kind, flag: "--mount \(text)", currentDirectory: currentDirectory)
    }

    /// A host path that does not exist, or a guest path that is not absolute, is refused
    /// before anything boots.
    static func checked(host: String, guest: String, readOnly: Bool, kind: Kind, flag: String, currentDirectory: String) throws -> Volume {
        guard host.hasPrefix("/") || host.hasPrefix(".") else {
            throw VMFactoryError(.invalidArgument, "\(flag): '\(host)' is not a host path; named volumes are not supported", hint: "give an absolute host path or one starting with ./")
        }
        let path = URL(fileURLWithPath: FileStore.absolute(host, relativeTo: currentDirectory)).standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw VMFactoryError(.notFound, "\(flag): the host path \(path) does not exist", hint: "create it first, or correct the path")
        }
        guard isDirectory.boolValue else {
            throw VMFactoryError(.invalidArgument, "\(flag): \(path) is not a folder", hint: "share the folder that holds it")
        }
        guard let normalized = mountPoint(guest) else {
            throw VMFactoryError(.invalidArgument, "\(flag): the guest path '\(guest)' must be absolute and not /", hint: "mount the folder at a path such as /data")
        }
        return Volume(host: path, guest: normalized, readOnly: readOnly, kind: kind)
    }

    /// A guest path something can be mounted at, normalized: absolute, not /, on one line of
    /// settings. nil otherwise.
    static func mountPoint(_ guest: String) -> String? {
        let normalized = URL(fileURLWithPath: guest).standardizedFileURL.path
        guard guest.hasPrefix("/"), normalized != "/", !guest.contains("\n"), !guest.contains("\0") else { return nil }
        return normalized
    }
}

/// `-p [IP:][HOST:]GUEST[/tcp|/udp]`: a host port forwarded to the guest by QEMU's user
/// network.
public struct PortForward: Sendable, Equatable, Codable {
    public enum Proto: String, Sendable, Codable {
        case tcp, udp
    }

    /// The host address to bind: 127.0.0.1 unless given, since these guests run untrusted code.
    public var hostAddress: String
    /// 0 until a free port is chosen (`-p 80`, `-p 127.0.0.1::80`).
    public var hostPort: Int
    public var guestPort: Int
    public var proto: Proto
    /// No address was given: the port listens on the host's IPv6 loopback (`[::1]`) too, as
    /// `localhost` may name either (see `LoopbackRelay`).
    public var ipv6Loopback: Bool

    public init(hostAddress: String, hostPort: Int, guestPort: Int, proto: Proto, ipv6Loopback: Bool = false) {
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestPort = guestPort
        self.proto = proto
        self.ipv6Loopback = ipv6Loopback
    }

    public static func parse(_ text: String) throws -> PortForward {
        var spec = Substring(text)
        var proto = Proto.tcp
        if let slash = spec.lastIndex(of: "/") {
            guard let parsed = Proto(rawValue: String(spec[spec.index(after: slash)...])) else {
                throw VMFactoryError(.invalidArgument, "-p \(text): the protocol must be tcp or udp", hint: "as in -p 8080:80/tcp")
            }
            proto = parsed
            spec = spec[..<slash]
        }
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let address: String
        let host: String
        let guest: String
        switch parts.count {
        case 1: (address, host, guest) = ("127.0.0.1", "", parts[0])
        case 2: (address, host, guest) = ("127.0.0.1", parts[0], parts[1])
        case 3: (address, host, guest) = (parts[0], parts[1], parts[2])
        default:
            throw VMFactoryError(.invalidArgument, "-p \(text): expected [IP:]HOST:GUEST[/tcp|/udp]", hint: "as in -p 8080:80, or -p 0.0.0.0:8080:80 to listen on every interface")
        }
        func port(_ value: String, allowZero: Bool) throws -> Int {
            if value.isEmpty, allowZero { return 0 }
            guard let number = Int(value), (allowZero ? 0 : 1)...65535 ~= number else {
                throw VMFactoryError(.invalidArgument, "-p \(text): '\(value)' is not a port number", hint: "ports are 1 to 65535")
            }
            return number
        }
        var inAddress = in_addr()
        guard inet_pton(AF_INET, address, &inAddress) == 1 else {
            throw VMFactoryError(.invalidArgument, "-p \(text): '\(address)' is not an IPv4 address", hint: "give the host address to listen on, such as 127.0.0.1")
        }
        return PortForward(hostAddress: address, hostPort: try port(host, allowZero: true), guestPort: try port(guest, allowZero: false), proto: proto, ipv6Loopback: parts.count < 3)
    }


    public var description: String {
        "\(hostAddress):\(hostPort)\(ipv6Loopback ? " and [::1]:\(hostPort)" : "") -> \(guestPort)/\(proto.rawValue)"
    }

    /// Binds the host port for a moment: one in use is an error before boot, and port 0 gets
    /// a free one.
    public func reserved() throws -> PortForward {
        let fd = socket(AF_INET, proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw VMFactoryError.io("cannot open a socket for", path: description) }
        defer { close(fd) }
        var one: Int32 = 1
        // QEMU binds TCP forwards with SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        if proto == .tcp { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(hostPort).bigEndian)
        inet_pton(AF_INET, hostAddress, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let code = errno
            if code == EADDRINUSE {
                throw VMFactoryError(.invalidArgument, "-p: the host port \(hostAddress):\(hostPort)/\(proto.rawValue) is already in use", hint: "choose another host port, or stop what listens on it (ss -ltnp shows it)")
            }
            throw VMFactoryError(.invalidArgument, "-p: cannot bind \(hostAddress):\(hostPort)/\(proto.rawValue): \(String(cString: strerror(code)))", hint: "give an address of this host, such as 127.0.0.1")
        }
        var chosen = self
        if hostPort == 0 {
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutablePointer(to: &address) {
                _ = $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            chosen.hostPort = Int(UInt16(bigEndian: address.sin_port))
        }
        return chosen
    }
}

/// `--memory` as docker reads it: bytes, or a number with b, k, m or g; the VM needs at least
/// 64 MiB. Returns MiB.
public enum MemorySize {
    /// A size as docker reads one: bytes, or a number with b, k, m or g (kb, mb, gb too).
    public static func bytes(_ text: String, flag: String) throws -> Int {
        let lower = text.lowercased()
        let units: [(String, Double)] = [("gb", 1_073_741_824), ("g", 1_073_741_824), ("mb", 1_048_576), ("m", 1_048_576), ("kb", 1024), ("k", 1024), ("b", 1)]
        var factor = 1.0
        var number = lower
        for (suffix, value) in units where lower.hasSuffix(suffix) {
            factor = value
            number = String(lower.dropLast(suffix.count))
            break
        }
        guard let amount = Double(number), amount > 0, amount * factor < 0x1p50 else {
            throw VMFactoryError(.invalidArgument, "\(flag) \(text) is not a size", hint: "as in \(flag) 512m or \(flag) 2g")
        }
        return Int((amount * factor).rounded(.up))
    }

    public static func mebibytes(_ text: String) throws -> Int {
        let mebibytes = (try bytes(text, flag: "--memory") + (1 << 20) - 1) >> 20
        guard mebibytes >= 64 else {
            throw VMFactoryError(.invalidArgument, "--memory \(text) is too little for a VM", hint: "give at least 64m")
        }
        return mebibytes
    }
}

/// `--tmpfs PATH[:OPTIONS]`: a tmpfs mounted in the guest, as docker's flag mounts one.
public struct TmpfsMount: Sendable, Equatable, Codable {
    /// An absolute path in the guest.
    public var guest: String
    /// The mount's options in order, docker's defaults first (`rw,noexec,nosuid,nodev`); a
    /// later option overrides an earlier one.
    public var options: [String]

    /// What docker mounts a --tmpfs with unless its options say otherwise.
    public static let defaultOptions = ["rw", "noexec", "nosuid", "nodev"]

    static let flags: Set<String> = ["ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev"]

    public init(guest: String, options: [String]) {
        self.guest = guest
        self.options = options
    }

    public static func parse(_ text: String) throws -> TmpfsMount {
        let flag = "--tmpfs \(text)"
        let colon = text.firstIndex(of: ":")
        let guest = String(colon.map { text[..<$0] } ?? Substring(text))
        let given = colon.map { text[text.index(after: $0)...].split(separator: ",", omittingEmptySubsequences: false).map(String.init) } ?? []
        guard let normalized = Volume.mountPoint(guest), !guest.contains(" ") else {
            throw VMFactoryError(.invalidArgument, "\(flag): the guest path '\(guest)' must be absolute, not /, and without spaces", hint: "as in --tmpfs /run or --tmpfs /tmp:size=64m")
        }
        for option in given {
            guard Self.flags.contains(option) || Self.isSizedOption(option) else {
                throw VMFactoryError(
                    .invalidArgument, "\(flag): unknown option '\(option)'",
                    hint: "options are ro, rw, exec, noexec, suid, nosuid, dev, nodev, size=N[k|m|g|%], mode=OCTAL, uid=N, gid=N and nr_inodes=N[k|m|g]"
                )
            }
        }
        return TmpfsMount(guest: normalized, options: Self.defaultOptions + given)
    }

    /// An engine's tmpfs mount (an OCI config's): the options the guest takes, and those it
    /// does not (atime flags, propagation, tmpcopyup), for the caller to say.
    public static func engine(guest: String, options: [String]) -> (mount: TmpfsMount, dropped: [String]) {
        let kept = options.filter { flags.contains($0) || isSizedOption($0) }
        return (TmpfsMount(guest: guest, options: kept), options.filter { !kept.contains($0) })
    }

    /// tmpfs's own options, with values it takes: numbers, with a unit where tmpfs allows one.
    static func isSizedOption(_ option: String) -> Bool {
        let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
        guard pair.count == 2, !pair[1].isEmpty else { return false }
        let value = pair[1]
        let digits = value.prefix { $0.isASCII && $0.isNumber }
        let rest = value.dropFirst(digits.count)
        guard !digits.isEmpty else { return false }
        switch pair[0] {
        case "size": return rest.isEmpty || ["k", "m", "g", "K", "M", "G", "%"].contains(rest)
        case "nr_inodes": return rest.isEmpty || ["k", "m", "g", "K", "M", "G"].contains(rest)
        case "mode": return rest.isEmpty && value.count <= 4 && value.allSatisfy { ("0"..."7").contains($0) }
        case "uid", "gid": return rest.isEmpty && UInt32(value) != nil
        default: return false
        }
    }

    /// The value of the init's tmpfs setting: the options, then the path.
    public var settingsValue: String { options.joined(separator: ",") + " " + guest }
}
