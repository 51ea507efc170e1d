// Inspect: listing, download and helpers shared by archive and grep.
#include "inspect/inspect.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <ctime>

#include "common/error.h"

namespace coppice::inspect {

namespace detail {

namespace {

constexpr size_t kMaxIdFile = 4 << 20;  // /etc/passwd larger than this is not read whole

std::string read_image_file(const store::LayerView& view, std::string_view path) {
  try {
    std::string resolved = view.resolve(path, true);
    UniqueFd fd = view.open_file(resolved);
    std::string data;
    char buf[65536];
    while (data.size() < kMaxIdFile) {
      ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      data.append(buf, static_cast<size_t>(n));
    }
    return data;
  } catch (const std::exception&) {
    return {};
  }
}

// "name:x:id:..." lines -> id -> name; the first line for an id wins.
std::unordered_map<uint32_t, std::string> parse_id_file(std::string_view data) {
  std::unordered_map<uint32_t, std::string> out;
  while (!data.empty()) {
    size_t nl = data.find('\n');
    std::string_view line = data.substr(0, nl);
    data = nl == std::string_view::npos ? std::string_view{} : data.substr(nl + 1);
    size_t c1 = line.find(':');
    if (c1 == 0 || c1 == std::string_view::npos) continue;
    size_t c2 = line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    size_t c3 = line.find(':', c2 + 1);
    std::string_view id = line.substr(c2 + 1, c3 == std::string_view::npos ? c3 : c3 - c2 - 1);
    uint32_t v;
    auto [p, ec] = std::from_chars(id.data(), id.data() + id.size(), v);
    if (ec != std::errc() || p != id.data() + id.size() || id.empty()) continue;
    out.try_emplace(v, valid_utf8(line.substr(0, c1)));
  }
  return out;
}

}  // namespace

IdNames IdNames::load(const store::LayerView& view) {
  IdNames n;
  n.users = parse_id_file(read_image_file(view, "/etc/passwd"));
  n.groups = parse_id_file(read_image_file(view, "/etc/group"));
  return n;
}

std::optional<std::string> IdNames::user(uint32_t uid) const {
  auto it = users.find(uid);
  if (it == users.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> IdNames::group(uint32_t gid) const {
  auto it = groups.find(gid);
  if (it == groups.end()) return std::nullopt;
  return it->second;
}

std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        ok = false;
      } else {
        cp = (cp << 6) | (p[i + k] & 0x3F);
      }
    }
    // Reject overlong forms, surrogates and values past U+10FFFF.
    if (ok) {
      static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

}  // namespace detail

namespace {

std::string owner_name(const detail::IdNames& names, uid_t uid) {
  return names.user(uid).value_or(std::to_string(uid));
}
std::string group_name(const detail::IdNames& names, gid_t gid) {
  return names.group(gid).value_or(std::to_string(gid));
}

std::string mode_string(mode_t m) {
  std::string s(10, '-');
  switch (m & S_IFMT) {
    case S_IFDIR:
      s[0] = 'd';
      break;
    case S_IFLNK:
      s[0] = 'l';
      break;
    case S_IFCHR:
      s[0] = 'c';
      break;
    case S_IFBLK:
      s[0] = 'b';
      break;
    case S_IFIFO:
      s[0] = 'p';
      break;
    case S_IFSOCK:
      s[0] = 's';
      break;
    default:
      break;
  }
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i)
    if (m & (0400 >> i)) s[1 + i] = rwx[i];
  auto special = [&](int pos, mode_t bit, char on_exec, char no_exec) {
    if (m & bit) s[pos] = s[pos] == 'x' ? on_exec : no_exec;
  };
  special(3, S_ISUID, 's', 'S');
  special(6, S_ISGID, 's', 'S');
  special(9, S_ISVTX, 't', 'T');
  return s;
}

std::string human_size(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  static constexpr const char* kUnits[] = {"KB", "MB", "GB", "TB", "PB", "EB"};
  double v = static_cast<double>(n) / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(kUnits)) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.2f} {}", v, kUnits[u]);
}

std::string ls_time(time_t t) {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm tm {};
  if (!::gmtime_r(&t, &tm)) return "??? ?? ??:??";
  return fmt::format("{} {:>2} {:02}:{:02}", kMonths[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour,
                     tm.tm_min);
}

// The directory a listing shows: `path` with every symlink followed; at most o.max_names
// names read.
std::vector<store::Entry> list_dir(const store::LayerView& view, std::string_view path,
                                   const ListOptions& o, bool& cut) {
  if (o.offset < 0) throw bad_request("offset must be a non-negative integer");
  if (o.limit && *o.limit < 1) throw bad_request("limit must be positive");
  if (o.max_bytes < static_cast<uint64_t>(kMinResponseBytes))
    throw bad_request(fmt::format("max_bytes must be at least {}", kMinResponseBytes));
  return view.list(view.resolve(path, true), o.max_names, &cut);
}

// The page [offset, offset + limit) of `n` entries.
std::pair<size_t, size_t> page_of(size_t n, const ListOptions& o) {
  size_t first = std::min(n, static_cast<size_t>(o.offset));
  size_t last = o.limit ? std::min(n, first + static_cast<size_t>(*o.limit)) : n;
  return {first, last};
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string list_response(const store::LayerView& view, std::string_view path,
                          const ListOptions& o) {
  bool cut = false;
  auto entries = list_dir(view, path, o, cut);
  auto names = detail::IdNames::load(view);
  auto [first, last] = page_of(entries.size(), o);
  std::string head = "{\"path\":" + dump(detail::valid_utf8(path));
  const size_t budget = o.max_bytes - std::min<size_t>(o.max_bytes, head.size() + 160);
  std::string files;
  size_t i = first;
  const char* reason = nullptr;
  for (; i < last; ++i) {
    const auto& st = entries[i].st;
    std::string one = dump({
        {"size", static_cast<uint64_t>(st.st_size)},
        {"path", detail::valid_utf8(entries[i].name)},
        {"owner", owner_name(names, st.st_uid)},
        {"group", group_name(names, st.st_gid)},
        {"uid", st.st_uid},
        {"gid", st.st_gid},
        {"mode", st.st_mode},
        {"mtime", static_cast<int64_t>(st.st_mtim.tv_sec)},
        {"nlink", static_cast<uint64_t>(st.st_nlink)},
        {"is_dir", S_ISDIR(st.st_mode)},
        {"is_regular", S_ISREG(st.st_mode)},
        {"is_symlink", S_ISLNK(st.st_mode)},
        {"is_socket", S_ISSOCK(st.st_mode)},
        {"is_fifo", S_ISFIFO(st.st_mode)},
        {"symlink_to", detail::valid_utf8(entries[i].symlink_target)},
    });
    if (files.size() + one.size() + 1 > budget) {
      reason = "max_bytes";
      break;
    }
    if (!files.empty()) files += ',';
    files += one;
  }
  if (!reason && i < entries.size()) reason = "limit";
  if (!reason && cut) reason = "max_entries";
  const bool more = i < entries.size();
  std::string out = std::move(head);
  out += ",\"files\":[" + files + "]";
  out += ",\"truncated\":";
  out += reason ? "true" : "false";
  out += ",\"truncated_reason\":" + (reason ? dump(reason) : std::string("null"));
  out += ",\"next_offset\":" + (more ? std::to_string(i) : std::string("null"));
  out += "}";
  return out;
}

nlohmann::json list_json(const store::LayerView& view, std::string_view path,
                         const ListOptions& o) {
  return nlohmann::json::parse(list_response(view, path, o));
}

std::string list_text(const store::LayerView& view, std::string_view path, const ListOptions& o) {
  bool cut = false;
  auto entries = list_dir(view, path, o, cut);
  auto names = detail::IdNames::load(view);
  auto [first, last] = page_of(entries.size(), o);
  struct Row {
    std::string mode, nlink, owner, group, size, time, name;
  };
  std::vector<Row> rows;
  uint64_t total = 0;
  size_t w_nlink = 0, w_owner = 0, w_group = 0, w_size = 0;
  for (size_t i = first; i < last; ++i) {
    const auto& e = entries[i];
    const auto& st = e.st;
    Row r;
    r.mode = mode_string(st.st_mode);
    r.nlink = std::to_string(st.st_nlink);
    r.owner = detail::valid_utf8(owner_name(names, st.st_uid));
    r.group = detail::valid_utf8(group_name(names, st.st_gid));
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      r.size = fmt::format("{}, {}", major(st.st_rdev), minor(st.st_rdev));
    } else {
      r.size = human_size(static_cast<uint64_t>(st.st_size));
      total += static_cast<uint64_t>(st.st_size);
    }
    r.time = ls_time(st.st_mtim.tv_sec);
    r.name = detail::valid_utf8(e.name);
    if (S_ISLNK(st.st_mode)) r.name += " -> " + detail::valid_utf8(e.symlink_target);
    w_nlink = std::max(w_nlink, r.nlink.size());
    w_owner = std::max(w_owner, r.owner.size());
    w_group = std::max(w_group, r.group.size());
    w_size = std::max(w_size, r.size.size());
    rows.push_back(std::move(r));
  }
  std::string out = fmt::format("total {}\n", human_size(total));
  const size_t budget = o.max_bytes - std::min<size_t>(o.max_bytes, 200);  // room for the note
  size_t shown = 0;
  for (const auto& r : rows) {
    std::string line =
        fmt::format("{} {:>{}} {:<{}} {:<{}} {:>{}} {} {}\n", r.mode, r.nlink, w_nlink, r.owner,
                    w_owner, r.group, w_group, r.size, w_size, r.time, r.name);
    if (out.size() + line.size() > budget) break;
    out += line;
    ++shown;
  }
  const size_t next = first + shown;
  if (shown < rows.size())
    out += fmt::format("# truncated (max_bytes): more entries from offset={}\n", next);
  else if (next < entries.size())
    out += fmt::format("# truncated (limit): more entries from offset={}\n", next);
  else if (cut)
    out += fmt::format("# truncated (max_entries): only {} entries of this directory were read\n",
                       entries.size());
  return out;
}

FileHandle open_download(const store::LayerView& view, std::string_view path) {
  std::string resolved = view.resolve(path, true);
  auto e = view.lookup(resolved);
  if (!e) throw not_found(fmt::format("{}: no such file or directory", path));
  if (S_ISDIR(e->st.st_mode)) throw unprocessable(fmt::format("{}: is a directory", path));
  if (!S_ISREG(e->st.st_mode)) throw unprocessable(fmt::format("{}: not a regular file", path));
  FileHandle h;
  h.fd = view.open_file(resolved);
  struct stat st;
  if (::fstat(h.fd.get(), &st) != 0) throw sys_error("fstat");
  h.size = static_cast<uint64_t>(st.st_size);
  return h;
}

bool exists(const store::LayerView& view, std::string_view path) {
  try {
    return view.lookup(view.resolve(path, true)).has_value();
  } catch (const Error&) {
    return false;
  }
}

}  // namespace coppice::inspect
