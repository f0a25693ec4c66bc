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
        let result = try await explain(initPath, conf: conf, cmdline: cmdline, arguments: arguments, environment: environment)
        return result.output.split(separator: "\n").map(String.init)
    }

    /// `init --explain` of an init already built (`program`), run with exactly `environment`;
    /// how it ended and its whole output (a sanitizer's report included).
    static func explain(_ program: String, conf: String? = nil, cmdline: String? = nil, arguments: [String] = [], environment: [String: String] = ["HOME": "/", "TERM": "linux"]) async throws -> CommandResult {
        var words = ["--explain"]
        if let conf {
            let path = try TestSupport.temporaryDirectory("conf") + "/init.conf"
            try TestSupport.write(conf, to: path)
            words += ["--conf", path]
        }
        if let cmdline { words += ["--cmdline", cmdline] }
        words += ["--"] + arguments
        // Exactly `environment`: not the runner's base variables.
        let child = try await ChildProcess.spawn(Command(program, words), environment: environment, stdout: .pipe, stderr: .sameAsStdout)
        async let output = PipeReader.readAll(child.stdout!)
        let termination = await child.wait()
        return CommandResult(termination: termination, output: String(decoding: await output, as: UTF8.self))
    }

    /// The init with AddressSanitizer and UBSan, for the tests that run it many times.
    static func sanitizedInit() async throws -> String {
        let path = try TestSupport.temporaryDirectory("init") + "/init"
        try await HostInit.compile(to: path, sanitized: true)
        return path
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

    @Test("init.conf is read as the run's settings are: escapes undone, a bad escape refused with its line, empty lines and comments skipped")
    func initConfEscapes() async throws {
        let program = try await Self.sanitizedInit()
        // Raw strings: `\\` and `\n` below are the two characters each the file holds.
        let conf = #"""
            # from the recipe

            entrypoint=/bin/sh
            arg=-c
            arg=C:\\temp and\nbreak
            env=MULTI=one\ntwo

            env=BACK=\\n
            """#
        let result = try await Self.explain(program, conf: conf, environment: ["HOME": "/"])
        #expect(result.termination == .exited(0), "\(result.output)")
        #expect(result.output == """
            hostname: vmfactory
            verbose: 0
            argv: /bin/sh
            argv: -c
            argv: C:\\temp and
            break
            env: HOME=/
            env: MULTI=one
            two
            env: BACK=\\n
            env: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

            """)

        // Anything else after a backslash, or a backslash that ends the value: refused, with its line.
        for (text, message) in [
            ("entrypoint=/bin/app\narg=ok\narg=a\\xb\n", "error: init.conf:3: bad escape in the value of arg (only \\n and \\\\ are known)"),
            ("hostname=box\n\n# note\nenv=TAB=a\\tb\n", "error: init.conf:4: bad escape in the value of env (only \\n and \\\\ are known)"),
            ("entrypoint=/bin/app\\", "error: init.conf:1: bad escape in the value of entrypoint (only \\n and \\\\ are known)"),
            ("hostname=box\nnot a pair\n", "error: init.conf:2: expected key=value"),
            ("hostname=box\nport=80\n", "error: init.conf:2: unknown key 'port'"),
            ("env=NOVALUE\n", "error: init.conf:1: expected env=NAME=VALUE"),
            ("\n\narg=--early\n", "error: init.conf:3: arg before entrypoint"),
        ] {
            let refused = try await Self.explain(program, conf: text)
            #expect(refused.termination == .exited(1), "\(text): \(refused.output)")
            #expect(refused.output == message + "\n", "\(text)")
        }
    }

    @Test("boot mode's environment: a later entry replaces an earlier one of its name, from any source; PATH only as a default")
    func bootEnvironment() async throws {
        let program = try await Self.sanitizedInit()
        let conf = "entrypoint=/bin/app\nenv=A=conf\nenv=C=first\nenv=C=second\nenv=PATH=/conf/bin\n"
        let result = try await Self.explain(
            program, conf: conf, cmdline: "quiet vmf.env=B=cmdline vmf.env=C=cmdline -- vmf.env=C=never",
            environment: ["HOME": "/", "A": "kernel", "B": "kernel"]
        )
        #expect(result.termination == .exited(0), "\(result.output)")
        let env = result.output.split(separator: "\n").filter { $0.hasPrefix("env: ") }.map { String($0.dropFirst(5)) }
        #expect(env.sorted() == ["A=conf", "B=cmdline", "C=cmdline", "HOME=/", "PATH=/conf/bin"])

        // PATH from the kernel stays; without one anywhere, the default, once.
        let kernelPath = try await Self.explain(program, conf: "entrypoint=/bin/app\n", environment: ["PATH": "/kernel/bin"])
        #expect(kernelPath.output.split(separator: "\n").filter { $0.hasPrefix("env: PATH=") } == ["env: PATH=/kernel/bin"])
        let none = try await Self.explain(program, conf: "entrypoint=/bin/app\n", environment: [:])
        #expect(none.output.split(separator: "\n").filter { $0.hasPrefix("env: ") } == ["env: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    }

    @Test("no fixed limit on arguments or variables: 1,000 of each from init.conf, the kernel command line and the kernel's argv")
    func manyWords() async throws {
        let program = try await Self.sanitizedInit()
        let count = 1000
        let conf = "entrypoint=/bin/app\n" + (1...count).map { "arg=a\($0)\nenv=CONF\($0)=\($0)\n" }.joined()
        let cmdline = (1...count).map { "vmf.env=LINE\($0)=\($0)" }.joined(separator: " ")
        var result = try await Self.explain(program, conf: conf, cmdline: cmdline, environment: ["HOME": "/"])
        #expect(result.termination == .exited(0), "\(result.output.prefix(500))")
        var lines = result.output.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.hasPrefix("argv: ") }.count == 1 + count)
        #expect(lines.last { $0.hasPrefix("argv: ") } == "argv: a\(count)")
        #expect(lines.filter { $0.hasPrefix("env: CONF") }.count == count)
        #expect(lines.filter { $0.hasPrefix("env: LINE") }.count == count)
        #expect(lines.contains("env: LINE\(count)=\(count)"))

        // The kernel's own argv replaces init.conf's, however long.
        result = try await Self.explain(program, conf: conf, arguments: (1...count).map { "k\($0)" }, environment: ["HOME": "/"])
        lines = result.output.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.hasPrefix("argv: ") } == (1...count).map { "argv: k\($0)" })
    }

    @Test("init.conf as the initrd builder writes it: backslashes and line breaks in every value reach the init unchanged")
    func initConfigRoundTrip() async throws {
        var spec = InitrdSpec()
        spec.hostname = "box"
        spec.entrypoint = ["/bin/sh", "-c", #"printf '%s\n' "$GREETING" > C:\out"#, "two\nlines", "cr\r\nlf", "\\", ""]
        spec.environment = [("GREETING", #"a\nb\\"#), ("BREAK", "line\nbreak")]
        let text = InitrdLayout.initConfig(spec)
        #expect(text == #"""
            # Written by vmfactory from the recipe's initrd section.
            hostname=box
            entrypoint=/bin/sh
            arg=-c
            arg=printf '%s\\n' "$GREETING" > C:\\out
            arg=two\nlines
            arg=cr\#r\nlf
            arg=\\
            arg=
            env=GREETING=a\\nb\\\\
            env=BREAK=line\nbreak

            """#)

        let program = try await Self.sanitizedInit()
        let result = try await Self.explain(program, conf: text, environment: ["HOME": "/"])
        #expect(result.termination == .exited(0), "\(result.output)")
        let expected = ["hostname: box", "verbose: 0"] + spec.entrypoint.map { "argv: " + $0 }
            + ["env: HOME=/"] + spec.environment.map { "env: \($0.0)=\($0.1)" }
            + ["env: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        #expect(Array(result.output.utf8) == Array((expected.joined(separator: "\n") + "\n").utf8), "\(result.output)")
    }

    @Test("init.conf and the kernel command line (PID 1's parsers) mutated at random: an error or a result, never a crash (under ASan and UBSan)")
    func launchFuzz() async throws {
        let program = try await Self.sanitizedInit()
        let valid = Array(#"""
            # from the recipe
            hostname=box

            entrypoint=/bin/sh
            arg=-c
            arg=echo a\\b\nnext
            env=A=1
            env=A=2
            verbose=1

            """#.utf8)
        let alphabet = Array("\\=#\"n x\n".utf8) + [0, 0xff]
        let cmdlineAlphabet = Array(" \"\\=vmf.env=A-b".utf8)
        var generator = SeededGenerator(seed: 31)
        for round in 0..<150 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let at = Int.random(in: 0...bytes.count, using: &generator)
                let byte = alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]
                switch Int.random(in: 0..<3, using: &generator) {
                case 0 where at < bytes.count: bytes[at] = byte
                case 1: bytes.insert(byte, at: at)
                default: bytes = Array(bytes.prefix(at))
                }
            }
            let cmdline = String(decoding: (0..<Int.random(in: 0..<80, using: &generator)).map { _ in
                cmdlineAlphabet[Int.random(in: 0..<cmdlineAlphabet.count, using: &generator)]
            }, as: UTF8.self)
            let result = try await Self.explain(
                program, conf: String(decoding: bytes, as: UTF8.self), cmdline: cmdline, arguments: round % 2 == 0 ? [] : ["/bin/x"],
                environment: HostInit.sanitizerEnvironment.merging(["HOME": "/"]) { $1 }
            )
            #expect(result.termination == .exited(0) || result.termination == .exited(1), "round \(round): \(result.termination)\n\(result.output)")
            if result.termination == .exited(1) { #expect(result.output.hasPrefix("error: "), "round \(round): \(result.output)") }
        }
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
