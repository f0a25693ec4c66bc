import CLinux
import Foundation
import Synchronization
import Testing
@testable import VMFactoryCore
@testable import VMFactoryRun

/// A one-answer HTTP server on the host, in the test process: every request gets `token`.
final class TokenServer: Sendable {
    let port: Int
    private let fd: Int32

    /// Listens on `address` (IPv4 or IPv6) at `port` (0: any free one).
    init(address: String, port: Int = 0, token: String) throws {
        let ipv6 = address.contains(":")
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMFactoryError(.io, "socket: \(errno)") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var (storage, length) = Self.socketAddress(address, port: port)
        let bound = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw VMFactoryError(.io, "cannot listen on \(address):\(port): \(String(cString: strerror(errno)))")
        }
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let portBytes = withUnsafeBytes(of: storage) { Array($0[2..<4]) }
        self.port = Int(portBytes[0]) << 8 | Int(portBytes[1])
        self.fd = fd
        let reply = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(token.utf8.count)\r\n\r\n\(token)"
        Thread.detachNewThread {
            while true {
                let connection = accept(fd, nil, nil)
                if connection < 0 {
                    if errno == EINTR { continue }
                    return
                }
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = read(connection, &buffer, buffer.count)
                SocketIO.writeAll(connection, reply)
                close(connection)
            }
        }
    }

    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    /// HOST:PORT as a socket address, IPv4 or IPv6 by the form of HOST.
    static func socketAddress(_ host: String, port: Int) -> (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET6, host, &address.sin6_addr)
            withUnsafeBytes(of: address) { bytes in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: bytes) } }
            return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        withUnsafeBytes(of: address) { bytes in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: bytes) } }
        return (storage, socklen_t(MemoryLayout<sockaddr_in>.size))
    }

    /// The host's first IPv4 address that is not a loopback one (its LAN address).
    static func hostAddress() -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return nil }
        defer { freeifaddrs(list) }
        for entry in sequence(first: first, next: { $0.pointee.ifa_next }) {
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            var text = [CChar](repeating: 0, count: 64)
            address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { inet4 in
                var value = inet4.pointee.sin_addr
                _ = inet_ntop(AF_INET, &value, &text, 64)
            }
            let name = String(cString: text)
            if !name.hasPrefix("127.") { return name }
        }
        return nil
    }
}

/// The run's QEMU as /proc shows it.
struct QEMUProcess {
    var pid: Int32
    var status: [String: String]

    /// The QEMU (or passt) whose command line mentions `text`; with `uid`, only one that runs
    /// as that user (so that a signal can never reach another suite's QEMU).
    static func find(_ program: String, mentioning text: String, uid: String? = nil) -> QEMUProcess? {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(name), let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
            let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            guard line.hasPrefix(program) || line.contains("/" + program), line.contains(text) else { continue }
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { continue }
            var fields: [String: String] = [:]
            for row in text.split(separator: "\n") {
                let parts = row.split(separator: ":", maxSplits: 1)
                if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
            }
            if let uid, fields["Uid"]?.split(separator: "\t").first.map(String.init) != uid { continue }
            return QEMUProcess(pid: pid, status: fields)
        }
        return nil
    }

    /// The peak resident size in KiB (VmHWM).
    var peakKiB: Int { Int(status["VmHWM"]?.split(separator: " ").first ?? "0") ?? 0 }
}

/// A hostile guest, real QEMU under TCG: the network it must not turn against the host, the
/// volumes it must not plant setuid files through, the QEMU it must not find running as root,
/// and limits that hold.
@Suite(
    "Untrusted guests stay in their box: network, volumes, a confined QEMU, limits",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("umoci"), .needsTool("qemu-img"), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"), .needsTool("passt"), .needsTool("curl")
)
struct SecurityBootTests {
    /// A shell function for the guest: `try NAME URL` prints NAME=BODY, or NAME=none.
    static let fetch = #"try() { r=$(timeout 5 wget -q -O - "$2" 2>/dev/null); echo "$1=${r:-none}"; }; "#

    static func answers(_ text: String) -> [String: String] {
        var found: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { found[parts[0]] = parts[1] }
        }
        return found
    }

    @Test("the host's loopback is out of reach by default (10.0.2.2, the DNS address, any other, and a route the guest made for 127.0.0.0/8); the host's LAN address is reached as docker's containers reach it; --network host-loopback gives the loopback back", arguments: Target.allCases)
    func loopbackOutOfReach(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let secret = "loopback-secret-\(UUID().uuidString.prefix(8))"
        let v4 = try TokenServer(address: "127.0.0.1", token: secret)
        defer { v4.stop() }
        let v6 = try TokenServer(address: "::1", port: v4.port, token: secret)
        defer { v6.stop() }
        let lan = try TokenServer(address: "0.0.0.0", token: "lan-service")
        defer { lan.stop() }
        let hostAddress = try #require(TokenServer.hostAddress(), "the host has no IPv4 address besides the loopback")
        let port = v4.port
        let script = Self.fetch + """
            try gateway http://10.0.2.2:\(port)/ & try dns http://10.0.2.3:\(port)/ & try other http://10.0.2.99:\(port)/ &
            try lan http://\(hostAddress):\(lan.port)/ & wait
            sysctl -w net.ipv4.conf.all.route_localnet=1 >/dev/null; sysctl -w net.ipv4.conf.eth0.route_localnet=1 >/dev/null
            ip route del local 127.0.0.0/8 table local; ip addr flush dev lo; ip link set lo down
            ip route add 127.0.0.0/8 via 10.0.2.2 dev eth0
            try crafted http://127.0.0.1:\(port)/
            """
        let run = try await vm.run([images.plain, "-c", script])
        #expect(run.status == 0, "\(run.stderr)")
        let seen = Self.answers(run.text)
        for name in ["gateway", "dns", "other", "crafted"] {
            #expect(seen[name] == "none", "\(name) reached the host's loopback: \(run.text)")
        }
        #expect(seen["lan"] == "lan-service", "the host's own address, as docs/security.md says: \(run.text)")
        #expect(run.stderr.contains("the network filter dropped"), "the filter says what it dropped: \(run.stderr)")

        let opted = try await vm.run(["--network", "host-loopback", images.plain, "-c", Self.fetch + "try gateway http://10.0.2.2:\(port)/"])
        #expect(Self.answers(opted.text)["gateway"] == secret, "\(opted.text) \(opted.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("--network restricted reaches nothing, neither the host nor anything else, while a -p port from the host comes in", arguments: Target.allCases)
    func restricted(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let lan = try TokenServer(address: "0.0.0.0", token: "lan-service")
        defer { lan.stop() }
        let hostAddress = try #require(TokenServer.hostAddress())
        let loopback = try TokenServer(address: "127.0.0.1", token: "loopback-service")
        defer { loopback.stop() }
        let port = try PortForwardProbe.freePort()
        let script = Self.fetch + """
            try gateway http://10.0.2.2:\(loopback.port)/ & try lan http://\(hostAddress):\(lan.port)/ & wait
            mkdir /www; echo served-from-the-guest > /www/index.html; echo listening; exec httpd -f -p 80 -h /www
            """
        let served = try await vm.run(["--network", "restricted", "-p", "\(port):80", images.plain, "-c", script]) { live in
            _ = await live.waitFor("listening")
            var body = ""
            for _ in 0..<60 {
                body = (try? await RunBootTests.curl("http://127.0.0.1:\(port)/")) ?? ""
                if !body.isEmpty { break }
                try? await Task.sleep(for: .milliseconds(500))
            }
            #expect(body == "served-from-the-guest\n")
            live.child.signalLeader(SIGTERM)
        }
        let seen = Self.answers(served.text)
        #expect(seen["gateway"] == "none" && seen["lan"] == "none", "\(served.text)")
        await vm.expectNothingLeft()
    }

    @Test("a 9p volume: the guest's setuid root program, device node and setgid folder are the QEMU user's plain files on the host, as the guest set them inside; host files keep their owners", arguments: Target.allCases)
    func volumes(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let volume = dir + "/shared"
        try FileStore.createDirectory(volume)
        chmod(volume, 0o777)
        try TestSupport.write("the host's\n", to: volume + "/host.txt")
        chmod(volume + "/host.txt", 0o644)
        let script = """
            cp /bin/busybox /v/sh && chown 0:0 /v/sh && chmod 4755 /v/sh
            mknod /v/null c 1 3; mkdir /v/d && chmod 2775 /v/d
            stat -c '%n %u %g %a %F' /v/sh /v/null /v/d; cat /v/host.txt
            echo more >> /v/host.txt 2>/dev/null && echo appended || echo refused
            """
        let run = try await vm.run(["-v", volume + ":/v", images.plain, "-c", script])
        #expect(run.status == 0, "\(run.stderr)")
        // Inside: what the guest set.
        #expect(run.text.contains("/v/sh 0 0 4755 regular file"), "\(run.text)")
        #expect(run.text.contains("/v/null 0 0 644 character special file"), "\(run.text)")
        #expect(run.text.contains("/v/d 0 0 2775 directory"), "\(run.text)")
        #expect(run.text.contains("the host's\nrefused"), "guest root cannot write a root-owned host file: \(run.text)")
        // On the host: QEMU's user's plain private files.
        let qemuUser = geteuid() == 0 ? uid_t(65534) : geteuid()
        for (name, kind) in [("sh", S_IFREG), ("null", S_IFREG), ("d", S_IFDIR)] {
            var st = stat()
            #expect(lstat(volume + "/" + name, &st) == 0)
            #expect(st.st_uid == qemuUser, "\(name) is owned by \(st.st_uid)")
            #expect(st.st_mode & S_IFMT == kind, "\(name) has type \(String(st.st_mode & S_IFMT, radix: 8))")
            #expect(st.st_mode & 0o6000 == 0, "\(name) is setuid or setgid on the host: \(String(st.st_mode, radix: 8))")
            #expect(st.st_mode & 0o077 == 0, "\(name) is open to others on the host: \(String(st.st_mode & 0o777, radix: 8))")
            var names = [CChar](repeating: 0, count: 4096)
            let length = llistxattr(volume + "/" + name, &names, names.count)
            let attributes = length > 0 ? String(decoding: names.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
            #expect(attributes.contains("user.virtfs.mode"), "the guest's view is kept in attributes: \(attributes)")
        }
        var host = stat()
        #expect(stat(volume + "/host.txt", &host) == 0)
        #expect(host.st_uid == 0 && host.st_mode & 0o7777 == 0o644)
        #expect(try String(contentsOfFile: volume + "/host.txt", encoding: .utf8) == "the host's\n")
        await vm.expectNothingLeft()
    }

    @Test("as root, a volume QEMU's user cannot use is refused before the run, saying what to do")
    func volumeAccess() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let closed = dir + "/closed"
        try FileStore.createDirectory(closed)
        chmod(closed, 0o700)
        let run = try await vm.run(["-v", closed + ":/v", images.plain, "-c", "true"])
        #expect(run.status == 125)
        #expect(run.stderr.contains("QEMU runs as uid 65534, gid 65534, which cannot use the volume \(closed)"), "\(run.stderr)")
        #expect(run.stderr.contains("setfacl -m u:65534:rwx \(closed)"), "\(run.stderr)")
        let named = try await vm.run(["--vmm-user", "root", "-v", closed + ":/v", images.plain, "-c", "true"])
        #expect(named.status != 0 && named.stderr.contains("--vmm-user root is root"), "\(named.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("QEMU and passt run as nobody with seccomp filters and no new privileges; a QEMU killed or stopped under the guest ends the run cleanly")
    func confinedQEMU() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let seen = Mutex<(qemu: QEMUProcess?, passt: QEMUProcess?)>((nil, nil))
        let killed = try await vm.run(["--timeout", "120s", images.plain, "-c", "echo up; sleep 600"]) { live in
            _ = await live.waitFor("up")
            let qemu = QEMUProcess.find("qemu-system-x86_64", mentioning: "vmfactory-run:" + vm.cache, uid: "65534")
            let passt = QEMUProcess.find("passt", mentioning: "--one-off")
            seen.withLock { $0 = (qemu, passt) }
            if let qemu { kill(qemu.pid, SIGKILL) }
        }
        let (qemu, passt) = seen.withLock { $0 }
        let found = try #require(qemu, "no QEMU of the run in /proc")
        #expect(found.status["Uid"]?.split(separator: "\t").map(String.init) == ["65534", "65534", "65534", "65534"], "\(found.status["Uid"] ?? "")")
        #expect(found.status["Gid"]?.split(separator: "\t").first == "65534")
        #expect(found.status["Groups"]?.isEmpty == true, "supplementary groups: \(found.status["Groups"] ?? "")")
        #expect(found.status["Seccomp"] == "2")
        #expect(found.status["NoNewPrivs"] == "1")
        #expect(passt?.status["Uid"]?.hasPrefix("65534") == true && passt?.status["Seccomp"] == "2", "passt: \(String(describing: passt?.status))")
        #expect(killed.status == 125, "\(killed.stderr)")
        #expect(killed.stderr.contains("the VM ended (QEMU signal 9) before the command finished"), "\(killed.stderr)")
        await vm.expectNothingLeft()

        let stopped = try await vm.run(["--timeout", "5s", images.plain, "-c", "echo up; sleep 600"]) { live in
            _ = await live.waitFor("up")
            if let qemu = QEMUProcess.find("qemu-system-x86_64", mentioning: "vmfactory-run:" + vm.cache, uid: "65534") { kill(qemu.pid, SIGSTOP) }
        }
        #expect(stopped.status == 124, "a hung QEMU is ended by --timeout: \(stopped.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("memory: a guest that allocates past --memory has its command killed inside (137, said why) and QEMU stays under --memory plus 256 MiB", arguments: Target.allCases)
    func memory(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await RunVM.make()
        let peak = Mutex(0)
        let run = try await vm.run(["--memory", "256m", images.plain, "-c", #"echo up; exec awk 'BEGIN { s = "x"; while (1) s = s s }'"#]) { live in
            _ = await live.waitFor("up")
            while !live.child.hasExited {
                if let qemu = QEMUProcess.find(target.qemuSystem, mentioning: vm.cache) { peak.withLock { $0 = max($0, qemu.peakKiB) } }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(run.status == 137, "\(run.stderr)")
        #expect(run.stderr.contains("the guest ran out of memory and its kernel's OOM killer ended the command (--memory 256m)"), "\(run.stderr)")
        let peakMiB = peak.withLock { $0 } / 1024
        print("\(target): QEMU's peak resident size at --memory 256m: \(peakMiB) MiB")
        #expect(peakMiB > 0 && peakMiB < 256 + 256, "QEMU's peak resident size: \(peakMiB) MiB")
        await vm.expectNothingLeft()
    }

    @Test("--pids-limit 64: a command that forks without end gets EAGAIN at 64 tasks in the guest; the run ends normally")
    func pidsLimit() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        // The shell gives up at the first fork that fails; the rest uses builtins only, since
        // every task the cgroup allows is taken.
        let script = """
            ( i=0; while [ $i -lt 500 ]; do sleep 600 & i=$((i+1)); done )
            read current < /sys/fs/cgroup/vmfactory-command/pids.current; read max < /sys/fs/cgroup/vmfactory-command/pids.max
            echo "current=$current max=$max"
            """
        let run = try await vm.run(["--pids-limit", "64", images.plain, "-c", script])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.contains("can't fork: Resource temporarily unavailable"), "\(run.stderr)")
        let words = Self.answers(run.text.replacingOccurrences(of: " ", with: "\n"))
        #expect(words["max"] == "64", "\(run.text)")
        #expect((Int(words["current"] ?? "") ?? 999) <= 64, "\(run.text)")
        let unlimited = try await vm.run([images.plain, "-c", "cat /proc/self/cgroup"])
        #expect(unlimited.text == "0::/\n", "without --pids-limit the command stays in the root cgroup: \(unlimited.text)")
        await vm.expectNothingLeft()
    }

    @Test("the writable layer stops at the disk's virtual size: the guest gets ENOSPC, the kept overlay is not larger than that")
    func writableLayer() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let run = try await vm.run(["--keep", images.plain, "-c", "dd if=/dev/zero of=/fill bs=1M 2>&1 | tail -3; df -k / | tail -1"])
        #expect(run.text.contains("No space left on device"), "\(run.text)")
        let kept = try #require(run.stderr.split(separator: "\n").first { $0.contains("kept the run's folder") }.map { String($0.split(separator: " ").last!) }, "\(run.stderr)")
        let info = try await TestSupport.run("qemu-img", ["info", "--output=json", kept + "/disk.qcow2"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(info.output.utf8)) as? [String: Any])
        let virtual = try #require(json["virtual-size"] as? Int)
        let size = Int(FileStore.fileSize(kept + "/disk.qcow2") ?? 0)
        #expect(size > virtual / 2, "the guest filled the disk: \(size) of \(virtual)")
        #expect(size <= virtual + virtual / 50 + (4 << 20), "the overlay (\(size) bytes) grew past the virtual size \(virtual) and its metadata")
        try FileStore.removeTree(kept)
    }

    /// The flood comes from dd in 1 MiB writes: `yes | head -c 2G` is the same flood, ten times
    /// slower under TCG (busybox's head writes 4 KiB at a time).
    @Test("2 GiB of stdout into a reader that stops: vmfactory holds back instead of buffering; its peak resident size stays under 96 MiB, and every byte arrives")
    func outputFlood() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await RunVM.make()
        let command = Command(TestSupport.executable, vm.prefix + [images.plain, "-c", "dd if=/dev/zero bs=1M count=2048 2>/dev/null"])
        let child = try await ChildProcess.spawn(command, environment: command.environment(on: TestSupport.environment), stdout: .pipe, stderr: .pipe)
        async let said = PipeReader.readAll(child.stderr!)
        let fd = child.stdout!
        let peak = Mutex(0)
        let sampler = Task.detached {
            while !child.hasExited {
                if let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8),
                   let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
                   let kib = Int(line.split(separator: " ").dropFirst().first ?? "") {
                    peak.withLock { $0 = max($0, kib) }
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        // The reader stops for 15 seconds: the guest's writes must wait, not pile up here.
        try await Task.sleep(for: .seconds(15))
        let total: Int = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var count = 0
                PipeReader.forEachChunk(fd) { chunk in
                    count += chunk.count
                    return true
                }
                close(fd)
                continuation.resume(returning: count)
            }
        }
        let status = await child.wait()
        sampler.cancel()
        let stderr = String(decoding: await said, as: UTF8.self)
        #expect(status == .exited(0), "\(stderr)")
        #expect(total == 2 << 30, "received \(total) bytes")
        let peakMiB = peak.withLock { $0 } / 1024
        print("vmfactory's peak resident size through 2 GiB of stdout: \(peakMiB) MiB")
        #expect(peakMiB > 0 && peakMiB < 96, "vmfactory's peak resident size: \(peakMiB) MiB")
        await vm.expectNothingLeft()
    }
}
