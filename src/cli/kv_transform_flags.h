// The KV cache's exact transforms and encoder choice as command-line flags, shared by `tqkv
// generate`, `tqkv perplexity` and `tqkv verify` (one definition of their names, values, defaults
// and help): --smooth-keys, --scale-search, --sink-tokens, --recent-tokens. Each command keeps its own --center,
// whose accepted values differ (values centering is CPU-only and not offered by generate).
// docs/formats.md describes each transform.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "tqkv/model.h"

namespace tqkv::cli {

struct KvTransformFlags {
  std::string smooth_keys = "default";   // on (the default) or off
  std::string scale_search = "default";  // on (the default) or off
  int sink_tokens = -1;                  // -1: KvOptions::kDefaultSinkTokens
  int recent_tokens = -1;                // -1: KvOptions::kDefaultRecentTokens on the CPU, 0 on the GPU

  // `sinks_per_chunk`: the command restarts the cache at every chunk of text (perplexity, verify),
  // so the sink tokens are the first ones of each chunk; say so in the help.
  void add_to(CLI::App& sub, bool sinks_per_chunk) {
    sub.add_option("--smooth-keys", smooth_keys,
                   "on (default): exact per-channel key smoothing before quantization (docs/formats.md); off: "
                   "without (CPU and GPU runtimes)")
        ->check(CLI::IsMember({"default", "on", "off"}));
    sub.add_option("--scale-search", scale_search,
                   "on (default): the TurboQuant encoder tries 7 pre-scales per vector and keeps the closest (same "
                   "format, lower error; docs/formats.md); off: plain encoding (CPU and GPU runtimes)")
        ->check(CLI::IsMember({"default", "on", "off"}));
    sub.add_option("--sink-tokens", sink_tokens,
                   std::string("Tokens at the start") + (sinks_per_chunk ? " of each chunk" : "") +
                       " kept in f16 in compressed layers (attention sinks, docs/formats.md; default " +
                       std::to_string(KvOptions::kDefaultSinkTokens) + " on the CPU and the GPU runtime, 0 = off)")
        ->check(CLI::Range(0, 16));
    sub.add_option("--recent-tokens", recent_tokens,
                   "The last N tokens also kept in f16 in compressed layers, so each decode step sees its nearest "
                   "predecessors exactly (docs/formats.md; default " +
                       std::to_string(KvOptions::kDefaultRecentTokens) +
                       " on the CPU and the GPU runtime, 0 = off; at most 64 on the GPU)")
        ->check(CLI::Range(0, 1024));
  }
  // Into the options of the command (KvOptions, PerplexityOptions: the same field names).
  template <class Options>
  void apply_to(Options& o) const {
    o.smooth_keys = smooth();
    o.scale_search = search();
    o.sink_tokens = sinks();
    o.recent_tokens = recent();
  }
  bool smooth() const { return smooth_keys != "off"; }
  bool search() const { return scale_search != "off"; }
  int sinks() const { return sink_tokens >= 0 ? sink_tokens : KvOptions::kDefaultSinkTokens; }
  int recent() const { return recent_tokens >= 0 ? recent_tokens : KvOptions::kDefaultRecentTokens; }
};

}  // namespace tqkv::cli
