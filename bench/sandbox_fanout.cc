// Sandbox-only fan-out: N runs of `/bin/true` at once through the namespace runtime, no HTTP,
// no database, from a small process. Compare with api_bench's fan-out to see how much of the
// cost is the runtime itself. Usage: sandbox_fanout [N=8] [reps=5] [ballast_mb=0]
// ballast_mb touches that much heap first, to mimic a server-sized address space.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/fsutil.h"
#include "common/ids.h"
#include "common/process.h"
#include "sandbox/runtime.h"

using namespace coppice;
using Clock = std::chrono::steady_clock;

namespace {
struct Quiet final : sandbox::RunObserver {
  void on_spawn(int) override {}
  void on_output(sandbox::Stream, std::string_view) override {}
};
}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 8;
  int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  size_t ballast_mb = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 0;
  std::vector<char> ballast(ballast_mb << 20, 1);
  for (size_t i = 0; i < ballast.size(); i += 4096) ballast[i] = static_cast<char>(i);

  fs::path root = fs::path("/var/tmp") / ("fanout-" + new_uuid());
  fs::path layer = root / "layer";
  make_dirs(layer / "bin");
  for (const char* d : {"proc", "dev", "tmp", "etc"}) make_dirs(layer / d);
  run_program({"cp", "/bin/busybox", (layer / "bin/busybox").string()});
  ::symlink("busybox", (layer / "bin/true").c_str());
  ::symlink("busybox", (layer / "bin/sh").c_str());
  shift_ownership(layer, 100000);
  ::chmod(root.c_str(), 0755);
  sandbox::NamespaceConfig cfg;
  cfg.cgroup_name = "coppice-fanout-" + std::to_string(::getpid());
  auto rt = sandbox::make_namespace_runtime(cfg);

  std::vector<double> totals;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int i = 0; i < n; ++i)
      ts.emplace_back([&, i] {
        sandbox::RunSpec spec;
        spec.lower_layers = {layer};
        spec.run_dir = root / ("run-" + std::to_string(r) + "-" + std::to_string(i));
        spec.argv = {"/bin/true"};
        spec.env = {"PATH=/bin"};
        Quiet q;
        sandbox::CancelToken c;
        rt->run(spec, q, c);
        remove_tree(spec.run_dir);
      });
    for (auto& t : ts) t.join();
    totals.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(totals.begin(), totals.end());
  std::printf(
      "sandbox fan-out: %d at once, ballast %zu MB: median total %.2f ms (min %.2f, max %.2f)\n", n,
      ballast_mb, totals[totals.size() / 2], totals.front(), totals.back());
  rt.reset();
  remove_tree(root);
  return 0;
}
