// ds-mkmodel: writes a GGUF model with random weights (deterministic for a seed).
//
//   ds-mkmodel --preset bench-110m --type q8_0 -o model.gguf   (or q4_k, q6_k: 256-blocks)
//   ds-mkmodel --arch qwen2 --dim 256 --layers 4 --heads 8 --kv-heads 2 --ffn 512
//              --vocab 1000 --ctx 512 --type f16 --seed 7 -o model.gguf
// Exit codes: 0 ok, 1 write failed, 2 usage error.
#include <CLI/CLI.hpp>

#include <iostream>

#include "model/mkmodel.h"
#include "tools/common/cli_util.h"

int main(int argc, char** argv) {
  CLI::App app{"ds-mkmodel: write a random-weight GGUF model (llama or qwen2) for tests and benchmarks"};
  std::string preset, type_name = "f32", out;
  ds::ModelSpec spec;
  bool quiet = false;
  std::string presets;
  for (const auto& n : ds::model_preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  auto* p = app.add_option("--preset", preset, "Shape preset: " + presets);
  auto shape = [&](const char* flag, int* v, const char* what) { return app.add_option(flag, *v, what)->excludes(p); };
  app.add_option("--arch", spec.arch, "Architecture: llama or qwen2")->check(CLI::IsMember({"llama", "qwen2"}));
  shape("--dim", &spec.dim, "Embedding width");
  shape("--layers", &spec.layers, "Transformer blocks");
  shape("--heads", &spec.heads, "Attention heads");
  shape("--kv-heads", &spec.kv_heads, "Key/value heads (GQA)");
  shape("--ffn", &spec.ffn, "Feed-forward width");
  shape("--vocab", &spec.vocab, "Vocabulary size (>= 300)");
  shape("--ctx", &spec.ctx, "Training context length (metadata)");
  app.add_option("--type", type_name, "Weight type: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k (k-quants need dim and ffn multiples of 256)")->required();
  app.add_option("--seed", spec.seed, "Random seed (same seed, same file)");
  app.add_flag("--tied", spec.tied_output, "Tie the output projection to the token embedding");
  app.add_option("--name", spec.name, "general.name to record");
  app.add_option("-o,--output", out, "Output file")->required();
  app.add_flag("-q,--quiet", quiet, "No progress output");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  if (!preset.empty()) {
    auto r = ds::model_preset(preset);
    if (!r.ok()) {
      std::cerr << "ds-mkmodel: " << r.status().message() << "\n";
      return ds::cli::kExitUsage;
    }
    const std::string arch = spec.arch;
    const uint64_t seed = spec.seed;
    const bool tied = spec.tied_output;
    const std::string name = spec.name;
    spec = *r;
    if (app.count("--arch")) spec.arch = arch;
    spec.seed = seed;
    spec.tied_output = tied;
    spec.name = name;
  }
  if (!ds::parse_dtype(type_name.c_str(), &spec.type)) {
    std::cerr << "ds-mkmodel: unknown --type '" << type_name << "' (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)\n";
    return ds::cli::kExitUsage;
  }
  if (ds::Status s = ds::validate(spec); !s.ok()) {
    std::cerr << "ds-mkmodel: " << s.message() << "\n";
    return ds::cli::kExitUsage;
  }
  ds::cli::Progress progress("writing " + out, !quiet);
  ds::Status s = ds::write_random_model(spec, out, [&](size_t d, size_t t) { progress.update(d, t); });
  if (!s.ok()) {
    std::cerr << "ds-mkmodel: " << s.ToString() << "\n";
    return ds::cli::kExitFailure;
  }
  if (!quiet) std::cerr << "wrote " << out << " (" << spec.arch << ", dim " << spec.dim << ", " << spec.layers << " layers, " << ds::dtype_name(spec.type) << ")\n";
  return ds::cli::kExitOk;
}
