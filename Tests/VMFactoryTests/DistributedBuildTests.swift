import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryKernel
@testable import VMFactoryPublish

@Suite("Builds beyond one machine: values", .tags(.unit), .scoped)
struct DistributedBuildTests {
    @Test("distcc host lists parse as distcc reads them")
    func hosts() throws {
        let hosts = try DistccHost.parse("10.0.0.2/8  build-2:3633/4,lzo localhost/2 @ssh-host/4 --randomize [::1]:3700 plain")
        #expect(hosts.map(\.kind) == [
            .tcp(host: "10.0.0.2", port: 3632), .tcp(host: "build-2", port: 3633), .local, .ssh, .option,
            .tcp(host: "::1", port: 3700), .tcp(host: "plain", port: 3632),
        ])
        #expect(DistccHost.helpers(hosts).count == 5)
        for bad in ["", "   ", "host:port", "host/0", "host/x", ":3632"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try DistccHost.parse(bad) }
        }
    }

    @Test("distcc and icecream reach make without changing its command lines: PATH first, or ccache's prefix")
    func environment() {
        let variables = ["DISTCC_HOSTS": "a/2 b/2", "DISTCC_DIR": "/c/distcc/state", "DISTCC_NO_REWRITE_CROSS": "1"]
        let setup = DistributedCompile(variables: variables, path: "/c/distcc/bin:/usr/bin", slots: 4, executable: "/usr/bin/distcc")
        #expect(setup.environment(ccache: false) == variables.merging(["PATH": "/c/distcc/bin:/usr/bin"]) { $1 })
        #expect(setup.environment(ccache: true) == variables.merging(["CCACHE_PREFIX": "/usr/bin/distcc"]) { $1 })
        let icecc = DistributedCompile(variables: ["ICECC_VERSION": "/e/gcc.tar.gz"], path: "/c/icecc/bin:/usr/bin", slots: 8, executable: "/usr/bin/icecc")
        #expect(icecc.environment(ccache: true) == ["ICECC_VERSION": "/e/gcc.tar.gz", "CCACHE_PREFIX": "/usr/bin/icecc"])
    }

    @Test("ICECC_VERSION: the native environment plain, the cross compiler's tagged with its platform and target prefix")
    func iceccVersion() {
        let version = IceccPlanner.version([("s390x-linux-gnu-gcc", "/e/s390x.tar.gz"), ("gcc", "/e/gcc.tar.gz")], platform: "x86_64")
        #expect(version == "/e/gcc.tar.gz,x86_64:/e/s390x.tar.gz=s390x-linux-gnu")
        #expect(IceccPlanner.version([("gcc", "/e/gcc.tar.gz")], platform: "x86_64") == "/e/gcc.tar.gz")
        #expect(IceccPlanner.socketPaths(environment: ["HOME": "/h"]) == ["/var/run/icecc/iceccd.socket", "/var/run/iceccd.socket", "/h/.iceccd.socket"])
        #expect(IceccPlanner.socketPaths(environment: ["HOME": "/h", "ICECC_TEST_SOCKET": "/t/s"]) == ["/t/s"])
    }

    @Test("the helpers: --icecc, else --distcc, else DISTCC_HOSTS, else the user config; --no-distcc and --no-icecc win")
    func hostSources() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("build:\n  distcc: \"10.0.0.9/8\"\n", to: dir + "/d/vmfactory/config.yaml")
        try TestSupport.write("build:\n  icecc: true\n", to: dir + "/i/vmfactory/config.yaml")
        let withDistcc = ["XDG_CONFIG_HOME": dir + "/d"], withIcecc = ["XDG_CONFIG_HOME": dir + "/i"]
        func helpers(_ distcc: String? = nil, icecc: Bool = false, noDistcc: Bool = false, noIcecc: Bool = false, in environment: [String: String]) throws -> CompileHelpers? {
            try UserConfig.helpers(distcc: distcc, icecc: icecc, noDistcc: noDistcc, noIcecc: noIcecc, environment: environment)
        }
        let hosts = withDistcc.merging(["DISTCC_HOSTS": "b/2"]) { $1 }
        #expect(try helpers("a/2", in: hosts) == .distcc(hosts: "a/2", source: "--distcc"))
        #expect(try helpers(in: hosts) == .distcc(hosts: "b/2", source: "$DISTCC_HOSTS"))
        #expect(try helpers(in: withDistcc) == .distcc(hosts: "10.0.0.9/8", source: "build.distcc in \(dir)/d/vmfactory/config.yaml"))
        #expect(try helpers(noDistcc: true, in: hosts) == nil)
        #expect(try helpers(in: ["XDG_CONFIG_HOME": dir + "/none"]) == nil)
        #expect(try helpers(icecc: true, in: hosts) == .icecc(source: "--icecc"))
        #expect(try helpers(in: withIcecc) == .icecc(source: "build.icecc in \(dir)/i/vmfactory/config.yaml"))
        #expect(try helpers(noIcecc: true, in: withIcecc) == nil)
        #expect(try helpers(in: withIcecc.merging(["DISTCC_HOSTS": "b/2"]) { $1 }) == .distcc(hosts: "b/2", source: "$DISTCC_HOSTS"))
        #expect(try helpers(in: withIcecc)?.explicit == false)
        #expect(try UserConfig.parse("build:\n  icecc: false\n", path: "config.yaml") == UserConfig())
        for bad in ["build: [1]\n", "build:\n  distcc: \"\"\n", "build:\n  jobs: 4\n", "other: 1\n", "build: {distcc: [a]}\n",
                    "build:\n  icecc: maybe\n", "build:\n  icecc: true\n  distcc: a/2\n"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try UserConfig.parse(bad, path: "config.yaml") }
        }
    }

    @Test("a build cache is a layout or a registry without a tag; its tags are the input key and the target")
    func cacheReferences() throws {
        let skopeo = Skopeo(registry: .init(), environment: [:], runner: LocalProcessRunner(hostEnvironment: [:]))
        let console = Console(verbosity: .quiet)
        let registry = try RegistryBuildCache(parsing: "docker://127.0.0.1:5000/vmf/cache", currentDirectory: "/w", skopeo: skopeo, console: console, temporaryDirectory: "/t")
        #expect(registry.store == .registry("127.0.0.1:5000/vmf/cache"))
        #expect(registry.location == "docker://127.0.0.1:5000/vmf/cache")
        let layout = try RegistryBuildCache(parsing: "oci:cache", currentDirectory: "/w", skopeo: skopeo, console: console, temporaryDirectory: "/t")
        #expect(layout.store == .layout("/w/cache"))
        for bad in ["docker://h/r:tag", "oci:dir:tag", "oci-archive:x.tar", "dir:x"] {
            #expect(throws: VMFactoryError.self, "\(bad)") {
                try RegistryBuildCache(parsing: bad, currentDirectory: "/w", skopeo: skopeo, console: console, temporaryDirectory: "/t")
            }
        }
        let key = SHA256Digest.of("inputs")
        #expect(RegistryBuildCache.tag(inputKey: key, target: .s390x) == key.hex + "-s390x")
        #expect(PublishDestination.isValidTag(RegistryBuildCache.tag(inputKey: key, target: .x86_64)))
    }

    @Test("an unanswered port is found quickly; a listening one answers")
    func probe() async throws {
        let closed = try LocalRegistry.freePort()
        let problem = await TCPProbe.connect(host: "127.0.0.1", port: closed, timeout: .seconds(2))
        #expect(problem?.contains("refused") == true, "\(problem ?? "nil")")
        let unresolvable = await TCPProbe.connect(host: "no-such-host.invalid", port: 3632, timeout: .seconds(2))
        #expect(unresolvable?.contains("cannot resolve") == true)
        let (fd, port) = try LocalRegistry.listeningSocket()
        defer { close(fd) }
        #expect(await TCPProbe.connect(host: "127.0.0.1", port: port, timeout: .seconds(2)) == nil)
    }
}
