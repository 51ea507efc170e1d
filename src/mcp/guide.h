// The guide a model can read (get_guide, coppice://guide/{section}): how to work with
// branching sandboxes, in short markdown sections.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace coppice::mcp {

// {name, markdown} for: workflow, reference, quickstart, state, async, tagging, errors.
const std::vector<std::pair<std::string, std::string>>& guide_sections();
// The section's markdown, or nullptr.
const std::string* guide_section(const std::string& name);

}  // namespace coppice::mcp
