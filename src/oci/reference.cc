#include "oci/reference.h"

#include <fmt/format.h>

#include "common/error.h"
#include "common/sha256.h"

namespace coppice::oci {

namespace {

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// One path component of a repository: lower-case alphanumerics separated by ".", "_", "__"
// or runs of "-" (the distribution grammar).
bool valid_component(std::string_view c) {
  if (c.empty() || !is_lower_alnum(c.front()) || !is_lower_alnum(c.back())) return false;
  for (size_t i = 0; i < c.size(); ++i) {
    char ch = c[i];
    if (is_lower_alnum(ch)) continue;
    if (ch == '.' || ch == '-') {
      if (ch == '.' && !is_lower_alnum(c[i + 1])) return false;
      continue;
    }
    if (ch == '_') {
      if (c[i + 1] == '_') ++i;
      if (!is_lower_alnum(c[i + 1])) return false;
      continue;
    }
    return false;
  }
  return true;
}

bool valid_tag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    bool word = std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    if (!word && (i == 0 || (c != '.' && c != '-'))) return false;
  }
  return true;
}

bool valid_host(std::string_view h) {
  if (h.empty() || h.size() > 255) return false;
  for (char c : h)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
          c == '[' || c == ']'))
      return false;
  return true;
}

}  // namespace

bool is_digest(std::string_view s) {
  return s.size() == 71 && s.substr(0, 7) == "sha256:" && is_sha256_hex(s.substr(7));
}

std::string Reference::str() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

Reference parse_reference(std::string_view text) {
  std::string_view s = text;
  for (std::string_view scheme : {"docker://", "oci://"})
    if (s.substr(0, scheme.size()) == scheme) s.remove_prefix(scheme.size());
  while (!s.empty() && s.front() == '/') s.remove_prefix(1);  // "docker:///x" is seen too
  auto bad = [&](const std::string& why) {
    return bad_request(fmt::format("invalid image reference \"{}\": {}", std::string(text), why));
  };
  if (s.empty()) throw bad("empty");
  if (s.size() > 1024) throw bad("too long");
  Reference ref;
  if (auto at = s.find('@'); at != std::string_view::npos) {
    ref.digest = std::string(s.substr(at + 1));
    if (!is_digest(ref.digest)) throw bad("the digest must be sha256:<64 lower-case hex>");
    s = s.substr(0, at);
  }
  // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
  size_t slash = s.rfind('/');
  size_t colon = s.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    ref.tag = std::string(s.substr(colon + 1));
    if (!valid_tag(ref.tag)) throw bad("invalid tag");
    s = s.substr(0, colon);
  }
  // The first component is a registry host when it looks like one.
  std::string_view path = s;
  if (auto first = s.find('/'); first != std::string_view::npos) {
    std::string_view head = s.substr(0, first);
    if (head.find('.') != std::string_view::npos || head.find(':') != std::string_view::npos ||
        head == "localhost") {
      if (!valid_host(head)) throw bad("invalid registry host");
      ref.registry = std::string(head);
      path = s.substr(first + 1);
    }
  }
  if (ref.registry.empty() || ref.registry == "index.docker.io" ||
      ref.registry == "registry-1.docker.io")
    ref.registry = "docker.io";
  if (path.empty()) throw bad("no repository name");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (!valid_component(path.substr(start, end - start)))
      throw bad(
          "repository names are lower-case alphanumerics separated by '.', '_', '__', '-' "
          "and '/'");
    start = end + 1;
  }
  ref.repository = std::string(path);
  if (ref.registry == "docker.io" && ref.repository.find('/') == std::string::npos)
    ref.repository = "library/" + ref.repository;
  if (ref.tag.empty() && ref.digest.empty()) ref.tag = "latest";
  return ref;
}

std::string default_tag(const Reference& ref) {
  std::string name = ref.repository;
  if (ref.registry == "docker.io") {
    if (name.rfind("library/", 0) == 0) name = name.substr(8);
  } else {
    name = ref.registry + "/" + name;
  }
  return name + ":" + (ref.tag.empty() ? ref.digest.substr(7, 12) : ref.tag);
}

}  // namespace coppice::oci
