// Follows one operation to its end: the live SSE event stream
// (`GET /v1/operations/{id}/events?follow=1`), resumed with `since=` after a dropped
// connection, and a fallback to polling `GET /v1/operations/{id}` where the server has no
// event stream. Every event (a ConTree OperationEvent) goes to a callback as it arrives; in the
// polling fallback the main process's remaining output is delivered as synthesized
// `stdout`/`stderr` events at the end, so callers see each byte once either way.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/api_client.h"

namespace coppice::cli {

struct OperationOutcome {
  std::string status;                       // SUCCESS, FAILED or CANCELLED
  std::string error;                        // set when FAILED
  std::optional<std::string> result_image;  // null for disposable runs and failures
  bool has_exit = false;                    // the main process's exit was seen
  int exit_code = -1;
  int signal = -1;
  bool timed_out = false;
};

// Decoded bytes of a stdout/stderr/stdin event's data ({value, encoding}).
std::string event_bytes(const nlohmann::json& data);

class OperationFollower {
 public:
  using EventHandler = std::function<void(const nlohmann::json& event)>;
  OperationFollower(ApiClient& api, std::string operation) : api_(api), op_(std::move(operation)) {}

  // Blocks until the operation is terminal. Throws Error 499 when interrupted (Ctrl-C),
  // other Errors when the operation cannot be read at all.
  OperationOutcome follow(const EventHandler& on_event);

 private:
  enum class StreamEnd { completed, retry, unsupported };
  StreamEnd stream_once(const EventHandler& on_event, int& retry_after_ms);
  OperationOutcome poll(const EventHandler& on_event);
  void handle(const nlohmann::json& ev, const EventHandler& on_event);

  ApiClient& api_;
  std::string op_;
  long long last_id_ = -1;
  size_t out_bytes_ = 0, err_bytes_ = 0;  // main-process output delivered so far
  bool completed_ = false;
  OperationOutcome outcome_;
};

// Sleeps `ms`, waking early to throw Error 499 when interrupted (Ctrl-C, or `api`'s abort
// condition when given).
void interruptible_sleep(int ms, const ApiClient* api = nullptr);

}  // namespace coppice::cli
