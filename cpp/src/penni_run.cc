// penni-run ARTIFACT IN.npy OUT.npy [--repeat N] [--threads N] [--trusted-key PUB.pem]
//
// Checks and runs a .penni artifact on a float32 .npy input without Python, writes the output
// .npy, and with --repeat times N more runs and prints the median. Every refusal is one line
// "error: ..." on stderr and exit code 2, as with penni-deploy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "npy.h"
#include "penni_runtime.h"

namespace {

constexpr int kUsageError = 2;

const char* kUsage =
    "usage: penni-run ARTIFACT IN.npy OUT.npy [--repeat N] [--threads N] [--trusted-key PUB.pem]\n"
    "  --repeat N          after the first run, time N more and print the median latency\n"
    "  --threads N         CPU threads (default: $TVM_NUM_THREADS, else every core this process may use)\n"
    "  --trusted-key PEM   refuse ARTIFACT unless signed with this EC P-256 public key\n"
    "                      (default: $PENNI_TRUSTED_KEY when set)\n"
    "  --version           print the artifact format and TVM version this runner reads\n";

struct Arguments {
  std::vector<std::string> positional;
  int repeat = 0;
  int threads = 0;
  std::string trusted_key;
};

int PositiveInt(const std::string& option, const std::string& text) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 1 || value > 1000000) {
    throw penni::Error(option + " " + text + " must be a positive integer");
  }
  return static_cast<int>(value);
}

Arguments Parse(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw penni::Error(arg + " needs a value; see penni-run --help");
      return argv[++i];
    };
    if (arg == "--repeat") {
      args.repeat = PositiveInt(arg, value());
    } else if (arg == "--threads") {
      args.threads = PositiveInt(arg, value());
    } else if (arg == "--trusted-key") {
      args.trusted_key = value();
      if (args.trusted_key.empty()) throw penni::Error("--trusted-key needs a PEM public key file");
    } else if (arg.rfind("--", 0) == 0) {
      throw penni::Error("unknown option " + arg + "; see penni-run --help");
    } else {
      args.positional.push_back(arg);
    }
  }
  if (args.positional.size() != 3) {
    throw penni::Error("penni-run takes ARTIFACT IN.npy OUT.npy (got " + std::to_string(args.positional.size()) +
                       " paths); see penni-run --help");
  }
  return args;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

std::string ShapeFlag(const std::vector<int64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out;
}

int Run(const Arguments& args) {
  const std::string& artifact = args.positional[0];
  penni::detail::NpyArray x = penni::detail::ReadNpy(args.positional[1]);
  penni::LoadOptions options;
  options.trusted_key = args.trusted_key;
  options.threads = args.threads;
  penni::Model model = penni::Model::Load(artifact, options);
  if (x.shape != model.input().shape) {
    throw penni::Error("input shape is " + ShapeText(x.shape) + " but the model was compiled for " +
                       ShapeText(model.input().shape) + "; recompile with --input-shape " + ShapeFlag(x.shape) +
                       " or reshape the input");
  }
  std::vector<float> y(model.output().NumElements());
  model.Run(x.data.data(), x.data.size(), y.data(), y.size());
  penni::detail::WriteNpy(args.positional[2], model.output().shape, y.data());
  std::fprintf(stderr, "wrote %s: shape %s, dtype float32 (%s, %d threads, %s pool)\n",
               args.positional[2].c_str(), ShapeText(model.output().shape).c_str(), model.device().c_str(),
               model.threads(), model.thread_pool());
  if (args.repeat > 0) {
    std::vector<double> ms;
    for (int i = 0; i < args.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      model.Run(x.data.data(), x.data.size(), y.data(), y.size());
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    double median = ms.size() % 2 ? ms[ms.size() / 2] : (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
    std::printf("median %.4f ms over %d runs (min %.4f, max %.4f; %d threads, input copy included)\n", median,
                args.repeat, ms.front(), ms.back(), model.threads());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("penni-run: artifact format %d, TVM %s\n", penni::kFormatVersion, penni::TvmVersion().c_str());
      return 0;
    }
  }
  try {
    return Run(Parse(argc, argv));
  } catch (const penni::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kUsageError;
  } catch (const std::exception& e) {  // a bug, not a user error: still one line, but say so
    std::fprintf(stderr, "error: penni-run failed unexpectedly (%s); please report it\n", e.what());
    return 1;
  }
}
