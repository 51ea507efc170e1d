// Registry references as users type them (`busybox`, `ghcr.io/o/i:t`, `docker://…`, `oci://…`).
#pragma once

#include <string>

namespace coppice::cli {

// docker://HOST/PATH:TAG → PATH:TAG without the registry host and `library/` (the tag an
// import gets by default, as ConTree's SDK derives it).
std::string default_tag(std::string ref);

// The registry host a reference names: the first path segment when it looks like a host
// (has '.' or ':' or is `localhost`), else docker.io.
std::string registry_host(std::string ref);

// A registry HOST[:PORT] on this machine, matched exactly: `localhost`, `[::1]` or a numeric
// IPv4 address in 127.0.0.0/8. `127.evil.example` is not (it is a name anyone can point
// anywhere).
bool is_loopback_registry(const std::string& host_port);

}  // namespace coppice::cli
