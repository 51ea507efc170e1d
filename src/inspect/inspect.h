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

// The smallest byte budget of a grep answer or a listing.
inline constexpr int64_t kMinResponseBytes = 64 << 10;
// Names read from one directory for a listing (or for each directory grep walks): beyond it
// the answer is cut (`truncated_reason` "max_entries"), so memory stays bounded.
inline constexpr size_t kMaxListNames = 100000;

// Bounds on a directory listing: the page [offset, offset + limit) of the sorted entries, cut
// further so that the answer holds at most `max_bytes` (>= kMinResponseBytes).
struct ListOptions {
  int64_t offset = 0;
  std::optional<int64_t> limit;
  uint64_t max_bytes = 8 << 20;
  size_t max_names = kMaxListNames;
};

// {"path": <as asked>, "files": [FileItem...]} with all 15 FileItem fields (contract §2.9),
// plus `truncated` (bool), `truncated_reason` ("limit", "max_bytes", "max_entries" or null)
// and `next_offset` (the offset of the next page, or null when none follows).
// owner/group are names from the image's /etc/passwd and /etc/group when known, else the number
// as a string. Throws 404 when missing, 422 when not a directory, 400 for bad options.
std::string list_response(const store::LayerView& view, std::string_view path,
                          const ListOptions& o = {});
nlohmann::json list_json(const store::LayerView& view, std::string_view path,
                         const ListOptions& o = {});

// `ls -alh`-style text listing: a "total" line, then one line per entry
// ("drwxr-xr-x 1 root root 4.00 KB Jan  1 00:00 name", symlinks as "name -> target"); a cut
// listing ends with a "# truncated (REASON): ..." line naming the next offset.
std::string list_text(const store::LayerView& view, std::string_view path,
                      const ListOptions& o = {});

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
  // Caps on the answer: its size in bytes of JSON (>= kMinResponseBytes), and the bytes of
  // one line shown in `line_text` (1..1 MiB; lines are searched on their first MiB).
  int64_t max_bytes = 8 << 20;
  int64_t max_line_bytes = 4096;
};

// GrepResult JSON (contract §2.9): {"path","patterns","truncated","matches":[...]}, plus
// `truncated_reason` ("max_total", "max_bytes", "deadline" or null) and, per match,
// `line_truncated` (line_text holds only the first max_line_bytes of the line, without its
// newline; `line_bytes` is still the whole line's length; submatches past the cut are left
// out, and a submatch's `text` is cut with the line). The answer never exceeds max_bytes.
// Symlinks are not followed, binary files (with a NUL in the first 8 KiB) are skipped.
// Throws 400 on invalid patterns or parameters.
std::string grep_response(const store::LayerView& view, const GrepQuery& q);
// The same, parsed.
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
