// Drives `coppice mcp` with the official MCP TypeScript SDK, as an agent would.
//   node scenario.mjs stdio  COPPICE_BIN            (env: COPPICE_URL, COPPICE_TOKEN, COPPICE_HOME)
//   node scenario.mjs http   http://127.0.0.1:PORT/mcp   (env MCP_TOKEN: the bearer secret)
// env MCP_FILE_ROOT: the server's --file-root (stdio: passed to it; http: it was started so);
// the local files of the scenario are made under it.
// Optional env REGISTRY_REF, REGISTRY_USER, REGISTRY_PASSWORD: a private image to import.
// Prints one line per check; exits non-zero on the first failure.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Ajv from "ajv";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";

const [mode, target] = process.argv.slice(2);
const fileRoot = process.env.MCP_FILE_ROOT;
assert.ok(fileRoot, "MCP_FILE_ROOT is required");
const EXPECTED_TOOLS = ["run", "rsync", "upload", "download", "import_image", "registry_auth",
  "list_images", "get_image", "set_tag", "list_files", "read_file", "get_operation",
  "list_operations", "wait_operations", "cancel_operation", "get_guide", "whoami", "grep"];

function ok(what) { console.log(`ok ${what}`); }

async function call(client, name, args, options) {
  return client.callTool({ name, arguments: args }, undefined, options);
}
async function tool(client, name, args, options) {
  const r = await call(client, name, args, options);
  assert.equal(r.isError, false, `${name} failed: ${JSON.stringify(r.content)}`);
  assert.ok(r.structuredContent, `${name}: no structuredContent`);
  assert.equal(r.content[0].type, "text");
  return r.structuredContent;
}
async function toolError(client, name, args, mention) {
  const r = await call(client, name, args);
  assert.equal(r.isError, true, `${name} should fail: ${JSON.stringify(r)}`);
  const text = r.content.map((c) => c.text).join("\n");
  if (mention) assert.match(text, mention, `${name} error should mention ${mention}`);
  return text;
}

const client = new Client({ name: "coppice-scenario", version: "1.0.0" });
let transport;
if (mode === "stdio") {
  transport = new StdioClientTransport({ command: target, args: ["mcp", "--file-root", fileRoot], env: process.env, stderr: "inherit" });
} else {
  assert.ok(process.env.MCP_TOKEN, "MCP_TOKEN is required over http");
  // Without the bearer secret the server answers 401 and the SDK cannot connect.
  const bare = new Client({ name: "coppice-scenario-no-token", version: "1.0.0" });
  await assert.rejects(bare.connect(new StreamableHTTPClientTransport(new URL(target))), (e) => e.code === 401);
  transport = new StreamableHTTPClientTransport(new URL(target), {
    requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_TOKEN}` } },
  });
}
await client.connect(transport);
assert.equal(client.getServerVersion().name, "coppice");
if (mode === "http") assert.ok(transport.sessionId, "no Mcp-Session-Id");
assert.ok(client.getInstructions().length > 50);
ok(`initialize (${mode}, server ${client.getServerVersion().version}, protocol ${transport.protocolVersion ?? LATEST_PROTOCOL_VERSION})`);

// Tools: all of contract §7, each with a valid JSON schema and a real description.
const { tools } = await client.listTools();
const names = tools.map((t) => t.name);
for (const n of EXPECTED_TOOLS) assert.ok(names.includes(n), `missing tool ${n}`);
const ajv = new Ajv({ strict: false });
for (const t of tools) {
  assert.ok(ajv.validateSchema(t.inputSchema), `${t.name}: invalid schema ${JSON.stringify(ajv.errors)}`);
  ajv.compile(t.inputSchema);
  assert.equal(t.inputSchema.type, "object");
  assert.ok(t.description.length >= 60, `${t.name}: description too short`);
  for (const [p, s] of Object.entries(t.inputSchema.properties ?? {}))
    assert.ok(s.description, `${t.name}.${p} has no description`);
}
ok(`tools/list: ${tools.length} tools, schemas valid`);

const { resources } = await client.listResources();
assert.ok(resources.some((r) => r.uri === "coppice://guide/workflow"));
const { resourceTemplates } = await client.listResourceTemplates();
for (const u of ["coppice://image/{image}/read/{path}", "coppice://image/{image}/ls/{path}",
  "coppice://image/{image}/lineage", "coppice://operations/instance/{operation_id}",
  "coppice://operations/import/{operation_id}"])
  assert.ok(resourceTemplates.some((t) => t.uriTemplate === u), `missing template ${u}`);
const { prompts } = await client.listPrompts();
for (const p of ["prepare-environment", "run-python", "run-shell", "sync-and-run", "install-packages",
  "parallel-tasks", "build-project", "debug-failure", "inspect-image", "multi-stage-build"])
  assert.ok(prompts.some((x) => x.name === p), `missing prompt ${p}`);
const prompt = await client.getPrompt({ name: "run-shell", arguments: { command: "uname -a" } });
assert.match(prompt.messages[0].content.text, /uname -a/);
await assert.rejects(client.getPrompt({ name: "no-such-prompt", arguments: {} }));
const guide = await client.readResource({ uri: "coppice://guide/state" });
assert.match(guide.contents[0].text, /immutable/);
ok("resources, templates, prompts");

const me = await tool(client, "whoami", {});
assert.ok(me.server_url);
assert.equal(me.file_root, fs.realpathSync(fileRoot));
const g = await tool(client, "get_guide", { section: "quickstart" });
assert.match(g.content, /Quickstart/);
const imgs = await tool(client, "list_images", { tagged: true });
assert.ok(imgs.images.some((i) => i.tag === "busybox:latest"), JSON.stringify(imgs));
ok("whoami, get_guide, list_images");

// An agent's scenario: set up a state, branch twice, compare, read, roll back.
const base = await tool(client, "run", { image: "busybox:latest", command: "mkdir -p /work && echo base > /work/state", disposable: false });
assert.equal(base.exit_code, 0);
assert.ok(base.result_image, "non-disposable run kept no image");
const A = base.result_image;
const started = await Promise.all(["one", "two"].map((n) =>
  tool(client, "run", { image: A, command: `echo ${n} >> /work/state && cat /work/state`, disposable: false, wait: false })));
const ids = started.map((s) => s.operation_id);
const waited = await tool(client, "wait_operations", { operation_ids: ids, timeout: 60 });
assert.deepEqual(waited.completed.sort(), [...ids].sort());
const [r1, r2] = ids.map((id) => waited.results[id]);
assert.equal(r1.stdout, "base\none\n");
assert.equal(r2.stdout, "base\ntwo\n");
assert.notEqual(r1.result_image, r2.result_image);
const op1 = await tool(client, "get_operation", { operation_id: ids[0] });
assert.equal(op1.state, "SUCCESS");
assert.equal(op1.result_image, r1.result_image);
const f1 = await tool(client, "read_file", { image: r1.result_image, path: "/work/state" });
assert.equal(f1.content, "base\none\n");
const f0 = await tool(client, "read_file", { image: A, path: "/work/state" });
assert.equal(f0.content, "base\n", "the parent image changed");
const viaResource = await client.readResource({ uri: `coppice://image/${r2.result_image}/read/work/state` });
assert.equal(viaResource.contents[0].text, "base\ntwo\n");
const ls = await client.readResource({ uri: `coppice://image/${A}/ls/work` });
assert.match(ls.contents[0].text, /state/);
const lineage = JSON.parse((await client.readResource({ uri: `coppice://image/${r1.result_image}/lineage` })).contents[0].text);
assert.deepEqual(lineage.ancestors.slice(0, 2).map((x) => x.uuid), [r1.result_image, A]);
const opRes = JSON.parse((await client.readResource({ uri: `coppice://operations/instance/${ids[1]}` })).contents[0].text);
assert.equal(opRes.stdout, "base\ntwo\n");
// Roll back: continue from A again, the branches do not leak into it.
const again = await tool(client, "run", { image: A, command: "cat /work/state" });
assert.equal(again.stdout, "base\n");
assert.equal(again.result_image ?? null, null);
ok("run, branch twice, wait_operations, compare, read_file, resources, roll back");

const listing = await tool(client, "list_files", { image: r1.result_image, path: "/work" });
assert.deepEqual(listing.files.map((f) => f.name), ["state"]);
assert.equal(listing.files[0].type, "file");
const found = await tool(client, "grep", { image: r2.result_image, pattern: "tw.", path: "/work" });
assert.equal(found.count, 1);
assert.equal(found.matches[0].path, "/work/state");
const dest = fs.mkdtempSync(path.join(fileRoot, "coppice-mcp-"));
const dl = await tool(client, "download", { image: r1.result_image, path: "/work/state", destination: path.join(dest, "state.txt"), executable: true });
assert.equal(fs.readFileSync(dl.destination, "utf8"), "base\none\n");
assert.ok(fs.statSync(dl.destination).mode & 0o100);
const dlRel = await tool(client, "download", { image: r1.result_image, path: "/work/state", destination: path.relative(fileRoot, dest) + "/new/" });
assert.equal(dlRel.destination, path.join(fs.realpathSync(dest), "new", "state"));
assert.equal(fs.statSync(dlRel.destination).mode & 0o777, 0o644 & ~process.umask());
ok("list_files, grep, download");

// Files: upload once, inject; rsync a directory, then only what changed.
const up = await tool(client, "upload", { content: "hello file\n" });
const up2 = await tool(client, "upload", { content: "hello file\n" });
assert.equal(up.uuid, up2.uuid);
const withFile = await tool(client, "run", { image: "busybox:latest", command: "cat /in/hello.txt; stat -c %a /in/hello.txt",
  files: { "/in/hello.txt": { uuid: up.uuid, mode: "0600" } } });
assert.equal(withFile.stdout, "hello file\n600\n");
const src = fs.mkdtempSync(path.join(fileRoot, "coppice-mcp-src-"));
fs.mkdirSync(path.join(src, "pkg"));
fs.mkdirSync(path.join(src, ".git"));
fs.writeFileSync(path.join(src, "main.sh"), "echo main\n", { mode: 0o755 });
fs.writeFileSync(path.join(src, "pkg", "lib.txt"), "lib v1\n");
fs.writeFileSync(path.join(src, ".git", "HEAD"), "ref\n");
const s1 = await tool(client, "rsync", { source: src, destination: "/src", exclude: [".git"] });
assert.equal(s1.files, 2);
assert.equal(s1.uploaded, 2);
const synced = await tool(client, "run", { image: "busybox:latest", command: "/src/main.sh && cat /src/pkg/lib.txt && ls -a /src", directory_state_id: s1.directory_state_id });
assert.equal(synced.stdout, "main\nlib v1\n.\n..\nmain.sh\npkg\n");
const s2 = await tool(client, "rsync", { source: src, destination: "/src", exclude: [".git"] });
assert.equal(s2.uploaded, 0);
assert.equal(s2.unchanged, 2);
fs.writeFileSync(path.join(src, "pkg", "lib.txt"), "lib v2, longer\n");
const s3 = await tool(client, "rsync", { source: src, destination: "/src", exclude: [".git"] });
assert.equal(s3.uploaded, 1);
const synced3 = await tool(client, "run", { image: "busybox:latest", command: "cat /src/pkg/lib.txt", directory_state_id: s3.directory_state_id });
assert.equal(synced3.stdout, "lib v2, longer\n");
ok("upload (deduplicated), files with mode, rsync (only changes re-sent)");

// Tags.
const tag = `mcp-test/best-${mode}:v1`;
const tagged = await tool(client, "set_tag", { image_uuid: r1.result_image, tag });
assert.equal(tagged.tag, tag);
const byTag = await tool(client, "get_image", { image: tag });
assert.equal(byTag.uuid, r1.result_image);
const fromTag = await tool(client, "run", { image: `tag:${tag}`, command: "cat /work/state" });
assert.equal(fromTag.stdout, "base\none\n");
const untagged = await tool(client, "set_tag", { image_uuid: r1.result_image });
assert.equal(untagged.tag ?? null, null);
ok("set_tag, get_image by tag, run from tag, untag");

// Output caps, exit codes, timeouts.
const big = await tool(client, "run", { image: "busybox:latest", command: "yes abcdefghij | head -c 50000; exit 3", truncate_output_at: 1000 });
assert.equal(big.exit_code, 3);
assert.ok(big.stdout.length <= 1000);
assert.ok(big.notes && big.notes.length > 0, "truncated output must say how to read the rest");
const slow = await tool(client, "run", { image: "busybox:latest", command: "sleep 20", timeout: 1 });
assert.equal(slow.timed_out, true);
ok("exit codes, output cap with a note, timeout");

// Progress notifications on a long run.
const progress = [];
const long = await tool(client, "run", { image: "busybox:latest", command: "for i in 1 2 3; do echo $i; sleep 1; done" },
  { onprogress: (p) => progress.push(p) });
assert.equal(long.stdout, "1\n2\n3\n");
assert.ok(progress.length >= 1, "no progress notification");
for (let i = 1; i < progress.length; i++) assert.ok(progress[i].progress > progress[i - 1].progress);
ok(`progress notifications (${progress.length})`);

// Cancellation from the client cancels the operation.
const ac = new AbortController();
const pending = call(client, "run", { image: "busybox:latest", command: "sleep 30; echo never", timeout: 60 }, { signal: ac.signal });
await new Promise((r) => setTimeout(r, 1500));
ac.abort("test cancels");
await assert.rejects(pending);
let cancelledSeen = false;
for (let i = 0; i < 50 && !cancelledSeen; i++) {
  const ops = await tool(client, "list_operations", { type: "instance", limit: 5 });
  cancelledSeen = ops.operations.some((o) => o.state === "CANCELLED");
  if (!cancelledSeen) await new Promise((r) => setTimeout(r, 100));
}
assert.ok(cancelledSeen, "the cancelled run's operation was not cancelled");
// Explicit cancel_operation of a detached run.
const bg = await tool(client, "run", { image: "busybox:latest", command: "sleep 30", wait: false });
const c = await tool(client, "cancel_operation", { operation_id: bg.operation_id });
assert.equal(c.cancelled, true);
const bgState = await tool(client, "wait_operations", { operation_ids: [bg.operation_id], timeout: 20 });
assert.equal(bgState.results[bg.operation_id].state, "CANCELLED");
ok("client cancellation cancels the run; cancel_operation");

// Bad inputs are tool errors the model can act on, never protocol failures.
await toolError(client, "run", { image: "no-such-image:v9", command: "true" }, /list_images|import_image/);
await toolError(client, "run", { image: "busybox:latest" }, /command/);
await toolError(client, "run", { image: "busybox:latest", command: "true", timeout: "soon" }, /timeout/);
await toolError(client, "read_file", { image: A, path: "/work/missing" }, /list_files/);
await toolError(client, "read_file", { image: A, path: "/work" }, /directory|list_files/);
await toolError(client, "list_files", { image: A, path: "/nope/deeper" }, /does not exist/);
await toolError(client, "get_operation", { operation_id: "00000000-0000-4000-8000-000000000000" }, /list_operations/);
await toolError(client, "run", { image: "busybox:latest", command: "true", directory_state_id: 999999 }, /rsync/);
await toolError(client, "run", { image: "busybox:latest", command: "true", cwd: "/does/not/exist" });
// Local files: only under the file root, never through a symlink.
const outside = fs.mkdtempSync(path.join(os.tmpdir(), "coppice-mcp-outside-"));
fs.writeFileSync(path.join(outside, "secret"), "outside secret\n");
fs.symlinkSync(path.join(outside, "secret"), path.join(dest, "to-secret"));
fs.symlinkSync(outside, path.join(dest, "to-outside"));
await toolError(client, "download", { image: A, path: "/work/state", destination: path.join(outside, "x") }, /outside the file root/);
await toolError(client, "download", { image: A, path: "/work/state", destination: path.join(dest, "to-secret") }, /symlink/);
await toolError(client, "download", { image: A, path: "/work/state", destination: path.join(dest, "to-outside", "x") }, /symlink/);
await toolError(client, "download", { image: A, path: "/work/state", destination: path.join(dest, "..", "..", "..", "..", "..", "..", "x") }, /outside the file root|\.\./);
await toolError(client, "upload", { path: path.join(outside, "secret") }, /outside the file root/);
await toolError(client, "upload", { path: path.join(dest, "to-secret") }, /symlink/);
await toolError(client, "upload", { path: path.join(dest, "to-outside", "secret") }, /symlink/);
await toolError(client, "rsync", { source: path.join(dest, "to-outside"), destination: "/src" }, /symlink/);
await toolError(client, "rsync", { source: "/definitely/not/here", destination: "/src" }, /outside the file root/);
await toolError(client, "rsync", { source: path.join(fileRoot, "definitely-not-here"), destination: "/src" }, /not a local directory/);
assert.equal(fs.readFileSync(path.join(outside, "secret"), "utf8"), "outside secret\n");
assert.deepEqual(fs.readdirSync(outside), ["secret"]);
fs.rmSync(outside, { recursive: true });
await toolError(client, "rsync", { source: src, destination: "/src/../../etc" }, /\.\./);
await toolError(client, "import_image", { registry_url: "docker://127.0.0.1:1/x:1" }, /registry_auth|anonymous/);
await toolError(client, "get_guide", { section: "nonsense" }, /one of/);
await assert.rejects(call(client, "no_such_tool", {}), /no_such_tool|unknown tool/i);
await assert.rejects(client.readResource({ uri: `coppice://image/${A}/read/work/missing` }));
ok("bad inputs -> tool errors");

// A private registry: credentials checked and stored, then used by import_image.
if (process.env.REGISTRY_REF) {
  const reg = process.env.REGISTRY_REF;
  await toolError(client, "registry_auth", { registry_url: reg, username: process.env.REGISTRY_USER, token: "wrong" }, /refused/);
  await tool(client, "registry_auth", { registry_url: reg, username: process.env.REGISTRY_USER, token: process.env.REGISTRY_PASSWORD });
  const progressImport = [];
  const imp = await tool(client, "import_image", { registry_url: reg, tag: `mcp-import-${mode}:1` }, { onprogress: (p) => progressImport.push(p) });
  assert.equal(imp.state, "SUCCESS", JSON.stringify(imp));
  assert.ok(imp.result_image);
  const impOp = await client.readResource({ uri: `coppice://operations/import/${imp.operation_id}` });
  assert.match(impOp.contents[0].text, /STATE: SUCCESS/);
  const onIt = await tool(client, "run", { image: `mcp-import-${mode}:1`, command: "ls /" });
  assert.equal(onIt.exit_code, 0);
  ok("registry_auth (wrong and right), import_image, run on the import");
}

await client.close();
ok("closed");
