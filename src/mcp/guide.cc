#include "mcp/guide.h"

namespace coppice::mcp {

const std::vector<std::pair<std::string, std::string>>& guide_sections() {
  static const std::vector<std::pair<std::string, std::string>> sections = {
      {"quickstart", R"(# Quickstart
1. `list_images` — see the images you have (busybox:latest is always there).
2. `run` with `{"image": "busybox:latest", "command": "uname -a"}` — a sandbox, ~10 ms.
3. `run` with `"disposable": false` to keep the files the command wrote: the answer has a
   `result_image`. Use it as `image` in the next `run` to continue from there.
4. `read_file` / `list_files` on any image read files without starting anything.
)"},
      {"workflow", R"(# Workflow
- Start from an image (`list_images`, or `import_image` for docker://… references).
- Get your code in: `rsync` a local directory (returns `directory_state_id`) or `upload` single
  files; pass them to `run`. Local paths must be under the MCP server's file root (`whoami`
  shows it); symlinks are not followed.
- Set up once with `disposable: false` (install packages, build), then tag the result
  (`set_tag`) so you can come back to it.
- Explore: run several commands from the same image (each makes its own branch). Use
  `wait: false` to start them together and `wait_operations` to collect results.
- Compare with `read_file`, `grep`, `list_files` on the result images. Keep the best one;
  forget the others (nothing needs cleaning up).
)"},
      {"state", R"(# State and branching
- An image is an immutable filesystem. A `run` never changes its input image.
- `disposable: true` (default): changes are thrown away; cheapest, use it for checks and tests.
- `disposable: false`: the changed filesystem becomes a new image (`result_image`). A run that
  changed nothing returns the input image itself.
- Rolling back = using an older image UUID. Branching = running from the same image twice.
- Only the filesystem is kept: processes, environment variables and the working directory of a
  run are not. Write what you need to files, or pass `env`/`cwd` again.
)"},
      {"async", R"(# Running things in parallel
- `run` with `wait: false` returns an `operation_id` at once.
- `wait_operations` with `mode: "all"` waits for all of them; `mode: "any"` returns the first
  to finish and cancels the rest (good for races).
- `get_operation` reads one without waiting; `cancel_operation` stops one.
- Long runs send progress notifications; cancelling your request cancels the run.
)"},
      {"tagging", R"(# Tags
- `set_tag` names an image (e.g. `myproject/deps:v1`); a tag held by another image moves.
- Use tags for states you will return to: a prepared environment, the best candidate so far.
- Anywhere an image is asked for, a tag works: `busybox:latest`, `tag:busybox:latest`.
- `set_tag` without `tag` removes the image's tag. `import_image` tags what it imports.
)"},
      {"reference", R"(# Reference
- Sandboxes: Linux namespaces, no network, unprivileged root, default timeout 30 s.
- Output: stdout/stderr are capped at `truncate_output_at` bytes (default 8000) each; for more,
  redirect to a file in a non-disposable run and `read_file` it (pages with `offset`).
- Files: `upload` → uuid; `run.files` = `{"/abs/path": uuid}` or `{uuid, mode, uid, gid}`.
- Resources: coppice://image/{image}/read/{path}, coppice://image/{image}/ls/{path},
  coppice://image/{image}/lineage, coppice://operations/instance/{id},
  coppice://operations/import/{id}, coppice://guide/{section}.
)"},
      {"errors", R"(# Errors
- Tool errors say what failed and what to call next; fix the argument and call again.
- "no image tagged …": `list_images`, or `import_image`.
- "cwd not found": the directory must exist in the image (create it in an earlier run).
- exit_code != 0 is the command's own failure (state is still SUCCESS); read stderr.
- timed_out: true — the run hit `timeout`; raise it or make the command faster.
- state FAILED: a platform failure (bad image, disk, import); the `error` says why.
)"},
  };
  return sections;
}

const std::string* guide_section(const std::string& name) {
  for (const auto& [n, text] : guide_sections())
    if (n == name) return &text;
  return nullptr;
}

}  // namespace coppice::mcp
