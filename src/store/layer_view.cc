// The merged view of overlayfs layers, computed in user space.
//
// Security: the layers were written by sandboxed (hostile) code. Every path is resolved here,
// component by component, with lstat-style lookups in the layers; symlinks are interpreted
// against the image root by this code, never by the host kernel. A host path is only ever
// built from a layer directory plus components that were verified to be real directories in
// that same layer, and files are opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
// from the layer directory as a second line of defence.
#include "store/layer_view.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <utility>

#include "common/error.h"

namespace coppice::store {

namespace {

constexpr int kMaxSymlinkHops = 40;

bool is_whiteout(const struct stat& st) {
  return S_ISCHR(st.st_mode) && major(st.st_rdev) == 0 && minor(st.st_rdev) == 0;
}

bool is_opaque(const std::string& host_dir) {
  char buf[8];
  ssize_t n = ::lgetxattr(host_dir.c_str(), "user.overlay.opaque", buf, sizeof buf);
  return n == 1 && buf[0] == 'y';
}

std::string join_path(const std::string& parent, std::string_view name) {
  std::string p = parent;
  if (p.size() != 1) p += '/';
  p += name;
  return p;
}

// Splits on '/', keeping empty components (except a leading one) so that a trailing slash
// leaves an empty last component: "a/b/" -> {"a", "b", ""}. A component followed by anything
// must be a directory, which gives POSIX trailing-slash semantics.
std::vector<std::string> split_components(std::string_view p) {
  std::vector<std::string> out;
  if (!p.empty() && p.front() == '/') p.remove_prefix(1);
  while (true) {
    size_t i = p.find('/');
    out.emplace_back(p.substr(0, i));
    if (i == std::string_view::npos) break;
    p.remove_prefix(i + 1);
  }
  return out;
}

void validate_path(std::string_view path) {
  if (path.empty()) throw bad_request("path is empty");
  if (path.find('\0') != std::string_view::npos) throw bad_request("path contains a NUL byte");
  if (path.front() != '/') throw bad_request(fmt::format("path '{}' is not absolute", path));
}

// A failed call on a file of a layer. A host path longer than PATH_MAX (the layer directory's
// path plus a deep image path) is the client's 400, as in child_node, not a server error.
Error layer_error(const std::string& what, const std::string& host, int err = errno) {
  if (err == ENAMETOOLONG) return bad_request("a path in the image is too long to read");
  return sys_error(fmt::format("{} {}", what, host), err);
}

std::string read_link(const std::string& host) {
  char buf[PATH_MAX + 1];
  ssize_t n = ::readlink(host.c_str(), buf, sizeof buf - 1);
  if (n < 0) throw layer_error("readlink", host);
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

// A visible entry plus, for a directory, the layers whose same-named directories merge into
// it (top first; the first one is the entry's own layer).
struct LayerView::Node {
  Entry entry;
  std::vector<size_t> contrib;
  bool is_dir() const { return S_ISDIR(entry.st.st_mode); }
};

LayerView::LayerView(std::vector<fs::path> layers_top_first, uid_t uid_shift)
    : layers_(std::move(layers_top_first)), uid_shift_(uid_shift) {
  layer_strs_.reserve(layers_.size());
  for (const auto& l : layers_) {
    std::string s = l.string();
    while (s.size() > 1 && s.back() == '/') s.pop_back();
    layer_strs_.push_back(std::move(s));
  }
}

std::string LayerView::host_of(size_t layer, const std::string& path) const {
  if (path == "/") return layer_strs_[layer];
  return layer_strs_[layer] + path;
}

Entry LayerView::make_entry(size_t layer, std::string name, std::string path,
                            const struct stat& st) const {
  Entry e;
  e.name = std::move(name);
  e.path = std::move(path);
  e.st = st;
  if (e.st.st_uid >= uid_shift_) e.st.st_uid -= uid_shift_;
  if (e.st.st_gid >= uid_shift_) e.st.st_gid -= uid_shift_;
  std::string host = host_of(layer, e.path);
  if (S_ISLNK(st.st_mode)) e.symlink_target = read_link(host);
  e.host_path = std::move(host);
  e.layer = layer;
  return e;
}

LayerView::Node LayerView::root_node() const {
  if (layers_.empty()) throw internal("image has no layers");
  Node n;
  for (size_t i = 0; i < layers_.size(); ++i) {
    struct stat st;
    if (::lstat(layer_strs_[i].c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      throw sys_error(fmt::format("layer {} is not a directory", layer_strs_[i]));
    if (i == 0) n.entry = make_entry(0, "", "/", st);
    // No opaque check: overlayfs always merges the roots of all its layers (an opaque
    // marker on a layer's root directory hides nothing in a sandbox), and this view shows
    // what the sandbox sees. Found by fuzz/layer_view_fuzz.cc.
    n.contrib.push_back(i);
  }
  return n;
}

// Computes the layers merging into directory `name` (found as a directory in `dir.contrib[k]`)
// given a way to ask what a lower layer holds under that name.
template <typename Probe>
static std::vector<size_t> merge_layers(const std::vector<size_t>& parent_contrib, size_t k,
                                        const std::string& own_host, Probe&& probe) {
  std::vector<size_t> contrib{parent_contrib[k]};
  if (k + 1 >= parent_contrib.size() || is_opaque(own_host)) return contrib;
  for (size_t j = k + 1; j < parent_contrib.size(); ++j) {
    // probe returns: 0 absent, 1 directory (with its host path in `host`), 2 anything else.
    std::string host;
    int kind = probe(parent_contrib[j], host);
    if (kind == 0) continue;
    if (kind == 2) break;  // a whiteout or a non-directory ends the merge
    contrib.push_back(parent_contrib[j]);
    if (is_opaque(host)) break;
  }
  return contrib;
}

std::optional<LayerView::Node> LayerView::child_node(const Node& dir, std::string_view name) const {
  std::string path = join_path(dir.entry.path, name);
  for (size_t k = 0; k < dir.contrib.size(); ++k) {
    size_t layer = dir.contrib[k];
    std::string host = host_of(layer, path);
    struct stat st;
    if (::lstat(host.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) continue;
      if (errno == ENAMETOOLONG) throw bad_request(fmt::format("path too long: {}", path));
      throw sys_error(fmt::format("lstat {}", host));
    }
    if (is_whiteout(st)) return std::nullopt;
    Node n;
    if (S_ISDIR(st.st_mode)) {
      n.contrib = merge_layers(dir.contrib, k, host, [&](size_t j, std::string& h) {
        h = host_of(j, path);
        struct stat lst;
        if (::lstat(h.c_str(), &lst) != 0) return 0;
        return S_ISDIR(lst.st_mode) ? 1 : 2;
      });
    }
    n.entry = make_entry(layer, std::string(name), std::move(path), st);
    return n;
  }
  return std::nullopt;
}

std::vector<LayerView::Node> LayerView::list_node(const Node& dir, size_t max_names,
                                                  bool* cut) const {
  struct Seen {
    size_t k;  // index into dir.contrib of the first layer holding the name
    unsigned char type;
  };
  // Names per contributing layer (to merge child directories without failed lstats).
  std::vector<std::unordered_map<std::string, unsigned char>> per_layer(dir.contrib.size());
  std::unordered_map<std::string, Seen> seen;
  for (size_t k = 0; k < dir.contrib.size(); ++k) {
    std::string host = host_of(dir.contrib[k], dir.entry.path);
    int fd = ::open(host.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) throw layer_error("open", host);
    DIR* d = ::fdopendir(fd);
    if (!d) {
      int err = errno;
      ::close(fd);
      throw sys_error(fmt::format("fdopendir {}", host), err);
    }
    while (true) {
      errno = 0;
      struct dirent* de = ::readdir(d);
      if (!de) {
        if (errno != 0) {
          int err = errno;
          ::closedir(d);
          throw sys_error(fmt::format("readdir {}", host), err);
        }
        break;
      }
      std::string_view nm = de->d_name;
      if (nm == "." || nm == "..") continue;
      if (seen.size() >= max_names && !seen.count(std::string(nm))) {
        if (cut) *cut = true;
        k = dir.contrib.size();  // read no further names, in this layer or below
        break;
      }
      if (k > 0) per_layer[k].emplace(nm, de->d_type);  // probed as a lower layer
      seen.try_emplace(std::string(nm), Seen{k, de->d_type});
    }
    ::closedir(d);
  }

  std::vector<Node> out;
  out.reserve(seen.size());
  for (const auto& kv : seen) {
    // Not a structured binding: clang 14 (the fuzz build) cannot capture one in a lambda.
    const std::string& name = kv.first;
    const Seen& s = kv.second;
    std::string path = join_path(dir.entry.path, name);
    std::string host = host_of(dir.contrib[s.k], path);
    struct stat st;
    if (::lstat(host.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;  // raced away (layers should be immutable)
      throw layer_error("lstat", host);
    }
    if (is_whiteout(st)) continue;
    Node n;
    if (S_ISDIR(st.st_mode)) {
      n.contrib = merge_layers(dir.contrib, s.k, host, [&](size_t j, std::string& h) {
        size_t kj = 0;
        while (dir.contrib[kj] != j) ++kj;
        auto it = per_layer[kj].find(name);
        if (it == per_layer[kj].end()) return 0;
        h = host_of(j, path);
        if (it->second == DT_DIR) return 1;
        if (it->second != DT_UNKNOWN) return 2;
        struct stat lst;
        if (::lstat(h.c_str(), &lst) != 0) return 0;
        return S_ISDIR(lst.st_mode) ? 1 : 2;
      });
    }
    n.entry = make_entry(dir.contrib[s.k], name, std::move(path), st);
    out.push_back(std::move(n));
  }
  std::sort(out.begin(), out.end(),
            [](const Node& a, const Node& b) { return a.entry.name < b.entry.name; });
  return out;
}

std::optional<LayerView::Node> LayerView::node_at(std::string_view resolved_path) const {
  validate_path(resolved_path);
  Node cur = root_node();
  std::vector<Node> parents;
  for (const auto& name : split_components(resolved_path)) {
    if (name.empty() || name == ".") continue;
    if (name == "..") {
      if (!parents.empty()) {
        cur = std::move(parents.back());
        parents.pop_back();
      }
      continue;
    }
    if (!cur.is_dir()) return std::nullopt;  // symlinks are not followed here
    auto next = child_node(cur, name);
    if (!next) return std::nullopt;
    parents.push_back(std::move(cur));
    cur = std::move(*next);
  }
  return cur;
}

std::string LayerView::resolve(std::string_view path, bool follow_last) const {
  validate_path(path);
  std::vector<Node> stack{root_node()};  // back() is the current position
  auto comps = split_components(path);
  std::deque<std::string> todo(std::make_move_iterator(comps.begin()),
                               std::make_move_iterator(comps.end()));
  int hops = 0;
  while (!todo.empty()) {
    std::string name = std::move(todo.front());
    todo.pop_front();
    if (name.empty() || name == ".") continue;
    if (name == "..") {
      if (stack.size() > 1) stack.pop_back();
      continue;
    }
    const bool last = todo.empty();
    auto child = child_node(stack.back(), name);
    if (!child) {
      throw not_found(
          fmt::format("{}: no such file or directory", join_path(stack.back().entry.path, name)));
    }
    if (S_ISLNK(child->entry.st.st_mode) && (!last || follow_last)) {
      if (++hops > kMaxSymlinkHops)
        throw bad_request(fmt::format("{}: too many levels of symbolic links", path));
      const std::string& target = child->entry.symlink_target;
      if (target.empty()) throw not_found(fmt::format("{}: empty symlink", child->entry.path));
      if (target.front() == '/') stack.resize(1);
      auto tcomps = split_components(target);
      todo.insert(todo.begin(), std::make_move_iterator(tcomps.begin()),
                  std::make_move_iterator(tcomps.end()));
      continue;
    }
    if (!last && !child->is_dir())
      throw unprocessable(fmt::format("{}: not a directory", child->entry.path));
    stack.push_back(std::move(*child));
  }
  return stack.back().entry.path;
}

std::optional<Entry> LayerView::lookup(std::string_view resolved_path) const {
  auto n = node_at(resolved_path);
  if (!n) return std::nullopt;
  return std::move(n->entry);
}

std::vector<Entry> LayerView::list(std::string_view resolved_dir, size_t max_names,
                                   bool* cut) const {
  auto n = node_at(resolved_dir);
  if (!n) throw not_found(fmt::format("{}: no such file or directory", resolved_dir));
  if (!n->is_dir()) throw unprocessable(fmt::format("{}: not a directory", resolved_dir));
  std::vector<Entry> out;
  for (auto& c : list_node(*n, max_names, cut)) out.push_back(std::move(c.entry));
  return out;
}

UniqueFd LayerView::open_file(std::string_view resolved_path) const {
  auto n = node_at(resolved_path);
  if (!n) throw not_found(fmt::format("{}: no such file or directory", resolved_path));
  if (!S_ISREG(n->entry.st.st_mode))
    throw unprocessable(fmt::format("{}: not a regular file", resolved_path));
  const Entry& e = n->entry;
  const int flags = O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC;
  UniqueFd root(::open(layer_strs_[e.layer].c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) throw sys_error(fmt::format("open layer {}", layer_strs_[e.layer]));
  struct open_how how {};
  how.flags = flags;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  std::string rel = e.path.substr(1);
  long fd = ::syscall(SYS_openat2, root.get(), rel.c_str(), &how, sizeof how);
  if (fd < 0 && errno == ENOSYS) fd = ::openat(root.get(), rel.c_str(), flags);
  if (fd < 0) throw layer_error("open", e.host_path.string());
  UniqueFd out(static_cast<int>(fd));
  struct stat st;
  if (::fstat(out.get(), &st) != 0) throw sys_error("fstat");
  if (!S_ISREG(st.st_mode) || st.st_ino != e.st.st_ino || st.st_dev != e.st.st_dev)
    throw unprocessable(fmt::format("{}: changed while opening", resolved_path));
  // Regular reads should block normally.
  int fl = ::fcntl(out.get(), F_GETFL);
  if (fl >= 0) ::fcntl(out.get(), F_SETFL, fl & ~O_NONBLOCK);
  return out;
}

void LayerView::walk(std::string_view resolved_path, const std::function<Walk(const Entry&)>& visit,
                     size_t max_names_per_dir, bool* cut) const {
  auto start = node_at(resolved_path);
  if (!start) throw not_found(fmt::format("{}: no such file or directory", resolved_path));
  struct Frame {
    std::vector<Node> children;
    size_t next = 0;
  };
  std::vector<Frame> stack;  // explicit stack: hostile images may nest very deeply
  auto enter = [&](const Node& n) -> bool {
    Walk w = visit(n.entry);
    if (w == Walk::kStop) return false;
    if (w == Walk::kContinue && n.is_dir())
      stack.push_back(Frame{list_node(n, max_names_per_dir, cut), 0});
    return true;
  };
  if (!enter(*start)) return;
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next == f.children.size()) {
      stack.pop_back();
      continue;
    }
    Node n = std::move(f.children[f.next++]);
    if (!enter(n)) return;  // `f` may be invalidated by enter(); not used after
  }
}

}  // namespace coppice::store
