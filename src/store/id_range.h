// The host uid/gid range of the sandboxes, a property of each data directory.
//
// Sandbox ids 0..size-1 are host ids base..base+size-1 in every runtime, and every layer file
// is stored owned by those host ids. Whoever holds a host id of that range owns every layer
// and every sandbox's processes, so the range must belong to no host user:
//  * it is checked at every start against /etc/subuid and /etc/subgid (the ranges delegated
//    to users for their own user namespaces, e.g. rootless podman): any overlap refuses to
//    start, naming the user and the range;
//  * the default base (kDefaultUidBase) lies above Debian's SUB_UID_MAX/SUB_GID_MAX
//    (600,100,000 + 65,536), above systemd's container range (524,288..1,879,048,191) and
//    below 2^31 (tools that treat ids as signed 32-bit numbers), so a stock host delegates
//    none of it;
//  * a store records its range on first use (setting `sandbox_ids`) and keeps it:
//    the owners of its layers depend on it, so asking for another range later is refused.
//    A store created before ranges were recorded (it has images) used 100000:65536.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "store/layer_store.h"
#include "store/meta_store.h"

namespace coppice::store {

inline constexpr uid_t kDefaultUidBase = 0x70000000;  // 1,879,048,192
inline constexpr uid_t kDefaultUidRange = 65536;
inline constexpr uid_t kLegacyUidBase = 100000;  // stores made before the range was recorded
inline constexpr uid_t kMinUidBase = 65536;      // above root, system and ordinary users, nobody

struct IdRange {
  uid_t base = kDefaultUidBase;
  uid_t size = kDefaultUidRange;
  uid_t last() const { return base + (size - 1); }
  bool operator==(const IdRange&) const = default;
};

// One line of /etc/subuid or /etc/subgid: `owner` (a user name or number) may map `count`
// ids from `start`.
struct SubidRange {
  std::string owner;
  uint64_t start = 0;
  uint64_t count = 0;
};

// Parses a subordinate id file; a missing file has no ranges. Blank lines and lines starting
// with '#' are skipped; a malformed line throws Error (it could hide a delegation).
std::vector<SubidRange> read_subid_file(const std::filesystem::path& path);

// Throws Error (500) with a message naming the file, the user and both ranges when `r`
// overlaps a range of `subid_dir`/subuid or `subid_dir`/subgid (normally /etc).
void check_subid_overlap(const IdRange& r, const std::filesystem::path& subid_dir);

// Validates a range (base >= kMinUidBase, size >= 65536, last id below 2^32-1); throws 400.
void validate_id_range(const IdRange& r);

// The range of this store, checked (validate_id_range, check_subid_overlap against
// `subid_dir`) and recorded before it is returned: the recorded one; or, while the store holds
// no layer, the wanted one (`want_base`/`want_size`, each defaulting to the recorded or the
// default value); or, for a store with layers but no record (made by an older version),
// 100000:65536. Asking for another range than a store with layers has throws Error 409 that
// says how to proceed. Of two processes racing to record a range, the first wins.
IdRange store_id_range(MetaStore& meta, const LayerStore& layers, std::optional<uid_t> want_base,
                       std::optional<uid_t> want_size, const std::filesystem::path& subid_dir);

}  // namespace coppice::store
