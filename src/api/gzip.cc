#include "api/gzip.h"

#include <algorithm>
#include <cctype>

#include "common/error.h"

namespace coppice::api {

GzipStream::GzipStream(int window_bits, int mem_level) {
  if (deflateInit2(&zs_, 1, Z_DEFLATED, window_bits + 16, mem_level, Z_DEFAULT_STRATEGY) != Z_OK)
    throw internal("deflateInit2 failed");
}

GzipStream::~GzipStream() {
  deflateEnd(&zs_);
}

std::string GzipStream::run(std::string_view in, int flush) {
  std::string out;
  zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs_.avail_in = static_cast<uInt>(in.size());
  char buf[16384];
  do {
    zs_.next_out = reinterpret_cast<Bytef*>(buf);
    zs_.avail_out = sizeof buf;
    int rc = deflate(&zs_, flush);
    if (rc == Z_STREAM_ERROR) throw internal("deflate failed");
    out.append(buf, sizeof buf - zs_.avail_out);
  } while (zs_.avail_out == 0 || zs_.avail_in > 0);
  return out;
}

std::string GzipStream::chunk(std::string_view in) {
  return run(in, Z_SYNC_FLUSH);
}
std::string GzipStream::finish() {
  return run({}, Z_FINISH);
}

std::string gzip_all(std::string_view in) {
  GzipStream g;
  std::string out = g.chunk(in);
  out += g.finish();
  return out;
}

bool accepts_gzip(std::string_view v) {
  std::string s(v);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    std::string item = s.substr(pos, comma - pos);
    pos = comma + 1;
    item.erase(0, item.find_first_not_of(" \t"));
    std::string coding = item.substr(0, item.find(';'));
    while (!coding.empty() && (coding.back() == ' ' || coding.back() == '\t')) coding.pop_back();
    if (coding != "gzip" && coding != "*") continue;
    size_t q = item.find("q=");
    if (q != std::string::npos && std::atof(item.c_str() + q + 2) <= 0) continue;
    return true;
  }
  return false;
}

}  // namespace coppice::api
