// Prompts: task templates a user can pick in an MCP client (contract §7's set).
#include <fmt/format.h>

#include "mcp/catalog.h"
#include "mcp/jsonrpc.h"

namespace coppice::mcp {

namespace {

struct Arg {
  const char* name;
  const char* description;
  bool required;
  const char* def;  // nullptr when none
};

struct Prompt {
  const char* name;
  const char* description;
  std::vector<Arg> args;
  std::string (*render)(const std::function<std::string(const char*)>& arg);
};

const std::vector<Prompt>& prompts() {
  static const std::vector<Prompt> all = {
      {"prepare-environment",
       "Prepare a reusable environment for a task: base image, packages, tagged result.",
       {{"task", "What the environment is for", true, nullptr},
        {"base", "Base image", false, "python:3.11-slim"},
        {"project", "Tag prefix for the result", false, "work"},
        {"packages", "Packages to install", false, ""}},
       [](const auto& a) {
         return fmt::format(
             "Prepare a sandbox environment for: {0}\n1. Check list_images for '{1}'; if absent, "
             "import_image it.\n2. run (disposable=false) the installation of: {2}.\n3. Check it "
             "works with a disposable run.\n4. set_tag the result image as '{3}/env:latest' and "
             "report its UUID.",
             a("task"), a("base"),
             a("packages").empty() ? "(whatever the task needs)" : a("packages"), a("project"));
       }},
      {"run-python",
       "Run a Python snippet in a sandbox.",
       {{"code", "Python code", true, nullptr}},
       [](const auto& a) {
         return fmt::format(
             "Run this Python code in a sandbox with the run tool (image python:3.11-slim; "
             "import_image it first if list_images does not show it), passing the code as stdin "
             "to `python3 -`:\n```python\n{}\n```\nReport stdout, stderr and the exit code.",
             a("code"));
       }},
      {"run-shell",
       "Run a shell command in a sandbox.",
       {{"command", "Shell command", true, nullptr}, {"image", "Image", false, "busybox:latest"}},
       [](const auto& a) {
         return fmt::format(
             "Run `{}` with the run tool on image '{}' and report the output and "
             "exit code.",
             a("command"), a("image"));
       }},
      {"sync-and-run",
       "Upload a local directory and run a command on it.",
       {{"source", "Absolute local directory", true, nullptr},
        {"command", "Command to run in /src", true, nullptr},
        {"image", "Image", false, "busybox:latest"}},
       [](const auto& a) {
         return fmt::format(
             "1. rsync source='{}' destination='/src' (exclude .git).\n2. run command 'cd /src && "
             "{}' on image '{}' with the returned directory_state_id.\n3. Report the result; if "
             "it failed, read the relevant files with read_file.",
             a("source"), a("command"), a("image"));
       }},
      {"install-packages",
       "Install packages and keep the result as an image.",
       {{"packages", "Packages", true, nullptr}, {"image", "Base image", false, "busybox:latest"}},
       [](const auto& a) {
         return fmt::format(
             "On image '{}', run the package manager to install: {} with "
             "disposable=false. Verify with a disposable run, then set_tag the "
             "result_image and report its UUID.",
             a("image"), a("packages"));
       }},
      {"parallel-tasks",
       "Run several independent tasks in parallel branches.",
       {{"tasks", "Tasks, one per line", true, nullptr},
        {"image", "Image", false, "busybox:latest"}},
       [](const auto& a) {
         return fmt::format(
             "For each of these tasks, start a run on image '{}' with wait=false, "
             "then wait_operations for all of them and summarise each result:\n{}",
             a("image"), a("tasks"));
       }},
      {"build-project",
       "Sync, install and test a project.",
       {{"source", "Absolute local directory", true, nullptr},
        {"install_cmd", "Install command", false, "pip install -e ."},
        {"test_cmd", "Test command", false, "pytest"}},
       [](const auto& a) {
         return fmt::format(
             "1. rsync '{}' to /src.\n2. run 'cd /src && {}' with disposable=false and that "
             "directory_state_id; keep result_image as the installed state.\n3. run 'cd /src && "
             "{}' from the installed state (disposable).\n4. Report failures with the relevant "
             "output.",
             a("source"), a("install_cmd"), a("test_cmd"));
       }},
      {"debug-failure",
       "Investigate a failed run.",
       {{"operation_id", "The failed operation", true, nullptr}},
       [](const auto& a) {
         return fmt::format(
             "Call get_operation for {0}. Read its stderr and exit code; inspect the image it ran "
             "on with list_files/read_file/grep; form a hypothesis and test it with disposable "
             "runs from the same image. Explain the cause and the fix.",
             a("operation_id"));
       }},
      {"inspect-image",
       "Describe what an image contains.",
       {{"image", "Image UUID or tag", true, nullptr}},
       [](const auto& a) {
         return fmt::format(
             "Describe image '{}': get_image, list_files of /, /etc and /usr/bin, "
             "read /etc/os-release if present, and its lineage resource.",
             a("image"));
       }},
      {"multi-stage-build",
       "Install, build and test in stages, keeping each stage as an image.",
       {{"source", "Absolute local directory", true, nullptr},
        {"install_cmd", "Install command", true, nullptr},
        {"build_cmd", "Build command", false, "python -m build"},
        {"test_cmd", "Test command", false, "pytest"}},
       [](const auto& a) {
         return fmt::format(
             "1. rsync '{}' to /src.\n2. Stage deps: run 'cd /src && {}' (disposable=false); "
             "set_tag it.\n3. Stage build: from that image run 'cd /src && {}' "
             "(disposable=false).\n4. Stage test: from the build image run 'cd /src && {}'.\n"
             "Report each stage's image and result; on failure, rerun only from the last good "
             "stage.",
             a("source"), a("install_cmd"), a("build_cmd"), a("test_cmd"));
       }},
  };
  return all;
}

}  // namespace

json list_prompts() {
  json out = json::array();
  for (const auto& p : prompts()) {
    json args = json::array();
    for (const auto& a : p.args)
      args.push_back(
          {{"name", a.name},
           {"description", a.def && *a.def ? fmt::format("{} (default {})", a.description, a.def)
                                           : std::string(a.description)},
           {"required", a.required}});
    out.push_back({{"name", p.name}, {"description", p.description}, {"arguments", args}});
  }
  return {{"prompts", out}};
}

json get_prompt(const std::string& name, const json& arguments) {
  for (const auto& p : prompts()) {
    if (name != p.name) continue;
    for (const auto& a : p.args)
      if (a.required &&
          (!arguments.is_object() || !arguments.contains(a.name) || !arguments[a.name].is_string()))
        throw RpcError(kInvalidParams, fmt::format("prompt {} needs argument '{}'", name, a.name));
    auto arg = [&](const char* key) -> std::string {
      if (arguments.is_object() && arguments.contains(key) && arguments[key].is_string())
        return arguments[key];
      for (const auto& a : p.args)
        if (std::string_view(a.name) == key && a.def) return a.def;
      return "";
    };
    return {{"description", p.description},
            {"messages",
             json::array(
                 {{{"role", "user"}, {"content", {{"type", "text"}, {"text", p.render(arg)}}}}})}};
  }
  throw RpcError(kInvalidParams, fmt::format("unknown prompt '{}' (see prompts/list)", name));
}

}  // namespace coppice::mcp
