// A reader for the zip files penni-deploy writes: stored or deflated entries, no zip64, no
// encryption. It reads the central directory as Python's zipfile does, checks each entry's local
// header, size and CRC-32, and refuses archives that name an entry twice.
#ifndef PENNI_ZIP_READER_H_
#define PENNI_ZIP_READER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace penni {
namespace detail {

class ZipArchive {
 public:
  // Read the whole file at `path` and its central directory; throws penni::Error if it is not a
  // readable zip archive.
  static ZipArchive Open(const std::string& path);

  bool Has(const std::string& name) const { return entries_.count(name) != 0; }
  // The entry's bytes, inflated and CRC-checked; throws penni::Error when absent or damaged.
  std::string Read(const std::string& name) const;

 private:
  struct Entry {
    uint16_t method = 0;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t size = 0;
    uint64_t local_header_offset = 0;
  };

  [[noreturn]] void Fail(const std::string& why) const;
  void ReadCentralDirectory();

  std::string path_;
  std::string data_;
  std::map<std::string, Entry> entries_;
};

}  // namespace detail
}  // namespace penni

#endif  // PENNI_ZIP_READER_H_
