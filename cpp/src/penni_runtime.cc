// penni::Model: the checks of penni_deploy/artifact/runtime.py, then the Relax VM through TVM's FFI.
#include "penni_runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <sched.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "signature.h"
#include "zip_reader.h"

#ifndef PENNI_TVM_VERSION
#error "PENNI_TVM_VERSION must name the TVM version of the runtime libraries (set by cpp/CMakeLists.txt)"
#endif

namespace penni {

namespace ffi = tvm::ffi;
using JsonObject = ffi::Map<ffi::String, ffi::Any>;

namespace {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kDefaultLibraryName = "model.so";
// Relax VM allocator kinds (tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR): what Python uses.
constexpr int kPooledAllocator = 2;
// runtime.GetDeviceAttr kinds (tvm/runtime/device_api.h DeviceAttrKind).
constexpr int kDeviceExist = 0;
constexpr int kDeviceComputeVersion = 4;

// --- the manifest, read with TVM FFI's JSON parser -----------------------------------------------

struct Manifest {
  std::string tvm_version;
  std::string device = "cpu";
  std::string target_name, isa, mcpu, precision = "fp32";
  std::vector<TensorSpec> inputs, outputs;
  std::string library_file = kDefaultLibraryName;
  std::string library_sha256;
  std::vector<std::string> gpu_code;
};

[[noreturn]] void Malformed(const std::string& why) {
  throw Error("artifact manifest is malformed (" + why + "); recompile");
}

JsonObject Object(const ffi::Any& value, const std::string& what) {
  auto object = value.as<JsonObject>();
  if (!object) Malformed(what + " is not an object");
  return *object;
}

std::string Text(const JsonObject& object, const char* key, const std::string& fallback = "") {
  auto found = object.find(key);
  if (found == object.end() || (*found).second == nullptr) return fallback;
  auto text = (*found).second.as<ffi::String>();
  if (!text) Malformed(std::string(key) + " is not a string");
  return std::string(*text);
}

ffi::Array<ffi::Any> List(const JsonObject& object, const char* key) {
  auto found = object.find(key);
  if (found == object.end()) Malformed(std::string("KeyError: '") + key + "'");
  auto list = (*found).second.as<ffi::Array<ffi::Any>>();
  if (!list) Malformed(std::string(key) + " is not a list");
  return *list;
}

std::vector<TensorSpec> Specs(const JsonObject& manifest, const char* key) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : List(manifest, key)) {
    JsonObject raw = Object(item, key);
    TensorSpec spec{Text(raw, "name"), {}, Text(raw, "dtype")};
    for (const ffi::Any& dim : List(raw, "shape")) {
      auto size = dim.as<int64_t>();
      if (!size || *size < 0) Malformed(std::string(key) + " shape holds a non-size");
      spec.shape.push_back(*size);
    }
    specs.push_back(spec);
  }
  return specs;
}

Manifest ParseManifest(const std::string& text) {
  ffi::String error;
  ffi::Any parsed = ffi::json::Parse(text, &error);
  if (!error.empty()) Malformed("JSONDecodeError: " + std::string(error));
  JsonObject raw = Object(parsed, "the manifest");
  auto version_field = raw.find("format_version");
  std::string version = "None";
  if (version_field != raw.end()) {
    auto number = (*version_field).second.as<int64_t>();
    version = number ? std::to_string(*number) : "of an unknown kind";
    if (number && *number == kFormatVersion) version.clear();
  }
  if (!version.empty()) {
    throw Error("artifact format version " + version + " is not supported by this penni-run (it reads version " +
                std::to_string(kFormatVersion) + "); recompile the model");
  }
  Manifest m;
  m.tvm_version = Text(raw, "tvm_version");
  JsonObject target = Object(raw.at("target"), "target");
  m.device = Text(target, "device", "cpu");
  m.target_name = Text(target, "name");
  m.isa = Text(target, "isa");
  m.mcpu = Text(target, "mcpu");
  m.precision = Text(target, "precision", "fp32");
  m.inputs = Specs(raw, "inputs");
  m.outputs = Specs(raw, "outputs");
  JsonObject library = Object(raw.at("library"), "library");
  m.library_file = Text(library, "file", kDefaultLibraryName);
  m.library_sha256 = Text(library, "sha256");
  if (library.count("gpu_code")) {
    for (const ffi::Any& code : List(library, "gpu_code")) {
      auto name = code.as<ffi::String>();
      if (!name) Malformed("gpu_code holds a non-string");
      m.gpu_code.push_back(std::string(*name));
    }
  }
  return m;
}

// --- the device checks ---------------------------------------------------------------------------

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// CPU features this CPU lacks of those the artifact's ISA needs; empty when /proc/cpuinfo is
// unreadable (then the loader tries, as Python's does).
std::vector<std::string> MissingCpuFeatures(const std::string& isa, const std::string& precision) {
  std::vector<std::string> needed;
  if (isa == "avx512") needed = {"avx512f"};
  if (isa == "avx2") needed = {"avx2", "fma"};
  if (precision == "bf16") needed.push_back("avx512_bf16");  // the vdpbf16ps micro-kernel
  if (precision == "int8") {                                 // the vpdpbusd conv tile
    needed.push_back("avx512bw");
    needed.push_back("avx512vl");
    needed.push_back("avx512_vnni");
  }
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      flags = " " + line.substr(line.find(':') + 1) + " ";
      break;
    }
  }
  std::vector<std::string> missing;
  if (flags.empty()) return missing;
  for (const std::string& feature : needed) {
    if (flags.find(" " + feature + " ") == std::string::npos) missing.push_back(feature);
  }
  return missing;
}

// As penni_deploy.artifact.runtime.gpu_code_runs_on: SASS of the same major version and no newer
// minor, or PTX no newer than the GPU.
bool GpuCodeRunsOn(const std::vector<std::string>& code, int capability) {
  for (const std::string& name : code) {
    size_t underscore = name.find('_');
    if (underscore == std::string::npos) continue;
    std::string kind = name.substr(0, underscore);
    int arch = std::atoi(name.c_str() + underscore + 1);  // stops at an a/f suffix
    if (kind == "sm" && arch / 10 == capability / 10 && arch <= capability) return true;
    if (kind == "compute" && arch <= capability) return true;
  }
  return false;
}

// The wheel registers its CUDA backend from libtvm_runtime_cuda.so, beside libtvm_runtime.so;
// loading it (needs the NVIDIA driver and libcudart) makes the CUDA device exist.
void LoadCudaRuntime() {
  void* runtime = dlopen("libtvm_runtime.so", RTLD_LAZY | RTLD_NOLOAD);
  struct link_map* map = nullptr;
  std::string folder;
  if (runtime && dlinfo(runtime, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name) {
    folder = map->l_name;
    folder = folder.substr(0, folder.rfind('/') + 1);
  }
  if (runtime) dlclose(runtime);
  dlopen((folder + "libtvm_runtime_cuda.so").c_str(), RTLD_NOW | RTLD_GLOBAL);
}

void CheckGpu(const Manifest& m) {
  ffi::Function attr = ffi::Function::GetGlobalRequired("runtime.GetDeviceAttr");
  auto exists = [&] { return attr(static_cast<int>(kDLCUDA), 0, kDeviceExist).cast<int64_t>() != 0; };
  if (!exists()) LoadCudaRuntime();
  if (!exists()) {
    throw Error("this artifact runs on NVIDIA GPUs (code for " + Join(m.gpu_code) + "), but no CUDA device is "
                "available here (no GPU, or no NVIDIA driver); run it on a GPU machine or recompile with --target x86");
  }
  std::string version = attr(static_cast<int>(kDLCUDA), 0, kDeviceComputeVersion).cast<ffi::String>();
  int capability = 0;
  for (char c : version) {
    if (c >= '0' && c <= '9') capability = capability * 10 + (c - '0');
  }
  if (!GpuCodeRunsOn(m.gpu_code, capability)) {
    throw Error("this GPU has compute capability " + version + ", but the artifact holds code for " +
                Join(m.gpu_code) + " only; recompile with --arch sm_" + std::to_string(capability));
  }
}

void CheckRuntime(const Manifest& m) {
  if (m.tvm_version != TvmVersion()) {
    throw Error("artifact was built with TVM " + m.tvm_version + " but this runtime is TVM " + TvmVersion() +
                "; recompile it with this TVM, or rebuild penni-run against apache-tvm==" + m.tvm_version);
  }
  if (m.device == "cuda") {
    CheckGpu(m);
  } else if (m.device == "cpu") {
    std::vector<std::string> missing = MissingCpuFeatures(m.isa, m.precision);
    if (!missing.empty()) {
      throw Error("artifact was built for CPU " + m.mcpu + " (" + m.isa + ", " + m.precision + ") but this CPU lacks " +
                  Join(missing) + "; recompile for this machine (penni-deploy compile without --mcpu" +
                  (m.precision != "fp32" ? ", or with --precision fp32)" : ")"));
    }
  } else {
    throw Error("artifact targets device " + m.device + ", which penni-run cannot run; recompile with --target x86");
  }
  for (const std::vector<TensorSpec>* specs : {&m.inputs, &m.outputs}) {
    if (specs->size() != 1 || (*specs)[0].dtype != "float32") {
      throw Error("penni-run runs models with one float32 input and one float32 output; this artifact has " +
                  std::to_string(m.inputs.size()) + " inputs and " + std::to_string(m.outputs.size()) + " outputs");
    }
  }
}

// --- threads and loading -------------------------------------------------------------------------

int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 1;
}

// TVM sizes its CPU thread pool from $TVM_NUM_THREADS when the pool first starts (its default,
// half the hardware threads on x86, leaves cores idle); runtime.config_threadpool cannot raise it.
void ConfigureThreads(int threads) {
  if (threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
  } else if (!std::getenv("TVM_NUM_THREADS")) {
    setenv("TVM_NUM_THREADS", std::to_string(UsableCores()).c_str(), 1);
  }
}

// A CPU artifact's library carries its own thread pool (penni_deploy/artifact/thread_pool.cc):
// point its kernels at it with `threads` threads. Returns the count, or 0 when the library keeps
// TVM's pool (built before the pool existed, no parallel loops, or PENNI_THREAD_POOL=tvm).
int InstallThreadPool(const std::string& path, int threads) {
  const char* choice = std::getenv("PENNI_THREAD_POOL");
  if (choice && std::string(choice) == "tvm") return 0;
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);  // the copy TVM loaded, never a second
  if (!handle) return 0;
  auto install = reinterpret_cast<int (*)(int)>(dlsym(handle, "penni_pool_install"));
  int installed = install ? install(threads) : 0;
  dlclose(handle);  // drops only our reference: TVM's keeps the library loaded
  return installed;
}

// dlopen needs a file: write the (already verified) library into a folder only we can read, load
// it, and remove both; the mapping outlives the file. A CPU library gets its thread pool
// (`pool_threads` in, the count installed or 0 out).
ffi::Module LoadLibrary(const std::string& artifact, const std::string& library, int* pool_threads) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/penni-load-XXXXXX";
  std::vector<char> folder(pattern.begin(), pattern.end());
  folder.push_back('\0');
  if (!mkdtemp(folder.data())) throw Error("cannot create a temporary folder in " + pattern + " to load " + artifact);
  std::string path = std::string(folder.data()) + "/" + kDefaultLibraryName;
  auto cleanup = [&] {
    unlink(path.c_str());
    rmdir(folder.data());
  };
  {
    std::ofstream out(path, std::ios::binary);
    out.write(library.data(), static_cast<std::streamsize>(library.size()));
    if (!out.flush()) {
      cleanup();
      throw Error("cannot write the library of " + artifact + " to " + path + " (disk full?)");
    }
  }
  try {
    ffi::Module module = ffi::Module::LoadFromFile(path);
    *pool_threads = *pool_threads > 0 ? InstallThreadPool(path, *pool_threads) : 0;
    cleanup();
    return module;
  } catch (const ffi::Error& e) {
    cleanup();
    std::string message = e.message();
    throw Error("cannot load the library in " + artifact + ": " + message.substr(0, message.find('\n')));
  }
}

}  // namespace

int64_t TensorSpec::NumElements() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

const std::string& TvmVersion() {
  static const std::string version = PENNI_TVM_VERSION;
  return version;
}

struct Model::Impl {
  Manifest manifest;
  DLDevice device;
  ffi::Module executable{ffi::UnsafeInit()};
  ffi::Module vm{ffi::UnsafeInit()};
  ffi::Function main, alloc, copy_in, copy_out;
  int threads = 1;
  bool own_pool = false;
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

const TensorSpec& Model::input() const { return impl_->manifest.inputs[0]; }
const TensorSpec& Model::output() const { return impl_->manifest.outputs[0]; }
const std::string& Model::device() const { return impl_->manifest.device; }
int Model::threads() const { return impl_->threads; }
const char* Model::thread_pool() const { return impl_->own_pool ? "penni" : "tvm"; }

Model Model::Load(const std::string& path, const LoadOptions& options) {
  // Everything up to LoadLibrary reads bytes only: no native code from the artifact runs before
  // the signature (when required) and the target checks pass.
  detail::ZipArchive archive = detail::ZipArchive::Open(path);
  std::string manifest_bytes = archive.Read(kManifestName);
  auto impl = std::make_unique<Impl>();
  Manifest& m = impl->manifest;
  try {
    m = ParseManifest(manifest_bytes);
  } catch (const ffi::Error& e) {  // a field of the wrong JSON type
    Malformed(e.kind() + ": " + e.message());
  }
  std::string library = archive.Read(m.library_file);
  std::string library_sha256 = detail::Sha256Hex(library);
  if (library_sha256 != m.library_sha256) {
    throw Error(path + ": the library does not match the sha256 in its manifest (tampered or damaged); recompile it");
  }
  std::string trusted_key = options.trusted_key;
  if (trusted_key.empty() && std::getenv("PENNI_TRUSTED_KEY")) trusted_key = std::getenv("PENNI_TRUSTED_KEY");
  if (!trusted_key.empty()) {
    std::string signature;
    bool is_signed = archive.Has(detail::kSignatureName);
    if (is_signed) signature = archive.Read(detail::kSignatureName);
    detail::VerifySignature(path, manifest_bytes, m.library_file, library_sha256, is_signed ? &signature : nullptr,
                            trusted_key);
  }
  CheckRuntime(m);

  ConfigureThreads(options.threads);
  impl->device = DLDevice{m.device == "cuda" ? kDLCUDA : kDLCPU, 0};
  int pool_threads = impl->device.device_type == kDLCPU ? std::atoi(std::getenv("TVM_NUM_THREADS")) : 0;
  impl->executable = LoadLibrary(path, library, &pool_threads);
  try {
    // As tvm.runtime.vm.VirtualMachine: the executable makes a VM, which gets the device and,
    // when that is a GPU, the host CPU too (shape functions run there), each with a pooled allocator.
    auto make_vm = impl->executable->GetFunction("vm_load_executable", true);
    if (!make_vm) throw Error("the library in " + path + " is not a Relax VM executable; recompile it");
    impl->vm = (*make_vm)().cast<ffi::Module>();
    ffi::Function initialize = impl->vm->GetFunction("vm_initialization", false).value();
    if (impl->device.device_type == kDLCPU) {
      initialize(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    } else {
      initialize(static_cast<int>(impl->device.device_type), 0, kPooledAllocator, static_cast<int>(kDLCPU), 0,
                 kPooledAllocator);
    }
    auto main = impl->vm->GetFunction("main", false);
    if (!main) throw Error("the library in " + path + " has no main function; recompile it");
    impl->main = *main;
    impl->alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
    impl->copy_in = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
    impl->copy_out = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
    impl->own_pool = pool_threads > 0;
    impl->threads = pool_threads > 0 ? pool_threads
                                     : ffi::Function::GetGlobalRequired("runtime.NumThreads")().cast<int>();
  } catch (const ffi::Error& e) {
    std::string message = e.message();
    throw Error("cannot start the model in " + path + ": " + message.substr(0, message.find('\n')));
  }
  return Model(std::move(impl));
}

void Model::Run(const float* input, size_t input_count, float* output, size_t output_count) {
  const TensorSpec& in = this->input();
  const TensorSpec& out = this->output();
  if (static_cast<int64_t>(input_count) != in.NumElements() ||
      static_cast<int64_t>(output_count) != out.NumElements()) {
    std::ostringstream message;
    message << "the model takes " << in.NumElements() << " input and gives " << out.NumElements()
            << " output values, not " << input_count << " and " << output_count;
    throw Error(message.str());
  }
  try {
    DLDataType float32{kDLFloat, 32, 1};
    ffi::Tensor x = impl_->alloc(ffi::Shape(in.shape), float32, impl_->device, nullptr).cast<ffi::Tensor>();
    impl_->copy_in(x, const_cast<void*>(static_cast<const void*>(input)), input_count * sizeof(float));
    ffi::Any result = impl_->main(x);
    // A Relax main returning a tuple gives an Array; the manifest's one output is its first item.
    auto tensor = result.as<ffi::Tensor>();
    ffi::Tensor y = tensor ? *tensor : result.cast<ffi::Array<ffi::Any>>()[0].cast<ffi::Tensor>();
    if (y.numel() != out.NumElements()) throw Error("the model gave an output of another size than its manifest says");
    impl_->copy_out(y, static_cast<void*>(output), output_count * sizeof(float));
  } catch (const ffi::Error& e) {
    std::string message = e.message();
    throw Error("running the model failed: " + message.substr(0, message.find('\n')));
  }
}

}  // namespace penni
