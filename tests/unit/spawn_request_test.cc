#include "engine/spawn_request.h"

#include <gtest/gtest.h>

#include "api/exchange.h"
#include "api/gzip.h"
#include "common/error.h"

namespace coppice::engine {
namespace {

using json = nlohmann::json;

TEST(SpawnRequest, DefaultsAndEcho) {
  auto r = parse_spawn_request({{"command", "echo hi"}, {"image", "tag:x"}, {"shell", true}}, {});
  EXPECT_EQ(r.argv(), (std::vector<std::string>{"/bin/sh", "-c", "echo hi"}));
  EXPECT_FALSE(r.disposable);
  EXPECT_EQ(r.truncate_output_at, 1 << 20);
  json j = r.to_json();
  for (const char* k : {"command", "image", "args", "shell", "env", "preserve_env", "cwd", "uid",
                        "gid", "hostname", "disposable", "timeout", "truncate_output_at", "stdin",
                        "files", "resources_limits", "networking"})
    EXPECT_TRUE(j.contains(k)) << k;
}

TEST(SpawnRequest, NullIsAbsent) {
  auto r = parse_spawn_request({{"command", "ls"},
                                {"image", "u"},
                                {"env", nullptr},
                                {"args", nullptr},
                                {"cwd", nullptr},
                                {"timeout", nullptr},
                                {"stdin", nullptr},
                                {"files", nullptr}},
                               {});
  EXPECT_TRUE(r.env.empty());
  EXPECT_EQ(r.timeout_s, 300);
}

TEST(SpawnRequest, FileModesInEveryClientForm) {
  EXPECT_EQ(parse_mode("0644"), 0644u);
  EXPECT_EQ(parse_mode("0o755"), 0755u);
  EXPECT_EQ(parse_mode("644"), 0644u);
  EXPECT_EQ(parse_mode(420), 0644u);
  EXPECT_THROW(parse_mode("0999"), Error);
  EXPECT_THROW(parse_mode("rwx"), Error);
  EXPECT_THROW(parse_mode(070000), Error);
}

TEST(SpawnRequest, RejectsBadInput) {
  auto bad = [](json j) {
    try {
      parse_spawn_request(j, {});
    } catch (const Error& e) {
      return e.status();
    }
    return 0;
  };
  EXPECT_EQ(bad({{"image", "x"}}), 400);
  EXPECT_EQ(bad({{"command", "x"}}), 400);
  EXPECT_EQ(bad({{"command", 3}, {"image", "x"}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"timeout", 0}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"timeout", 999999}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"uid", -1}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"cwd", "rel"}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"cwd", "/a/../b"}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"hostname", "a b"}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"env", {{"A=B", "1"}}}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"files", {{"/f", {{"mode", "0644"}}}}}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"files", {{"/", {{"uuid", "u"}}}}}}), 400);
  EXPECT_EQ(
      bad({{"command", "x"}, {"image", "x"}, {"files", {{"/proc/self/fd/4", {{"uuid", "u"}}}}}}),
      400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"shell", true}, {"args", {"a"}}}), 400);
  EXPECT_EQ(bad({{"command", "x"}, {"image", "x"}, {"networking", {{"enabled", true}}}}), 400);
  EXPECT_EQ(
      bad({{"command", "x"}, {"image", "x"}, {"stdin", {{"value", "!!"}, {"encoding", "base64"}}}}),
      400);
}

TEST(SpawnRequest, ResourceAsksOverTheServerCapsAreRefusedByName) {
  SpawnLimits caps;
  caps.max_memory_bytes = 256 << 20;
  caps.max_pids = 64;
  caps.max_cpus = 2;
  caps.max_timeout_s = 60;
  auto with = [](json rl) {
    return json{{"command", "true"}, {"image", "u"}, {"resources_limits", std::move(rl)}};
  };
  auto message = [&](const json& body) {
    try {
      parse_spawn_request(body, caps);
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), 400);
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  auto r =
      parse_spawn_request(with({{"memory_bytes", 256 << 20}, {"pids", 64}, {"cpus", 2}}), caps);
  EXPECT_EQ(r.memory_bytes, 256 << 20);
  EXPECT_EQ(r.pids, 64);
  EXPECT_EQ(r.cpus, 2);
  EXPECT_NE(
      message(with({{"memory_bytes", (256 << 20) + 1}}))
          .find("over this server's cap of 268435456 (whoami limits.instance_max_memory_bytes)"),
      std::string::npos);
  EXPECT_NE(message(with({{"pids", 65}})).find("limits.instance_max_pids"), std::string::npos);
  EXPECT_NE(message(with({{"cpus", 2.5}})).find("limits.instance_max_cpus"), std::string::npos);
  EXPECT_NE(message(with({{"memory_bytes", 1024}})).find("at least 4194304"), std::string::npos);
  EXPECT_NE(message({{"command", "true"}, {"image", "u"}, {"timeout", 61}})
                .find("limits.instance_max_timeout"),
            std::string::npos);
  // The defaults are sane for a shared machine: 8 GiB and 4096 pids at most.
  EXPECT_EQ(SpawnLimits{}.max_memory_bytes, 8ll << 30);
  EXPECT_EQ(SpawnLimits{}.max_pids, 4096);
  EXPECT_THROW(parse_spawn_request(with({{"memory_bytes", 64ll << 30}}), SpawnLimits{}), Error);
  EXPECT_THROW(parse_spawn_request(with({{"pids", 65536}}), SpawnLimits{}), Error);
}

// Found by fuzz/spawn_request_fuzz.cc: a float too large for int64 was cast before the range
// check (undefined behaviour; UBSan aborts), and NUL bytes reached execve's C strings.
TEST(SpawnRequest, RejectsHugeFloatsAndNulBytes) {
  auto bad = [](json j) {
    try {
      parse_spawn_request(j, {});
    } catch (const Error& e) {
      return e.status();
    }
    return 0;
  };
  json base = {{"command", "x"}, {"image", "x"}};
  for (const char* f : {"uid", "gid", "timeout", "truncate_output_at"})
    for (double v : {1e300, -1e300, 9223372036854775808.0, 1.5}) {
      json j = base;
      j[f] = v;
      EXPECT_EQ(bad(j), 400) << f << "=" << v;
    }
  json rl = base;
  rl["resources_limits"] = {{"max_layer_bytes", 1e19}};
  EXPECT_EQ(bad(rl), 400);
  json ok = base;
  ok["timeout"] = 30.0;
  EXPECT_EQ(parse_spawn_request(ok, {}).timeout_s, 30);

  json args = base;
  args["args"] = {std::string("a\0b", 3)};
  EXPECT_EQ(bad(args), 400);
  json env = base;
  env["env"] = {{"A", std::string("a\0b", 3)}};
  EXPECT_EQ(bad(env), 400);
}

TEST(SpawnRequest, StdinBase64AndPathNormalization) {
  auto r = parse_spawn_request({{"command", "cat"},
                                {"image", "x"},
                                {"stdin", {{"value", "aGkK"}, {"encoding", "base64"}}},
                                {"files", {{"//opt///a", {{"uuid", "u"}, {"mode", "0o700"}}}}}},
                               {});
  EXPECT_EQ(r.stdin_data, "hi\n");
  ASSERT_EQ(r.files.count("/opt/a"), 1u);
  EXPECT_EQ(r.files["/opt/a"].mode, 0700u);
}

}  // namespace
}  // namespace coppice::engine

namespace coppice::api {
namespace {

TEST(Query, RepeatedKeysAndDecoding) {
  auto q = Query::parse("pattern=a&pattern=b%20c&path=/etc/hosts&text=&flag");
  EXPECT_EQ(q.all("pattern"), (std::vector<std::string>{"a", "b c"}));
  EXPECT_EQ(q.get("path"), "/etc/hosts");
  EXPECT_TRUE(q.has("text"));
  EXPECT_TRUE(q.has("flag"));
  EXPECT_FALSE(q.get("none"));
}

TEST(Gzip, AcceptEncodingParsing) {
  EXPECT_TRUE(accepts_gzip("gzip, deflate"));
  EXPECT_TRUE(accepts_gzip("br;q=1.0, gzip;q=0.5"));
  EXPECT_FALSE(accepts_gzip("identity"));
  EXPECT_FALSE(accepts_gzip("gzip;q=0"));
  EXPECT_FALSE(accepts_gzip(""));
}

TEST(Gzip, StreamChunksDecodeIndependently) {
  GzipStream g;
  std::string a = g.chunk("hello ");
  std::string b = g.chunk("world");
  std::string end = g.finish();
  EXPECT_EQ(static_cast<unsigned char>(a[0]), 0x1f);
  // inflate a + b without the trailer: sync flush makes the prefix decodable
  z_stream zs{};
  ASSERT_EQ(inflateInit2(&zs, 31), Z_OK);
  std::string in = a + b, out(64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  inflate(&zs, Z_SYNC_FLUSH);
  out.resize(out.size() - zs.avail_out);
  inflateEnd(&zs);
  EXPECT_EQ(out, "hello world");
}

TEST(Gzip, SmallWindowStreamDecodesFrameByFrame) {
  // The event-stream variant (4 KiB window): every frame decodes as soon as it arrives, also
  // past the window's size.
  GzipStream g(12, 5);
  z_stream zs{};
  ASSERT_EQ(inflateInit2(&zs, 31), Z_OK);
  std::string want, got;
  for (int i = 0; i < 200; ++i) {
    std::string frame = "id: " + std::to_string(i) + "\nevent: stdout\ndata: {\"value\":\"" +
                        std::string(static_cast<size_t>(i % 50), 'x') + "\"}\n\n";
    want += frame;
    std::string z = g.chunk(frame), out(64 << 10, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(z.data());
    zs.avail_in = static_cast<uInt>(z.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    ASSERT_NE(inflate(&zs, Z_SYNC_FLUSH), Z_STREAM_ERROR);
    out.resize(out.size() - zs.avail_out);
    EXPECT_EQ(out, frame);
    got += out;
  }
  inflateEnd(&zs);
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace coppice::api
