import Foundation
import Synchronization
import Testing
@testable import VMFactoryCore
@testable import VMFactoryRun

/// Debian 12 root file systems made by mmdebstrap from Debian's mirror, as tarballs that
/// `vmfactory run tar:FILE` takes, each made once and kept in the test cache under a key of
/// everything that decides it (the architecture, the variant, the packages, the hooks).
enum DebianImages {
    struct Spec: Sendable, Hashable {
        var architecture: String
        /// mmdebstrap's variant: `apt` runs the packages' maintainer scripts (on this host's
        /// architecture); `extract` only unpacks them, so that a foreign architecture needs no
        /// emulator, and the hooks do the little configuration the tests need.
        var variant: String
        var packages: [String]
        /// Commands run once the packages are in, with "$1" the root (mmdebstrap's
        /// `--customize-hook`; `--extract-hook` for the extract variant, which has no other).
        var hooks: [String]
        /// Other mmdebstrap options.
        var options: [String] = []

        /// mmdebstrap's arguments but the output.
        var arguments: [String] {
            var arguments = [
                "--variant=\(variant)", "--arch=\(architecture)", "--include=\(packages.joined(separator: ","))",
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
            ]
            arguments += hooks.map { (variant == "extract" ? "--extract-hook=" : "--customize-hook=") + $0 } + options
            return arguments + ["bookworm"]
        }

        /// The tarball's name in the test cache: everything mmdebstrap is told.
        var key: String { SHA256Digest.of(Data(arguments.joined(separator: "\n").utf8)).hex }
    }

    /// Every service of the compatibility suite in one image (one mmdebstrap run instead of
    /// six): a web server, a database, a key-value store, an interpreter with TLS, a compiler
    /// with make and git, an SSH server. /run/sshd and /run/postgresql are made as the
    /// Dockerfiles of sshd and PostgreSQL images make them, and kept (mmdebstrap empties /run
    /// unless told not to).
    static let services = Spec(
        architecture: "amd64", variant: "apt",
        packages: ["nginx-light", "postgresql", "redis-server", "python3", "ca-certificates", "openssh-server", "gcc", "libc6-dev", "make", "git"],
        hooks: ["mkdir -p \"$1/run/sshd\"", "chroot \"$1\" install -d -o postgres -g postgres -m 2775 /run/postgresql"],
        options: ["--skip=cleanup/run"]
    )

    /// s390x: the interpreter and the web server, unpacked; the folders, users and default
    /// site that base-files and the maintainer scripts would have set up.
    static let s390x = Spec(
        architecture: "s390x", variant: "extract",
        packages: ["python3", "nginx-light", "base-passwd"],
        hooks: [
            "mkdir -p \"$1/run\" \"$1/tmp\" && chmod 1777 \"$1/tmp\"",
            "cp \"$1/usr/share/base-passwd/passwd.master\" \"$1/etc/passwd\"",
            "cp \"$1/usr/share/base-passwd/group.master\" \"$1/etc/group\"",
            "ln -sf /etc/nginx/sites-available/default \"$1/etc/nginx/sites-enabled/default\"",
            "mkdir -p \"$1/var/www/html\" && cp \"$1/usr/share/nginx/html/index.html\" \"$1/var/www/html/index.nginx-debian.html\"",
        ]
    )

    private static let made = Mutex<[String: Task<String, any Error>]>([:])

    /// The tarball of `spec`: from the test cache, or made now (to a temporary name, renamed
    /// once complete).
    static func tarball(_ spec: Spec) async throws -> String {
        let task = made.withLock { tasks in
            if let task = tasks[spec.key] { return task }
            let task = Task { try await make(spec) }
            tasks[spec.key] = task
            return task
        }
        return try await task.value
    }

    private static func make(_ spec: Spec) async throws -> String {
        let folder = TestSupport.sharedCache + "/debian-images"
        let path = folder + "/\(spec.key).tar"
        if FileStore.isRegularFile(path) { return path }
        try FileStore.createDirectory(folder)
        let partial = folder + "/.\(spec.key).\(getpid()).tar"
        let arguments = spec.arguments + [partial]
        let result = try await TestSupport.runner.run(Command("mmdebstrap", arguments), output: .capture)
        guard result.succeeded else {
            unlink(partial)
            throw VMFactoryError(.processFailed, "mmdebstrap failed for \(spec.architecture) \(spec.packages)", details: result.output.split(separator: "\n").suffix(20).map(String.init))
        }
        guard rename(partial, path) == 0 else { throw VMFactoryError.io("cannot rename", path: partial) }
        return path
    }
}

/// Real services from Debian's packages in microVMs, each driven by its own client: from the
/// host through `-p` (curl, redis-cli, ssh) or inside the guest (psql, python3, make). The
/// runs share one cache (each image is converted once), so they take turns: a test's check that
/// nothing of its run is left looks at the whole cache.
@Suite(
    "Real services from Debian's packages: a web server, a database, a key-value store, an interpreter, a build, an SSH server",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("mmdebstrap"), .needsTool("qemu-img"), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x"),
    .needsTool("curl"), .needsTool("redis-cli"), .needsTool("ssh"), .needsTool("ssh-keygen"), .needsTool("openssl"), .serialized
)
struct CompatibilityBootTests {
    /// One cache for the suite's runs: each image is converted once.
    static let cache = TestScope.processRoot + "/compatibility-cache"

    static func vm() async throws -> RunVM {
        let built = try await SharedBuild.shared.get()
        try FileStore.createDirectory(cache)
        return RunVM(cache: cache, output: built.output)
    }

    /// Polls `client` every half second until it succeeds (at most `seconds`, and no longer
    /// than the run lasts); its output.
    static func whenReady(_ live: RunVM.Live, within seconds: Int = 300, _ client: @Sendable () async -> String?) async -> String? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline, !live.child.hasExited {
            if let answer = await client() { return answer }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return nil
    }

    static func tool(_ name: String, _ arguments: [String]) async -> String? {
        guard let result = try? await TestSupport.runner.run(Command(name, arguments), output: .capture), result.succeeded else { return nil }
        return result.output
    }

    @Test("nginx with Debian's default site (listen [::]:80) serves through -p on 127.0.0.1 and [::1], and stops on SIGTERM", arguments: Target.allCases)
    func webServer(_ target: Target) async throws {
        let image = try await DebianImages.tarball(target == .x86_64 ? DebianImages.services : DebianImages.s390x)
        let vm = try await Self.vm()
        let port = try PortForwardProbe.freePort()
        let served = try await vm.run(["--target", target.rawValue, "--timeout", "600s", "-p", "\(port):80", "tar:" + image, "nginx", "-g", "daemon off;"]) { live in
            let page = await Self.whenReady(live) { await Self.tool("curl", ["-sf", "--max-time", "5", "http://127.0.0.1:\(port)/"]) }
            #expect(page?.contains("<title>Welcome to nginx!</title>") == true, "\(page ?? "no answer")")
            // localhost as ::1: vmfactory's listener on [::1] relays to the same guest port.
            let six = await Self.tool("curl", ["-sf", "--max-time", "5", "-g", "http://[::1]:\(port)/"])
            #expect(six == page)
            live.child.signalLeader(SIGTERM)
        }
        #expect(served.status == 0, "nginx ends on SIGTERM: \(served.status) \(served.stderr)")
        #expect(!served.stderr.contains("Address family not supported"), "\(served.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("python3 -m http.server --bind :: (one socket on [::], IPv4 mapped into it) serves the host's IPv4 and IPv6 clients through -p")
    func dualStackServer() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let port = try PortForwardProbe.freePort()
        let served = try await vm.run(["--timeout", "600s", "-p", "\(port):8000", "-w", "/etc", "tar:" + image, "python3", "-m", "http.server", "--bind", "::", "8000"]) { live in
            let page = await Self.whenReady(live) { await Self.tool("curl", ["-sf", "--max-time", "5", "http://127.0.0.1:\(port)/hostname"]) }
            #expect(page?.isEmpty == false, "no answer on 127.0.0.1:\(port)")
            #expect(await Self.tool("curl", ["-sf", "--max-time", "5", "-g", "http://[::1]:\(port)/hostname"]) == page)
            live.child.signalLeader(SIGTERM)
        }
        #expect(served.status == 143 || served.status == 0, "\(served.status) \(served.stderr)")
        #expect(!served.stderr.contains("Address family not supported"), "\(served.stderr)")
        // http.server logs each request on stderr, with the client's address: IPv4, mapped.
        #expect(served.stderr.contains("::ffff:10.0.2.2"), "\(served.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("a UDP service through -p PORT/udp: python answers datagrams sent to 127.0.0.1 and [::1], so the guest's replies find their way back")
    func udpService() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let port = try PortForwardProbe.freePort()
        let script = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", 5353))
            print("ready", flush=True)
            while True:
                data, peer = s.recvfrom(512)
                s.sendto(b"echo:" + data, peer)
            """
        let served = try await vm.run(["--timeout", "600s", "-p", "\(port):5353/udp", "tar:" + image, "python3", "-c", script]) { live in
            _ = await live.waitFor("ready")
            for host in ["127.0.0.1", "::1"] {
                var answer: String?
                for attempt in 0..<10 where answer == nil {
                    // recv blocks for up to 2 s: on a thread of its own, not the test's executor.
                    answer = await withCheckedContinuation { continuation in
                        Thread.detachNewThread { continuation.resume(returning: Self.udpExchange(host: host, port: port, message: "hello-\(attempt)")) }
                    }
                }
                #expect(answer?.hasPrefix("echo:hello-") == true, "no answer from \(host):\(port)/udp")
            }
            live.child.signalLeader(SIGTERM)
        }
        #expect(served.status == 143 || served.status == 0, "\(served.status) \(served.stderr)")
        await vm.expectNothingLeft()
    }

    /// Whether the host has an IPv6 address besides the loopback and link-local ones: passt's
    /// router advertisements then give the guest one in the host's prefix.
    static var hostHasRoutableIPv6: Bool {
        let table = (try? String(contentsOfFile: "/proc/net/if_inet6", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            return fields.count == 6 && fields[5] != "lo" && fields[3] != "20" && fields[3] != "10"
        }
    }

    /// Sends `message` to HOST:PORT over UDP and waits 2 s for one answer.
    static func udpExchange(host: String, port: Int, message: String) -> String? {
        let ipv6 = host.contains(":")
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var (storage, length) = TokenServer.socketAddress(host, port: port)
        let sent = Array(message.utf8).withUnsafeBytes { bytes in
            withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes.baseAddress, bytes.count, 0, $0, length) } }
        }
        guard sent == message.utf8.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer.prefix(count), as: UTF8.self) : nil
    }

    @Test("PostgreSQL 15: initdb, a server listening on ::1 and 127.0.0.1, psql's select 1 and a parallel query, a clean stop")
    func database() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let script = """
            set -e
            bin=/usr/lib/postgresql/15/bin
            $bin/initdb -D /tmp/db -U postgres --auth=trust > /tmp/initdb.log
            $bin/pg_ctl -D /tmp/db -l /tmp/server.log -o "-c listen_addresses='::1,127.0.0.1' -c max_parallel_workers_per_gather=2" -w -t 300 start > /dev/null
            psql -h ::1 -U postgres -Atc 'select 1'
            # One session: the settings that make a small table's scan parallel, the query, and
            # EXPLAIN ANALYZE saying how many workers ran it.
            psql -h 127.0.0.1 -U postgres -qAt -c 'set parallel_setup_cost = 0' -c 'set parallel_tuple_cost = 0' \
                -c 'set min_parallel_table_scan_size = 0' -c 'create table t as select g from generate_series(1, 200000) g' -c 'analyze t' \
                -c 'select count(*), sum(g) from t' -c 'explain (analyze, costs off, timing off, summary off) select sum(g) from t' \
                | sed -n 's/^ *//; /^[0-9]/p; /^Workers Launched/p'
            $bin/pg_ctl -D /tmp/db -m fast -w stop > /dev/null
            grep -c 'could not create' /tmp/server.log || true
            """
        let ran = try await vm.run(["--timeout", "900s", "--cpus", "2", "-u", "postgres", "tar:" + image, "sh", "-c", script])
        #expect(ran.status == 0, "\(ran.stderr)\n\(ran.text)")
        // select 1; the count and the sum of 1..200000, by two parallel workers; no listener
        // that could not be made.
        #expect(ran.text == "1\n200000|20000100000\nWorkers Launched: 2\n0\n", "\(ran.text)")
        await vm.expectNothingLeft()
    }

    @Test("redis-server on its default addresses (IPv4 and IPv6) answers the host's redis-cli through -p")
    func keyValue() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let port = try PortForwardProbe.freePort()
        let served = try await vm.run(["--timeout", "600s", "-p", "\(port):6379", "tar:" + image, "redis-server", "--protected-mode", "no", "--save", ""]) { live in
            let pong = await Self.whenReady(live) { await Self.tool("redis-cli", ["-h", "127.0.0.1", "-p", "\(port)", "ping"]) }
            #expect(pong == "PONG\n")
            #expect(await Self.tool("redis-cli", ["-h", "127.0.0.1", "-p", "\(port)", "set", "greeting", "hello from the host"]) == "OK\n")
            #expect(await Self.tool("redis-cli", ["-h", "::1", "-p", "\(port)", "get", "greeting"]) == "hello from the host\n")
            #expect(await Self.tool("redis-cli", ["-h", "127.0.0.1", "-p", "\(port)", "shutdown", "nosave"]) != nil)
        }
        #expect(served.status == 0, "\(served.stderr)")
        // redis-server says it when its IPv6 listener fails ("Address family not supported").
        #expect(!served.text.contains("Could not create server TCP listening socket"), "\(served.text)")
        #expect(served.text.contains("Ready to accept connections"), "\(served.text)")
        await vm.expectNothingLeft()
    }

    /// The interpreter's checks, in the image's python3: threads, processes, sqlite3, TLS over
    /// IPv6 loopback with a certificate made on the host, the kernel's random bytes.
    static let pythonChecks = #"""
        import concurrent.futures, multiprocessing, os, socket, sqlite3, ssl, sys, threading
        def square(n): return n * n
        with multiprocessing.Pool(2) as pool: print("processes", sum(pool.map(square, range(100))))
        with concurrent.futures.ThreadPoolExecutor(4) as workers: print("threads", sum(workers.map(square, range(100))))
        db = sqlite3.connect(":memory:"); db.execute("create table t (x)"); db.executemany("insert into t values (?)", [(i,) for i in range(1000)])
        print("sqlite3", db.execute("select sum(x) from t").fetchone()[0])
        print("urandom", len(set(os.urandom(32))) > 8)
        six = socket.socket(socket.AF_INET6); six.bind(("::", 0)); six.listen(1)
        four = socket.create_connection(("127.0.0.1", six.getsockname()[1])); peer = six.accept()[1][0]
        print("dual-stack", peer); four.close(); six.close()
        if len(sys.argv) > 1:
            server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); server_side.load_cert_chain(sys.argv[1] + "/cert.pem", sys.argv[1] + "/key.pem")
            client_side = ssl.create_default_context(cafile=sys.argv[1] + "/cert.pem")
            if len(sys.argv) > 2: print("system CAs", ssl.create_default_context().cert_store_stats()["x509_ca"] > 100)
            listener = socket.socket(socket.AF_INET6); listener.bind(("::1", 0)); listener.listen(1)
            def serve():
                connection, _ = listener.accept()
                with server_side.wrap_socket(connection, server_side=True) as tls: tls.sendall(tls.recv(100).upper())
            thread = threading.Thread(target=serve); thread.start()
            with client_side.wrap_socket(socket.create_connection(("::1", listener.getsockname()[1])), server_hostname="localhost") as tls:
                tls.sendall(b"over tls"); print("tls", tls.recv(100).decode(), tls.version())
            thread.join()
        """#

    @Test("python3: a process pool, threads, sqlite3, os.urandom, a socket on [::] reached over IPv4, TLS 1.3 over ::1 with a certificate from the host (and the system's CAs on x86_64)", arguments: Target.allCases)
    func interpreter(_ target: Target) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await DebianImages.tarball(target == .x86_64 ? DebianImages.services : DebianImages.s390x)
        let vm = try await Self.vm()
        try TestSupport.write(Self.pythonChecks, to: dir + "/checks.py")
        let made = try await TestSupport.runner.run(Command("openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem",
        ]), output: .capture)
        #expect(made.succeeded, "\(made.output)")
        // openssl writes the key 0600; QEMU's user (nobody, the tests run as root) reads the
        // volume's files as any other user would (docs/security.md).
        chmod(dir + "/key.pem", 0o644)
        // The system's CAs only where ca-certificates' maintainer script made the bundle (x86_64).
        let arguments = target == .x86_64 ? ["/work", "system-cas"] : ["/work"]
        let ran = try await vm.run(["--target", target.rawValue, "--timeout", "900s", "--cpus", "2", "-v", dir + ":/work:ro", "tar:" + image, "python3", "/work/checks.py"] + arguments)
        #expect(ran.status == 0, "\(ran.stderr)\n\(ran.text)")
        // The IPv4 client reached the socket on [::] as an IPv4-mapped address.
        var expected = "processes 328350\nthreads 328350\nsqlite3 499500\nurandom True\ndual-stack ::ffff:127.0.0.1\n"
        expected += (target == .x86_64 ? "system CAs True\n" : "") + "tls OVER TLS TLSv1.3\n"
        #expect(ran.text == expected)
        await vm.expectNothingLeft()
    }

    @Test("a CI job: git init and commit, make -j2 compiling C with gcc, the program run; -u nobody in a --tmpfs work folder")
    func build() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let script = #"""
            set -e
            cd /work
            printf '#include <stdio.h>\nint twice(int);\nint main(void) { printf("built and ran: %%d\\n", twice(21)); return 0; }\n' > main.c
            printf 'int twice(int x) { return 2 * x; }\n' > twice.c
            printf 'hello: main.o twice.o\n\t$(CC) -o $@ $^\n' > Makefile
            git init -q . && git add . && git -c user.name=ci -c user.email=ci@example.org commit -qm 'the job'
            make -s -j2 CC=gcc
            ./hello
            git log --format=%s
            """#
        let ran = try await vm.run(["--timeout", "900s", "--cpus", "2", "--tmpfs", "/work:exec,uid=65534", "-u", "nobody", "-e", "HOME=/work", "tar:" + image, "sh", "-c", script])
        #expect(ran.status == 0, "\(ran.stderr)\n\(ran.text)")
        #expect(ran.text == "built and ran: 42\nthe job\n")
        await vm.expectNothingLeft()
    }

    @Test("openssh-server as Debian packages it (sshd -D): the host logs in with a key through -p and runs a command")
    func sshServer() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let keys = dir + "/keys"
        try FileStore.createDirectory(keys)
        let made = try await TestSupport.runner.run(Command("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "vmfactory-test", "-f", dir + "/id"]), output: .capture)
        #expect(made.succeeded, "\(made.output)")
        try FileManager.default.copyItem(atPath: dir + "/id.pub", toPath: keys + "/authorized_keys")
        let port = try PortForwardProbe.freePort()
        let script = "install -d -m 700 /root/.ssh && install -m 600 /keys/authorized_keys /root/.ssh/ && exec /usr/sbin/sshd -D -e"
        let served = try await vm.run(["--timeout", "600s", "--hostname", "ssh-box", "-p", "\(port):22", "-v", keys + ":/keys:ro", "tar:" + image, "sh", "-c", script]) { live in
            let options = ["-i", dir + "/id", "-p", "\(port)", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
            let answer = await Self.whenReady(live) { await Self.tool("ssh", options + ["root@127.0.0.1", "echo logged in to $(hostname) as $(id -un)"]) }
            #expect(answer == "logged in to ssh-box as root\n", "\(answer ?? "no login")")
            live.child.signalLeader(SIGTERM)
        }
        #expect(served.status == 0 || served.status == 143, "\(served.status) \(served.stderr)")
        #expect(!served.stderr.contains("Missing privilege separation directory"), "\(served.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("what a container host gives a process, as docker gives it: the image's /run and /tmp, docker's /etc/hosts, /dev/shm and limits, IPv6 on lo and eth0 and no other interface, packet and ping sockets, a writable somaxconn; --read-only with --tmpfs")
    func containerHost() async throws {
        let image = try await DebianImages.tarball(DebianImages.services)
        let vm = try await Self.vm()
        let script = #"""
            echo "run-sshd $(test -d /run/sshd && echo kept)"
            awk '$5 == "/tmp" || $5 == "/run" { print "mounted", $5 }' /proc/self/mountinfo
            awk '$5 == "/dev/shm" { split($0, p, " - "); print "shm", $6, p[2] }' /proc/self/mountinfo
            cat /etc/hosts
            echo "files $(ulimit -Sn):$(ulimit -Hn)"
            echo "ports $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start) ping $(cat /proc/sys/net/ipv4/ping_group_range | tr '\t' ' ')"
            # A knob servers set at start (redis asks for it): the guest's own.
            echo 1024 > /proc/sys/net/core/somaxconn && echo "somaxconn $(cat /proc/sys/net/core/somaxconn)"
            echo "interfaces $(ls /sys/class/net | tr '\n' ' ')"
            grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6 && echo "lo ::1"
            python3 -c '
            import socket
            socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).close(); print("packet ok")
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close(); print("ping ok")
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.bind(("::1", 0)); print("inet6 ok")
            '
            # An address from the router advertisement (passt's carry the host's prefix), not
            # the link-local one (scope 20).
            for i in $(seq 100); do awk '$6 == "eth0" && $4 != "20"' /proc/net/if_inet6 | grep -q . && break; sleep 0.1; done
            awk '$6 == "eth0" && $4 != "20" { print "eth0 routable, prefix", $3 }' /proc/net/if_inet6 | head -1
            """#
        let ran = try await vm.run(["--timeout", "600s", "--hostname", "probe", "tar:" + image, "sh", "-c", script])
        #expect(ran.status == 0, "\(ran.stderr)")
        #expect(ran.text == """
            run-sshd kept
            shm rw,nosuid,nodev,noexec,relatime tmpfs shm rw,size=65536k
            127.0.0.1\tlocalhost
            ::1\tlocalhost ip6-localhost ip6-loopback
            fe00::0\tip6-localnet
            ff00::0\tip6-mcastprefix
            ff02::1\tip6-allnodes
            ff02::2\tip6-allrouters
            10.0.2.15\tprobe
            files 1048576:1048576
            ports 0 ping 0 2147483647
            somaxconn 1024
            interfaces eth0 lo\u{20}
            lo ::1
            packet ok
            ping ok
            inet6 ok
            \(Self.hostHasRoutableIPv6 ? "eth0 routable, prefix 40\n" : "")
            """, "\(ran.text)")

        // --read-only: nothing writable but what is asked for, as with docker.
        let readOnly = try await vm.run([
            "--timeout", "600s", "--hostname", "probe", "--read-only", "--tmpfs", "/run:size=1m", "--shm-size", "8m", "-u", "nobody", "tar:" + image, "sh", "-c",
            "touch /tmp/x 2>/dev/null || echo tmp read-only; touch /run/x && echo run written; touch /dev/shm/x && echo shm written; df -k /dev/shm | awk 'NR == 2 { print $2 }'; "
                + "cat /etc/hostname > /dev/null && echo hostname readable; echo x >> /etc/hosts 2>/dev/null || echo hosts read-only; grep -c probe /etc/hosts",
        ])
        #expect(readOnly.status == 0, "\(readOnly.stderr)")
        #expect(readOnly.text == "tmp read-only\nrun written\nshm written\n8192\nhostname readable\nhosts read-only\n1\n", "\(readOnly.text)")
        // A mount point the image lacks cannot be made on the read-only root: said before the command runs.
        let missing = try await vm.run(["--timeout", "600s", "--read-only", "--tmpfs", "/scratch", "tar:" + image, "true"])
        #expect(missing.status == 125)
        #expect(missing.stderr.contains("cannot create the mount point /scratch: the image has no such folder and --read-only keeps its root read-only"), "\(missing.stderr)")
        await vm.expectNothingLeft()
    }
}
