#include "cli/history_graph.h"

#include <fmt/format.h>

#include <functional>

namespace coppice::cli {

namespace {

std::string one_line(std::string s, size_t max = 60) {
  for (auto& c : s)
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  if (s.size() > max) s = s.substr(0, max - 3) + "...";
  return s;
}

}  // namespace

std::string draw_history(const std::vector<HistoryEntry>& entries,
                         const std::map<std::string, int64_t>& branches,
                         const std::string& active_branch) {
  std::map<int64_t, const HistoryEntry*> by_id;
  std::map<int64_t, std::vector<const HistoryEntry*>> children;
  std::vector<const HistoryEntry*> roots;
  for (const auto& e : entries) by_id[e.id] = &e;
  for (const auto& e : entries) {
    if (e.parent && by_id.count(*e.parent))
      children[*e.parent].push_back(&e);
    else
      roots.push_back(&e);
  }
  std::map<int64_t, std::vector<std::string>> labels;
  for (const auto& [name, id] : branches)
    labels[id].push_back(name == active_branch ? "HEAD -> " + name : name);

  std::string out;
  auto line = [&](const std::string& prefix, const HistoryEntry& e) {
    std::string label;
    if (auto it = labels.find(e.id); it != labels.end()) {
      for (const auto& l : it->second) label += (label.empty() ? "" : ", ") + l;
      label = "  (" + label + ")";
    }
    out += fmt::format("{}* #{} {:<4} {}  {}{}\n", prefix, e.id, e.kind, one_line(e.title),
                       e.image.substr(0, 8), label);
  };
  // Iterative over chains (histories can be long), recursive only at forks.
  std::function<void(const HistoryEntry*, std::string, std::string)> walk =
      [&](const HistoryEntry* e, std::string first, std::string rest) {
        for (;;) {
          line(first, *e);
          auto it = children.find(e->id);
          if (it == children.end()) return;
          const auto& kids = it->second;
          if (kids.size() == 1) {
            e = kids[0];
            first = rest;
            continue;
          }
          for (size_t i = 0; i < kids.size(); ++i) {
            bool last = i + 1 == kids.size();
            walk(kids[i], rest + (last ? "└─" : "├─"), rest + (last ? "  " : "│ "));
          }
          return;
        }
      };
  for (const auto* r : roots) walk(r, "", "");
  return out;
}

}  // namespace coppice::cli
