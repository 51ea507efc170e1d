// `--file host[:path][:uUID][:gGID][:mMODE]`: a local file injected into a run. Uploads are
// content-addressed: the file's SHA-256 is looked up first (GET /v1/files/{sha256}) and the
// bytes are sent (POST /v1/files) only when the server does not have them yet.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/api_client.h"

namespace coppice::cli {

struct FileSpec {
  std::string host;    // local path
  std::string remote;  // path in the sandbox; "" = the host file's name in the run's cwd
  std::optional<int> uid, gid;
  std::optional<unsigned> mode;  // default: the host file's permission bits
};

// Error 400 naming the spec on a malformed one.
FileSpec parse_file_spec(const std::string& spec);

// Uploads (once) and returns the uuid of the server's file with these bytes.
std::string ensure_uploaded(ApiClient& api, const std::string& host_path);
// The same for bytes in memory; `what` names them in errors. `sha256` may be passed when known.
std::string ensure_uploaded_bytes(ApiClient& api, const std::string& data, const std::string& what,
                                  std::string sha256 = "");

// Uploads `spec` and returns {absolute remote path, FileSpec JSON for the spawn's `files`}.
// Relative remote paths start at `cwd` ("/" when empty).
std::pair<std::string, nlohmann::json> prepare_file(ApiClient& api, const FileSpec& spec,
                                                    const std::string& cwd);

}  // namespace coppice::cli
