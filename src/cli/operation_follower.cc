#include "cli/operation_follower.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "cli/interrupt.h"
#include "cli/log.h"
#include "cli/sse_parser.h"
#include "common/base64.h"
#include "common/error.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

bool terminal(const std::string& status) {
  return status == "SUCCESS" || status == "FAILED" || status == "CANCELLED";
}

int retry_after_ms(const HttpResponse& r, int fallback) {
  std::string v = r.header("retry-after");
  if (v.empty() || !std::all_of(v.begin(), v.end(), ::isdigit)) return fallback;
  return std::min(5000, std::stoi(v) * 1000);
}

int get_int(const json& j, const char* key, int def) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<int>() : def;
}

}  // namespace

std::string event_bytes(const json& data) {
  std::string value = data.value("value", "");
  if (data.value("encoding", "ascii") == "base64") {
    auto d = base64_decode(value);
    if (!d) throw Error(502, "the server sent output that is not valid base64");
    return *d;
  }
  return value;
}

void interruptible_sleep(int ms, const ApiClient* api) {
  auto stop = [api] { return interrupted() || (api && api->aborted()); };
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < until) {
    if (stop()) throw Error(499, "interrupted");
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 20)));
  }
  if (stop()) throw Error(499, "interrupted");
}

void OperationFollower::handle(const json& ev, const EventHandler& on_event) {
  long long id = ev.value("id", -1LL);
  if (id >= 0 && id <= last_id_) return;  // a duplicate after a reconnect
  if (id >= 0) last_id_ = id;
  std::string type = ev.value("type", "");
  const json& data = ev.contains("data") && ev["data"].is_object() ? ev["data"] : json::object();
  int spid = ev.value("spid", -1);
  if (spid == 1 && (type == "stdout" || type == "stderr"))
    (type == "stdout" ? out_bytes_ : err_bytes_) += event_bytes(data).size();
  if (spid == 1 && type == "exit") {
    outcome_.has_exit = true;
    outcome_.exit_code = get_int(data, "code", -1);
    outcome_.signal = get_int(data, "signal", -1);
    outcome_.timed_out = data.value("timed_out", false);
  }
  if (type == "completion") {
    completed_ = true;
    outcome_.status = data.value("status", "");
    if (data.contains("error") && data["error"].is_string()) outcome_.error = data["error"];
    if (data.contains("result_image_uuid") && data["result_image_uuid"].is_string())
      outcome_.result_image = data["result_image_uuid"].get<std::string>();
  }
  on_event(ev);
}

OperationFollower::StreamEnd OperationFollower::stream_once(const EventHandler& on_event,
                                                            int& wait_ms) {
  bool sse_error = false;
  SseParser parser([&](const SseEvent& e) {
    if (e.event == "sse_error") {
      log_debug("event stream error from the server: {}", e.data);
      sse_error = true;
      return;
    }
    auto j = json::parse(e.data, nullptr, false);
    if (!j.is_object()) throw Error(502, "the event stream carried an event that is not JSON");
    handle(j, on_event);
  });
  BodySink sink = [&](std::string_view chunk) { parser.feed(chunk); };
  std::string path =
      fmt::format("/operations/{}/events{}", path_segment(op_),
                  query_string({{"follow", "1"}, {"since", std::to_string(last_id_)}}));
  HttpResponse r;
  try {
    r = api_.request("GET", path, "", {"Accept: text/event-stream"}, &sink);
  } catch (const Error& e) {
    if (e.status() != 502 || completed_) throw;
    log_debug("event stream broke ({}); resuming after event {}", e.what(), last_id_);
    return StreamEnd::retry;
  }
  if (completed_) return StreamEnd::completed;
  if (r.status >= 200 && r.status < 300) {
    log_debug("event stream ended {}before completion; resuming after event {}",
              sse_error ? "with an error " : "", last_id_);
    return StreamEnd::retry;
  }
  if (r.status == 410 || r.status == 425 || r.status == 429 || r.status == 503) {
    wait_ms = retry_after_ms(r, 500);
    return StreamEnd::retry;
  }
  if (r.status == 400 || r.status == 403 || r.status == 405 || r.status == 406 || r.status == 501 ||
      r.status == 404)
    return StreamEnd::unsupported;
  api_.fail(r, fmt::format("follow operation {}", op_));
}

OperationOutcome OperationFollower::follow(const EventHandler& on_event) {
  int failures = 0;
  while (!completed_) {
    int wait_ms = 0;
    StreamEnd end = stream_once(on_event, wait_ms);
    if (end == StreamEnd::completed) break;
    if (end == StreamEnd::unsupported) {
      log_debug("no event stream for operation {}; polling it", op_);
      return poll(on_event);
    }
    if (wait_ms == 0) {
      if (++failures > 8) {
        log_debug("event stream keeps failing; polling operation {}", op_);
        return poll(on_event);
      }
      wait_ms = std::min(2000, 100 << failures);
    }
    interruptible_sleep(wait_ms, &api_);
  }
  return outcome_;
}

OperationOutcome OperationFollower::poll(const EventHandler& on_event) {
  int delay = 50;
  json op;
  for (;;) {
    op = api_.get_json(fmt::format("/operations/{}", path_segment(op_)),
                       fmt::format("read operation {}", op_));
    if (terminal(op.value("status", ""))) break;
    interruptible_sleep(delay, &api_);
    delay = std::min(1000, delay * 2);
  }
  const json meta = op.value("metadata", json::object());
  const json res = meta.is_object() ? meta.value("result", json::object()) : json::object();
  if (res.is_object()) {
    for (const char* stream : {"stdout", "stderr"}) {
      if (!res.contains(stream) || !res[stream].is_object()) continue;
      std::string all = event_bytes(res[stream]);
      size_t seen = std::string_view(stream) == "stdout" ? out_bytes_ : err_bytes_;
      if (all.size() > seen)
        on_event(
            json{{"type", stream},
                 {"spid", 1},
                 {"data", {{"value", base64_encode(all.substr(seen))}, {"encoding", "base64"}}}});
    }
    if (res.contains("state") && res["state"].is_object()) {
      const json& st = res["state"];
      outcome_.has_exit = true;
      outcome_.exit_code = get_int(st, "exit_code", -1);
      outcome_.signal = get_int(st, "signal", -1);
      outcome_.timed_out = st.value("timed_out", false);
    }
  }
  outcome_.status = op.value("status", "");
  outcome_.error = op["error"].is_string() ? op["error"].get<std::string>() : "";
  if (op.contains("result_image_uuid") && op["result_image_uuid"].is_string())
    outcome_.result_image = op["result_image_uuid"].get<std::string>();
  completed_ = true;
  return outcome_;
}

}  // namespace coppice::cli
