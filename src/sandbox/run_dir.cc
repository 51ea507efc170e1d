#include "sandbox/run_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "sandbox/child_msg.h"

namespace coppice::sandbox {

void prepare_run_dir(const std::filesystem::path& run_dir, uid_t root) {
  make_dirs(run_dir, 0755);
  for (const char* d : {"upper", "work", "merged"}) {
    std::filesystem::path p = run_dir / d;
    if (::mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) throw sys_error("mkdir " + p.string());
  }
  for (const char* d : {"upper", "work"}) {
    std::filesystem::path p = run_dir / d;
    if (::chown(p.c_str(), root, root) != 0) throw sys_error("chown " + p.string());
  }
  if (::chmod((run_dir / "upper").c_str(), 0755) != 0) throw sys_error("chmod upper");
}

void remove_created_mountpoints(const std::filesystem::path& upper, int created) {
  struct Item {
    int bit;
    const char* name;
  };
  for (Item it : {Item{kCreatedProc, "proc"}, Item{kCreatedDev, "dev"}, Item{kCreatedTmp, "tmp"}}) {
    if (!(created & it.bit)) continue;
    std::string p = (upper / it.name).string();
    struct stat st;
    if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) ::rmdir(p.c_str());  // only if empty
  }
}

}  // namespace coppice::sandbox
