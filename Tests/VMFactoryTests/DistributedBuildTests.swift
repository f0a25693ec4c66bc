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

    @Test("distcc reaches make without changing its command lines: PATH first, or ccache's prefix")
    func environment() {
        let setup = DistccSetup(hosts: "a/2 b/2", stateDirectory: "/c/distcc/state", masquerade: "/c/distcc/bin", path: "/c/distcc/bin:/usr/bin", slots: 4)
        let common = ["DISTCC_HOSTS": "a/2 b/2", "DISTCC_DIR": "/c/distcc/state", "DISTCC_NO_REWRITE_CROSS": "1"]
        #expect(setup.environment(ccache: false) == common.merging(["PATH": "/c/distcc/bin:/usr/bin"]) { $1 })
        #expect(setup.environment(ccache: true) == common.merging(["CCACHE_PREFIX": "distcc"]) { $1 })
    }

    @Test("the host list comes from --distcc, else DISTCC_HOSTS, else the user config; --no-distcc wins")
    func hostSources() throws {
        let dir = try TestSupport.temporaryDirectory()
        try TestSupport.write("build:\n  distcc: \"10.0.0.9/8\"\n", to: dir + "/vmfactory/config.yaml")
        let environment = ["XDG_CONFIG_HOME": dir]
        #expect(try UserConfig.distcc(option: "a/2", disabled: false, environment: environment.merging(["DISTCC_HOSTS": "b/2"]) { $1 })?.hosts == "a/2")
        #expect(try UserConfig.distcc(option: nil, disabled: false, environment: environment.merging(["DISTCC_HOSTS": "b/2"]) { $1 })?.hosts == "b/2")
        #expect(try UserConfig.distcc(option: nil, disabled: false, environment: environment)?.hosts == "10.0.0.9/8")
        #expect(try UserConfig.distcc(option: nil, disabled: true, environment: environment)?.hosts == nil)
        #expect(try UserConfig.distcc(option: nil, disabled: false, environment: ["XDG_CONFIG_HOME": dir + "/none"])?.hosts == nil)
        for bad in ["build: [1]\n", "build:\n  distcc: \"\"\n", "build:\n  jobs: 4\n", "other: 1\n", "build: {distcc: [a]}\n"] {
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
