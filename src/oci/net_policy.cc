#include "oci/net_policy.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>

namespace coppice::oci {

namespace {

// a.b.c.d as a host-order integer.
constexpr uint32_t v4(unsigned a, unsigned b, unsigned c, unsigned d) {
  return (a << 24) | (b << 16) | (c << 8) | d;
}

bool in4(uint32_t ip, uint32_t net, int bits) {
  uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  return (ip & mask) == (net & mask);
}

AddressKind classify4(uint32_t ip) {
  if (ip == v4(169, 254, 169, 254) || ip == v4(100, 100, 100, 200)) return AddressKind::kMetadata;
  if (in4(ip, v4(0, 0, 0, 0), 8)) return AddressKind::kUnspecified;
  if (in4(ip, v4(127, 0, 0, 0), 8)) return AddressKind::kLoopback;
  if (in4(ip, v4(10, 0, 0, 0), 8) || in4(ip, v4(172, 16, 0, 0), 12) ||
      in4(ip, v4(192, 168, 0, 0), 16))
    return AddressKind::kPrivate;
  if (in4(ip, v4(100, 64, 0, 0), 10)) return AddressKind::kShared;
  if (in4(ip, v4(169, 254, 0, 0), 16)) return AddressKind::kLinkLocal;
  if (in4(ip, v4(224, 0, 0, 0), 4)) return AddressKind::kMulticast;
  if (in4(ip, v4(192, 0, 0, 0), 24) ||  // IETF protocol assignments
      in4(ip, v4(192, 0, 2, 0), 24) ||  // documentation
      in4(ip, v4(198, 51, 100, 0), 24) || in4(ip, v4(203, 0, 113, 0), 24) ||
      in4(ip, v4(192, 88, 99, 0), 24) ||  // 6to4 relay anycast
      in4(ip, v4(198, 18, 0, 0), 15) ||   // benchmarking
      in4(ip, v4(240, 0, 0, 0), 4))       // reserved, and 255.255.255.255
    return AddressKind::kReserved;
  return AddressKind::kPublic;
}

uint32_t v4_at(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i]) return false;
  return true;
}

AddressKind classify6(const uint8_t* a) {
  static const uint8_t kMetadata6[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0,    0,
                                         0,    0,    0,    0,    0, 0, 0x02, 0x54};
  if (std::memcmp(a, kMetadata6, 16) == 0) return AddressKind::kMetadata;
  if (all_zero(a, 10) && a[10] == 0xff && a[11] == 0xff) return classify4(v4_at(a + 12));
  if (all_zero(a, 12)) {
    if (all_zero(a + 12, 3) && a[15] == 0) return AddressKind::kUnspecified;
    if (all_zero(a + 12, 3) && a[15] == 1) return AddressKind::kLoopback;
    return classify4(v4_at(a + 12));  // IPv4-compatible (deprecated)
  }
  // 64:ff9b::/96, the well-known NAT64 prefix: the IPv4 address is what gets reached.
  static const uint8_t kNat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (std::memcmp(a, kNat64, 12) == 0) return classify4(v4_at(a + 12));
  if (a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4] == 0x00 && a[5] == 0x01)
    return AddressKind::kPrivate;  // 64:ff9b:1::/48, local-use NAT64
  if (a[0] == 0x20 && a[1] == 0x02) return classify4(v4_at(a + 2));  // 6to4: 2002:AABB:CCDD::/48
  if (a[0] == 0xff) return AddressKind::kMulticast;
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) return AddressKind::kLinkLocal;  // fe80::/10
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0) return AddressKind::kPrivate;    // fec0::/10
  if ((a[0] & 0xfe) == 0xfc) return AddressKind::kPrivate;                    // fc00::/7
  if ((a[0] & 0xe0) != 0x20) return AddressKind::kReserved;                   // outside 2000::/3
  if (a[0] == 0x20 && a[1] == 0x01) {
    if (a[2] == 0x0d && a[3] == 0xb8) return AddressKind::kReserved;  // 2001:db8::/32 docs
    if (a[2] == 0x00 && a[3] == 0x00) return AddressKind::kReserved;  // 2001::/32 Teredo
    if (a[2] < 0x02) return AddressKind::kReserved;  // 2001::/23 IETF protocol assignments
  }
  if (a[0] == 0x3f && a[1] == 0xff && (a[2] & 0xf0) == 0x00)
    return AddressKind::kReserved;  // 3fff::/20 documentation
  return AddressKind::kPublic;
}

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

}  // namespace

AddressKind classify_address(const sockaddr* sa) {
  if (!sa) return AddressKind::kReserved;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return classify4(ntohl(in->sin_addr.s_addr));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    return classify6(in6->sin6_addr.s6_addr);
  }
  return AddressKind::kReserved;
}

std::optional<AddressKind> classify_address(std::string_view numeric) {
  std::string s(numeric);
  if (s.size() > 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  in_addr a4{};
  if (::inet_pton(AF_INET, s.c_str(), &a4) == 1) return classify4(ntohl(a4.s_addr));
  in6_addr a6{};
  if (::inet_pton(AF_INET6, s.c_str(), &a6) == 1) return classify6(a6.s6_addr);
  return std::nullopt;
}

const char* describe(AddressKind k) {
  switch (k) {
    case AddressKind::kPublic:
      return "public";
    case AddressKind::kLoopback:
      return "loopback";
    case AddressKind::kPrivate:
      return "private";
    case AddressKind::kShared:
      return "carrier-grade NAT";
    case AddressKind::kLinkLocal:
      return "link-local";
    case AddressKind::kMetadata:
      return "cloud metadata";
    case AddressKind::kUnspecified:
      return "unspecified";
    case AddressKind::kMulticast:
      return "multicast";
    case AddressKind::kReserved:
      return "reserved";
  }
  return "reserved";
}

std::string HostPort::str() const {
  return port ? fmt::format("{}:{}", host, *port) : host;
}

std::optional<HostPort> parse_host_port(std::string_view s) {
  HostPort hp;
  std::string_view rest;
  if (s.empty()) return std::nullopt;
  if (s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos || close == 1) return std::nullopt;
    std::string inner(s.substr(1, close - 1));
    in6_addr a6{};
    if (::inet_pton(AF_INET6, inner.c_str(), &a6) != 1) return std::nullopt;
    hp.host = "[" + lower(inner) + "]";
    rest = s.substr(close + 1);
  } else {
    size_t colon = s.find(':');
    hp.host = lower(s.substr(0, colon));
    rest = colon == std::string_view::npos ? std::string_view() : s.substr(colon);
    if (hp.host.empty()) return std::nullopt;
    for (char c : hp.host)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
        return std::nullopt;
  }
  if (!rest.empty()) {
    if (rest.front() != ':' || rest.size() < 2 || rest.size() > 6) return std::nullopt;
    int port = 0;
    for (char c : rest.substr(1)) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      port = port * 10 + (c - '0');
    }
    if (port < 1 || port > 65535) return std::nullopt;
    hp.port = port;
  }
  return hp;
}

bool host_matches(const HostPort& entry, std::string_view host, std::optional<int> port) {
  if (lower(host) != entry.host) return false;
  return !entry.port || (port && *port == *entry.port);
}

}  // namespace coppice::oci
