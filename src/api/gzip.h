// gzip encoding of responses (zlib), whole bodies or a stream of sync-flushed chunks so that
// each SSE frame decodes as soon as it arrives (contract §1.4).
#pragma once

#include <zlib.h>

#include <string>
#include <string_view>

namespace coppice::api {

class GzipStream {
 public:
  // zlib's defaults: a 32 KiB window and memLevel 8, about 256 KiB of state.
  GzipStream() : GzipStream(15, 8) {}
  // A smaller state for streams of small frames that stay open long (event streams):
  // window_bits 9..15, mem_level 1..9 (zlib's deflateInit2 parameters).
  GzipStream(int window_bits, int mem_level);
  ~GzipStream();
  GzipStream(const GzipStream&) = delete;
  GzipStream& operator=(const GzipStream&) = delete;
  // Compresses `in` and flushes (Z_SYNC_FLUSH) so the output decodes on its own.
  std::string chunk(std::string_view in);
  // The final block and the gzip trailer.
  std::string finish();

 private:
  std::string run(std::string_view in, int flush);
  z_stream zs_{};
};

std::string gzip_all(std::string_view in);

// True when an Accept-Encoding header value accepts gzip (q>0).
bool accepts_gzip(std::string_view accept_encoding);

}  // namespace coppice::api
