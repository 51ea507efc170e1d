// Where coppiced may connect when it talks to registries (import, push, token services,
// redirects, upload locations): the SSRF boundary.
//
// Invariant: every TCP connection HttpClient opens goes through one check of the address it
// is about to connect to (libcurl's open-socket callback, so the address is the one actually
// used: a name that resolves differently a second time — DNS rebinding — is checked again).
// Only public unicast addresses pass, unless the URL's host is one the operator allowed:
// `coppiced serve --insecure-registry HOST[:PORT]` (plain http and any address) or
// `--allow-registry HOST[:PORT]` (any address, https only), or a `--registry-mirror` URL.
// Hosts are matched exactly (case-insensitively): `127.evil.example` is not `127.0.0.1`, and
// `localhost` is not `127.0.0.1` either. An entry without a port allows every port.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace coppice::oci {

enum class AddressKind {
  kPublic,       // global unicast
  kLoopback,     // 127.0.0.0/8, ::1
  kPrivate,      // RFC 1918, fc00::/7 (ULA), fec0::/10, 64:ff9b:1::/48
  kShared,       // 100.64.0.0/10 (carrier-grade NAT)
  kLinkLocal,    // 169.254.0.0/16, fe80::/10
  kMetadata,     // cloud metadata services: 169.254.169.254, fd00:ec2::254, 100.100.100.200
  kUnspecified,  // 0.0.0.0/8, ::
  kMulticast,    // 224.0.0.0/4, ff00::/8
  kReserved,     // documentation, benchmarking, 240/4, broadcast, 6to4 relay, Teredo, ...
};

// Classifies a socket address (AF_INET or AF_INET6; other families are kReserved). IPv6 forms
// that carry an IPv4 address (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64
// 64:ff9b::/96, 6to4 2002::/16) are classified by that IPv4 address.
AddressKind classify_address(const sockaddr* sa);
// The same for a numeric address ("10.0.0.1", "::ffff:127.0.0.1", "[::1]"); nullopt when it
// is not one.
std::optional<AddressKind> classify_address(std::string_view numeric);
// "loopback", "private", ... for messages.
const char* describe(AddressKind k);

// A host and optional port, host lower-cased and IPv6 addresses in brackets ("[::1]").
struct HostPort {
  std::string host;
  std::optional<int> port;
  std::string str() const;  // "host" or "host:port"
};
// Parses "host", "host:port", "[v6]" or "[v6]:port". nullopt when malformed (a scheme, a
// path, an empty host, a bad port).
std::optional<HostPort> parse_host_port(std::string_view s);

// Exact host matching for allowlists: `entry` with a port matches only that port; without a
// port, any port. `port` is the port in use (nullopt when the reference named none).
bool host_matches(const HostPort& entry, std::string_view host, std::optional<int> port);

}  // namespace coppice::oci
