import Foundation
import VMFactoryArchive
import VMFactoryCore

/// The `make` invocation for one target's out-of-tree kernel build, as a value.
public struct KernelMake: Sendable, Hashable {
    public var target: Target
    public var sourceTree: String
    public var buildDirectory: String
    public var jobs: Int?
    public var hostMachine: String
    /// Further variables on make's command line (`CC` when compiling through ccache); the
    /// KBUILD_BUILD_* settings go in the environment instead (see `KernelBuildPlan`).
    public var extraVariables: [String: String]

    public init(target: Target, sourceTree: String, buildDirectory: String, jobs: Int? = nil, hostMachine: String = Target.hostMachine, extraVariables: [String: String] = [:]) {
        self.target = target
        self.sourceTree = sourceTree
        self.buildDirectory = buildDirectory
        self.jobs = jobs
        self.hostMachine = hostMachine
        self.extraVariables = extraVariables
    }

    /// Variables that select the architecture and toolchain.
    public var variables: [(String, String)] {
        var result = [("ARCH", target.makeArch)]
        if let prefix = target.crossCompilePrefix(host: hostMachine) { result.append(("CROSS_COMPILE", prefix)) }
        result += extraVariables.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return result
    }

    public func command(_ goals: [String]) -> Command {
        var arguments = ["-C", sourceTree, "O=\(buildDirectory)"]
        arguments += variables.map { "\($0.0)=\($0.1)" }
        if let jobs { arguments.append("-j\(jobs)") }
        arguments += goals
        // On SIGTERM make stops its own compilers and deletes the targets it was writing.
        return Command("make", arguments, workingDirectory: buildDirectory, deathSignal: SIGTERM)
    }
}
