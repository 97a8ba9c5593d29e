// Greedy generation from RWKV AOTInductor packages, with no Python: the C++ end of
// `python -m rwkv_wkv.export --format aoti`.
//
//   rwkv_aoti_generate LIBRARY GPT.pt2 STEP.pt2 MAX_NEW_TOKENS ID [ID ...]
//
// LIBRARY: rwkv_wkv's compiled operator library (`python -c "import rwkv_wkv;
// print(rwkv_wkv.library_path())"`); the packages call its WKV ops, so it is loaded first.
// GPT.pt2 / STEP.pt2: the model's `--mode gpt` and `--mode step` packages (the step's may run
// the fused CPU step: `--mode step --fused fp32|bf16|fp16|int8`, 3x faster). The prompt's ids
// run through the gpt package (one call), then each new token is the argmax of the logits and
// one call of the step package, the state passed from call to call: what
// `model.generate(ids, n, temperature=0)` does in Python. Prints the prompt and the new ids on
// one line (stdout), the timings on stderr. Exit status 2 and one `error:` line for bad input.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <cstdint>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Loader = torch::inductor::AOTIModelPackageLoader;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int64_t parse_int(const std::string& text, const char* what) {
  size_t end = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &end);
  } catch (const std::exception&) {
    end = 0;
  }
  if (end == 0 || end != text.size()) throw UsageError(std::string(what) + " must be an integer, got '" + text + "'");
  return value;
}

// A package's metadata value (written by rwkv_wkv.export), or "" if absent.
std::string meta(Loader& loader, const std::string& key) {
  auto all = loader.get_metadata();
  auto it = all.find("rwkv_wkv." + key);
  return it == all.end() ? "" : it->second;
}

void expect_mode(Loader& loader, const std::string& path, const std::string& mode) {
  const std::string got = meta(loader, "mode");
  if (got != mode)
    throw UsageError(path + " is not a --mode " + mode + " package of rwkv_wkv.export (its mode: '" + got + "')");
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int run(int argc, char** argv) {
  if (argc < 6)
    throw UsageError("usage: rwkv_aoti_generate LIBRARY GPT.pt2 STEP.pt2 MAX_NEW_TOKENS ID [ID ...]");
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL))
    throw UsageError(std::string("LIBRARY: cannot load rwkv_wkv's library: ") + dlerror());
  const int64_t max_new = parse_int(argv[4], "MAX_NEW_TOKENS");
  if (max_new < 1) throw UsageError("MAX_NEW_TOKENS must be >= 1");
  std::vector<int64_t> ids;
  for (int i = 5; i < argc; ++i) ids.push_back(parse_int(argv[i], "ID"));

  Loader gpt(argv[2]);
  Loader step(argv[3]);
  expect_mode(gpt, argv[2], "gpt");
  expect_mode(step, argv[3], "step");
  const int64_t vocab = parse_int(meta(gpt, "vocab_size"), "the package's vocab_size");
  if (meta(step, "vocab_size") != meta(gpt, "vocab_size") || meta(step, "n_layer") != meta(gpt, "n_layer") ||
      meta(step, "n_embd") != meta(gpt, "n_embd"))
    throw UsageError("GPT.pt2 and STEP.pt2 are packages of different models");
  for (int64_t id : ids)
    if (id < 0 || id >= vocab)
      throw UsageError("ID " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");

  c10::InferenceMode no_autograd;
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor prompt = at::tensor(ids, at::kLong).view({1, -1});
  std::vector<at::Tensor> out = gpt.run({prompt});  // logits (1, T, vocab), state
  at::Tensor state = out[1];
  at::Tensor next = out[0].select(1, -1).to(at::kFloat).argmax(-1);  // (1,)
  const double prefill_ms = ms_since(t0);
  std::vector<int64_t> result = ids;
  result.push_back(next.item<int64_t>());
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 1; i < max_new; ++i) {
    out = step.run({next, state});  // logits (1, vocab), new state
    state = out[1];
    next = out[0].to(at::kFloat).argmax(-1);
    result.push_back(next.item<int64_t>());
  }
  const double step_ms = max_new > 1 ? ms_since(t0) / double(max_new - 1) : 0.0;
  for (size_t i = 0; i < result.size(); ++i) std::cout << (i ? " " : "") << result[i];
  std::cout << "\n";
  std::cerr << "# prompt " << ids.size() << " tokens: " << prefill_ms << " ms; per new token " << step_ms << " ms\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {  // c10::Error from a package that does not load or run
    std::string what = e.what();
    std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
    return 2;
  }
}
