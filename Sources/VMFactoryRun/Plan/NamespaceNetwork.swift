import CLinux
import Foundation
import VMFactoryCore

/// A network namespace that an engine set up for a container (netavark's or CNI's: a veth
/// with the container's address, its routes, the engine's port mappings towards it), given to
/// the VM as Kata gives it ("tcfilter"): a tap device in the namespace, and tc rules that
/// redirect every frame from the veth to the tap and back. The guest's NIC takes the veth's MAC
/// and address, so the namespace's neighbours, routes and port mappings reach it unchanged.
public struct NamespaceNetwork: Sendable, Equatable {
    /// The namespace, a path such as /run/netns/NAME.
    public var path: String
    /// The engine's interface in it (eth0).
    public var interface: String
    public var address: String
    public var prefix: Int
    public var gateway: String?
    public var mac: String
    public var mtu: Int

    /// The tap's name in the namespace.
    public static let tap = "vmftap0"

    public init(path: String, interface: String, address: String, prefix: Int, gateway: String?, mac: String, mtu: Int) {
        self.path = path
        self.interface = interface
        self.address = address
        self.prefix = prefix
        self.gateway = gateway
        self.mac = mac
        self.mtu = mtu
    }

    /// The prefix as a dotted netmask, as the init's settings take it.
    public var netmask: String {
        let bits: UInt32 = prefix <= 0 ? 0 : UInt32.max << (32 - UInt32(min(prefix, 32)))
        return [24, 16, 8, 0].map { String((bits >> UInt32($0)) & 0xff) }.joined(separator: ".")
    }

    /// What the namespace holds: its first interface with an IPv4 address besides lo, and the
    /// default route's gateway, as iproute2 reports them; nil for a namespace with lo alone (an
    /// engine's `--network none`).
    public static func inspect(_ path: String, runner: any ProcessRunner) async throws -> NamespaceNetwork? {
        func ip(_ arguments: [String]) async throws -> Any {
            let result = try await runner.runChecked(Command("nsenter", ["--net=\(path)", "ip", "-j"] + arguments), what: "reading the network namespace \(path)")
            return try JSONSerialization.jsonObject(with: Data(result.output.utf8))
        }
        // Without -4: the links' MACs come only with every family's addresses.
        guard let links = try await ip(["addr", "show"]) as? [[String: Any]] else {
            throw VMFactoryError(.invalidArgument, "iproute2 said something unexpected of \(path)", hint: "check `nsenter --net=\(path) ip -j addr`")
        }
        for link in links where (link["ifname"] as? String) != "lo" {
            guard let name = link["ifname"] as? String, let mac = link["address"] as? String,
                  let info = (link["addr_info"] as? [[String: Any]])?.first(where: { $0["family"] as? String == "inet" }),
                  let address = info["local"] as? String, let prefix = info["prefixlen"] as? Int else { continue }
            let routes = try await ip(["-4", "route", "show", "default"]) as? [[String: Any]] ?? []
            let gateway = routes.first?["gateway"] as? String
            return NamespaceNetwork(path: path, interface: name, address: address, prefix: prefix, gateway: gateway, mac: mac, mtu: link["mtu"] as? Int ?? 1500)
        }
        return nil
    }

    /// Creates the tap in the namespace and the tc rules between it and the veth; the tap's
    /// descriptor, for QEMU. A guard comes first on the tap's side: nothing the guest sends to
    /// 127.0.0.0/8 is redirected (engines set route_localnet on their bridges for their
    /// 127.0.0.1 port mappings), it goes to the namespace's own stack, which drops it.
    public func attach(runner: any ProcessRunner) async throws -> Int32 {
        func tc(_ arguments: [String], checked: Bool = true) async throws {
            let command = Command("nsenter", ["--net=\(path)"] + arguments)
            if checked { _ = try await runner.runChecked(command, what: "setting up the container's network (\(arguments.joined(separator: " ")))") } else { _ = try await runner.run(command, output: .capture) }
        }
        // A rule left by a VM of this container before (a restart) points at a tap that is gone.
        try await tc(["tc", "qdisc", "del", "dev", interface, "ingress"], checked: false)
        let fd = vmf_open_tap_in_netns(path, Self.tap)
        guard fd >= 0 else {
            throw VMFactoryError(.io, "cannot create a tap device in \(path): \(String(cString: strerror(errno)))", hint: "the container's network needs root and /dev/net/tun")
        }
        do {
            try await tc(["ip", "link", "set", "dev", Self.tap, "mtu", String(mtu), "up"])
            try await tc(["tc", "qdisc", "add", "dev", interface, "ingress"])
            try await tc(["tc", "qdisc", "add", "dev", Self.tap, "ingress"])
            try await tc(["tc", "filter", "add", "dev", interface, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", Self.tap])
            try await tc(["tc", "filter", "add", "dev", Self.tap, "parent", "ffff:", "prio", "1", "protocol", "ip", "u32", "match", "ip", "dst", "127.0.0.0/8", "flowid", "ffff:1"])
            try await tc(["tc", "filter", "add", "dev", Self.tap, "parent", "ffff:", "prio", "2", "protocol", "all", "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", interface])
        } catch {
            close(fd)
            throw error
        }
        return fd
    }
}
