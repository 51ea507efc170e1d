#include "cli/image_ref.h"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace coppice::cli {

std::string default_tag(std::string ref) {
  if (auto s = ref.find("://"); s != std::string::npos) ref = ref.substr(s + 3);
  if (auto slash = ref.find('/'); slash != std::string::npos) {
    std::string first = ref.substr(0, slash);
    if (first.find_first_of(".:") != std::string::npos || first == "localhost")
      ref = ref.substr(slash + 1);
  }
  if (ref.rfind("library/", 0) == 0) ref = ref.substr(8);
  if (auto at = ref.find('@'); at != std::string::npos) return ref.substr(0, at);
  auto last_slash = ref.rfind('/');
  if (ref.find(':', last_slash == std::string::npos ? 0 : last_slash) == std::string::npos)
    ref += ":latest";
  return ref;
}

std::string registry_host(std::string ref) {
  if (auto s = ref.find("://"); s != std::string::npos) ref = ref.substr(s + 3);
  if (auto slash = ref.find('/'); slash != std::string::npos) {
    std::string first = ref.substr(0, slash);
    if (first.find_first_of(".:") != std::string::npos || first == "localhost") return first;
  }
  return "docker.io";
}

bool is_loopback_registry(const std::string& hp) {
  std::string host =
      !hp.empty() && hp[0] == '[' ? hp.substr(0, hp.find(']') + 1) : hp.substr(0, hp.find(':'));
  if (host == "localhost" || host == "[::1]") return true;
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

}  // namespace coppice::cli
