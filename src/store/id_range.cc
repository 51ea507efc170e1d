#include "store/id_range.h"

#include <fmt/format.h>

#include <fstream>

#include "common/error.h"

namespace coppice::store {

namespace {

std::optional<uint64_t> parse_u64(const std::string& s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// One setting "BASE:SIZE", so that two processes initialising a store never mix their values.
constexpr const char* kKey = "sandbox_ids";

}  // namespace

std::vector<SubidRange> read_subid_file(const std::filesystem::path& path) {
  std::vector<SubidRange> out;
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return out;
    throw sys_error("read " + path.string());
  }
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto c1 = line.find(':');
    auto c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    std::optional<uint64_t> start, count;
    if (c2 != std::string::npos && line.find(':', c2 + 1) == std::string::npos) {
      start = parse_u64(line.substr(c1 + 1, c2 - c1 - 1));
      count = parse_u64(line.substr(c2 + 1));
    }
    if (c1 == 0 || !start || !count)
      throw internal(
          fmt::format("{} line {}: expected owner:start:count, not '{}'", path.string(), n, line));
    out.push_back(SubidRange{line.substr(0, c1), *start, *count});
  }
  return out;
}

void check_subid_overlap(const IdRange& r, const std::filesystem::path& subid_dir) {
  const uint64_t lo = r.base, hi = static_cast<uint64_t>(r.base) + r.size;  // [lo, hi)
  for (const char* name : {"subuid", "subgid"}) {
    auto file = subid_dir / name;
    for (const auto& s : read_subid_file(file)) {
      if (s.count == 0 || s.start >= hi || s.start + s.count <= lo) continue;
      throw internal(fmt::format(
          "the sandbox id range {}-{} (uid base {}, range {}) overlaps {}-{} that {} delegates "
          "to user '{}': that user could own every layer and every sandbox process. Remove "
          "that line, or use a data directory with a free --uid-base (new data directories "
          "default to {}; a base is fixed once a data directory has images)",
          r.base, r.last(), r.base, r.size, s.start, s.start + s.count - 1, file.string(), s.owner,
          kDefaultUidBase));
    }
  }
}

void validate_id_range(const IdRange& r) {
  if (r.base < kMinUidBase)
    throw bad_request(
        fmt::format("--uid-base must be at least {} (host users and nobody live "
                    "below), not {}",
                    kMinUidBase, r.base));
  if (r.size < 65536)
    throw bad_request(
        fmt::format("--uid-range must be at least 65536 (images use ids up to "
                    "65534), not {}",
                    r.size));
  // (uid_t)-1 means "no id" to the kernel: the range must end below it.
  if (static_cast<uint64_t>(r.base) + r.size > 0xFFFFFFFFull)
    throw bad_request(fmt::format("--uid-base {} + --uid-range {} passes the largest id {}", r.base,
                                  r.size, 0xFFFFFFFEull));
}

IdRange store_id_range(MetaStore& meta, const LayerStore& layers, std::optional<uid_t> want_base,
                       std::optional<uid_t> want_size, const std::filesystem::path& subid_dir) {
  auto recorded = [&]() -> std::optional<IdRange> {
    auto v = meta.get_setting(kKey);
    if (!v) return std::nullopt;
    auto colon = v->find(':');
    std::optional<uint64_t> bv, sv;
    if (colon != std::string::npos) {
      bv = parse_u64(v->substr(0, colon));
      sv = parse_u64(v->substr(colon + 1));
    }
    if (!bv || !sv || *bv > 0xFFFFFFFFull || *sv > 0xFFFFFFFFull)
      throw internal(fmt::format("the database records a bad sandbox id range '{}'", *v));
    return IdRange{static_cast<uid_t>(*bv), static_cast<uid_t>(*sv)};
  };
  auto differs = [&](const IdRange& have) {
    return (want_base && *want_base != have.base) || (want_size && *want_size != have.size);
  };
  auto refuse = [&](const IdRange& have, const char* why) {
    return Error(
        409, fmt::format("data directory {} {} sandbox ids {}-{} (--uid-base {} "
                         "--uid-range {}): its layers are owned by them, so it cannot "
                         "change to --uid-base {} --uid-range {}. Omit the options, or "
                         "choose a new --data-dir",
                         layers.root().string(), why, have.base, have.last(), have.base, have.size,
                         want_base.value_or(have.base), want_size.value_or(have.size)));
  };
  auto checked = [&](const IdRange& r) {
    validate_id_range(r);
    check_subid_overlap(r, subid_dir);
    return r;
  };
  // Nothing in the store depends on the range while it holds no layer.
  std::error_code ec;
  const bool has_layers =
      !meta.referenced_layers().empty() || !std::filesystem::is_empty(layers.root() / "layers", ec);
  const auto have = recorded();
  if (have && !differs(*have)) return checked(*have);
  if (have && has_layers) throw refuse(*have, "uses");
  if (have) {
    IdRange r = checked(IdRange{want_base.value_or(have->base), want_size.value_or(have->size)});
    meta.set_setting(kKey, fmt::format("{}:{}", r.base, r.size));
    return r;
  }
  IdRange r;
  if (has_layers) {
    r.base = kLegacyUidBase;
    if (differs(r)) throw refuse(r, "was created before the range was recorded and uses");
  } else {
    if (want_base) r.base = *want_base;
    if (want_size) r.size = *want_size;
  }
  checked(r);
  meta.init_setting(kKey, fmt::format("{}:{}", r.base, r.size));
  IdRange got = *recorded();  // another process may have recorded its range first
  if (!(got == r)) {
    if (differs(got)) throw refuse(got, "uses");
    checked(got);
  }
  return got;
}

}  // namespace coppice::store
