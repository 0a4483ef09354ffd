#include "zip_reader.h"

#include <zlib.h>

#include <fstream>
#include <iterator>
#include <sstream>

#include "penni_runtime.h"

namespace penni {
namespace detail {
namespace {

constexpr uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr size_t kEndRecordSize = 22;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kLocalHeaderSize = 30;
constexpr uint16_t kStored = 0;
constexpr uint16_t kDeflated = 8;

// Little-endian fields, bounds-checked by the callers.
uint16_t U16(const std::string& s, uint64_t at) {
  return static_cast<uint16_t>(static_cast<unsigned char>(s[at]) |
                               static_cast<unsigned char>(s[at + 1]) << 8);
}
uint32_t U32(const std::string& s, uint64_t at) {
  return static_cast<uint32_t>(U16(s, at)) | static_cast<uint32_t>(U16(s, at + 2)) << 16;
}

}  // namespace

void ZipArchive::Fail(const std::string& why) const {
  throw Error(path_ + " is not a readable penni-deploy artifact (corrupt or truncated: " + why +
              "); recompile it");
}

ZipArchive ZipArchive::Open(const std::string& path) {
  ZipArchive archive;
  archive.path_ = path;
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("no such artifact: " + path);
  archive.data_.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  if (file.bad()) archive.Fail("read error");
  archive.ReadCentralDirectory();
  return archive;
}

void ZipArchive::ReadCentralDirectory() {
  const std::string& d = data_;
  if (d.size() < kEndRecordSize) Fail("File is not a zip file");
  // The end record is the last thing in the file, followed only by a comment of at most 64 KiB.
  uint64_t end = d.size() - kEndRecordSize;
  uint64_t lowest = d.size() > kEndRecordSize + 0xFFFF ? d.size() - kEndRecordSize - 0xFFFF : 0;
  while (U32(d, end) != kEndOfCentralDirectory) {
    if (end == lowest) Fail("File is not a zip file");
    --end;
  }
  uint16_t count = U16(d, end + 10);
  uint64_t directory_size = U32(d, end + 12);
  uint64_t offset = U32(d, end + 16);
  if (count == 0xFFFF || directory_size == 0xFFFFFFFF || offset == 0xFFFFFFFF) {
    Fail("zip64 archive; penni-deploy writes none");
  }
  if (offset + directory_size > end) Fail("central directory outside the file");
  for (uint16_t i = 0; i < count; ++i) {
    if (offset + kCentralHeaderSize > end || U32(d, offset) != kCentralHeader) {
      Fail("bad central directory entry");
    }
    uint16_t flags = U16(d, offset + 8);
    Entry entry;
    entry.method = U16(d, offset + 10);
    entry.crc32 = U32(d, offset + 16);
    entry.compressed_size = U32(d, offset + 20);
    entry.size = U32(d, offset + 24);
    uint64_t name_length = U16(d, offset + 28);
    uint64_t extra_length = U16(d, offset + 30);
    uint64_t comment_length = U16(d, offset + 32);
    entry.local_header_offset = U32(d, offset + 42);
    uint64_t next = offset + kCentralHeaderSize + name_length + extra_length + comment_length;
    if (next > end) Fail("bad central directory entry");
    std::string name = d.substr(offset + kCentralHeaderSize, name_length);
    if (flags & 1) Fail("entry " + name + " is encrypted");
    if (!entries_.emplace(name, entry).second) {
      // Readers disagree on which copy wins; a signed artifact must mean one thing.
      Fail("two entries named " + name);
    }
    offset = next;
  }
}

std::string ZipArchive::Read(const std::string& name) const {
  auto found = entries_.find(name);
  if (found == entries_.end()) {
    throw Error(path_ + " lacks '" + name + "' (not a penni-deploy artifact, or damaged); recompile it");
  }
  const Entry& e = found->second;
  const std::string& d = data_;
  uint64_t at = e.local_header_offset;
  if (at + kLocalHeaderSize > d.size() || U32(d, at) != kLocalHeader) Fail("bad local header of " + name);
  uint64_t name_length = U16(d, at + 26);
  uint64_t extra_length = U16(d, at + 28);
  if (d.compare(at + kLocalHeaderSize, name_length, name) != 0) {
    Fail("local header of " + name + " names another file");
  }
  uint64_t begin = at + kLocalHeaderSize + name_length + extra_length;
  if (begin + e.compressed_size > d.size()) Fail(name + " runs past the end of the file");

  std::string out;
  if (e.method == kStored) {
    if (e.compressed_size != e.size) Fail("stored entry " + name + " has two sizes");
    out = d.substr(begin, e.size);
  } else if (e.method == kDeflated) {
    out.resize(e.size);
    z_stream stream{};
    if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) Fail("zlib cannot start");
    stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(d.data() + begin));
    stream.avail_in = static_cast<uInt>(e.compressed_size);
    stream.next_out = reinterpret_cast<Bytef*>(out.empty() ? nullptr : &out[0]);
    stream.avail_out = static_cast<uInt>(e.size);
    int status = inflate(&stream, Z_FINISH);
    uint64_t produced = stream.total_out;
    inflateEnd(&stream);
    if (status != Z_STREAM_END || produced != e.size) {
      Fail("Error -3 while decompressing data of " + name);
    }
  } else {
    std::ostringstream why;
    why << "entry " << name << " uses compression method " << e.method;
    Fail(why.str());
  }
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(out.size()));
  if (crc != e.crc32) Fail("Bad CRC-32 for file '" + name + "'");
  return out;
}

}  // namespace detail
}  // namespace penni
