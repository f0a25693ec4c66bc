import VMFactoryCommands

await VMFactoryCommand.runProcess()
