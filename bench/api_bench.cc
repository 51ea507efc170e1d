// api_bench: end-to-end latency of Coppice runs measured through the HTTP API.
//
//   api_bench [--coppiced PATH]            start a fresh server (default: $COPPICED, else
//                                          ./build/coppiced) on a fresh data dir under /var/tmp
//   api_bench --url http://H:P --token T   use a running server instead
//   options: --only a,b,c,d,e  --quick (fewer iterations)  --chain-depth N  --poll-us N
//            --keep-data  --method events|poll (skip the comparison in scenario a)
//
// Every latency is POST /v1/instances -> completion seen by the client, over keep-alive
// Boost.Beast synchronous connections (one per thread). Completion is detected either by
//   events: GET /v1/operations/{id}/events?follow=1, read until the stream ends after `completion`
//   poll:   GET /v1/operations/{id} in a tight loop (--poll-us between polls, default 200)
// Scenario a measures both; the faster (by p50) is used for every other scenario.
// Lines starting with "RESULT " are machine-readable (bench/run.sh reads them).
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// Statistics

struct Stats {
  size_t n = 0;
  double p50 = 0, p99 = 0, mean = 0, min = 0, max = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // nearest-rank
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  if (rank < 1) rank = 1;
  return v[std::min(rank, v.size()) - 1];
}

Stats stats(const std::vector<double>& v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  s.p50 = percentile(v, 50);
  s.p99 = percentile(v, 99);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

std::string verdict(double value, double target) {
  return value <= target ? "PASS" : "MISS";
}

void print_stats(const std::string& name, const Stats& s) {
  std::cout << fmt::format(
      "  {:<46} n={:<4} p50={:8.2f} ms  p99={:8.2f} ms  mean={:8.2f} ms  "
      "min={:7.2f}  max={:8.2f}\n",
      name, s.n, s.p50, s.p99, s.mean, s.min, s.max);
}

void print_target(const std::string& what, double value, double target, const std::string& unit) {
  std::cout << fmt::format("    target {:<40} {:9.2f} {:<3} (target <= {:g} {}) {}\n", what, value,
                           unit, target, unit, verdict(value, target));
}

void result(const std::string& key, double v) {
  std::cout << fmt::format("RESULT {} {:.3f}\n", key, v);
}

// ---------------------------------------------------------------------------------------------
// HTTP client: one keep-alive connection.

struct Resp {
  int status = 0;
  std::string body;
};

class Client {
 public:
  Client(std::string host, std::string port, std::string token)
      : host_(std::move(host)), port_(std::move(port)), token_(std::move(token)) {
    connect();
  }

  Resp request(http::verb verb, const std::string& target, const std::string& body = {}) {
    for (int attempt = 0;; ++attempt) {
      try {
        http::request<http::string_body> rq{verb, target, 11};
        rq.set(http::field::host, host_);
        rq.set(http::field::authorization, "Bearer " + token_);
        rq.set(http::field::accept_encoding, "identity");
        rq.keep_alive(true);
        if (!body.empty()) {
          rq.set(http::field::content_type, "application/json");
          rq.body() = body;
        }
        rq.prepare_payload();
        http::write(stream_, rq);
        http::response_parser<http::string_body> p;
        p.body_limit(1ull << 32);
        p.header_limit(1 << 20);
        http::read(stream_, buf_, p);
        auto rs = p.release();
        Resp r{static_cast<int>(rs.result_int()), std::move(rs.body())};
        if (!rs.keep_alive()) reconnect();
        return r;
      } catch (const beast::system_error& e) {
        // A keep-alive connection the server closed meanwhile: reconnect once and retry.
        if (attempt > 0) throw;
        reconnect();
      }
    }
  }
  Resp get(const std::string& t) { return request(http::verb::get, t); }
  Resp post(const std::string& t, const std::string& b) { return request(http::verb::post, t, b); }

 private:
  void connect() {
    tcp::resolver resolver(ioc_);
    stream_.connect(resolver.resolve(host_, port_));
    stream_.socket().set_option(tcp::no_delay(true));
  }
  void reconnect() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    buf_.clear();
    connect();
  }

  std::string host_, port_, token_;
  net::io_context ioc_;
  beast::tcp_stream stream_{ioc_};
  beast::flat_buffer buf_;
};

// ---------------------------------------------------------------------------------------------
// Runs

enum class Method { Events, Poll };
const char* method_name(Method m) {
  return m == Method::Events ? "events" : "poll";
}

struct Config {
  std::string host = "127.0.0.1", port, token, image;
  Method method = Method::Events;
  int poll_us = 200;
  bool quick = false;
  int chain_depth = 1000;
};
Config g;

struct RunResult {
  double ms = 0;
  std::string op;
  std::string status;
  std::optional<std::string> result_image;
  int exit_code = -1000;
  int64_t image_size = -1;
};

json spawn_body(const std::string& image, const std::string& command, bool shell, bool disposable) {
  return {{"image", image},
          {"command", command},
          {"shell", shell},
          {"disposable", disposable},
          {"timeout", 300}};
}

// The server publishes `completion` (and status SUCCESS on GET /v1/operations/{id}) before it
// has inserted the result image into its database (Engine::finish appends the event, then calls
// finish_operation), so a spawn from a just-returned result image can 404 for a moment. Retry
// such spawns and count them: every retry is a read-your-writes violation clients would hit.
std::atomic<int> g_spawn_404_retries{0};

std::string post_spawn(Client& c, const json& body) {
  const std::string payload = body.dump();
  Resp r = c.post("/v1/instances", payload);
  for (auto t0 = Clock::now(); r.status == 404 &&
                               r.body.find("image not found") != std::string::npos &&
                               ms_since(t0) < 2000;) {
    g_spawn_404_retries.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    r = c.post("/v1/instances", payload);
  }
  if (r.status != 201 && r.status != 202)
    throw std::runtime_error(fmt::format("spawn: HTTP {}: {}", r.status, r.body));
  return json::parse(r.body).at("uuid").get<std::string>();
}

// Parses an SSE body; fills the result from `exit` (spid 1) and `completion`.
bool parse_events(const std::string& text, RunResult& out) {
  bool completed = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find("\n\n", pos);
    if (end == std::string::npos) end = text.size();
    std::string_view frame(text.data() + pos, end - pos);
    pos = end + 2;
    size_t d = frame.find("data:");
    if (d == std::string_view::npos || (d != 0 && frame[d - 1] != '\n')) continue;
    size_t eol = frame.find('\n', d);
    std::string data(frame.substr(d + 5, eol == std::string_view::npos ? eol : eol - d - 5));
    json ev = json::parse(data, nullptr, false);
    if (ev.is_discarded()) continue;
    const std::string type = ev.value("type", "");
    if (type == "exit" && ev.value("spid", 1) == 1) {
      out.exit_code = ev["data"].value("code", -1000);
    } else if (type == "completion") {
      completed = true;
      const json& dd = ev["data"];
      out.status = dd.value("status", "");
      if (dd.contains("result_image_uuid") && dd["result_image_uuid"].is_string())
        out.result_image = dd["result_image_uuid"].get<std::string>();
      out.image_size = dd.value("image_size_bytes", int64_t{-1});
    }
  }
  return completed;
}

bool terminal(const std::string& s) {
  return s == "SUCCESS" || s == "FAILED" || s == "CANCELLED";
}

void wait_completion(Client& c, const std::string& op, Method m, RunResult& out) {
  if (m == Method::Events) {
    const std::string target = "/v1/operations/" + op + "/events?follow=1";
    for (;;) {
      Resp r = c.get(target);
      if (r.status == 425 || r.status == 410) {  // not ready yet / not durable yet
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      if (r.status != 200) throw std::runtime_error(fmt::format("events: HTTP {}", r.status));
      if (parse_events(r.body, out)) return;
      // Stream ended without completion (should not happen with follow=1): fall back to poll.
      break;
    }
  }
  const std::string target = "/v1/operations/" + op;
  for (;;) {
    Resp r = c.get(target);
    if (r.status != 200) throw std::runtime_error(fmt::format("operation: HTTP {}", r.status));
    // Cheap pre-check before parsing the whole document.
    if (r.body.find("\"status\":\"SUCCESS\"") != std::string::npos ||
        r.body.find("\"status\":\"FAILED\"") != std::string::npos ||
        r.body.find("\"status\":\"CANCELLED\"") != std::string::npos) {
      json j = json::parse(r.body);
      out.status = j.value("status", "");
      if (terminal(out.status)) {
        if (j["result_image_uuid"].is_string())
          out.result_image = j["result_image_uuid"].get<std::string>();
        out.image_size = j.value("image_size", int64_t{-1});
        try {
          out.exit_code = j.at("metadata").at("result").at("state").value("exit_code", -1000);
        } catch (...) {
        }
        return;
      }
    }
    if (g.poll_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(g.poll_us));
  }
}

RunResult run(Client& c, const json& body, Method m, bool check = true) {
  RunResult out;
  auto t0 = Clock::now();
  std::string op = post_spawn(c, body);
  out.op = op;
  wait_completion(c, op, m, out);
  out.ms = ms_since(t0);
  if (check && (out.status != "SUCCESS" || (out.exit_code != 0 && out.exit_code != -1000)))
    throw std::runtime_error(
        fmt::format("run {} of {}: status {} exit {}", op, body.dump(), out.status, out.exit_code));
  if (check && !body.value("disposable", true) && !out.result_image)
    throw std::runtime_error("non-disposable run produced no result image: " + op);
  return out;
}
RunResult run(Client& c, const json& body) {
  return run(c, body, g.method);
}

int n(int full, int quick) {
  return g.quick ? quick : full;
}

// ---------------------------------------------------------------------------------------------
// Scenarios

void scenario_a(Client& c, bool compare) {
  std::cout << "\n[a] run /bin/true (shell=false, non-disposable, busybox), sequential\n";
  const json body = spawn_body(g.image, "/bin/true", false, false);
  const int N = n(200, 50);
  for (int i = 0; i < 10; ++i) run(c, body, Method::Events);  // warm-up
  std::map<Method, Stats> by;
  std::vector<Method> methods =
      compare ? std::vector<Method>{Method::Events, Method::Poll} : std::vector<Method>{g.method};
  // Interleave methods so that drift (page cache, flattening, other load) hits both alike.
  std::map<Method, std::vector<double>> lat;
  for (int i = 0; i < N; ++i)
    for (Method m : methods) lat[m].push_back(run(c, body, m).ms);
  for (Method m : methods) {
    by[m] = stats(lat[m]);
    print_stats(fmt::format("true, completion via {}", method_name(m)), by[m]);
  }
  if (compare) {
    g.method = by[Method::Events].p50 <= by[Method::Poll].p50 ? Method::Events : Method::Poll;
    std::cout << fmt::format("  completion detection used from here on: {} (lower p50)\n",
                             method_name(g.method));
  }
  const Stats& s = by[g.method];
  print_target("true p50", s.p50, 10, "ms");
  print_target("true p99", s.p99, 30, "ms");
  result("true_p50", s.p50);
  result("true_p99", s.p99);
  result("true_mean", s.mean);
  if (compare) {
    result("true_events_p50", by[Method::Events].p50);
    result("true_poll_p50", by[Method::Poll].p50);
  }
  // Reference: the same run, disposable.
  std::vector<double> disp;
  const json dbody = spawn_body(g.image, "/bin/true", false, true);
  for (int i = 0; i < n(100, 30); ++i) disp.push_back(run(c, dbody).ms);
  Stats ds = stats(disp);
  print_stats("true, disposable (reference)", ds);
  result("true_disposable_p50", ds.p50);
}

void scenario_b(Client& c) {
  std::cout << "\n[b] snapshot cost: run writing 30 MB in 1,000 files (30 KiB each)\n";
  // printf is an ash builtin: the loop forks nothing, so the run is dominated by the writes.
  const std::string write_cmd =
      "mkdir /w && i=0; while [ $i -lt 1000 ]; do printf '%30720s' '' > /w/f$i; "
      "i=$((i+1)); done";
  const std::string nowrite_cmd = "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); done";
  const json w_nd = spawn_body(g.image, write_cmd, true, false);
  const json w_d = spawn_body(g.image, write_cmd, true, true);
  const json n_nd = spawn_body(g.image, nowrite_cmd, true, false);
  RunResult first = run(c, w_nd);  // warm-up + size check
  std::cout << fmt::format("  (first write run: result image {} bytes reported)\n",
                           first.image_size);
  run(c, w_d);
  std::vector<double> a, b, z, server_snap, server_snap_none;
  // The server's own account of the snapshot step (metadata.timings_ms.snapshot): free of the
  // write workload's noise, which the client-side differences below carry.
  auto server_snapshot_ms = [&](const RunResult& r) {
    Resp resp = c.get("/v1/operations/" + r.op);
    json j = json::parse(resp.body, nullptr, false);
    if (j.is_discarded() || !j.contains("metadata") || !j["metadata"].contains("timings_ms"))
      return -1.0;
    return j["metadata"]["timings_ms"].value("snapshot", -1.0);
  };
  const int N = n(20, 8);
  for (int i = 0; i < N; ++i) {
    // Alternate the order: the writeback of a kept 30 MB layer slows whichever run comes next.
    RunResult rn, rd;
    if (i % 2 == 0) {
      rn = run(c, w_nd);
      rd = run(c, w_d);
    } else {
      rd = run(c, w_d);
      rn = run(c, w_nd);
    }
    a.push_back(rn.ms);
    b.push_back(rd.ms);
    RunResult rz = run(c, n_nd);
    z.push_back(rz.ms);
    server_snap.push_back(server_snapshot_ms(rn));
    server_snap_none.push_back(server_snapshot_ms(rz));
  }
  Stats sa = stats(a), sb = stats(b), sz = stats(z);
  std::vector<double> diff;
  for (size_t i = 0; i < a.size(); ++i) diff.push_back(a[i] - b[i]);
  std::sort(diff.begin(), diff.end());
  const double paired = diff[diff.size() / 2];
  print_stats("write 30MB/1000 files, non-disposable", sa);
  print_stats("write 30MB/1000 files, disposable", sb);
  print_stats("same shell loop without writes, non-disposable", sz);
  double cost_p50 = sa.p50 - sb.p50, cost_mean = sa.mean - sb.mean;
  std::cout << fmt::format(
      "  snapshot cost (non-disposable - disposable): p50 {:.2f} ms, mean "
      "{:.2f} ms\n",
      cost_p50, cost_mean);
  std::cout << fmt::format(
      "  snapshot cost, median of paired (back-to-back) differences: {:.2f} ms\n", paired);
  std::cout << fmt::format("  write run vs no-write run (both non-disposable): p50 +{:.2f} ms\n",
                           sa.p50 - sz.p50);
  std::cout << fmt::format(
      "  paired differences: p25 {:.2f} ms, p75 {:.2f} ms (a spread this wide means "
      "the write workload's noise hides the snapshot cost)\n",
      diff[diff.size() / 4], diff[diff.size() * 3 / 4]);
  Stats ss = stats(server_snap), sn = stats(server_snap_none);
  print_stats("server-side snapshot step, 30 MB/1000 files", ss);
  print_stats("server-side snapshot step, nothing written", sn);
  print_target("snapshot cost, server-side p50 (30 MB - nothing)", ss.p50 - sn.p50, 10, "ms");
  std::cout << fmt::format(
      "    (client-side paired median nd - d: {:.2f} ms, see the spread above)\n", paired);
  result("snap_server_p50", ss.p50);
  result("snap_server_nowrite_p50", sn.p50);
  result("snap_write_nd_p50", sa.p50);
  result("snap_write_d_p50", sb.p50);
  result("snap_nowrite_nd_p50", sz.p50);
  result("snap_cost_p50", cost_p50);
  result("snap_cost_paired", paired);
}

std::string image_depth(Client& c, const std::string& uuid) {
  Resp r = c.get("/v1/inspect/" + uuid + "/");
  for (int i = 0; i < 100 && r.status == 404; ++i) {  // the completion-before-commit race again
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    r = c.get("/v1/inspect/" + uuid + "/");
  }
  if (r.status != 200) return "?";
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.contains("depth")) return "?";
  return j["depth"].dump();
}

void scenario_c(Client& c) {
  const int depth = g.quick ? std::min(g.chain_depth, 200) : g.chain_depth;
  std::cout << fmt::format("\n[c] chain depth: runs changing one file at depth 1 vs {}\n", depth);
  std::string img = g.image, depth1;
  auto t0 = Clock::now();
  std::vector<double> build;
  for (int i = 1; i <= depth; ++i) {
    RunResult r = run(c, spawn_body(img, fmt::format("echo {} > /step", i), true, false));
    build.push_back(r.ms);
    img = *r.result_image;
    if (i == 1) depth1 = img;
  }
  std::string deep = img;
  Stats bs = stats(build);
  std::cout << fmt::format("  built the chain in {:.1f} s (depth {} per server: {}, depth-1: {})\n",
                           ms_since(t0) / 1000, depth, image_depth(c, deep),
                           image_depth(c, depth1));
  print_stats("chain build steps (echo $i > /step)", bs);
  // Let background work (flattening) settle a little before measuring.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const json b1 = spawn_body(depth1, "echo x > /f", true, false);
  const json bd = spawn_body(deep, "echo x > /f", true, false);
  for (int i = 0; i < 3; ++i) run(c, b1), run(c, bd);
  std::vector<double> l1, ld;
  const int N = n(50, 20);
  for (int i = 0; i < N; ++i) {
    l1.push_back(run(c, b1).ms);
    ld.push_back(run(c, bd).ms);
  }
  Stats s1 = stats(l1), sd = stats(ld);
  print_stats("echo x > /f from depth-1 image", s1);
  print_stats(fmt::format("echo x > /f from depth-{} image", depth), sd);
  double ratio = sd.p50 / s1.p50;
  std::cout << fmt::format("    target {:<40} {:9.2f} x   (target <= 1.5 x) {}\n",
                           fmt::format("p50 ratio depth {} / depth 1", depth), ratio,
                           verdict(ratio, 1.5));
  result("chain_d1_p50", s1.p50);
  result("chain_deep_p50", sd.p50);
  result("chain_ratio", ratio);
}

struct FanResult {
  double total_ms;
  std::vector<double> per_branch;
};

FanResult fan_out(std::vector<std::unique_ptr<Client>>& clients, int width, int rep) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point t0;
  std::vector<double> per(width);
  std::vector<std::string> errors(width);
  std::vector<std::thread> ts;
  for (int i = 0; i < width; ++i) {
    ts.emplace_back([&, i] {
      const json body =
          spawn_body(g.image, fmt::format("echo branch-{}-{} > /branch", rep, i), true, false);
      ready.fetch_add(1);
      go.wait(false, std::memory_order_acquire);  // a futex wait: no CPU taken from the server
      try {
        RunResult r = run(*clients[i], body);
        per[i] = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        (void)r;
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  while (ready.load() < width) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let every thread reach its wait
  t0 = Clock::now();
  go.store(true, std::memory_order_release);
  go.notify_all();
  for (auto& t : ts) t.join();
  double total = ms_since(t0);
  for (auto& e : errors)
    if (!e.empty()) throw std::runtime_error("fan-out branch: " + e);
  return {total, per};
}

void scenario_d() {
  std::cout << "\n[d] fan-out: branches started at once from one image (each writes a file)\n";
  for (int width : {8, 64}) {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < width; ++i) {
      clients.push_back(std::make_unique<Client>(g.host, g.port, g.token));
      clients.back()->get("/v1/whoami");  // warm the connection and the token cache
    }
    fan_out(clients, width, -1);  // warm-up
    std::vector<double> totals, per_all;
    const int reps = 5;
    for (int r = 0; r < reps; ++r) {
      FanResult fr = fan_out(clients, width, r);
      totals.push_back(fr.total_ms);
      per_all.insert(per_all.end(), fr.per_branch.begin(), fr.per_branch.end());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Stats ts = stats(totals), ps = stats(per_all);
    print_stats(fmt::format("{} branches: total wall (5 reps)", width), ts);
    print_stats(fmt::format("{} branches: per-branch latency (all reps)", width), ps);
    if (width == 8) print_target("8 branches median total", ts.p50, 50, "ms");
    result(fmt::format("fan{}_total_p50", width), ts.p50);
    result(fmt::format("fan{}_branch_p99", width), ps.p99);
  }
}

void scenario_e(Client& c) {
  std::cout << "\n[e] inspect download of /etc/passwd (small file)\n";
  const std::string target = "/v1/inspect/" + g.image + "/download?path=/etc/passwd";
  for (int i = 0; i < 20; ++i) c.get(target);
  std::vector<double> lat;
  for (int i = 0; i < n(500, 200); ++i) {
    auto t0 = Clock::now();
    Resp r = c.get(target);
    lat.push_back(ms_since(t0));
    if (r.status != 200 || r.body.find("root:") == std::string::npos)
      throw std::runtime_error(fmt::format("download: HTTP {}: {}", r.status, r.body));
  }
  Stats s = stats(lat);
  print_stats("GET /v1/inspect/{uuid}/download?path=/etc/passwd", s);
  print_target("download p50", s.p50, 2, "ms");
  result("download_p50", s.p50);
  result("download_p99", s.p99);
}

// ---------------------------------------------------------------------------------------------
// Server management

std::string run_capture(const std::string& cmd) {
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) throw std::runtime_error("popen: " + cmd);
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, k);
  int rc = ::pclose(f);
  if (rc != 0) throw std::runtime_error(fmt::format("`{}` failed (status {})", cmd, rc));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

struct Server {
  pid_t pid = -1;
  int out_fd = -1;
  std::string data_dir;
  bool keep = false;

  void start(const std::string& bin) {
    char tmpl[] = "/var/tmp/coppice-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    data_dir = tmpl;
    ::chmod(data_dir.c_str(), 0755);
    const std::string log = data_dir + "/admin.log";
    std::string img = run_capture(
        fmt::format("'{}' image bootstrap busybox --data-dir '{}' 2>>'{}'", bin, data_dir, log));
    g.token = run_capture(fmt::format("'{}' token create --project bench --data-dir '{}' 2>>'{}'",
                                      bin, data_dir, log));
    (void)img;
    int p[2];
    if (::pipe(p) != 0) throw std::runtime_error("pipe");
    pid = ::fork();
    if (pid == 0) {
      ::dup2(p[1], 1);
      int e = ::open((data_dir + "/server.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (e >= 0) ::dup2(e, 2);
      ::close(p[0]);
      ::close(p[1]);
      const char* argv[] = {bin.c_str(),   "serve",      "--listen",
                            "127.0.0.1:0", "--data-dir", data_dir.c_str(),
                            "--log-level", "warn",       nullptr};
      ::execv(bin.c_str(), const_cast<char* const*>(argv));
      _exit(127);
    }
    ::close(p[1]);
    out_fd = p[0];
    std::string line;
    char ch;
    while (::read(out_fd, &ch, 1) == 1 && ch != '\n') line += ch;
    const std::string prefix = "listening on port ";
    if (line.rfind(prefix, 0) != 0)
      throw std::runtime_error("server did not start: '" + line + "' (see " + data_dir +
                               "/server.log)");
    g.port = line.substr(prefix.size());
    std::cout << fmt::format("started {} on port {} (data dir {})\n", bin, g.port, data_dir);
  }

  void stop() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      int st;
      ::waitpid(pid, &st, 0);
      pid = -1;
    }
    if (out_fd >= 0) ::close(out_fd), out_fd = -1;
    if (!data_dir.empty() && !keep) {
      std::string cmd = "rm -rf '" + data_dir + "'";
      if (std::system(cmd.c_str()) != 0) std::cerr << "could not remove " << data_dir << "\n";
    }
  }
  ~Server() { stop(); }
};

std::string loadavg() {
  FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return "?";
  char buf[128] = {};
  if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
  std::fclose(f);
  std::string s(buf);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

Server* g_server = nullptr;
void on_signal(int) {
  if (g_server && g_server->pid > 0) ::kill(g_server->pid, SIGTERM);
  _exit(130);
}

}  // namespace

int main(int argc, char** argv) {
  std::string bin, url, only = "abcde";
  bool keep = false;
  std::optional<Method> forced;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("missing value for " + a);
      return argv[++i];
    };
    if (a == "--coppiced")
      bin = next();
    else if (a == "--url")
      url = next();
    else if (a == "--token")
      g.token = next();
    else if (a == "--only")
      only = next();
    else if (a == "--quick")
      g.quick = true;
    else if (a == "--keep-data")
      keep = true;
    else if (a == "--chain-depth")
      g.chain_depth = std::stoi(next());
    else if (a == "--poll-us")
      g.poll_us = std::stoi(next());
    else if (a == "--method")
      forced = next() == "poll" ? Method::Poll : Method::Events;
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: api_bench [--coppiced PATH | --url http://H:P --token T] [--only abcde]"
                   " [--quick] [--chain-depth N] [--poll-us N] [--method events|poll]"
                   " [--keep-data]\n";
      return 0;
    } else if (a.rfind("--", 0) != 0 && bin.empty())
      bin = a;
    else {
      std::cerr << "unknown argument " << a << "\n";
      return 2;
    }
  }
  if (forced) g.method = *forced;
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);

  Server server;
  server.keep = keep;
  try {
    if (url.empty()) {
      if (bin.empty()) {
        const char* env = std::getenv("COPPICED");
        bin = env ? env : "./build/coppiced";
      }
      g_server = &server;
      server.start(bin);
    } else {
      std::string u = url;
      if (u.rfind("http://", 0) == 0) u = u.substr(7);
      while (!u.empty() && u.back() == '/') u.pop_back();
      size_t colon = u.rfind(':');
      if (colon == std::string::npos) throw std::runtime_error("--url needs a port");
      g.host = u.substr(0, colon);
      g.port = u.substr(colon + 1);
      if (g.token.empty()) throw std::runtime_error("--url needs --token");
    }
    Client c(g.host, g.port, g.token);
    Resp r = c.get("/v1/images?tag=busybox:latest");
    if (r.status != 200)
      throw std::runtime_error(fmt::format("images: HTTP {}: {}", r.status, r.body));
    json imgs = json::parse(r.body).at("images");
    for (const auto& im : imgs)
      if (im.value("tag", json()).is_string() && im["tag"] == "busybox:latest")
        g.image = im["uuid"].get<std::string>();
    if (g.image.empty()) throw std::runtime_error("no busybox:latest image on the server");
    std::cout << fmt::format("busybox:latest = {}; {} iterations; client: Beast sync keep-alive\n",
                             g.image, g.quick ? "quick" : "full");

    std::cout << "load average at start: " << loadavg() << " ("
              << std::thread::hardware_concurrency() << " CPUs)\n";
    auto t0 = Clock::now();
    if (only.find('a') != std::string::npos) scenario_a(c, !forced.has_value());
    std::cout << fmt::format("completion detection: {}{}\n", method_name(g.method),
                             g.method == Method::Poll
                                 ? fmt::format(" (poll every {} us)", g.poll_us)
                                 : " (GET .../events?follow=1)");
    if (only.find('b') != std::string::npos) scenario_b(c);
    if (only.find('c') != std::string::npos) scenario_c(c);
    if (only.find('d') != std::string::npos) scenario_d();
    if (only.find('e') != std::string::npos) scenario_e(c);
    std::cout << fmt::format("\nspawns retried after a 404 for a just-completed result image: {}\n",
                             g_spawn_404_retries.load());
    result("spawn_404_retries", g_spawn_404_retries.load());
    std::cout << "load average at end: " << loadavg() << "\n";
    std::cout << fmt::format("api_bench finished in {:.1f} s\n", ms_since(t0) / 1000);
  } catch (const std::exception& e) {
    std::cerr << "api_bench: " << e.what() << "\n";
    if (!server.data_dir.empty()) {
      std::string tail = "tail -n 20 '" + server.data_dir + "/server.log' >&2";
      if (std::system(tail.c_str()) != 0) std::cerr << "(no server log)\n";
    }
    if (!server.data_dir.empty())
      std::cerr << "(server log: " << server.data_dir << "/server.log"
                << (keep ? "" : ", removed on exit; use --keep-data to keep it") << ")\n";
    return 1;
  }
  return 0;
}
