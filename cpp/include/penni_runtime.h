// penni_runtime.h: load and run a penni-deploy artifact (.penni) from C++, without Python.
//
// Loading checks the file as the Python loader (penni_deploy.load) does, in the same order: a
// readable zip (CRC-32 of every entry read), a manifest of a known format version, a library
// matching the sha256 in the manifest, the signature when a trusted key is given, the TVM version
// this runtime was built against, and a device that can run the target (CPU features from
// /proc/cpuinfo, or a CUDA GPU of a compute capability the embedded code runs on). Only then is
// the library written to a private temporary folder and loaded. Every failed check throws
// penni::Error with a one-line message that names the problem and the fix.
//
//   penni::Model model = penni::Model::Load("resnet18.penni");
//   std::vector<float> y(model.output().NumElements());
//   model.Run(x.data(), x.size(), y.data(), y.size());
//
// Link: penni_runtime, libtvm_runtime.so, libtvm_ffi.so, OpenSSL's libcrypto and zlib (see
// cpp/CMakeLists.txt). The header itself needs no TVM header.
#ifndef PENNI_RUNTIME_H_
#define PENNI_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace penni {

// The artifact format version this runtime reads (penni_deploy.artifact.manifest.FORMAT_VERSION).
constexpr int kFormatVersion = 1;

// A refused artifact, key or input; what() is one line naming the problem and the fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Name, shape and dtype ("float32") of a model input or output, from the manifest.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;

  int64_t NumElements() const;
};

struct LoadOptions {
  // An EC P-256 public key (PEM): refuse the artifact unless signed with its private half.
  // Empty: $PENNI_TRUSTED_KEY when set, else no signature is required.
  std::string trusted_key;
  // Threads of TVM's CPU thread pool. 0: $TVM_NUM_THREADS when set, else every core this process
  // may run on (sched_getaffinity). The pool is process-wide and sized on first use, so this
  // takes effect only if no TVM kernel has run in the process yet.
  int threads = 0;
};

// The TVM version this runtime was built against (what the manifest's tvm_version must equal).
const std::string& TvmVersion();

class Model {
 public:
  // Check and load the artifact at `path`; throws penni::Error when it is refused.
  static Model Load(const std::string& path, const LoadOptions& options = LoadOptions());

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const TensorSpec& input() const;
  const TensorSpec& output() const;
  // "cpu" or "cuda": where the model runs (the artifact's target device).
  const std::string& device() const;
  // Threads the CPU kernels run on.
  int threads() const;
  // "penni" when the kernels run on the artifact's own thread pool, "tvm" when on TVM's.
  const char* thread_pool() const;

  // Not for two threads at once (the VM keeps its call frames in the model): use a Model per thread.
  // Run one inference: `input` holds input().NumElements() floats in C order, `output` receives
  // output().NumElements() floats. Counts that differ from the specs throw penni::Error.
  void Run(const float* input, size_t input_count, float* output, size_t output_count);

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace penni

#endif  // PENNI_RUNTIME_H_
