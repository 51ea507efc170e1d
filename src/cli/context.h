// What every command needs, resolved lazily from the global flags: the profile (flags > env >
// auth.ini), the API client, the session store, the current session and image, and the
// command's exit code.
//
// Precedence (contract §6 with the COPPICE_ prefix): --url/--token flags, then COPPICE_URL /
// COPPICE_TOKEN, then the profile (-p/--profile, COPPICE_PROFILE, else auth.ini's current
// one). $COPPICE_HOME (default ~/.coppice) holds auth.ini (or -c/--config) and sessions.db.
// The session is -S/--session, else COPPICE_SESSION, else a key derived from the terminal
// (`<cwd name>+<8 hex>` of profile, parent pid and tty), so one shell keeps one session.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/api_client.h"
#include "cli/output.h"
#include "cli/profiles.h"
#include "cli/session_store.h"

namespace coppice::cli {

struct GlobalOptions {
  std::string profile;
  std::string url;
  std::string token;
  std::string config;  // auth.ini path
  std::string log_level = "warning";
  std::string format = "default";
  std::string session;
};

class Context {
 public:
  GlobalOptions opts;
  int exit_code = 0;
  // `run`'s command when given after `--` (taken out of argv before parsing, since CLI11 would
  // hand it back to the global parser).
  std::vector<std::string> after_dashdash;

  Format format() const { return parse_format(opts.format); }
  std::filesystem::path home() const { return coppice_home(); }

  ProfileStore& profiles();
  // The profile name commands use (flag, env, auth.ini's current, else "default").
  std::string profile_name();
  // URL and token after precedence; Error 400 with what to do when no server is configured.
  Profile server();
  ApiClient& api();

  SessionStore& sessions();
  std::string session_key();
  // The current session; Error 404 telling how to start one when it does not exist or has no
  // image yet.
  SessionInfo session();
  std::string current_image() { return session().head->image; }

  // An image reference (UUID, `tag:NAME` or a bare tag; `NAME` also tries `NAME:latest`) to
  // its UUID. UUIDs pass through unchecked.
  std::string resolve_image(const std::string& ref);
  // An absolute, normalised image path; relative paths start at the session's cwd ("/").
  std::string remote_path(const std::string& path);

 private:
  std::unique_ptr<ProfileStore> profiles_;
  std::unique_ptr<ApiClient> api_;
  std::unique_ptr<SessionStore> sessions_;
};

// "/a/./b/../c" → "/a/c"; relative `p` is joined to `base` first.
std::string normalize_path(const std::string& base, const std::string& p);

}  // namespace coppice::cli
