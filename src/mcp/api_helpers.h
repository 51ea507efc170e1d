// Server calls several tools and resources share: image references, operation summaries sized
// for a model's context, and waiting for operations with progress and cancellation.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/api_client.h"

namespace coppice::mcp {

using nlohmann::json;

// An image reference (UUID, `tag:NAME`, or a bare tag; `NAME` without ':' also tries
// `NAME:latest`) to its UUID. Error 404 with what to call next when nothing matches.
std::string resolve_image(cli::ApiClient& api, const std::string& ref);

// GET /inspect/{uuid}/ (the Image record).
json get_image_record(cli::ApiClient& api, const std::string& uuid);

// Bytes of a StreamRepr ({value, encoding}).
std::string stream_bytes(const json& repr);

// Text for a model: valid UTF-8 is kept, anything else becomes "base64:<…>".
std::string text_or_base64(const std::string& bytes, bool* is_base64 = nullptr);

// Cuts `s` to `limit` bytes (on a UTF-8 boundary), returning how many bytes were dropped.
size_t truncate_utf8(std::string& s, size_t limit);

// An operation (GET /operations/{id}) as a small object: state, exit code, timed_out,
// stdout/stderr cut to `output_limit` bytes each with a note on how to read the rest,
// result image, resources.
json summarize_operation(const json& op, size_t output_limit);

bool is_terminal(const std::string& status);

// Waits until the operation is terminal or `timeout_s` passes (then returns the last state
// seen). Follows the server's event stream (falls back to polling); `tick` is called with the
// elapsed seconds and bytes of output seen so far about once a second. Error 499 when `api`'s
// abort condition fires.
json wait_operation(cli::ApiClient& api, const std::string& op, double timeout_s,
                    const std::function<void(double elapsed, size_t output_bytes)>& tick);

}  // namespace coppice::mcp
