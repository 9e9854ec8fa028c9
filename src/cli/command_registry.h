// Each `tqkv` subcommand lives in its own cmd_<name>.cpp and registers itself here at static
// initialisation:
//
//   static tqkv::cli::CommandRegistrar reg("codec", "Measure the TurboQuant codec", &setup);
//
// `setup` adds options to the subcommand and returns the function that runs it (returning the
// process exit code). Files are compiled straight into the program, so registration is never
// dropped by the linker.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace tqkv::cli {

using RunFn = std::function<int()>;
using SetupFn = RunFn (*)(CLI::App& sub);

struct CommandEntry {
  std::string name;
  std::string description;
  SetupFn setup;
};

std::vector<CommandEntry>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* description, SetupFn setup) {
    command_registry().push_back({name, description, setup});
  }
};

}  // namespace tqkv::cli
