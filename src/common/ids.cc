#include "common/ids.h"

#include <sys/random.h>

#include <array>
#include <cctype>

#include "common/error.h"

namespace coppice {
namespace {
void fill_random(unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw sys_error("getrandom");
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
}
constexpr char kHex[] = "0123456789abcdef";
}  // namespace

std::string new_uuid() {
  std::array<unsigned char, 16> b;
  fill_random(b.data(), b.size());
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  std::string s;
  s.reserve(36);
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[b[i] >> 4]);
    s.push_back(kHex[b[i] & 15]);
  }
  return s;
}

bool is_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

std::string random_hex(size_t n) {
  std::string raw(n, '\0');
  fill_random(reinterpret_cast<unsigned char*>(raw.data()), n);
  std::string s;
  for (unsigned char c : raw) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 15]);
  }
  return s;
}

}  // namespace coppice
