// Reading an image's files without starting a sandbox: the logic behind
// GET /v1/inspect/{uuid}/list|download|archive|grep (contract §2.9). Pure functions over a
// LayerView; the HTTP layer only maps parameters and streams the results.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "store/layer_view.h"

namespace coppice::inspect {

// {"path": <as asked>, "files": [FileItem...]} with all 15 FileItem fields (contract §2.9).
// owner/group are names from the image's /etc/passwd and /etc/group when known, else the number
// as a string. Throws 404 when missing, 422 when not a directory.
nlohmann::json list_json(const store::LayerView& view, std::string_view path);

// `ls -alh`-style text listing: a "total" line, then one line per entry
// ("drwxr-xr-x 1 root root 4.00 KB Jan  1 00:00 name", symlinks as "name -> target").
std::string list_text(const store::LayerView& view, std::string_view path);

// The bytes of a regular file, resolving `path` (symlinks followed inside the image).
// Throws 404 when missing, 422 when it is a directory or not a regular file.
struct FileHandle {
  UniqueFd fd;
  uint64_t size = 0;
};
FileHandle open_download(const store::LayerView& view, std::string_view path);

// True when `path` exists in the image (for HEAD).
bool exists(const store::LayerView& view, std::string_view path);

// Streams a PAX tar of the subtree at `path` (a file or a directory) to `sink`, in chunks.
// Member names have no leading slash ("etc/hosts"); ownership is reported as sandbox ids;
// symlinks are stored as symlinks, hard links inside the subtree as hard links.
// Throws 404 when missing (before anything is written to the sink).
void write_archive(const store::LayerView& view, std::string_view path,
                   const std::function<void(std::string_view)>& sink);

struct GrepQuery {
  std::vector<std::string> patterns;  // required, RE2 syntax; any of them matches
  std::vector<std::string> paths;     // default {"/"}
  std::vector<std::string> globs;     // fnmatch on the file name or on the image path
  std::optional<int64_t> max_count;   // per file
  int64_t max_total = 1000;
  std::string case_mode = "sensitive";  // sensitive | insensitive | smart
  int before = 0;
  int after = 0;
};

// GrepResult JSON (contract §2.9): {"path","patterns","truncated","matches":[...]}.
// Symlinks are not followed, binary files (with a NUL in the first 8 KiB) are skipped.
// Throws 400 on invalid patterns or parameters.
nlohmann::json grep(const store::LayerView& view, const GrepQuery& q);

namespace detail {
// User and group names from the image's own /etc/passwd and /etc/group (read through the
// view; missing or unreadable files give empty maps).
struct IdNames {
  std::unordered_map<uint32_t, std::string> users, groups;
  static IdNames load(const store::LayerView& view);
  std::optional<std::string> user(uint32_t uid) const;
  std::optional<std::string> group(uint32_t gid) const;
};
// `s` with every invalid UTF-8 sequence replaced by U+FFFD, so that it can go into JSON.
std::string valid_utf8(std::string_view s);
}  // namespace detail

}  // namespace coppice::inspect
