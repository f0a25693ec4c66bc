import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel
@testable import VMFactoryLifecycle
@testable import VMFactoryRun

/// The run protocol (docs/run-protocol.md) on both sides: the host's frames read by the init's
/// own C decoder compiled for this host, the init's frames read by the host's decoder, and both
/// decoders fed malformed bytes.
@Suite("run protocol", .tags(.unit), .scoped)
struct RunProtocolTests {
    static func frames(_ list: [RunProtocol.Frame]) -> [UInt8] { list.flatMap(\.encoded) }
    /// Every key an OCI runtime's process adds, with a valid value, for the fuzzed frames.
    static let processKeyLines = """
        groups=10,20,4294967294
        rlimit=NOFILE 1024 2048
        rlimit=rlimit_core unlimited unlimited
        capbounding=a80425fb
        capeffective=a80425fb
        cappermitted=FFFFFFFFFFFFFFFF
        capinheritable=0
        capambient=400
        nonewprivs=1
        umask=0027

        """

    @Test("a frame's header: length, type, flags and stream in network byte order")
    func header() throws {
        let frame = RunProtocol.Frame(.signal, stream: 0x0102_0304, number: 15)
        #expect(frame.encoded == [0, 0, 0, 4, 0, 9, 0, 0, 1, 2, 3, 4, 0, 0, 0, 15])
        var decoder = RunProtocol.Decoder()
        // Byte by byte: a frame is returned only once whole.
        for (index, byte) in frame.encoded.enumerated() {
            let early = try decoder.next()
            #expect(early == nil)
            decoder.feed([byte])
            if index < frame.encoded.count - 1 { #expect(decoder.buffered == index + 1) }
        }
        #expect(try decoder.next() == frame)
        #expect(try decoder.next() == nil)
    }

    @Test("the host's decoder refuses what the guest must not send, and stays refused")
    func hostileFrames() throws {
        let oversized: [UInt8] = [0, 1, 0, 1, 0, 6, 0, 0, 0, 0, 0, 1]
        let flagged: [UInt8] = [0, 0, 0, 0, 0, 6, 0, 1, 0, 0, 0, 1]
        let unknown: [UInt8] = [0, 0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 1]
        for (bytes, words) in [(oversized, "more than the 65536"), (flagged, "flags 1"), (unknown, "unknown type 99")] {
            var decoder = RunProtocol.Decoder()
            decoder.feed(RunProtocol.Frame(.end).encoded + bytes)
            #expect(try decoder.next()?.type == .end)
            #expect(throws: RunProtocol.Malformed.self) { try decoder.next() }
            decoder.feed(RunProtocol.Frame(.end).encoded)
            do {
                _ = try decoder.next()
                Issue.record("a broken stream gave a frame")
            } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
        // Random bytes never crash it and never yield more than they hold.
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<2000 {
            var decoder = RunProtocol.Decoder()
            let count = Int.random(in: 0..<200, using: &generator)
            decoder.feed((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
            var total = 0
            while let frame = try? decoder.next() { total += RunProtocol.headerSize + frame.payload.count }
            #expect(total <= count)
        }
    }

    @Test("exit and error payloads from the guest: only the exact words, in range; messages made printable")
    func reports() {
        let good = RunProtocol.ExitReport(Array("code=3 signal=0 out=4 err=5 oom=0".utf8))
        #expect(good?.code == 3 && good?.stdoutBytes == 4 && good?.stderrBytes == 5)
        for bad in ["code=256 signal=0 out=0 err=0 oom=0", "code=1 signal=0 out=0 err=0", "code=1 code=2 signal=0 out=0 err=0 oom=0",
                    "code=-1 signal=0 out=0 err=0 oom=0", "code=1 signal=0 out=0 err=0 oom=0 extra=1", "garbage"] {
            #expect(RunProtocol.ExitReport(Array(bad.utf8)) == nil, "\(bad)")
        }
        let failure = RunProtocol.StartFailure(RunProtocol.Frame(.error, stream: 2, number: 127, text: "no\u{1b}[2J such\nthing"))
        #expect(failure?.code == 127 && failure?.message == "no [2J such thing")
        #expect(RunProtocol.StartFailure(RunProtocol.Frame(.error, number: 300)) == nil)
    }

    @Test("init.conf's values are escaped as the run's settings are: the init reads both with one reader")
    func initConfEscaping() {
        let escaped = ["plain": "plain", #"C:\dir\"#: #"C:\\dir\\"#, "two\nlines": #"two\nlines"#, "cr\r\nlf": "cr\r\\nlf", #"\n is not a break"#: #"\\n is not a break"#, "": ""]
        for (value, text) in escaped {
            #expect(SettingsText.escaped(value) == text, "\(value.debugDescription)")
            #expect(RunProtocol.keyValueText([("arg", value)]) == "arg=\(text)\n", "\(value.debugDescription)")
            #expect(RunProtocol.keyValuePairs("arg=\(SettingsText.escaped(value))\n")?.first?.1 == value, "\(value.debugDescription)")
        }
    }

    @Test("the host's frames as the init's own decoder reads them: settings, an exec, stdin, signals, credit, window size, bye", .tags(.integration), .needsTool("gcc"))
    func hostToInit() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init", sanitized: true)
        var plan = try RunTests.plan(.x86_64)
        plan.interactive = true
        let exec = RunProtocol.Frame(.exec, stream: 2, payload: Array(RunProtocol.keyValueText([
            ("arg", "cat"), ("arg", "-"), ("env", "A=1"), ("env", "B=two\nlines"), ("user", "1000:1000"), ("workdir", "/tmp"), ("stdin", "1"), ("tty", "1"), ("rows", "30"), ("cols", "100"),
            ("groups", "10,20"), ("rlimit", "NOFILE 1024 2048"), ("rlimit", "RLIMIT_NPROC unlimited unlimited"), ("capbounding", "a80425fb"),
            ("cappermitted", "a80425fb"), ("capeffective", "400"), ("nonewprivs", "1"), ("umask", "0027"),
        ]).utf8))
        let input = Self.frames([
            plan.settingsFrame, exec,
            RunProtocol.Frame(.stdin, stream: 1, payload: Array("keys".utf8)), RunProtocol.Frame(.stdin, stream: 1),
            RunProtocol.Frame(.signal, stream: 1, number: 10), RunProtocol.Frame(.signal, stream: 1, number: 0),
            RunProtocol.Frame(.credit, stream: 1, number: 65536), RunProtocol.Frame(.windowSize, stream: 1, payload: [0, 24, 0, 80]),
            RunProtocol.Frame(.windowSize, stream: 1, payload: [0, 24]), RunProtocol.Frame(.bye),
        ])
        let (status, output) = try HostInit.run(dir + "/init", ["--decode-frames"], input: input)
        #expect(status == 0, "\(output)")
        #expect(output.contains("frame settings stream=0 length=\(plan.settingsFrame.payload.count)\nversion: \(RunProtocol.version)\nargv: /bin/echo\n"), "\(output)")
        #expect(output.contains("stdin: 1\ntty: 0\nhostname: box\nroot: /dev/vda\n"))
        #expect(output.contains("""
            frame exec stream=2 length=\(exec.payload.count)
            argv: cat
            argv: -
            env: A=1
            env: B=two
            lines
            user: 1000:1000
            workdir: /tmp
            stdin: 1
            tty: 1
            window: 30 100
            groups: 10,20
            rlimit: NOFILE 1024 2048
            rlimit: NPROC unlimited unlimited
            caps: bounding=a80425fb effective=400 permitted=a80425fb inheritable=0 ambient=0
            nonewprivs: 1
            umask: 0027

            """), "\(output)")
        #expect(output.contains("frame signal stream=1 length=4\ntaken\nframe signal stream=1 length=4\nrefused: a signal frame that names no signal\n"))
        #expect(output.contains("frame window-size stream=1 length=2\nrefused: a window size of 2 bytes\n"))
        #expect(output.hasSuffix("frame bye stream=0 length=0\ntaken\nbye: 1\n"))
    }

    @Test("the init's frames as the host's decoder reads them: hello, started, output, credit, exit, error, end", .tags(.integration), .needsTool("gcc"))
    func initToHost() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init")
        let result = try await TestSupport.runner.run(Command(dir + "/init", ["--sample-frames"]), output: .capture)
        var decoder = RunProtocol.Decoder()
        decoder.feed(Array(result.output.utf8))
        var frames: [RunProtocol.Frame] = []
        while let frame = try decoder.next() { frames.append(frame) }
        #expect(frames.map(\.type) == [.hello, .started, .stdout, .stderr, .credit, .exit, .error, .end])
        #expect(frames[0].number == RunProtocol.version && frames[0].text == "vmfactory-init")
        #expect(frames[1].stream == 1 && frames[1].number == 42)
        #expect(frames[2].payload == Array("out\n".utf8) && frames[3].payload == Array("err\n".utf8))
        #expect(frames[4].stream == 2 && frames[4].number == 4096)
        #expect(RunProtocol.ExitReport(frames[5].payload) == RunProtocol.ExitReport(Array("code=3 signal=0 out=4 err=4 oom=0".utf8)))
        let failure = try #require(RunProtocol.StartFailure(frames[6]))
        #expect(failure.code == 127 && failure.message.contains("executable file not found"))
        #expect(decoder.buffered == 0)
    }

    @Test("the init's decoder (PID 1's parser) fed truncated, oversized and garbage frames: an error, never a crash (under ASan and UBSan)", .tags(.integration), .needsTool("gcc"))
    func initDecoderFuzz() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init", sanitized: true)
        let program = dir + "/init"
        var plan = try RunTests.plan(.x86_64)
        plan.tty = true
        plan.windowSize = (1, 1)
        let valid = Self.frames([
            plan.settingsFrame, RunProtocol.Frame(.exec, stream: 3, payload: Array("arg=sh\nenv=X=1\nrows=2\ncols=3\n\(Self.processKeyLines)".utf8)),
            RunProtocol.Frame(.stdin, stream: 1, payload: [1, 2, 3]), RunProtocol.Frame(.credit, stream: 1, number: .max),
            RunProtocol.Frame(.signal, stream: 1, number: 9), RunProtocol.Frame(.windowSize, stream: 1, payload: [255, 255, 255, 255]), RunProtocol.Frame(.bye),
        ])
        // Named cases: what each must say.
        let named: [(String, [UInt8], String)] = [
            ("truncated header", Array(valid.prefix(7)), "truncated: 7 bytes"),
            ("truncated payload", Array(valid.prefix(40)), "truncated: 40 bytes"),
            ("oversized", [0x7f, 0xff, 0xff, 0xff, 0, 5, 0, 0, 0, 0, 0, 1], "error: a frame of 2147483647 bytes"),
            ("one past the limit", RunProtocol.bytes(UInt32(RunProtocol.largestPayload + 1)) + [0, 2, 0, 0, 0, 0, 0, 0], "error: a frame of 1048577 bytes"),
            ("type 0", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "error: a frame of type 0"),
            ("flags", [0, 0, 0, 0, 0, 14, 0x80, 0, 0, 0, 0, 0], "error: a frame with flags 0x8000"),
            ("unknown type", RunProtocol.Frame(.end).encoded.enumerated().map { $0.offset == 5 ? 200 : $0.element }, "refused: a frame of type 200"),
            ("settings of another version", RunProtocol.Frame(.settings, number: 2, text: "arg=x\n").encoded, "version: 2"),
            ("settings with a NUL", RunProtocol.Frame(.settings, number: 1, text: "arg=x\0y\n").encoded, "refused: a NUL byte"),
            ("settings without a command", RunProtocol.Frame(.settings, number: 1, text: "user=1\n").encoded, "refused: settings: no command"),
            ("settings too short", RunProtocol.Frame(.settings, payload: [0, 0]).encoded, "refused: too short"),
            ("exec with a bad key", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\nkey\n".utf8)).encoded, "refused: exec:2: expected key=value"),
            ("exec with a huge window", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\nrows=99999\n".utf8)).encoded, "refused: exec:2: bad value for rows"),
            ("exec with a dangling escape", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\\".utf8)).encoded, "refused: exec:1: bad escape in the value of arg"),
            ("exec with an unknown escape", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\narg=a\\tb\n".utf8)).encoded, "refused: exec:2: bad escape in the value of arg"),
            ("exec with comments and empty lines", RunProtocol.Frame(.exec, stream: 2, payload: Array("# made by hand\n\narg=x\n\n#arg=y\n".utf8)).encoded, "argv: x\nuser: "),
            ("credit of 2 bytes", RunProtocol.Frame(.credit, stream: 1, payload: [0, 1]).encoded, "refused: a credit of 2 bytes"),
            ("exec with 65 groups", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\ngroups=\((0...64).map(String.init).joined(separator: ","))\n".utf8)).encoded, "refused: exec:2: bad value for groups"),
            ("exec with a group that is no number", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\ngroups=10,wheel\n".utf8)).encoded, "refused: exec:2: bad value for groups"),
            ("exec with an unknown limit", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\nrlimit=FILES 1 2\n".utf8)).encoded, "refused: exec:2: bad value for rlimit"),
            ("exec with a soft limit over the hard one", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\nrlimit=NOFILE 4096 1024\n".utf8)).encoded, "refused: exec:2: bad value for rlimit"),
            ("exec with a limit past 64 bits", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\nrlimit=AS 1 99999999999999999999\n".utf8)).encoded, "refused: exec:2: bad value for rlimit"),
            ("exec with a mask that is no hex", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\ncapambient=a8042g\n".utf8)).encoded, "refused: exec:2: bad value for capambient"),
            ("exec with a mask of 17 digits", RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=x\ncapbounding=1ffffffffffffffff\n".utf8)).encoded, "refused: exec:2: bad value for capbounding"),
            ("exec with a garbage umask", RunProtocol.Frame(.exec, stream: 2, payload: [UInt8]("arg=x\numask=".utf8) + [0xff, 0xfe, 0x0a]).encoded, "refused: exec:2: bad value for umask"),
            ("a whole megabyte of settings", RunProtocol.Frame(.settings, number: 1, text: String(repeating: "env=A=\(String(repeating: "x", count: 1000))\n", count: 1040)).encoded, "refused: settings: no command"),
        ]
        for (name, bytes, expected) in named {
            let (status, output) = try HostInit.run(program, ["--decode-frames"], input: bytes)
            #expect(status == 0 || status == 1, "\(name): status \(status)\n\(output)")
            #expect(output.contains(expected), "\(name): \(output)")
        }
        // The process keys alone, their values mutated: a refusal or a result, never a crash.
        var values = SeededGenerator(seed: 41)
        let alphabet = Array("0123456789abcdefABCDEF ,-+xunlimitedRLIMIT_NOFILE\u{7f}\u{ff}".utf8)
        for round in 0..<200 {
            var text = Array(Self.processKeyLines.utf8)
            for _ in 0..<Int.random(in: 1...8, using: &values) {
                let at = Int.random(in: 0..<text.count, using: &values)
                switch Int.random(in: 0..<3, using: &values) {
                case 0: text[at] = alphabet[Int.random(in: alphabet.indices, using: &values)]
                case 1: text.insert(contentsOf: (0..<Int.random(in: 1...24, using: &values)).map { _ in alphabet[Int.random(in: alphabet.indices, using: &values)] }, at: at)
                default: text.remove(at: at)
                }
            }
            let bytes = RunProtocol.Frame(.exec, stream: 2, payload: Array("arg=sh\n".utf8) + text).encoded
            let (status, output) = try HostInit.run(program, ["--decode-frames"], input: bytes)
            #expect(status == 0, "round \(round): status \(status)\n\(output)")
            #expect(output.contains("refused: exec:") || output.contains("argv: sh\n"), "round \(round): \(output)")
        }
        // Mutations of a valid stream: bytes flipped, cut short, spliced; seeded, so a failure
        // repeats.
        var generator = SeededGenerator(seed: 25)
        for round in 0..<300 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator))) }
            if round % 5 == 0 { bytes += (0..<Int.random(in: 0..<64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            let (status, output) = try HostInit.run(program, ["--decode-frames"], input: bytes)
            #expect(status == 0 || status == 1, "round \(round): status \(status)\n\(output)")
            if status != 0 { #expect(output.contains("error: ") || output.contains("truncated: "), "round \(round): \(output)") }
        }
    }

    @Test("users and groups are looked up inside the image's root: a link out of it finds nothing", .tags(.integration), .needsTool("gcc"))
    func userLookup() async throws {
        let dir = try TestSupport.temporaryDirectory()
        try await HostInit.compile(to: dir + "/init", sanitized: true)
        let root = dir + "/root"
        try FileStore.createDirectory(root + "/etc")
        try TestSupport.write("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\nbad:x:notanumber:1:::\nbig:x:4294967295:1:::\n", to: root + "/etc/passwd")
        try TestSupport.write("app:x:1000:\nwheel:x:10:app,other\nstaff:x:50:app\n", to: root + "/etc/group")
        func lookup(_ spec: String) throws -> String { try HostInit.run(dir + "/init", ["--resolve-user", root, spec], input: []).output }
        #expect(try lookup("app") == "uid=1000 gid=1000 groups=1000,10,50 home=/home/app name=app\n")
        #expect(try lookup("") == "uid=0 gid=0 groups=0 home=/root name=root\n")
        // As docker: the group given is the primary one; the supplementary ones are those that list the user.
        #expect(try lookup("app:staff") == "uid=1000 gid=50 groups=50,10 home=/home/app name=app\n")
        #expect(try lookup("4242:7") == "uid=4242 gid=7 groups=7 home=/ name=\n")
        #expect(try lookup("nobody").contains("error: unable to find user nobody"))
        #expect(try lookup("app:nogroup").contains("error: unable to find group nogroup"))
        #expect(try lookup("bad").contains("error: unable to find user bad"), "a uid that is not a number is no entry")
        #expect(try lookup("4294967295").contains("error: unable to find user 4294967295"), "(uid_t)-1 is no uid")
        // /etc/group as a link to the host's: resolved inside the root, where it is not.
        try FileManager.default.removeItem(atPath: root + "/etc/group")
        try FileManager.default.createSymbolicLink(atPath: root + "/etc/group", withDestinationPath: "/etc/group")
        #expect(try lookup("app:root").contains("error: unable to find group root"))
        try FileManager.default.removeItem(atPath: root + "/etc/passwd")
        try FileManager.default.createSymbolicLink(atPath: root + "/etc/passwd", withDestinationPath: "../../../../../../etc/passwd")
        #expect(try lookup("daemon").contains("error: unable to find user daemon"))
    }
}
