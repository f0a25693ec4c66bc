import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("The guest init and the initrd", .tags(.integration), .scoped, .needsTool("cpio"), .needsTool("gcc"))
struct InitrdIntegrationTests {
    static let epoch = 1_735_689_600

    /// A config with initrd support and the decompressors listed.
    static func config(_ symbols: [String], in directory: String) throws -> String {
        let path = directory + "/config"
        try TestSupport.write((["CONFIG_BLK_DEV_INITRD=y"] + symbols.map { "CONFIG_\($0)=y" }).joined(separator: "\n") + "\n", to: path)
        return path
    }

    static func build(_ recipePath: String, target: Target = .x86_64, config: String, work: String) async throws -> (InitrdPlan, BuildManifest.InitrdPart, PartOutcome) {
        let recipe = try TestSupport.recipes.load(path: recipePath)
        let builder = InitrdBuilder(library: TestSupport.library, runner: TestSupport.runner, console: .recording())
        let compiler = try await Toolchain.firstLine(of: target.compiler(), runner: TestSupport.runner)
        let plan = try builder.plan(recipe, target: target, compiler: compiler, sourceDateEpoch: try KernelBuildPlan.sourceDateEpoch(recipe: recipe, environment: [:]))
        let made = try await builder.build(plan, resolvedConfig: config, workDirectory: work)
        return (plan, made.part, made.outcome)
    }

    @Test("the initrd lists with cpio -itv and reads back with libarchive: names, modes, devices, owners, times; a second build is identical")
    func layoutAndReproducibility() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("payload\n", to: dir + "/files/data.txt")
        try TestSupport.write("#!/bin/sh\necho hi\n", to: dir + "/files/tool")
        let recipe = try TestSupport.recipe(named: "layout", initrd: """
              hostname: box
              entrypoint: [/usr/local/bin/tool, --flag]
              env: {GREETING: hello world}
              files:
                - {source: \(dir)/files/tool, destination: /usr/local/bin/tool, mode: "0755"}
                - {source: \(dir)/files/data.txt, destination: /srv/data.txt}
            """, in: dir)
        let config = try Self.config([], in: dir)
        let (plan, part, outcome) = try await Self.build(recipe, config: config, work: dir + "/one")
        #expect(plan.fileName == "initrd.cpio")
        #expect(outcome.files.map(\.name) == ["init", "initrd.cpio"])
        #expect(part.entrypoint == ["/usr/local/bin/tool", "--flag"])
        #expect(part.files.map(\.name) == ["/usr/local/bin/tool", "/srv/data.txt"])
        #expect(part.key == plan.key)
        let initrd = dir + "/one/initrd.cpio"

        // The system's cpio sees what the kernel will unpack.
        let listing = try await TestSupport.run("cpio", ["-itv", "--quiet", "-F", initrd])
        #expect(listing.succeeded, "\(listing.output)")
        let rows = listing.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        let names = rows.compactMap { $0.last.map(String.init) }
        #expect(names == [
            "bin", "dev", "dev/console", "dev/null", "etc", "etc/vmfactory", "etc/vmfactory/init.conf", "init", "mnt", "proc",
            "root", "run", "sbin", "srv", "srv/data.txt", "sys", "tmp", "usr", "usr/bin", "usr/local", "usr/local/bin",
            "usr/local/bin/tool", "var",
        ])
        let console = try #require(rows.first { $0.last == "dev/console" })
        #expect(console.first == "crw-------")
        #expect(console.joined(separator: " ").contains("5, 1"))
        #expect(rows.allSatisfy { $0.count > 3 && $0[2] == "root" && $0[3] == "root" }, "owners: \(listing.output)")
        #expect(try #require(rows.first { $0.last == "tmp" }).first == "drwxrwxrwt")
        #expect(try #require(rows.first { $0.last == "init" }).first == "-rwxr-xr-x")

        // libarchive reads back exactly what was meant.
        let entries = try ArchiveReader.list(initrd)
        #expect(entries.map(\.path) == names)
        #expect(entries.allSatisfy { $0.uid == 0 && $0.gid == 0 && $0.mtime == Int64(Self.epoch) })
        let byPath = Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0) })
        let null = try #require(byPath["dev/null"])
        #expect(null.isCharacterDevice && null.deviceMajor == 1 && null.deviceMinor == 3 && null.permissions == 0o666)
        let consoleEntry = try #require(byPath["dev/console"])
        #expect(consoleEntry.isCharacterDevice && consoleEntry.deviceMajor == 5 && consoleEntry.deviceMinor == 1 && consoleEntry.permissions == 0o600)
        #expect(byPath["init"]?.sha256 == outcome.artifacts.first { $0.name == "init" }?.sha256)
        #expect(byPath["init"]?.permissions == 0o755)
        #expect(byPath["usr/local/bin/tool"]?.sha256 == (try SHA256Digest.ofFile(at: dir + "/files/tool", cancellation: nil)))
        #expect(byPath["usr/local/bin/tool"]?.permissions == 0o755)
        #expect(byPath["srv/data.txt"]?.permissions == 0o644)
        #expect(byPath["usr/local"]?.isDirectory == true)
        let conf = try #require(byPath["etc/vmfactory/init.conf"])
        #expect(conf.sha256 == .of("# Written by vmfactory from the recipe's initrd section.\nhostname=box\nentrypoint=/usr/local/bin/tool\narg=--flag\nenv=GREETING=hello world\n"))

        // The init is static: no interpreter to look for in an initrd that has no libc.
        let elf = try await TestSupport.run("readelf", ["-l", dir + "/one/init"])
        #expect(!elf.output.contains("INTERP"))

        // Again, elsewhere: the same bytes.
        let (_, _, again) = try await Self.build(recipe, config: config, work: dir + "/two")
        #expect(again.artifacts == outcome.artifacts)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/two/initrd.cpio")) == Data(contentsOf: URL(fileURLWithPath: initrd)))
    }

    @Test("compressed initrds read back, are reproducible, and need the kernel's decompressor", arguments: [InitrdSpec.Compression.gzip, .zstd, .lz4])
    func compression(_ compression: InitrdSpec.Compression) async throws {
        let dir = try TestSupport.temporaryDirectory()
        let recipe = try TestSupport.recipe(named: "packed", initrd: "  compression: \(compression.rawValue)", in: dir)
        let symbol = try #require(compression.kernelSymbol)

        let missing = try Self.config(["RD_GZIP", "RD_ZSTD", "RD_LZ4"].filter { $0 != symbol }, in: dir)
        let error = await #expect(throws: VMFactoryError.self) { try await Self.build(recipe, config: missing, work: dir + "/no") }
        #expect(error?.message.contains("CONFIG_\(symbol) is not set") == true, "\(String(describing: error))")
        #expect(!FileStore.exists(dir + "/no/initrd.cpio" + compression.suffix))

        let config = try Self.config([symbol], in: dir + "/with")
        let (plan, _, outcome) = try await Self.build(recipe, config: config, work: dir + "/one")
        #expect(plan.fileName == "initrd.cpio" + compression.suffix)
        let path = dir + "/one/" + plan.fileName
        let magic = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)).prefix(4))
        switch compression {
        case .gzip: #expect(Array(magic.prefix(2)) == [0x1f, 0x8b])
        case .zstd: #expect(magic == [0x28, 0xb5, 0x2f, 0xfd])
        case .lz4: #expect(magic == [0x02, 0x21, 0x4c, 0x18], "the kernel unpacks only the legacy lz4 format")
        case .none: break
        }
        let entries = try ArchiveReader.list(path)
        #expect(entries.contains { $0.path == "init" && $0.sha256 == outcome.artifacts.first?.sha256 })
        let (_, _, again) = try await Self.build(recipe, config: config, work: dir + "/two")
        #expect(again.artifacts == outcome.artifacts)
    }

    /// The host build of the init, in its `--explain` mode, run with exactly `environment`.
    static func explain(conf: String? = nil, cmdline: String? = nil, arguments: [String] = [], environment: [String: String] = ["HOME": "/", "TERM": "linux"]) async throws -> [String] {
        let dir = try TestSupport.temporaryDirectory("explain")
        let initPath = dir + "/init"
        try await InitCompiler(library: TestSupport.library, runner: TestSupport.runner).compile(target: Target(rawValue: Target.hostMachine) ?? .x86_64, output: initPath)
        var words = ["--explain"]
        if let conf {
            try TestSupport.write(conf, to: dir + "/init.conf")
            words += ["--conf", dir + "/init.conf"]
        }
        if let cmdline { words += ["--cmdline", cmdline] }
        words += ["--"] + arguments
        // Exactly `environment`: not the runner's base variables.
        let child = try await ChildProcess.spawn(Command(initPath, words), environment: environment, stdout: .pipe, stderr: .sameAsStdout)
        async let output = PipeReader.readAll(child.stdout!)
        _ = await child.wait()
        let result = CommandResult(termination: .exited(0), output: String(decoding: await output, as: UTF8.self))
        return result.output.split(separator: "\n").map(String.init)
    }

    @Test("init takes its entrypoint, hostname and environment from init.conf, the kernel command line and the kernel's argv and envp")
    func launchParsing() async throws {
        let conf = """
            # from the recipe
            hostname=from-recipe
            entrypoint=/bin/app
            arg=--serve
            arg=two words
            env=GREETING=hello
            env=TERM=xterm
            """
        // Recipe defaults, the kernel's environment below them, PATH added.
        var lines = try await Self.explain(conf: conf, cmdline: "console=ttyS0 quiet", environment: ["HOME": "/", "TERM": "linux", "FOO": "bar"])
        #expect(lines.filter { $0.hasPrefix("argv: ") } == ["argv: /bin/app", "argv: --serve", "argv: two words"])
        #expect(lines.contains("hostname: from-recipe"))
        let env = lines.filter { $0.hasPrefix("env: ") }
        #expect(env.contains("env: TERM=xterm"))
        #expect(env.contains("env: FOO=bar"))
        #expect(env.contains("env: GREETING=hello"))
        #expect(env.contains("env: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
        #expect(env.filter { $0.hasPrefix("env: TERM=") }.count == 1)

        // vmf.* settings on the command line win; quoted words keep their blanks; words after
        // "--" are the workload's, never settings; argv from the kernel replaces the entrypoint.
        lines = try await Self.explain(
            conf: conf, cmdline: #"quiet vmf.hostname=box "vmf.env=GREETING=hello world" vmf.verbose -- /bin/other vmf.hostname=no"#,
            arguments: ["/bin/other", "vmf.hostname=no"], environment: ["HOME": "/", "PATH": "/custom"]
        )
        #expect(lines.contains("hostname: box"))
        #expect(lines.contains("verbose: 1"))
        #expect(lines.contains("env: GREETING=hello world"))
        #expect(lines.contains("env: PATH=/custom"))
        #expect(lines.filter { $0.hasPrefix("argv: ") } == ["argv: /bin/other", "argv: vmf.hostname=no"])

        // Nothing to run: no argv lines.
        lines = try await Self.explain(cmdline: "console=ttyS0")
        #expect(!lines.contains { $0.hasPrefix("argv: ") })
        #expect(lines.contains("hostname: vmfactory"))

        // Mistakes are named.
        #expect(try await Self.explain(cmdline: "vmf.hostnme=x") == ["error: kernel command line: unknown setting vmf.hostnme=x (known: vmf.hostname=, vmf.env=, vmf.verbose)"])
        #expect(try await Self.explain(cmdline: "vmf.env=NOVALUE") == ["error: kernel command line: vmf.env=NOVALUE: expected vmf.env=NAME=VALUE"])
        #expect(try await Self.explain(conf: "hostname=x\nbogus\n") == ["error: init.conf:2: expected key=value"])
        #expect(try await Self.explain(conf: "arg=--early\n") == ["error: init.conf:1: arg before entrypoint"])
    }

    @Test("the init refuses to run as an ordinary process, and says how to inspect it")
    func notPID1() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await InitCompiler(library: TestSupport.library, runner: TestSupport.runner).compile(target: .x86_64, output: dir + "/init")
        let result = try await TestSupport.runner.run(Command(dir + "/init", []), output: .capture)
        #expect(result.termination == .exited(2))
        #expect(result.output.contains("runs as PID 1 of a microVM"))
    }
}
