// Server-sent events of an operation (contract §3): the frame format, and a follower that
// streams a live operation's new events without holding a thread while it waits.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "api/exchange.h"
#include "engine/live_operation.h"
#include "store/records.h"

namespace coppice::api {

// "id: N\nevent: TYPE\ndata: {...}\n\n"
std::string sse_frame(const store::EventRecord& e);

// Streams the events of `live` with id > `since` (of `spid` only, when given) to `ex`, whose
// event stream has begun, until the operation's completion event has been sent or the
// operation ended; then ends the stream and finishes the response. Between events it waits on
// a LiveOperation subscription and a timer on the connection's strand (no thread), writing a
// ": keepalive" comment after each `keepalive` without events. Ends early when the connection
// closes. The caller must have called ex->detach() and must not touch `ex` afterwards.
void follow_events(std::shared_ptr<Exchange> ex, std::shared_ptr<engine::LiveOperation> live,
                   int64_t since, std::optional<int> spid, std::chrono::milliseconds keepalive);

}  // namespace coppice::api
