// Image references as users write them: "python:3.12-slim", "docker.io/library/python:3.12",
// "docker://ghcr.io/owner/image:tag", "oci://host:5000/repo@sha256:…".
#pragma once

#include <string>
#include <string_view>

namespace coppice::oci {

struct Reference {
  std::string registry;    // "docker.io", "ghcr.io", "127.0.0.1:5000" (never empty)
  std::string repository;  // "library/python", "owner/image"
  std::string tag;         // "latest" when neither tag nor digest was given; may be empty
  std::string digest;      // "sha256:<64 hex>" or empty

  // What to ask the registry for: the digest when pinned, else the tag.
  const std::string& manifest_ref() const { return digest.empty() ? tag : digest; }
  // Canonical form: "registry/repository[:tag][@digest]".
  std::string str() const;
};

// Parses a reference, accepting the "docker://" and "oci://" schemes and bare references.
// Without a registry host the registry is docker.io, and one-segment docker.io names get the
// "library/" prefix. "index.docker.io" and "registry-1.docker.io" are spelled "docker.io".
// Throws Error 400 naming what is wrong (bad characters, upper case, empty parts, bad digest).
Reference parse_reference(std::string_view text);

// The tag a reference suggests for the imported image: "repository:tag" without the registry
// for docker.io ("python:3.12" for library images), "registry/repository:tag" otherwise.
std::string default_tag(const Reference& ref);

// "sha256:<64 lower-case hex>".
bool is_digest(std::string_view s);

}  // namespace coppice::oci
