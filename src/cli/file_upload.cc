#include "cli/file_upload.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <vector>

#include "cli/context.h"
#include "cli/log.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/sha256.h"

namespace coppice::cli {

namespace {

bool all_of(std::string_view s, const char* chars) {
  return !s.empty() && s.find_first_not_of(chars) == std::string_view::npos;
}

}  // namespace

FileSpec parse_file_spec(const std::string& spec) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t c = spec.find(':', start);
    parts.push_back(spec.substr(start, c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  FileSpec f;
  f.host = parts[0];
  if (f.host.empty())
    throw bad_request(
        fmt::format("--file '{}': the local path is missing "
                    "(host[:path][:uUID][:gGID][:mMODE])",
                    spec));
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view p = parts[i];
    std::string_view rest = p.empty() ? p : p.substr(1);
    if (!p.empty() && p[0] == 'u' && all_of(rest, "0123456789")) {
      f.uid = std::stoi(std::string(rest));
    } else if (!p.empty() && p[0] == 'g' && all_of(rest, "0123456789")) {
      f.gid = std::stoi(std::string(rest));
    } else if (!p.empty() && p[0] == 'm' && all_of(rest, "01234567") && rest.size() <= 5) {
      f.mode = static_cast<unsigned>(std::stoul(std::string(rest), nullptr, 8));
    } else if (i == 1 && !p.empty()) {
      f.remote = p;
    } else {
      throw bad_request(
          fmt::format("--file '{}': cannot read '{}' (want host[:path][:uUID]"
                      "[:gGID][:mMODE], e.g. ./run.sh:/opt/run.sh:m755)",
                      spec, p));
    }
  }
  return f;
}

std::string ensure_uploaded(ApiClient& api, const std::string& host_path) {
  return ensure_uploaded_bytes(api, read_file(host_path), host_path);
}

std::string ensure_uploaded_bytes(ApiClient& api, const std::string& data, const std::string& what,
                                  std::string sha) {
  if (sha.empty()) sha = sha256_hex(data);
  auto r = api.request("GET", "/files/" + sha);
  if (r.status >= 200 && r.status < 300) {
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("uuid") && j["uuid"].is_string()) {
      log_debug("{} is already on the server (sha256 {})", what, sha);
      return j["uuid"];
    }
  } else if (r.status != 404) {
    api.fail(r, "look up " + what + " on the server");
  }
  auto up = api.request("POST", "/files", data, {"Content-Type: application/octet-stream"});
  if (up.status < 200 || up.status >= 300) api.fail(up, "upload " + what);
  auto j = nlohmann::json::parse(up.body, nullptr, false);
  if (!j.is_object() || !j.contains("uuid") || !j["uuid"].is_string())
    throw Error(502, "upload " + what + ": the server's answer has no file uuid");
  return j["uuid"];
}

std::pair<std::string, nlohmann::json> prepare_file(ApiClient& api, const FileSpec& spec,
                                                    const std::string& cwd) {
  struct stat st {};
  if (::stat(spec.host.c_str(), &st) != 0) throw sys_error("--file: cannot read " + spec.host);
  if (!S_ISREG(st.st_mode))
    throw bad_request(fmt::format("--file: {} is not a regular file", spec.host));
  std::string remote =
      spec.remote.empty() ? std::filesystem::path(spec.host).filename().string() : spec.remote;
  remote = normalize_path(cwd, remote);
  unsigned mode = spec.mode.value_or(st.st_mode & 07777);
  nlohmann::json fs{{"uuid", ensure_uploaded(api, spec.host)},
                    {"uid", spec.uid.value_or(0)},
                    {"gid", spec.gid.value_or(0)},
                    {"mode", fmt::format("{:04o}", mode)}};
  return {remote, fs};
}

}  // namespace coppice::cli
