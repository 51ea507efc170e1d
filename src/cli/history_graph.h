// Draws a session's history DAG as text, one entry per line, like `git log --graph` turned
// into a tree: a chain continues in its column, a fork opens `├─`/`└─` branches, and branch
// heads are labelled (`HEAD -> main`, `experiment`).
//
//   * #1 use  busybox:latest  1a2b3c4d
//   * #2 run  echo 1 > /a  5e6f7a8b
//   ├─* #3 run  true  9c0d1e2f  (main)
//   └─* #4 run  echo 2 >> /a  3a4b5c6d  (HEAD -> experiment)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/session_store.h"

namespace coppice::cli {

std::string draw_history(const std::vector<HistoryEntry>& entries,
                         const std::map<std::string, int64_t>& branches,
                         const std::string& active_branch);

}  // namespace coppice::cli
