import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryKernel

@Suite("Kernel config fragments, merging and Kconfig", .tags(.unit), .scoped)
struct KernelConfigTests {
    @Test("fragment lines parse into requests that remember their file and line")
    func fragmentParsing() throws {
        let requests = try ConfigFragment.parse("""
            # comment
            CONFIG_A=y

            CONFIG_B=m
            # CONFIG_C is not set
            CONFIG_D="hello \\"world\\""
            CONFIG_E=0x10
            CONFIG_F=n
            """, file: "/f/x.conf")
        #expect(requests.map(\.symbol) == ["A", "B", "C", "D", "E", "F"])
        #expect(requests.map(\.value) == [.yes, .module, .no, .string("hello \"world\""), .number("0x10"), .no])
        #expect(requests.map(\.line) == [2, 4, 5, 6, 7, 8])
        #expect(ConfigValue.string("a\"b").line(for: "X") == "CONFIG_X=\"a\\\"b\"")
    }

    @Test("a line that is not a setting fails with its position", arguments: ["CONFIG_A", "VIRTIO=y", "CONFIG_A=yes", "CONFIG_=y"])
    func badFragmentLine(_ line: String) throws {
        let error = try #require(throws: VMFactoryError.self) { try ConfigFragment.parse("CONFIG_OK=y\n\(line)\n", file: "/f/bad.conf") }
        #expect(error.message.hasPrefix("/f/bad.conf:2: cannot read '\(line)'"))
    }

    @Test("two fragments setting a symbol differently is an error naming both lines; the same value twice warns")
    func conflicts() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("CONFIG_NET=y\nCONFIG_INET=y\n", to: dir + "/common/network.conf")
        try TestSupport.write("# a comment\nCONFIG_NET=y\n", to: dir + "/common/vsock.conf")
        try TestSupport.write("# CONFIG_INET is not set\n", to: dir + "/x86_64/tiny.conf")
        let files = ["common/network.conf", "common/vsock.conf", "x86_64/tiny.conf"].map { FragmentFile(name: $0, path: dir + "/" + $0) }

        let error = try #require(throws: VMFactoryError.self) { try ConfigFragment.combine(files) }
        #expect(error.code == .fragmentConflict)
        #expect(error.details == ["CONFIG_INET: \(dir)/common/network.conf:2 asks for y, \(dir)/x86_64/tiny.conf:1 asks for n"])

        let combined = try ConfigFragment.combine(Array(files.prefix(2)))
        #expect(combined.requests.map(\.symbol) == ["NET", "INET"])
        #expect(combined.warnings == ["CONFIG_NET=y is set twice: \(dir)/common/network.conf:1 and \(dir)/common/vsock.conf:2"])
    }

    @Test("merging writes requested values over the base and keeps the rest in order")
    func merging() throws {
        let base = KernelConfig(parsing: "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment line\n")
        let merged = base.merging([
            ConfigRequest(symbol: "B", value: .yes, file: "f", line: 1),
            ConfigRequest(symbol: "A", value: .no, file: "f", line: 2),
            ConfigRequest(symbol: "D", value: .number("3"), file: "f", line: 3),
        ])
        #expect(merged.text == "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=\"x\"\nCONFIG_D=3\n")
        #expect(merged["B"] == .yes)
        #expect(merged["MISSING"] == .no)
        #expect(KernelConfig(parsing: merged.text) == merged)
    }

    @Test("resolved values satisfy requests as Kconfig resolves them")
    func satisfaction() {
        #expect(ConfigValue.yes.satisfies(.module, modulesEnabled: false))
        #expect(!ConfigValue.yes.satisfies(.module, modulesEnabled: true))
        #expect(ConfigValue.number("0x10").satisfies(.number("16"), modulesEnabled: false))
        #expect(!ConfigValue.no.satisfies(.yes, modulesEnabled: false))
        #expect(ConfigValue.no.satisfies(.no, modulesEnabled: false))
    }

    @Test("Kconfig expressions parse, evaluate in tristate logic and print with values")
    func expressions() throws {
        let config = KernelConfig(parsing: "CONFIG_A=y\nCONFIG_B=m\nCONFIG_S=\"x86\"\nCONFIG_N=5\n")
        let cases: [(String, Int, String)] = [
            ("A && B", 1, "A [=y] && B [=m]"),
            ("A || C", 2, "A [=y] || C [=n]"),
            ("!C && (A || B)", 2, "!C [=n] && (A [=y] || B [=m])"),
            ("S = \"x86\"", 2, "S [=x86] = \"x86\""),
            ("N >= 10", 0, "N [=5] >= 10"),
            ("A && $(cc-option,-mfoo)", 2, "A [=y] && $(cc-option,-mfoo)"),
            ("!(A && B)", 1, "!(A [=y] && B [=m])"),
        ]
        for (text, value, annotated) in cases {
            let expression = try #require(KconfigExpressionParser.parse(text), "\(text) does not parse")
            #expect(expression.evaluate(config) == value, "\(text)")
            #expect(expression.annotated(config) == annotated)
        }
        #expect(KconfigExpressionParser.parse("A &&") == nil)
        #expect(try #require(KconfigExpressionParser.parse("A && (B || C) && !D")).conjuncts.count == 3)
    }

    /// A small Kconfig tree with the constructs the kernel uses.
    static func writeKconfigTree(_ root: String) throws {
        try TestSupport.write("""
            mainmenu "Linux/$(ARCH) Kernel Configuration"
            source "arch/$(SRCARCH)/Kconfig"
            source "fs/Kconfig"

            menuconfig NETWORK_FILESYSTEMS
            \tbool "Network file systems"
            \tdepends on NET

            if NETWORK_FILESYSTEMS
            config NINEP_FS
            \ttristate "9p"
            \tdepends on INET && NET_9P
            \thelp
            \t  A help text that mentions depends on NOTHING and
            \t  config FAKE, which must not be read as Kconfig.

            endif
            """, to: root + "/Kconfig")
        try TestSupport.write("""
            config X86_ONLY
            \tdef_bool y
            config PVH
            \tbool "PVH entry" if EXPERT
            """, to: root + "/arch/x86/Kconfig")
        try TestSupport.write("config S390_GUEST\n\tdef_bool y\n", to: root + "/arch/s390/Kconfig")
        try TestSupport.write("""
            menu "File systems"
            \tdepends on BLOCK || !BLOCK

            config FUSE_FS
            \ttristate "FUSE"

            config VIRTIO_FS
            \ttristate "Virtio Filesystem"
            \tdepends on FUSE_FS
            \tselect VIRTIO

            config VIRTIO
            \ttristate

            endmenu
            """, to: root + "/fs/Kconfig")
    }

    @Test("unmet dependencies, hidden prompts, selects and unknown symbols are explained")
    func explanations() throws {
        let root = try TestSupport.temporaryDirectory()
        try Self.writeKconfigTree(root)
        let kconfig = try Kconfig.load(sourceTree: root, target: .x86_64)
        #expect(kconfig.filesRead == 3)
        #expect(!kconfig.isDefined("FAKE"))
        #expect(!kconfig.isDefined("NOTHING"))

        let config = KernelConfig(parsing: "CONFIG_NET=y\n# CONFIG_INET is not set\nCONFIG_NETWORK_FILESYSTEMS=y\nCONFIG_VIRTIO_FS=y\nCONFIG_VIRTIO=y\n")
        func explain(_ symbol: String, _ value: ConfigValue, _ config: KernelConfig = config) -> [String] {
            let request = ConfigRequest(symbol: symbol, value: value, file: "f.conf", line: 1)
            return kconfig.explain(request, resolved: config[symbol], config: config)
        }
        // A dependency inside an `if` block and a `depends on` line, both reported with values.
        #expect(explain("NINEP_FS", .yes) == ["depends on INET [=n]", "depends on NET_9P [=n]"])
        #expect(explain("VIRTIO_FS", .yes, KernelConfig(parsing: "# CONFIG_FUSE_FS is not set\n")) == ["depends on FUSE_FS [=n]"])
        #expect(explain("PVH", .yes) == ["its prompt is only shown if EXPERT [=n]"])
        #expect(explain("VIRTIO", .yes, KernelConfig(parsing: "")).first?.contains("has no prompt: only another option can turn it on with `select`; selected by: VIRTIO_FS [=n]") == true)
        #expect(explain("VIRTIO", .no) == ["selected by VIRTIO_FS [=y]"])
        #expect(explain("VIRTIO_FSS", .yes).first?.hasPrefix("CONFIG_VIRTIO_FSS is not defined anywhere") == true)
        // $(SRCARCH) picked the architecture's file.
        #expect(kconfig.isDefined("X86_ONLY"))
        let s390 = try Kconfig.load(sourceTree: root, target: .s390x)
        #expect(!s390.isDefined("X86_ONLY"))
        #expect(s390.isDefined("S390_GUEST"))
    }

    @Test("make runs out of tree with the target's ARCH and cross compiler", arguments: [
        (Target.x86_64, "x86_64", ["-C", "/src", "O=/build", "ARCH=x86_64", "-j4", "olddefconfig"]),
        (Target.s390x, "x86_64", ["-C", "/src", "O=/build", "ARCH=s390", "CROSS_COMPILE=s390x-linux-gnu-", "-j4", "olddefconfig"]),
        (Target.x86_64, "s390x", ["-C", "/src", "O=/build", "ARCH=x86_64", "CROSS_COMPILE=x86_64-linux-gnu-", "-j4", "olddefconfig"]),
    ])
    func makeArgv(target: Target, host: String, expected: [String]) {
        let make = KernelMake(target: target, sourceTree: "/src", buildDirectory: "/build", jobs: 4, hostMachine: host)
        let command = make.command(["olddefconfig"])
        #expect(command.executable == "make")
        #expect(command.arguments == expected)
        #expect(command.workingDirectory == "/build")
        // The environment is chosen, not inherited: no stray ARCH or CROSS_COMPILE from the caller's shell.
        #expect(command.environment["ARCH"] == nil)
        #expect(Command.baseEnvironment(from: ["ARCH": "arm64", "CROSS_COMPILE": "x-", "PATH": "/p", "HOME": "/h"]) == ["PATH": "/p", "HOME": "/h", "LC_ALL": "C", "LANG": "C"])
    }

    @Test("base configs map to make goals")
    func baseGoals() {
        #expect(KernelConfigurator.baseGoals(.tinyconfig) == ["tinyconfig"])
        #expect(KernelConfigurator.baseGoals(.allnoconfig) == ["allnoconfig"])
        #expect(KernelConfigurator.baseGoals(.defconfig) == ["defconfig"])
        #expect(KernelConfigurator.baseGoals(.file("/x")) == ["olddefconfig"])
    }
}
