// get_guide and whoami, plus the schema helpers the tool tables use and the full tool list.
#include "common/error.h"
#include "mcp/guide.h"
#include "mcp/tool.h"

namespace coppice::mcp {

json object_schema(json properties, std::vector<std::string> required) {
  json s = {
      {"type", "object"}, {"properties", std::move(properties)}, {"additionalProperties", false}};
  if (!required.empty()) s["required"] = required;
  return s;
}

json prop(const std::string& type, const std::string& description) {
  return {{"type", type}, {"description", description}};
}

json prop_default(const std::string& type, const std::string& description, json def) {
  return {{"type", type}, {"description", description}, {"default", std::move(def)}};
}

namespace {

ToolResult get_guide(const json& a, CallContext&) {
  std::string name = a.value("section", "workflow");
  const std::string* text = guide_section(name);
  if (!text) throw bad_request("unknown section '" + name + "'");
  return {{{"section", name}, {"content", *text}}, *text, false};
}

ToolResult whoami(const json&, CallContext& ctx) {
  json j = ctx.api.get_json("/whoami", "whoami");
  j["server_url"] = ctx.api.base_url();
  j["file_root"] = ctx.files.path();  // where upload/rsync read and download writes
  return {j, "", false};
}

}  // namespace

std::vector<Tool> all_tools() {
  std::vector<Tool> out;
  add_run_tools(out);
  add_file_tools(out);
  add_inspect_tools(out);
  add_image_tools(out);
  add_operation_tools(out);
  add_info_tools(out);
  return out;
}

void add_info_tools(std::vector<Tool>& out) {
  json sections = json::array();
  for (const auto& [n, _] : guide_sections()) sections.push_back(n);
  out.push_back({"get_guide",
                 "Read the usage guide",
                 "Short guides on working with branching sandboxes: quickstart, workflow, state "
                 "(how images and branches work), async (parallel runs), tagging, reference, "
                 "errors. Read `workflow` first if unsure.",
                 object_schema({{"section",
                                 {{"type", "string"},
                                  {"enum", sections},
                                  {"default", "workflow"},
                                  {"description", "Which section."}}}},
                               {}),
                 {{"readOnlyHint", true}, {"idempotentHint", true}, {"openWorldHint", false}},
                 get_guide});
  out.push_back({"whoami",
                 "Who am I on the server",
                 "The project this server connection acts for, the runtimes available, and "
                 "file_root: the local directory upload, rsync and download may use.",
                 object_schema(json::object(), {}),
                 {{"readOnlyHint", true}, {"idempotentHint", true}, {"openWorldHint", false}},
                 whoami});
}

}  // namespace coppice::mcp
