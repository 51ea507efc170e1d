// The SSRF boundary of registry traffic (oci/net_policy.h, RegistryConfig) and the MCP
// client's loopback test (cli/image_ref.h).
#include "oci/net_policy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "cli/image_ref.h"
#include "common/error.h"
#include "oci/http_client.h"
#include "oci/registry_client.h"

namespace coppice::oci {
namespace {

AddressKind kind(const char* ip) {
  auto k = classify_address(ip);
  EXPECT_TRUE(k) << ip;
  return k.value_or(AddressKind::kPublic);
}

TEST(NetPolicy, ClassifiesIPv4) {
  for (const char* ip :
       {"8.8.8.8", "1.1.1.1", "151.101.0.1", "100.63.255.255", "100.128.0.0", "172.15.255.255",
        "172.32.0.0", "192.167.255.255", "11.0.0.0", "223.255.255.255", "169.253.255.255"})
    EXPECT_EQ(kind(ip), AddressKind::kPublic) << ip;
  for (const char* ip : {"127.0.0.1", "127.255.255.254", "127.1.2.3"})
    EXPECT_EQ(kind(ip), AddressKind::kLoopback) << ip;
  for (const char* ip : {"10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
                         "192.168.0.1", "192.168.255.255"})
    EXPECT_EQ(kind(ip), AddressKind::kPrivate) << ip;
  for (const char* ip : {"100.64.0.1", "100.127.255.255"})
    EXPECT_EQ(kind(ip), AddressKind::kShared) << ip;
  EXPECT_EQ(kind("169.254.0.1"), AddressKind::kLinkLocal);
  EXPECT_EQ(kind("169.254.169.254"), AddressKind::kMetadata);
  EXPECT_EQ(kind("100.100.100.200"), AddressKind::kMetadata);
  for (const char* ip : {"0.0.0.0", "0.1.2.3"}) EXPECT_EQ(kind(ip), AddressKind::kUnspecified);
  for (const char* ip : {"224.0.0.1", "239.255.255.255"})
    EXPECT_EQ(kind(ip), AddressKind::kMulticast) << ip;
  for (const char* ip : {"255.255.255.255", "240.0.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.9",
                         "198.18.0.1", "198.19.255.255", "192.0.0.8", "192.88.99.1"})
    EXPECT_EQ(kind(ip), AddressKind::kReserved) << ip;
}

TEST(NetPolicy, ClassifiesIPv6AndEmbeddedIPv4) {
  for (const char* ip : {"2606:4700::1111", "2a00:1450:4001::200e", "[2001:4860::8888]"})
    EXPECT_EQ(kind(ip), AddressKind::kPublic) << ip;
  EXPECT_EQ(kind("::1"), AddressKind::kLoopback);
  EXPECT_EQ(kind("[::1]"), AddressKind::kLoopback);
  EXPECT_EQ(kind("::"), AddressKind::kUnspecified);
  for (const char* ip : {"fc00::1", "fd12:3456::1", "fec0::1", "64:ff9b:1::a00:1"})
    EXPECT_EQ(kind(ip), AddressKind::kPrivate) << ip;
  EXPECT_EQ(kind("fe80::1"), AddressKind::kLinkLocal);
  EXPECT_EQ(kind("febf::1"), AddressKind::kLinkLocal);
  EXPECT_EQ(kind("fd00:ec2::254"), AddressKind::kMetadata);
  EXPECT_EQ(kind("ff02::1"), AddressKind::kMulticast);
  for (const char* ip : {"2001:db8::1", "2001::1", "100::1", "4000::1", "3fff::1"})
    EXPECT_EQ(kind(ip), AddressKind::kReserved) << ip;
  // IPv4 carried in IPv6 is what gets reached: mapped, compatible, NAT64, 6to4.
  EXPECT_EQ(kind("::ffff:127.0.0.1"), AddressKind::kLoopback);
  EXPECT_EQ(kind("::ffff:7f00:1"), AddressKind::kLoopback);
  EXPECT_EQ(kind("::ffff:10.1.2.3"), AddressKind::kPrivate);
  EXPECT_EQ(kind("::ffff:169.254.169.254"), AddressKind::kMetadata);
  EXPECT_EQ(kind("::ffff:0.0.0.0"), AddressKind::kUnspecified);
  EXPECT_EQ(kind("::ffff:8.8.8.8"), AddressKind::kPublic);
  EXPECT_EQ(kind("::127.0.0.1"), AddressKind::kLoopback);
  EXPECT_EQ(kind("64:ff9b::192.168.1.1"), AddressKind::kPrivate);
  EXPECT_EQ(kind("64:ff9b::8.8.8.8"), AddressKind::kPublic);
  EXPECT_EQ(kind("2002:7f00:1::1"), AddressKind::kLoopback);
  EXPECT_EQ(kind("2002:a9fe:a9fe::1"), AddressKind::kMetadata);
  EXPECT_EQ(kind("2002:0808:0808::1"), AddressKind::kPublic);
  EXPECT_FALSE(classify_address("example.com"));
  EXPECT_FALSE(classify_address("127.1"));  // not a numeric address in canonical form
}

TEST(NetPolicy, ClassifiesSocketAddresses) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  ::inet_pton(AF_INET, "169.254.169.254", &in.sin_addr);
  EXPECT_EQ(classify_address(reinterpret_cast<sockaddr*>(&in)), AddressKind::kMetadata);
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  ::inet_pton(AF_INET6, "::ffff:192.168.0.1", &in6.sin6_addr);
  EXPECT_EQ(classify_address(reinterpret_cast<sockaddr*>(&in6)), AddressKind::kPrivate);
  sockaddr un{};
  un.sa_family = AF_UNIX;
  EXPECT_EQ(classify_address(&un), AddressKind::kReserved);
}

TEST(NetPolicy, HostsAreMatchedExactly) {
  auto hp = parse_host_port("Registry.Example:5000");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "registry.example");
  EXPECT_EQ(hp->port, 5000);
  EXPECT_EQ(parse_host_port("[::1]:5000")->host, "[::1]");
  EXPECT_FALSE(parse_host_port("[::1]")->port);
  for (const char* bad :
       {"", "http://x", "x/y", "x:", "x:0", "x:65536", "x:5a", "[zz]", "[::1", ":5000", "a b"})
    EXPECT_FALSE(parse_host_port(bad)) << bad;
  HostPort any{"127.0.0.1", std::nullopt}, one{"127.0.0.1", 5000};
  EXPECT_TRUE(host_matches(any, "127.0.0.1", 5000));
  EXPECT_TRUE(host_matches(any, "127.0.0.1", std::nullopt));
  EXPECT_TRUE(host_matches(one, "127.0.0.1", 5000));
  EXPECT_FALSE(host_matches(one, "127.0.0.1", 5001));
  EXPECT_FALSE(host_matches(one, "127.0.0.1", std::nullopt));
  EXPECT_FALSE(host_matches(any, "127.0.0.1.evil.example", 5000));
  EXPECT_FALSE(host_matches(any, "127.0.0.10", 5000));
  EXPECT_FALSE(host_matches(any, "localhost", 5000));
}

TEST(RegistryConfig, NoHostGetsPlainHttpOrPrivateAddressesUnlessNamed) {
  RegistryConfig none;
  // Loopback names used to get plain http by prefix: 127.evil.example too.
  for (const char* r : {"127.0.0.1:5000", "127.evil.example", "127.evil.example:5000",
                        "localhost:5000", "[::1]:5000", "ghcr.io"}) {
    EXPECT_FALSE(none.is_insecure(r)) << r;
    EXPECT_EQ(none.endpoint(r).rfind("https://", 0), 0u) << r;
  }
  EXPECT_FALSE(none.private_ok("127.0.0.1", 5000));
  EXPECT_FALSE(none.plain_http_ok("127.0.0.1", 5000));
  EXPECT_EQ(none.endpoint("docker.io"), "https://registry-1.docker.io");

  RegistryConfig cfg;
  cfg.insecure = {"127.0.0.1:5000", "Reg.Local"};
  cfg.allowed = {"10.0.0.5"};
  cfg.mirrors = {{"docker.io", "http://192.168.1.9:5000/"}};
  cfg.validate();
  EXPECT_TRUE(cfg.is_insecure("127.0.0.1:5000"));
  EXPECT_EQ(cfg.endpoint("127.0.0.1:5000"), "http://127.0.0.1:5000");
  EXPECT_FALSE(cfg.is_insecure("127.0.0.1:5001"));
  EXPECT_FALSE(cfg.is_insecure("127.0.0.1"));
  EXPECT_FALSE(cfg.is_insecure("127.0.0.1.evil.example:5000"));
  EXPECT_TRUE(cfg.is_insecure("reg.local:443"));
  EXPECT_TRUE(cfg.is_insecure("reg.local"));
  EXPECT_FALSE(cfg.is_insecure("reg.local.evil"));
  EXPECT_FALSE(cfg.is_insecure("10.0.0.5"));  // allowed, but https
  EXPECT_TRUE(cfg.private_ok("127.0.0.1", 5000));
  EXPECT_FALSE(cfg.private_ok("127.0.0.1", 5001));
  EXPECT_TRUE(cfg.private_ok("10.0.0.5", 443));
  EXPECT_FALSE(cfg.plain_http_ok("10.0.0.5", 80));
  EXPECT_TRUE(cfg.private_ok("192.168.1.9", 5000));  // the mirror the operator named
  EXPECT_TRUE(cfg.plain_http_ok("192.168.1.9", 5000));
  EXPECT_FALSE(cfg.private_ok("192.168.1.9", 5001));

  RegistryConfig bad;
  bad.insecure = {"http://127.0.0.1:5000"};
  EXPECT_THROW(bad.validate(), Error);
  bad.insecure = {};
  bad.allowed = {"reg/path"};
  EXPECT_THROW(bad.validate(), Error);
}

TEST(HttpClientUrls, AreSplitAndResolved) {
  UrlParts u = parse_url("HTTPS://Registry.Example/v2/");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.host, "registry.example");
  EXPECT_EQ(u.port, 443);
  EXPECT_EQ(parse_url("http://[::1]:5000/x").host, "[::1]");
  EXPECT_EQ(parse_url("http://127.0.0.1/x").port, 80);
  EXPECT_THROW(parse_url("file:///etc/passwd"), Error);
  EXPECT_THROW(parse_url("gopher://x/"), Error);
  EXPECT_EQ(resolve_url("http://a:5000/v2/x/blobs/uploads/", "/v2/x/blobs/uploads/u1?_state=s"),
            "http://a:5000/v2/x/blobs/uploads/u1?_state=s");
  EXPECT_EQ(resolve_url("http://a:5000/v2/x/", "http://b/y"), "http://b/y");
  EXPECT_EQ(resolve_url("http://a:5000/v2/x/blobs/", "u2"), "http://a:5000/v2/x/blobs/u2");
  EXPECT_TRUE(parse_url("http://a:80/x").same_origin(parse_url("http://A/y")));
  EXPECT_FALSE(parse_url("http://a/x").same_origin(parse_url("https://a/x")));
  EXPECT_FALSE(parse_url("http://a/x").same_origin(parse_url("http://a:81/x")));
}

TEST(HttpClientPolicy, RefusesNonPublicAddressesBeforeConnecting) {
  // Nothing listens on 127.0.0.1:9: a refused policy check is a 403, a permitted connection
  // attempt is curl's "couldn't connect" (502).
  HttpClient strict;
  HttpRequest req;
  req.url = "http://127.0.0.1:9/v2/";
  try {
    strict.perform(req);
    FAIL() << "connected";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 403) << e.what();
    EXPECT_NE(std::string(e.what()).find("loopback"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--insecure-registry 127.0.0.1:9"), std::string::npos);
  }
  HttpClient open(nullptr, [](const UrlParts&, const UrlParts*) { return HopPermit{true}; });
  try {
    open.perform(req);
    FAIL() << "connected";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 502) << e.what();
  }
}

TEST(McpRegistryHost, LoopbackIsMatchedExactly) {
  for (const char* h : {"localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"})
    EXPECT_TRUE(cli::is_loopback_registry(h)) << h;
  for (const char* h : {"127.evil.example", "127.evil.example:5000", "localhost.evil:5000",
                        "127.0.0.1.nip.io", "[::2]:5000", "ghcr.io", "128.0.0.1"})
    EXPECT_FALSE(cli::is_loopback_registry(h)) << h;
}

}  // namespace
}  // namespace coppice::oci
