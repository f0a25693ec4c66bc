import ArgumentParser
import Foundation
import VMFactoryCore
import VMFactoryExec

extension VMFactoryCommand {
    /// Parses `arguments` and runs the command in `context`; returns the exit status, as the
    /// executable would exit with it. Help and usage errors are written to the context's
    /// outputs like ArgumentParser writes them.
    public static func run(_ arguments: [String], in context: CommandContext) async -> Int32 {
        do {
            var command = try parseAsRoot(arguments)
            var context = context
            context.arguments = arguments
            try await CommandContext.$current.withValue(context) {
                if var asynchronous = command as? any AsyncParsableCommand {
                    try await asynchronous.run()
                } else {
                    try command.run()
                }
            }
            return 0
        } catch {
            let code = exitCode(for: error).rawValue
            let message = fullMessage(for: error)
            if !message.isEmpty { (code == 0 ? context.stdout : context.stderr).writeLine(message) }
            return code
        }
    }

    /// The executable's entry point.
    public static func runProcess() async -> Never {
        Foundation.exit(await run(Array(CommandLine.arguments.dropFirst()), in: .process))
    }
}
