// .npy files of little-endian float32 arrays in C order (format versions 1.0, 2.0 and 3.0).
#ifndef PENNI_NPY_H_
#define PENNI_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace penni {
namespace detail {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Read `path`; throws penni::Error naming the problem for another dtype, Fortran order, a
// malformed header or a data size that does not match the shape.
NpyArray ReadNpy(const std::string& path);

// Write a version 1.0 .npy file next to `path` and rename it over `path`, so a failure never
// leaves a partial file.
void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace detail
}  // namespace penni

#endif  // PENNI_NPY_H_
