// `tqkv codec`: encode N random unit vectors with the TurboQuant codec and report distortion,
// inner-product error and single-thread throughput.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command_registry.h"
#include "tqkv/codec.h"
#include "tqkv/codec_prod.h"

namespace {

struct Options {
  int bits = 4, head_dim = 128;
  std::string rotation;
  int64_t vectors = 20000;
  uint64_t seed = tqkv::kDefaultRotationSeed;
  bool json = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const Options& o) {
  tqkv::RotationKind rot = tqkv::default_rotation(o.head_dim);
  if (o.rotation == "hadamard") rot = tqkv::RotationKind::kHadamard;
  else if (o.rotation == "dense") rot = tqkv::RotationKind::kDense;
  else if (!o.rotation.empty()) {
    std::fprintf(stderr, "error: --rotation must be hadamard or dense, got '%s'\n", o.rotation.c_str());
    return 2;
  }
  if (o.vectors < 1 || o.vectors > 10000000) {
    std::fprintf(stderr, "error: --vectors must be in [1, 10000000]\n");
    return 2;
  }
  auto cr = tqkv::TurboQuantCodec::create({o.head_dim, o.bits, rot, o.seed});
  if (!cr.is_ok()) {
    std::fprintf(stderr, "error: %s\n", cr.status().to_string().c_str());
    return 2;
  }
  const tqkv::TurboQuantCodec& c = cr.value();
  const int d = o.head_dim;
  const int64_t n = o.vectors;
  std::mt19937_64 rng(o.seed ^ 0x1234);
  std::normal_distribution<float> g;
  // x: random unit vectors; q: random unit queries for the inner-product statistics.
  std::vector<float> x(n * d), q(n * d), y(n * d);
  for (std::vector<float>* v : {&x, &q})
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int j = 0; j < d; ++j) s += std::pow((*v)[i * d + j] = g(rng), 2);
      for (int j = 0; j < d; ++j) (*v)[i * d + j] = static_cast<float>((*v)[i * d + j] / std::sqrt(s));
    }
  std::vector<uint8_t> idx(n * c.index_bytes());
  std::vector<uint16_t> sc(n);
  if (!o.json) std::fprintf(stderr, "encoding %lld vectors...\n", static_cast<long long>(n));
  auto t0 = std::chrono::steady_clock::now();
  tqkv::Status st = c.encode(x.data(), n, idx.data(), sc.data());
  const double enc_s = seconds_since(t0);
  if (!st.is_ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  t0 = std::chrono::steady_clock::now();
  c.decode(idx.data(), sc.data(), n, y.data());
  const double dec_s = seconds_since(t0);
  double mse = 0, bias = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) {
    double ip_true = 0, ip_est = 0;
    for (int j = 0; j < d; ++j) {
      mse += std::pow(static_cast<double>(x[i * d + j]) - y[i * d + j], 2);
      ip_true += static_cast<double>(q[i * d + j]) * x[i * d + j];
      ip_est += static_cast<double>(q[i * d + j]) * y[i * d + j];
    }
    bias += ip_est - ip_true;
    var += std::pow(ip_est - ip_true, 2);
  }
  mse /= n;
  bias /= n;
  var = var / n - bias * bias;
  // TurboQuant_prod at the same total bits ((b-1)-bit MSE + QJL signs), on up to 20000 pairs.
  double pbias = NAN, pvar = NAN;
  if (auto pr = tqkv::QjlProdCodec::create({d, o.bits, 0, rot, o.seed}); pr.is_ok()) {
    const tqkv::QjlProdCodec& pc = pr.value();
    const int64_t np = std::min<int64_t>(n, 20000);
    std::vector<uint8_t> pi(np * pc.mse().index_bytes()), ps(np * pc.sign_bytes());
    std::vector<uint16_t> psc(np);
    std::vector<float> prn(np);
    if (pc.encode(x.data(), np, pi.data(), psc.data(), ps.data(), prn.data()).is_ok()) {
      pbias = pvar = 0;
      for (int64_t i = 0; i < np; ++i) {
        double ip_true = 0;
        for (int j = 0; j < d; ++j) ip_true += static_cast<double>(q[i * d + j]) * x[i * d + j];
        const double e = pc.inner_product(q.data() + i * d, pi.data() + i * pc.mse().index_bytes(), psc[i],
                                          ps.data() + i * pc.sign_bytes(), prn[i]) - ip_true;
        pbias += e;
        pvar += e * e;
      }
      pbias /= np;
      pvar = pvar / np - pbias * pbias;
    }
  }
  const double lb = std::pow(4.0, -o.bits);
  const double bytes_in = static_cast<double>(n) * d * 4;
  const double enc_gbps = bytes_in / enc_s / 1e9, dec_gbps = bytes_in / dec_s / 1e9;
  const int64_t bpv = c.index_bytes() + 2;
  if (o.json) {
    // nlohmann::json writes a NaN (prod at 1 bit of MSE, i.e. not applicable) as null.
    const nlohmann::json j = {{"bits", o.bits},
                              {"head_dim", d},
                              {"rotation", tqkv::rotation_kind_name(rot)},
                              {"vectors", n},
                              {"mse", mse},
                              {"lower_bound", lb},
                              {"ratio", mse / lb},
                              {"solver_mse", c.codebook().expected_mse()},
                              {"ip_bias", bias},
                              {"ip_variance", var},
                              {"prod_ip_bias", pbias},
                              {"prod_ip_variance", pvar},
                              {"bytes_per_vector", bpv},
                              {"encode_gbps", enc_gbps},
                              {"decode_gbps", dec_gbps}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("TurboQuant_mse  bits=%d head_dim=%d rotation=%s vectors=%lld (norm-corrected scale)\n", o.bits, d,
                tqkv::rotation_kind_name(rot), static_cast<long long>(n));
    std::printf("  MSE (unit vectors)   %.6g\n  lower bound 4^-b     %.6g   ratio %.3f\n  solver-predicted MSE %.6g (plain scale)\n",
                mse, lb, mse / lb, c.codebook().expected_mse());
    std::printf("  inner product error  bias %.3g  variance %.3g (MSE only)\n", bias, var);
    std::printf("  inner product error  bias %.3g  variance %.3g (prod: %d-bit MSE + QJL; nan if n/a)\n", pbias, pvar,
                o.bits - 1);
    std::printf("  bytes per vector     %lld (%lld index + 2 scale; fp32 input %d)\n", static_cast<long long>(bpv),
                static_cast<long long>(c.index_bytes()), d * 4);
    std::printf("  encode %.3f GB/s, decode %.3f GB/s of fp32 input (1 thread)\n", enc_gbps, dec_gbps);
  }
  return 0;
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--bits", o->bits, "bits per coordinate: 1, 2, 3, 4 or 8")->capture_default_str();
  sub.add_option("--head-dim", o->head_dim, "vector length: multiple of 8 in [64, 256]")->capture_default_str();
  sub.add_option("--rotation", o->rotation, "hadamard or dense (default: hadamard for powers of two)");
  sub.add_option("--vectors", o->vectors, "number of random unit vectors")->capture_default_str();
  sub.add_option("--seed", o->seed, "rotation seed");
  sub.add_flag("--json", o->json, "print one JSON object");
  return [o] { return run(*o); };
}

tqkv::cli::CommandRegistrar reg("codec", "Measure the TurboQuant codec on random unit vectors", &setup);

}  // namespace
