// model/mkmodel.h: random-weight GGUF models of any shape and supported type, for
// tests, benchmarks and the demo node. Deterministic for a seed; loadable by
// llama.cpp too (standard tensor names and metadata, a SentencePiece vocabulary with
// byte fallback).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "model/status.h"

namespace ds {

struct ModelSpec {
  std::string arch = "llama";  // "llama" or "qwen2"
  int dim = 64;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int ffn = 192;
  int vocab = 512;
  int ctx = 256;
  DType type = DType::kF32;
  uint64_t seed = 1;
  bool tied_output = false;
  std::string name;  // general.name; default "ds-random-<arch>-<dim>x<layers>"
};

// Presets: tiny, tiny-qwen2, bench-110m, bench-1b. NotFound for other names.
Result<ModelSpec> model_preset(const std::string& name);
std::vector<std::string> model_preset_names();
// InvalidArgument naming the problem (shape not divisible by heads or block size...).
Status validate(const ModelSpec& s);
// Writes the model; progress(bytes done, bytes total).
Status write_random_model(const ModelSpec& s, const std::string& path,
                          const std::function<void(size_t, size_t)>& progress = {});

}  // namespace ds
