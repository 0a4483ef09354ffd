#include "npy.h"

#include <cctype>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "penni_runtime.h"

namespace penni {
namespace detail {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// Values are strings, True/False or tuples of integers; each is kept as its text ("(2,3)" for tuples).
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  std::map<std::string, std::string> Parse() {
    std::map<std::string, std::string> out;
    Expect('{');
    while (Peek() != '}') {
      std::string key = String();
      Expect(':');
      out[key] = Value();
      if (Peek() == ',') ++i_;
    }
    return out;
  }

 private:
  [[noreturn]] void Fail() const {
    throw Error("cannot read " + path_ + " as a .npy array: malformed header " + s_);
  }
  char Peek() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    if (i_ >= s_.size()) Fail();
    return s_[i_];
  }
  void Expect(char c) {
    if (Peek() != c) Fail();
    ++i_;
  }
  std::string String() {
    char quote = Peek();
    if (quote != '\'' && quote != '"') Fail();
    size_t end = s_.find(quote, ++i_);
    if (end == std::string::npos) Fail();
    std::string out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return out;
  }
  std::string Value() {
    char c = Peek();
    if (c == '\'' || c == '"') return String();
    if (c == '(') {
      std::string out = "(";
      ++i_;
      while (Peek() != ')') {
        size_t start = i_;
        while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
        if (i_ == start) Fail();
        out += s_.substr(start, i_ - start) + ",";
        if (Peek() == ',') ++i_;
      }
      ++i_;
      return out + ")";
    }
    size_t start = i_;
    while (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) ++i_;
    std::string word = s_.substr(start, i_ - start);
    if (word != "True" && word != "False") Fail();
    return word;
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

std::vector<int64_t> ParseShape(const std::string& tuple) {
  std::vector<int64_t> shape;
  std::stringstream items(tuple.substr(1, tuple.size() - 2));
  std::string item;
  while (std::getline(items, item, ',')) shape.push_back(std::stoll(item));
  return shape;
}

}  // namespace

NpyArray ReadNpy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("cannot read " + path + " as a .npy array: no such file, or not readable");
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (bytes.size() < kMagicSize + 4 || bytes.compare(0, kMagicSize, kMagic, kMagicSize) != 0) {
    throw Error("cannot read " + path + " as a .npy array: it is not a .npy file (save it with numpy.save)");
  }
  int major = static_cast<unsigned char>(bytes[6]);
  auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])); };
  uint64_t header_length, header_start;
  if (major == 1) {
    header_length = byte(8) | byte(9) << 8;
    header_start = 10;
  } else if ((major == 2 || major == 3) && bytes.size() >= 12) {
    header_length = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
    header_start = 12;
  } else {
    throw Error("cannot read " + path + " as a .npy array: unknown .npy format version " + std::to_string(major));
  }
  if (header_start + header_length > bytes.size()) {
    throw Error("cannot read " + path + " as a .npy array: truncated header");
  }
  std::string header = bytes.substr(header_start, header_length);
  std::map<std::string, std::string> fields = HeaderParser(header, path).Parse();
  if (!fields.count("descr") || !fields.count("shape") || fields["shape"][0] != '(') {
    throw Error("cannot read " + path + " as a .npy array: header lacks descr or shape: " + header);
  }
  if (fields["descr"] != "<f4") {
    throw Error(path + " holds " + fields["descr"] + " data, but this runner takes float32 (<f4); "
                "convert it, e.g. np.save(path, x.astype(np.float32))");
  }
  if (fields["fortran_order"] == "True") {
    throw Error(path + " is in Fortran order; save a C-order array: np.save(path, np.ascontiguousarray(x))");
  }
  NpyArray array;
  array.shape = ParseShape(fields["shape"]);
  uint64_t count = 1;
  for (int64_t dim : array.shape) count *= static_cast<uint64_t>(dim);
  uint64_t data_start = header_start + header_length;
  if (bytes.size() - data_start != count * sizeof(float)) {
    throw Error("cannot read " + path + " as a .npy array: " + std::to_string(bytes.size() - data_start) +
                " data bytes for " + std::to_string(count) + " float32 values (truncated or damaged)");
  }
  array.data.resize(count);
  if (count) std::memcpy(array.data.data(), bytes.data() + data_start, count * sizeof(float));
  return array;
}

void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  std::string dims;
  uint64_t count = 1;
  for (int64_t dim : shape) {
    dims += std::to_string(dim) + ", ";
    count *= static_cast<uint64_t>(dim);
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);   // (2, 5); a 1-d shape keeps its comma: (5,)
  if (shape.size() == 1) dims.resize(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic, version, length and header are padded with spaces to a multiple of 64, ending in \n.
  size_t total = kMagicSize + 4 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';

  std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write " + path + ": the folder does not exist or is not writable");
    out.write(kMagic, kMagicSize);
    out.put(1);
    out.put(0);
    out.put(static_cast<char>(header.size() & 0xFF));
    out.put(static_cast<char>(header.size() >> 8));
    out << header;
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
    if (!out.flush()) {
      std::remove(tmp.c_str());
      throw Error("cannot write " + path + " (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot write " + path + ": renaming the finished file failed");
  }
}

}  // namespace detail
}  // namespace penni
