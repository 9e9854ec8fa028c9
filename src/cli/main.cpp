// tqkv: one program, many subcommands (see command_registry.h).
#include <algorithm>
#include <cstdio>
#include <map>

#include "cli/command_registry.h"

namespace tqkv::cli {
std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> registry;
  return registry;
}
}  // namespace tqkv::cli

int main(int argc, char** argv) {
  using namespace tqkv::cli;
  CLI::App app{"tqkv: TurboQuant-compressed KV cache for LLM inference"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tqkv 0.1.0");

  auto entries = command_registry();
  std::sort(entries.begin(), entries.end(),
            [](const CommandEntry& a, const CommandEntry& b) { return a.name < b.name; });
  std::map<CLI::App*, RunFn> runners;
  for (const auto& e : entries) {
    CLI::App* sub = app.add_subcommand(e.name, e.description);
    runners[sub] = e.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) return run();
  }
  return 1;
}
