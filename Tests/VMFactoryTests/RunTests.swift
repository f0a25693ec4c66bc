import Foundation
import Testing
@testable import VMFactoryBoot
@testable import VMFactoryCore
@testable import VMFactoryLifecycle
@testable import VMFactoryImage
@testable import VMFactoryRun

@Suite("vmfactory run's plan: docker's rules for the process, volumes, ports and the QEMU command", .tags(.unit), .scoped)
struct RunTests {
    static func image(_ configure: (inout ImageConfig.Execution) -> Void = { _ in }) -> ImageConfig.Execution {
        var config = ImageConfig.Execution()
        config.Entrypoint = ["/bin/echo", "ep"]
        config.Cmd = ["default"]
        config.Env = ["PATH=/bin", "OVER=image"]
        config.WorkingDir = "/srv"
        config.User = "app"
        configure(&config)
        return config
    }

    @Test("Entrypoint + Cmd; COMMAND replaces Cmd; --entrypoint replaces Entrypoint and drops Cmd; \"\" clears it")
    func commandAndEntrypoint() throws {
        var request = ProcessRequest()
        #expect(try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]).argv == ["/bin/echo", "ep", "default"])
        request.command = ["x", "y"]
        #expect(try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]).argv == ["/bin/echo", "ep", "x", "y"])
        request.command = []
        request.entrypoint = "/bin/sh"
        #expect(try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]).argv == ["/bin/sh"])
        request.entrypoint = ""
        request.command = ["/bin/true"]
        #expect(try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]).argv == ["/bin/true"])
        request.command = []
        let none = #expect(throws: VMFactoryError.self) { try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]) }
        #expect(none?.message.contains("no command to run") == true)
        #expect(none?.hint?.contains("vmfactory run IMAGE") == true)
    }

    @Test("Env from the image, then each --env-file, then -e; NAME alone passes vmfactory's value; WorkingDir, User and StopSignal from the image unless given")
    func environmentAndDefaults() throws {
        var request = ProcessRequest()
        request.environmentFiles = [("vars.env", "# a comment\n\nOVER=file\nFILE=f\r\nFROM_HOST\nMISSING\n")]
        request.environment = ["OVER=cli", "E=e=e", "HOME"]
        let process = try ContainerProcess.combine(image: Self.image { $0.StopSignal = "SIGQUIT" }, request: request, hostEnvironment: ["FROM_HOST": "h", "HOME": "/root"])
        #expect(process.environment == ["PATH=/bin", "OVER=cli", "FILE=f", "FROM_HOST=h", "E=e=e", "HOME=/root"])
        #expect(process.user == "app")
        #expect(process.workdir == "/srv")
        #expect(process.stopSignal == SIGQUIT)
        request.user = "0:10"
        request.workdir = "/tmp"
        let given = try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:])
        #expect(given.user == "0:10")
        #expect(given.workdir == "/tmp")
        #expect(given.stopSignal == SIGTERM)

        request.environmentFiles = [("bad.env", "OK=1\n=nothing\n")]
        let bad = #expect(throws: VMFactoryError.self) { try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]) }
        #expect(bad?.message.contains("bad.env:2") == true)
        request.environmentFiles = []
        request.workdir = "relative"
        #expect(throws: VMFactoryError.self) { try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:]) }
    }

    @Test("signals by name, number and real-time offset")
    func signals() throws {
        #expect(try Signals.number(of: "SIGTERM", what: "x") == SIGTERM)
        #expect(try Signals.number(of: "kill", what: "x") == SIGKILL)
        #expect(try Signals.number(of: "3", what: "x") == 3)
        #expect(try Signals.number(of: "SIGRTMIN+3", what: "x") == 37)
        #expect(try Signals.number(of: "RTMAX-1", what: "x") == 63)
        #expect(throws: VMFactoryError.self) { try Signals.number(of: "SIGNOPE", what: "x") }
        #expect(throws: VMFactoryError.self) { try Signals.number(of: "99", what: "x") }
    }

    @Test("-v and --mount: 9p by default, ro and virtiofs options, a missing host path refused before boot")
    func volumes() throws {
        let dir = try TestSupport.temporaryDirectory()
        let ninep = try Volume.parse(volume: dir + ":/data", currentDirectory: "/")
        #expect(ninep == Volume(host: dir, guest: "/data", readOnly: false, kind: .ninep))
        #expect(try Volume.parse(volume: dir + ":/data/:ro,virtiofs", currentDirectory: "/") == Volume(host: dir, guest: "/data", readOnly: true, kind: .virtiofs))
        #expect(try Volume.parse(mount: "type=virtiofs,source=\(dir),target=/d,readonly", currentDirectory: "/") == Volume(host: dir, guest: "/d", readOnly: true, kind: .virtiofs))
        #expect(try Volume.parse(mount: "type=bind,src=\(dir),dst=/b", currentDirectory: "/").kind == .ninep)
        let relative = try Volume.parse(volume: "./" + URL(fileURLWithPath: dir).lastPathComponent + ":/r", currentDirectory: URL(fileURLWithPath: dir).deletingLastPathComponent().path)
        #expect(relative.host == dir)
        let missing = #expect(throws: VMFactoryError.self) { try Volume.parse(volume: dir + "/nope:/data", currentDirectory: "/") }
        #expect(missing?.message.contains("does not exist") == true)
        #expect(throws: VMFactoryError.self) { try Volume.parse(volume: "named:/data", currentDirectory: "/") }
        #expect(throws: VMFactoryError.self) { try Volume.parse(volume: dir + ":relative", currentDirectory: "/") }
        #expect(throws: VMFactoryError.self) { try Volume.parse(volume: dir + ":/", currentDirectory: "/") }
        #expect(throws: VMFactoryError.self) { try Volume.parse(volume: dir + ":/d:rx", currentDirectory: "/") }
        #expect(throws: VMFactoryError.self) { try Volume.parse(mount: "type=tmpfs,target=/t", currentDirectory: "/") }
    }

    @Test("--tmpfs PATH[:OPTIONS]: docker's defaults first (rw,noexec,nosuid,nodev), options checked, paths absolute")
    func tmpfsMounts() throws {
        #expect(try TmpfsMount.parse("/run") == TmpfsMount(guest: "/run", options: ["rw", "noexec", "nosuid", "nodev"]))
        #expect(try TmpfsMount.parse("/tmp/:exec,size=64m,mode=1777").options == ["rw", "noexec", "nosuid", "nodev", "exec", "size=64m", "mode=1777"])
        #expect(try TmpfsMount.parse("/tmp/").guest == "/tmp")
        #expect(try TmpfsMount.parse("/x:size=50%,nr_inodes=10k,uid=1000,gid=1000,ro").settingsValue == "rw,noexec,nosuid,nodev,size=50%,nr_inodes=10k,uid=1000,gid=1000,ro /x")
        for bad in ["run", "/", "/a b", "/t:size=", "/t:size=1t", "/t:mode=999", "/t:mode=17777", "/t:uid=-1", "/t:bogus", "/t:size=1m;x", "/t:,"] {
            let error = #expect(throws: VMFactoryError.self, "\(bad)") { try TmpfsMount.parse(bad) }
            #expect(error?.hint != nil, "\(bad)")
        }
    }

    @Test("-p forms bind 127.0.0.1 and [::1] unless an address is given; a port in use is refused; port 0 gets a free one")
    func ports() throws {
        // Without an address: 127.0.0.1, and [::1] too (localhost may be either).
        #expect(try PortForward.parse("8080:80") == PortForward(hostAddress: "127.0.0.1", hostPort: 8080, guestPort: 80, proto: .tcp, ipv6Loopback: true))
        #expect(try PortForward.parse("0.0.0.0:53:53/udp") == PortForward(hostAddress: "0.0.0.0", hostPort: 53, guestPort: 53, proto: .udp))
        #expect(try PortForward.parse("127.0.0.1:8080:80").ipv6Loopback == false)
        #expect(try PortForward.parse("80").hostPort == 0)
        #expect(try PortForward.parse("127.0.0.1::80").hostPort == 0)
        let plain = try PortForward.parse("8080:80")
        #expect(plain.hostAddress == "127.0.0.1" && plain.hostPort == 8080 && plain.guestPort == 80 && plain.proto == .tcp)
        for bad in ["80/sctp", "a:b", "1:2:3:4", "99999:80", "localhost:1:2"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try PortForward.parse(bad) }
        }
        let free = try PortForward.parse("0:80").reserved()
        #expect(free.hostPort > 0)
        // Something listening: the same port is refused with a message saying so.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(free.hostPort).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(listener, 1)
        let busy = #expect(throws: VMFactoryError.self) { try PortForward(hostAddress: "127.0.0.1", hostPort: free.hostPort, guestPort: 80, proto: .tcp).reserved() }
        #expect(busy?.message.contains("already in use") == true)
    }

    @Test("--memory and --shm-size as docker reads them")
    func memory() throws {
        #expect(try MemorySize.mebibytes("512m") == 512)
        #expect(try MemorySize.mebibytes("2g") == 2048)
        #expect(try MemorySize.mebibytes("268435456") == 256)
        #expect(try MemorySize.mebibytes("1.5G") == 1536)
        #expect(throws: VMFactoryError.self) { try MemorySize.mebibytes("16m") }
        #expect(throws: VMFactoryError.self) { try MemorySize.mebibytes("lots") }
        // --shm-size: docker's sizes in bytes, 64 MiB unless given.
        #expect(try MemorySize.bytes("64m", flag: "--shm-size") == 67_108_864)
        #expect(try MemorySize.bytes("1g", flag: "--shm-size") == 1 << 30)
        #expect(try MemorySize.bytes("4096", flag: "--shm-size") == 4096)
        #expect(RunPlan(target: .x86_64, kernel: "/k", initrd: "/i", cmdline: "", root: .disk("/d"), process: try Self.plan(.x86_64).process, hostname: "h").shmBytes == 64 << 20)
        let bad = #expect(throws: VMFactoryError.self) { try MemorySize.bytes("0", flag: "--shm-size") }
        #expect(bad?.message == "--shm-size 0 is not a size")
    }

    static func plan(_ target: Target) throws -> RunPlan {
        var request = ProcessRequest()
        request.command = ["/bin/sh", "-c", "printf 'a\\\\b\\n'\necho two"]
        request.environment = ["MULTI=line1\nline2"]
        let process = try ContainerProcess.combine(image: Self.image(), request: request, hostEnvironment: [:])
        var plan = RunPlan(target: target, kernel: "/k", initrd: "/i", cmdline: "quiet", root: .disk("/cache/disk.qcow2"), process: process, hostname: "box")
        plan.volumes = [Volume(host: "/srv/a", guest: "/data", readOnly: true, kind: .ninep), Volume(host: "/srv/b", guest: "/with space", readOnly: false, kind: .virtiofs)]
        plan.ports = [PortForward(hostAddress: "127.0.0.1", hostPort: 8080, guestPort: 80, proto: .tcp)]
        plan.tmpfs = [TmpfsMount(guest: "/run", options: TmpfsMount.defaultOptions), TmpfsMount(guest: "/data/scratch", options: TmpfsMount.defaultOptions + ["exec", "size=64m", "mode=1777", "uid=1000"])]
        return plan
    }

    @Test("the QEMU command per target: virtio-mmio or virtio-ccw devices, the overlay, the run's channel, RNG, passt, 9p read-only in QEMU, vhost-user-fs with shared memory", arguments: Target.allCases)
    func qemuCommand(_ target: Target) throws {
        let plan = try Self.plan(target)
        let files = RunPlan.Files(overlay: "/run/disk.qcow2", sockets: "/run/s")
        let argv = plan.qemu(files).argv
        let joined = argv.joined(separator: " ")
        let suffix = target == .s390x ? "-ccw" : "-device"
        #expect(argv.first == target.qemuSystem)
        for device in ["virtio-blk", "virtio-serial", "virtio-rng", "virtio-net", "virtio-9p", "vhost-user-fs"] {
            #expect(joined.contains("-device \(device)\(suffix)"), "\(device)")
        }
        #expect(joined.contains("file=/run/disk.qcow2,if=none,id=root,format=qcow2"))
        #expect(!joined.contains("/cache/disk.qcow2"), "QEMU opens the overlay, never the cached disk itself")
        // The default network: passt on a stream, no slirp and so no way to the host's loopback.
        #expect(joined.contains("-netdev stream,id=net,server=off,addr.type=unix,addr.path=/run/s/net.sock"))
        #expect(!joined.contains("-netdev user") && !joined.contains("hostfwd"))
        #expect(joined.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"))
        #expect(joined.contains("path=/srv/a,security_model=mapped-xattr,readonly=on"))
        #expect(joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"))
        #expect(joined.contains("memory-backend=mem"))
        // One port, the run's channel: the settings, every process's I/O and the control.
        #expect(joined.contains("max_ports=2 -chardev socket,id=channel,path=/run/s/channel.sock -device virtserialport,bus=ports.0,chardev=channel,name=vmf.channel"))
        #expect(joined.contains("-initrd /i -append quiet vmf.run"))
        #expect(joined.contains("virtio-mmio.force-legacy=false") == (target == .x86_64))

        var none = plan
        none.network = .none
        none.volumes = []
        none.interactive = true
        let bare = none.qemu(files).argv.joined(separator: " ")
        #expect(!bare.contains("virtio-net") && !bare.contains("-netdev"), "--network none: no network device at all")
        #expect(!bare.contains("memory-backend"))
        #expect(bare.components(separatedBy: "virtserialport").count == 2, "one port with -i too")
        var dashed = plan
        dashed.cmdline = "quiet -- extra"
        #expect(dashed.runCmdline == "quiet vmf.run -- extra", "the word goes before --, after which words are the init's arguments")

        // restricted: passt too (the frame filter decides); never QEMU's user network.
        var restricted = plan
        restricted.network = .restricted
        let closed = restricted.qemu(files).argv.joined(separator: " ")
        #expect(closed.contains("-netdev stream,id=net") && !closed.contains("-netdev user"))
        #expect(restricted.passt(files, fd: 9, log: "/l") != nil)
        #expect(none.passt(files, fd: 9, log: "/l") == nil)

        // A run's QEMU opens nothing by path: every file and socket is a descriptor it inherits.
        var inherited = RunPlan.Inherited(kernel: 10, initrd: 11, overlay: 12, backing: 13)
        inherited.channel = 14
        inherited.folders = [0: 17]
        inherited.virtiofs = [1: 18]
        inherited.network = 19
        var opened = files
        opened.inherited = inherited
        let confined = plan.qemu(opened).argv.joined(separator: " ")
        #expect(confined.contains("-kernel /proc/self/fd/10 -initrd /proc/self/fd/11"))
        #expect(confined.contains("file=/proc/self/fd/12,if=none,id=root,format=qcow2,discard=unmap,backing.file.filename=/proc/self/fd/13"))
        #expect(confined.contains("-chardev socket,id=channel,fd=14"))
        #expect(confined.contains("path=/proc/self/fd/17,security_model=mapped-xattr,readonly=on"))
        #expect(confined.contains("-chardev socket,id=fs1,fd=18"))
        #expect(confined.contains("-netdev stream,id=net,server=off,addr.type=fd,addr.str=19"))
        #expect(!confined.contains("/run/s/") && !confined.contains(" /k ") && !confined.contains("/srv/"), "\(confined)")
        #expect(Set(inherited.all) == Set(10...14).union(17...19))
    }

    @Test("passt's command: QEMU's user-network addresses, the -p ports on their host addresses, passt as QEMU's user")
    func passtCommand() throws {
        var plan = try Self.plan(.x86_64)
        plan.ports.append(PortForward(hostAddress: "0.0.0.0", hostPort: 5353, guestPort: 53, proto: .udp))
        let files = RunPlan.Files(overlay: "/run/disk.qcow2", sockets: "/run/s")
        let argv = try #require(plan.passt(files, fd: 7, log: "/run/passt.log")).argv
        let joined = argv.joined(separator: " ")
        #expect(argv.first == "passt")
        #expect(joined.contains("--foreground --one-off --quiet --log-file /run/passt.log --fd 7"))
        #expect(joined.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2 --dns-forward 10.0.2.3"))
        #expect(joined.contains("--tcp-ports 127.0.0.1/8080:80") && joined.contains("--udp-ports 0.0.0.0/5353:53"))
        #expect(!joined.contains("--runas"))
        plan.network = .hostLoopback
        plan.vmmIdentity = ProcessIdentity(uid: 65534, gid: 65534)
        let opted = try #require(plan.passt(files, fd: nil, log: "/l")).argv.joined(separator: " ")
        #expect(opted.contains("--socket /run/s/net.sock") && opted.contains("--runas 65534:65534"))
    }

    @Test("the frame filter: nothing to the host's loopback in any form; towards the gateway only replies (TCP that opens nothing, UDP answering a -p datagram); restricted reaches nothing else; host-loopback everything")
    func frameFilter() {
        let gateway: [UInt8] = [10, 0, 2, 2]
        func ipv4(_ destination: [UInt8], proto: UInt8 = 6, ports: (UInt16, UInt16) = (40000, 80), flags: UInt8 = 0x02, fragment: [UInt8] = [0, 0]) -> [UInt8] {
            let ip: [UInt8] = [0x45, 0, 0, 40, 0, 0] + fragment + [64, proto, 0, 0, 10, 0, 2, 15] + destination
            let transport: [UInt8] = [UInt8(ports.0 >> 8), UInt8(ports.0 & 0xff), UInt8(ports.1 >> 8), UInt8(ports.1 & 0xff)] + Array(repeating: 0, count: 9) + [flags] + Array(repeating: 0, count: 6)
            return Array(repeating: 0xaa, count: 12) + [0x08, 0x00] + ip + transport
        }
        func ipv6(_ destination: [UInt8], next: UInt8 = 6) -> [UInt8] {
            Array(repeating: 0xaa, count: 12) + [0x86, 0xdd] + [0x60, 0, 0, 0, 0, 20, next, 64] + Array(repeating: 0xfe, count: 16) + destination + Array(repeating: 0, count: 20)
        }
        let answered = FrameFilter.Conversation(guestPort: 53, hostPort: 41000)
        func passes(_ frame: [UInt8], _ policy: FrameFilter.Policy = .world) -> Bool {
            frame.withUnsafeBytes { FrameFilter.allows($0, policy: policy, gateway: gateway) { $0 == answered } }
        }
        let world: [UInt8] = [93, 184, 216, 34]
        #expect(passes(ipv4(world)))
        #expect(passes(ipv4([192, 0, 2, 2])), "the host's other addresses, as docker's containers reach them")
        for host in [[127, 0, 0, 1], [127, 1, 2, 3], [0, 0, 0, 0]] as [[UInt8]] {
            for policy in [FrameFilter.Policy.world, .nothing, .everything] { #expect(!passes(ipv4(host), policy), "\(host) \(policy)") }
        }
        // The gateway is the host's loopback (passt maps it): replies only.
        #expect(!passes(ipv4(gateway)), "a connection to the host's loopback")
        #expect(passes(ipv4(gateway, flags: 0x12)), "a SYN-ACK: the guest answers a -p connection")
        #expect(passes(ipv4(gateway, flags: 0x10)), "an ACK within it")
        #expect(!passes(ipv4(gateway, proto: 17, ports: (53, 5353))), "a datagram nobody sent first")
        #expect(passes(ipv4(gateway, proto: 17, ports: (53, 41000))), "the answer to a -p datagram")
        #expect(!passes(ipv4(gateway, proto: 1)), "ICMP to the host")
        #expect(!passes(ipv4(gateway, flags: 0x10, fragment: [0x20, 0x00])), "a fragment, whose ports cannot be read")
        #expect(passes(ipv4(gateway), .everything), "--network host-loopback")
        // restricted: the same replies, nothing else anywhere.
        #expect(!passes(ipv4(world), .nothing))
        #expect(!passes(ipv4([10, 0, 2, 3], proto: 17, ports: (40000, 53)), .nothing), "not even DNS")
        #expect(passes(ipv4(gateway, flags: 0x12), .nothing))
        #expect(passes(ipv4(gateway, proto: 17, ports: (53, 41000)), .nothing))
        // IPv6: the loopback in every form; the link's host side gets neighbour discovery only.
        let loopback6: [UInt8] = Array(repeating: 0, count: 15) + [1]
        let mapped: [UInt8] = Array(repeating: 0, count: 10) + [0xff, 0xff, 127, 0, 0, 1]
        let compatible: [UInt8] = Array(repeating: 0, count: 12) + [127, 0, 0, 1]
        let nat64: [UInt8] = [0x00, 0x64, 0xff, 0x9b] + Array(repeating: 0, count: 8) + [127, 0, 0, 1]
        let sixToFour: [UInt8] = [0x20, 0x02, 127, 0, 0, 1] + Array(repeating: 0, count: 10)
        for host in [loopback6, Array(repeating: 0, count: 16), mapped, compatible, nat64, sixToFour] {
            #expect(!passes(ipv6(host)) && !passes(ipv6(host), .everything), "\(host)")
        }
        let global: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]
        let router: [UInt8] = [0xfe, 0x80] + Array(repeating: 0, count: 13) + [1]
        #expect(passes(ipv6(global)))
        #expect(passes(ipv6([0x00, 0x64, 0xff, 0x9b] + Array(repeating: 0, count: 8) + world)), "NAT64 to the world")
        #expect(!passes(ipv6(router)), "TCP to the router's link-local address")
        #expect(passes(ipv6(router, next: 58)), "neighbour discovery")
        #expect(!passes(ipv6(global), .nothing))
        #expect(passes(ipv6([0xff, 0x02] + Array(repeating: 0, count: 13) + [2], next: 58), .nothing), "router solicitation")
        // Neither ARP's absence nor odd frames pass.
        #expect(passes(Array(repeating: 0xff, count: 12) + [0x08, 0x06] + Array(repeating: 0, count: 28)), "ARP")
        #expect(!passes(Array(repeating: 0xff, count: 12) + [0x81, 0x00] + Array(repeating: 0, count: 46)), "a VLAN tag")
        #expect(!passes(Array(ipv4(world).prefix(20))), "too short for its header")
        #expect(!passes([]))
    }

    @Test("the run's settings say everything with line breaks and backslashes escaped, and the init's own parser reads them back", .tags(.integration), .needsTool("gcc"))
    func settingsRoundTrip() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init")
        var plan = try Self.plan(.x86_64)
        plan.tty = true
        plan.windowSize = (40, 120)
        plan.shmBytes = try MemorySize.bytes("256m", flag: "--shm-size")
        plan.pidsLimit = 64
        try TestSupport.write(plan.settings, to: dir + "/run.conf")
        let explained = try await TestSupport.run(dir + "/init", ["--explain-run", dir + "/run.conf"])
        #expect(explained.output == """
            argv: /bin/echo
            argv: ep
            argv: /bin/sh
            argv: -c
            argv: printf 'a\\\\b\\n'
            echo two
            env: PATH=/bin
            env: OVER=image
            env: MULTI=line1
            line2
            user: app
            workdir: /srv
            stdin: 0
            tty: 1
            window: 40 120
            hostname: box
            root: /dev/vda
            readonly: 0
            stop-signal: 15
            shm-size: 268435456
            pids-limit: 64
            network: user
            disk-size: 0
            seed: 0 bytes
            volume: 9p vmf.v0 ro /data
            volume: virtiofs vmf.v1 rw /with space
            tmpfs: rw,noexec,nosuid,nodev [] /run
            tmpfs: rw,nosuid,nodev [size=64m,mode=1777,uid=1000] /data/scratch

            """)
        // What the frame adds for every VM: 32 bytes of entropy.
        let frame = plan.settingsFrame
        try TestSupport.write(String(decoding: frame.payload.dropFirst(4), as: UTF8.self), to: dir + "/fresh.conf")
        let fresh = try await TestSupport.run(dir + "/init", ["--explain-run", dir + "/fresh.conf"])
        #expect(fresh.output.contains("seed: 32 bytes\n"), "\(fresh.output)")
        #expect(frame.payload != plan.settingsFrame.payload, "every frame has its own seed")
        // The clock frame: the host's time now, seconds and nanoseconds.
        let clock = RunProtocol.Frame.clockNow().payload
        let seconds = clock.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        #expect(clock.count == 12 && abs(Double(seconds) - Date().timeIntervalSince1970) < 5)
        // A folder root: virtio-fs for a guest of the host's byte order, 9p through the proxy
        // helper for the other; the init takes both, and refuses another kind.
        for target in Target.allCases {
            var folder = try Self.plan(target)
            folder.root = .folder("/bundle/rootfs")
            let share = target.isBigEndian == (Target(rawValue: Target.hostMachine) ?? .x86_64).isBigEndian ? "virtiofs" : "9p"
            #expect(folder.rootShare.rawValue == share)
            try TestSupport.write(folder.settings, to: dir + "/folder.conf")
            let read = try await TestSupport.run(dir + "/init", ["--explain-run", dir + "/folder.conf"])
            #expect(read.output.contains("root: \(share) vmf.root\n"), "\(read.output)")
            let argv = folder.qemu(RunPlan.Files(overlay: "/run/disk.qcow2", sockets: "/run/s")).argv.joined(separator: " ")
            #expect(!argv.contains("-drive"), "no disk for a folder root")
            if share == "virtiofs" {
                #expect(argv.contains("-chardev socket,id=rootfs,path=/run/s/root.sock") && argv.contains(",chardev=rootfs,tag=vmf.root") && argv.contains("memory-backend-memfd"))
                #expect(folder.rootVirtiofsd(files: RunPlan.Files(overlay: "", sockets: "/run/s"))?.argv.contains("source=/bundle/rootfs,cache=auto,killpriv_v2,modcaps=-mknod") == true)
                #expect(folder.rootProxyHelper(fd: 5) == nil)
            } else {
                #expect(argv.contains("-fsdev proxy,id=rootfs,socket=/run/s/root.sock") && argv.contains(",fsdev=rootfs,mount_tag=vmf.root"))
                #expect(folder.rootProxyHelper(fd: 5)?.argv.dropFirst() == ["--nodaemon", "--path", "/bundle/rootfs", "--fd", "5"])
                #expect(folder.rootVirtiofsd(files: RunPlan.Files(overlay: "", sockets: "/run/s")) == nil)
            }
        }
        for bad in ["root=ext4 vmf.root", "root=virtiofs", "root=9p a b"] {
            try TestSupport.write("arg=/bin/true\n\(bad)\n", to: dir + "/bad.conf")
            let refused = try await TestSupport.run(dir + "/init", ["--explain-run", dir + "/bad.conf"])
            #expect(refused.termination == .exited(1) && refused.output == "error: settings:2: bad value for root\n", "\(bad): \(refused.output)")
        }
        // A tmpfs line with tmpfs's own options alone.
        try TestSupport.write("arg=/bin/true\ntmpfs=size=64m,mode=1777 /x\n", to: dir + "/own.conf")
        let own = try await TestSupport.run(dir + "/init", ["--explain-run", dir + "/own.conf"])
        #expect(own.output.contains("tmpfs: rw [size=64m,mode=1777] /x\n"), "\(own.output)")
        // What the init refuses in a tmpfs line: a relative path, an option it does not know,
        // a value with characters that are not a number and unit.
        for value in ["rw run", "rw,bogus /t", "size=1m,x /t", "size=1m;rm /t", "-"] {
            try TestSupport.write("arg=/bin/true\ntmpfs=\(value)\n", to: dir + "/tmpfs.conf")
            let refused = try await TestSupport.runner.run(Command(dir + "/init", ["--explain-run", dir + "/tmpfs.conf"]), output: .capture)
            #expect(refused.output.contains("settings:2: bad value for tmpfs"), "\(value): \(refused.output)")
        }
        try TestSupport.write("arg=/bin/true\nbogus=1\n", to: dir + "/bad.conf")
        let bad = try await TestSupport.runner.run(Command(dir + "/init", ["--explain-run", dir + "/bad.conf"]), output: .capture)
        #expect(bad.output.contains("settings:2: unknown key 'bogus'"))
    }

    @Test("an OCI process's groups, limits, capabilities, no_new_privs and umask: the init's parser reads them back, and refuses malformed ones", .tags(.integration), .needsTool("gcc"))
    func processKeys() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init")
        func explain(_ lines: [String]) async throws -> CommandResult {
            try TestSupport.write((["arg=/bin/true"] + lines).map { $0 + "\n" }.joined(), to: dir + "/process.conf")
            return try await TestSupport.runner.run(Command(dir + "/init", ["--explain-run", dir + "/process.conf"]), output: .capture)
        }
        let read = try await explain([
            "groups=10,20", "rlimit=NOFILE 1024 2048", "rlimit=rlimit_core 0 unlimited", "rlimit=Stack unlimited unlimited",
            "capbounding=a80425fb", "capeffective=A80425FB", "cappermitted=a80425fb", "capambient=0", "nonewprivs=1", "umask=027",
        ])
        #expect(read.termination == .exited(0))
        #expect(read.output.contains("""
            tty: 0
            groups: 10,20
            rlimit: NOFILE 1024 2048
            rlimit: CORE 0 unlimited
            rlimit: STACK unlimited unlimited
            caps: bounding=a80425fb effective=a80425fb permitted=a80425fb inheritable=0 ambient=0
            nonewprivs: 1
            umask: 0027
            hostname: vmfactory

            """), "\(read.output)")
        // Only what is given is printed: none of it without the keys, no caps line for nonewprivs=0.
        let plain = try await explain(["nonewprivs=0"])
        #expect(plain.termination == .exited(0) && plain.output.contains("tty: 0\nhostname: vmfactory\n"), "\(plain.output)")
        // An empty groups= is no supplementary group at all; the largest gid and 64 groups are taken.
        #expect(try await explain(["groups="]).output.contains("groups: none\n"))
        #expect(try await explain(["groups=0,4294967294"]).output.contains("groups: 0,4294967294\n"))
        let sixtyFour = (1...64).map(String.init).joined(separator: ",")
        #expect(try await explain(["groups=\(sixtyFour)"]).output.contains("groups: \(sixtyFour)\n"))
        // Every resource, by its name alone; the largest number is RLIM_INFINITY.
        let names = ["CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"]
        let all = try await explain(names.map { "rlimit=\($0) 1 18446744073709551615" })
        #expect(all.output.contains(names.map { "rlimit: \($0) 1 unlimited\n" }.joined()), "\(all.output)")
        let refused: [(String, String)] = [
            ("groups=10,staff", "groups"), ("groups=-1", "groups"), ("groups=+1", "groups"), ("groups= 1", "groups"), ("groups=4294967295", "groups"),
            ("groups=99999999999999999999999", "groups"), ("groups=1,,2", "groups"), ("groups=1,", "groups"), ("groups=,1", "groups"),
            ("groups=\(sixtyFour),65", "groups"),
            ("rlimit=BOGUS 1 2", "rlimit"), ("rlimit=RLIMIT_ 1 2", "rlimit"), ("rlimit=NOFILE 2048 1024", "rlimit"), ("rlimit=NOFILE unlimited 5", "rlimit"),
            ("rlimit=NOFILE 1", "rlimit"), ("rlimit=NOFILE -1 2", "rlimit"), ("rlimit=NOFILE 1 2 3", "rlimit"), ("rlimit=NOFILE  1 2", "rlimit"),
            ("rlimit=NOFILE 1 18446744073709551616", "rlimit"), ("rlimit=NOFILE 1 unlimitedx", "rlimit"), ("rlimit=", "rlimit"),
            ("capbounding=0x1", "capbounding"), ("capeffective=10000000000000000", "capeffective"), ("capambient=xyz", "capambient"),
            ("capinheritable=", "capinheritable"), ("cappermitted=-1", "cappermitted"), ("capbounding=a8 04", "capbounding"),
            ("nonewprivs=yes", "nonewprivs"), ("nonewprivs=2", "nonewprivs"),
            ("umask=0800", "umask"), ("umask=1000", "umask"), ("umask=rwx", "umask"), ("umask=", "umask"), ("umask=00777", "umask"),
            ("groups=10\u{1b}[2J", "groups"), ("rlimit=NOFILE\t1 2", "rlimit"), ("umask=\u{7f}", "umask"),
        ]
        for (line, key) in refused {
            let result = try await explain([line])
            #expect(result.termination == .exited(1) && result.output == "error: settings:2: bad value for \(key)\n", "\(line.debugDescription): \(result.output)")
        }
        // A resource once.
        let twice = try await explain(["rlimit=NOFILE 1 2", "rlimit=nofile 1 2"])
        #expect(twice.output == "error: settings:3: bad value for rlimit\n", "\(twice.output)")
    }

    @Test("the settings escape the line break inside \"\\r\\n\" too: no value splits a line")
    func carriageReturns() throws {
        var plan = try Self.plan(.x86_64)
        plan.process.environment = ["CRLF=a\r\nb", "BACKSLASH=c\\d"]
        let lines = plan.settings.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.contains("env=CRLF=a\r\\nb"))
        #expect(lines.contains("env=BACKSLASH=c\\\\d"))
        #expect(!lines.contains("b"))
    }

    @Test("command-line checks before anything runs: --rm with --keep, -p without a network, a bad --memory")
    func commandLine() async throws {
        let both = await TestSupport.runCommand(["run", "--rm", "--keep", "oci:/x", "true"])
        #expect(both.status != 0)
        #expect(both.stderr.contains("--rm and --keep cannot be used together"))
        let noNet = await TestSupport.runCommand(["run", "--network", "none", "-p", "80:80", "oci:/x"])
        #expect(noNet.stderr.contains("-p needs a network"))
        let memory = await TestSupport.runCommand(["run", "--memory", "lots", "oci:/x"])
        #expect(memory.stderr.contains("--memory lots is not a size"))
        let twice = await TestSupport.runCommand(["run", "--tmpfs", "/data", "--tmpfs", "/data/:size=1m", "oci:/x", "true"])
        #expect(twice.status == 125)
        #expect(twice.stderr.contains("/data is given more than one volume or tmpfs"), "\(twice.stderr)")
        let missing = await TestSupport.runCommand(["run", "-v", "/nonexistent-vmfactory:/data", "oci:/x", "true"])
        #expect(missing.status == 125)
        #expect(missing.stderr.contains("the host path /nonexistent-vmfactory does not exist"))
    }

    @Test("the run's overlay is what qemu-img create writes, byte for byte, for disks of several sizes; qemu-img checks it, qemu-io writes through it and the backing file keeps its bytes", .tags(.integration), .needsTool("qemu-img"), .needsTool("qemu-io"))
    func overlay() async throws {
        let dir = try TestSupport.temporaryDirectory()
        for size in ["64M", "300M", "1G", "5368709632", "2T"] {
            let base = dir + "/base-\(size).qcow2"
            _ = try await ImageFixtures.run("qemu-img", ["create", "-q", "-f", "qcow2", base, size])
            let ours = dir + "/ours-\(size).qcow2", theirs = dir + "/theirs-\(size).qcow2"
            try Qcow2Overlay.create(backing: base, at: ours)
            _ = try await ImageFixtures.run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, theirs])
            #expect(try FileStore.readData(ours) == FileStore.readData(theirs), "the overlay of a \(size) disk differs from qemu-img's")
            let check = try await TestSupport.run("qemu-img", ["check", ours])
            #expect(check.termination == .exited(0), "\(check.output)")
            let info = try await ImageFixtures.run("qemu-img", ["info", "--output=json", ours])
            #expect(info.contains("\"backing-filename\": \"\(base)\"") && info.contains("\"backing-filename-format\": \"qcow2\""), "\(info)")
        }

        // Written through QEMU's block layer: the write lands in the overlay, the base keeps its bytes.
        let base = dir + "/base-1G.qcow2", overlay = dir + "/ours-1G.qcow2"
        _ = try await ImageFixtures.run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 128k", base])
        let before = try await TestSupport.sha256sum(base)
        _ = try await ImageFixtures.run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xa5 64k 1m", overlay])
        let read = try await ImageFixtures.run("qemu-io", ["-f", "qcow2", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0xa5 64k 1m", overlay])
        #expect(!read.contains("Pattern verification failed"), "\(read)")
        #expect(try await TestSupport.sha256sum(base) == before)
        #expect(try await TestSupport.run("qemu-img", ["check", overlay]).termination == .exited(0))

        // Not a qcow2 file: said, with what to do.
        try FileStore.writeAtomically(Data(count: 4096), to: dir + "/raw.img")
        let error = #expect(throws: VMFactoryError.self) { try Qcow2Overlay.create(backing: dir + "/raw.img", at: dir + "/bad.qcow2") }
        #expect(error?.message.contains("is not a qcow2 disk") == true)
        #expect(error?.hint?.contains("vmfactory rootfs") == true)
        #expect(!FileStore.exists(dir + "/bad.qcow2"))
    }
}
