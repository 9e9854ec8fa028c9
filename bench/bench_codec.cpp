// Google Benchmark of TurboQuantCodec encode/decode (single thread), in bytes/s of fp32 input.
// Args: {bits, head_dim}. Run: build/bench/bench_codec --benchmark_filter=Encode
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "tqkv/codec.h"

namespace {

constexpr int64_t kVectors = 4096;  // 2 MB of fp32 input at d = 128: stays in L2/L3 like a KV page batch

struct Fixture {
  tqkv::TurboQuantCodec codec;
  std::vector<float> x;
  std::vector<uint8_t> idx;
  std::vector<uint16_t> scales;
};

Fixture make(int bits, int d) {
  auto c = tqkv::TurboQuantCodec::create({d, bits, tqkv::default_rotation(d)});
  Fixture f{std::move(c).value(), {}, {}, {}};
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  f.x.resize(kVectors * d);
  for (auto& v : f.x) v = g(rng);
  f.idx.resize(kVectors * f.codec.index_bytes());
  f.scales.resize(kVectors);
  return f;
}

void BM_Encode(benchmark::State& st) {
  Fixture f = make(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  for (auto _ : st) {
    tqkv::Status s = f.codec.encode(f.x.data(), kVectors, f.idx.data(), f.scales.data());
    benchmark::DoNotOptimize(f.idx.data());
    if (!s.is_ok()) st.SkipWithError(s.message().c_str());
  }
  st.SetBytesProcessed(st.iterations() * kVectors * st.range(1) * 4);
}

void BM_Decode(benchmark::State& st) {
  Fixture f = make(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  if (!f.codec.encode(f.x.data(), kVectors, f.idx.data(), f.scales.data()).is_ok()) st.SkipWithError("encode");
  std::vector<float> out(f.x.size());
  for (auto _ : st) {
    f.codec.decode(f.idx.data(), f.scales.data(), kVectors, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(st.iterations() * kVectors * st.range(1) * 4);
}

void args(benchmark::internal::Benchmark* b) {
  for (int d : {128, 96})
    for (int bits : {2, 3, 4, 8}) b->Args({bits, d});
}
BENCHMARK(BM_Encode)->Apply(args);
BENCHMARK(BM_Decode)->Apply(args);

}  // namespace
