// InstanceSpawnRequest (contract §2.6): parsing, validation and the echo with defaults filled.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace coppice::engine {

struct FileSpec {
  std::string uuid;
  std::string sha256;  // content address, filled in by Engine::spawn when it checks the file
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t mode = 0644;
};

struct SpawnLimits {
  int64_t default_timeout_s = 300;
  int64_t max_timeout_s = 3600;
  int64_t default_truncate = 1 << 20;
  int64_t max_truncate = 16 << 20;
  int64_t max_stdin = 16 << 20;
  // Server-wide caps on what one run may ask for in resources_limits (a request over a cap
  // is a 400 naming it; shown in whoami.limits).
  int64_t max_memory_bytes = 8ll << 30;
  int64_t max_pids = 4096;
  int64_t max_cpus = 0;  // cores; 0 = the host's CPU count (resolved by the Engine)
};

struct SpawnRequest {
  std::string command;
  std::string image;  // as given: a UUID or "tag:NAME"
  std::vector<std::string> args;
  bool shell = false;
  std::map<std::string, std::optional<std::string>> env;  // null value = unset
  bool preserve_env = false;
  std::string cwd;  // "" = the image's working directory ("/" when it has none)
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string hostname = "coppice";
  bool disposable = false;
  int64_t timeout_s = 0;
  int64_t truncate_output_at = 0;
  std::string stdin_data;  // decoded bytes
  nlohmann::json stdin_echo = nullptr;
  std::map<std::string, FileSpec> files;  // absolute path -> spec
  std::optional<int64_t> max_layer_bytes;
  // Coppice extensions in resources_limits: cgroup limits of this run (0 = server default).
  int64_t memory_bytes = 0;
  int64_t pids = 0;
  double cpus = 0;
  // Coppice extension: the sandbox runtime for this run ("" = the server's default).
  std::string runtime;

  // argv as the sandbox runs it ({"/bin/sh","-c",command} for shell=true).
  std::vector<std::string> argv() const;
  // The request echoed with every field and defaults filled (the operation's metadata),
  // secret env values masked (engine/redact.h).
  nlohmann::json to_json() const;
  nlohmann::json limits_json() const;
};

// Parses and validates a spawn body. Throws a 400 Error that names the offending field.
// JSON null is treated like an absent field.
SpawnRequest parse_spawn_request(const nlohmann::json& body, const SpawnLimits& limits);

// Parses a file mode as clients send it: 420, "0644", "0o644", "644". Throws 400.
uint32_t parse_mode(const nlohmann::json& v);

// Validates an absolute sandbox path: starts with '/', no NUL, no "." or ".." components,
// at most 4096 bytes. Returns it normalized (duplicate and trailing slashes removed).
std::string normalize_sandbox_path(const std::string& p, const char* what);

}  // namespace coppice::engine
