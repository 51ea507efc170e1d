#include "engine/base_images.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "common/process.h"

namespace coppice::engine {

namespace {

store::ImageRecord register_layer(store::MetaStore& meta, store::LayerStore& layers,
                                  const std::filesystem::path& dir, const BaseImageOptions& opt) {
  store::ImageRecord img;
  img.uuid = new_uuid();
  img.project = opt.project;
  img.layer_id = img.uuid;
  img.layers = {img.layer_id};
  img.created_us = now_us();
  img.size_bytes = static_cast<int64_t>(tree_size(dir).bytes);
  ::chmod(dir.c_str(), 0755);
  layers.commit_layer(dir, img.layer_id);
  meta.insert_image(img);
  if (!opt.tag.empty()) {
    meta.set_tag(opt.project, img.uuid, opt.tag);
    img.tag = opt.tag;
  }
  spdlog::info("created base image {}{} ({} bytes)", img.uuid,
               opt.tag.empty() ? "" : " tagged " + opt.tag, img.size_bytes);
  return img;
}

void write_text(const std::filesystem::path& p, const std::string& s, mode_t mode = 0644) {
  write_file_atomic(p, s, false);
  ::chmod(p.c_str(), mode);
}

}  // namespace

store::ImageRecord import_rootfs(store::MetaStore& meta, store::LayerStore& layers,
                                 const std::filesystem::path& source, const BaseImageOptions& opt) {
  struct stat st;
  if (::stat(source.c_str(), &st) != 0) throw sys_error("stat " + source.string());
  auto dir = layers.tmp_path("import-" + new_uuid());
  make_dirs(dir, 0755);
  try {
    if (S_ISDIR(st.st_mode)) {
      run_program({"cp", "-a", "--", source.string() + "/.", dir.string()});
    } else {
      run_program({"tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                   source.string(), "-C", dir.string()});
    }
    for (const char* d : {"proc", "dev", "sys", "tmp"}) {
      auto p = dir / d;
      if (::mkdir(p.c_str(), 0755) == 0 && std::string(d) == "tmp") ::chmod(p.c_str(), 01777);
    }
    shift_ownership(dir, opt.uid_shift);
    return register_layer(meta, layers, dir, opt);
  } catch (...) {
    remove_tree(dir);
    throw;
  }
}

store::ImageRecord bootstrap_busybox(store::MetaStore& meta, store::LayerStore& layers,
                                     const BaseImageOptions& opt) {
  const std::filesystem::path busybox = "/bin/busybox";
  if (::access(busybox.c_str(), X_OK) != 0)
    throw internal("/bin/busybox not found: install Debian's busybox-static package");
  auto dir = layers.tmp_path("busybox-" + new_uuid());
  try {
    for (const char* d : {"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "dev", "sys", "tmp",
                          "root", "home", "var/tmp", "run", "mnt"})
      make_dirs(dir / d, 0755);
    ::chmod((dir / "tmp").c_str(), 01777);
    ::chmod((dir / "var/tmp").c_str(), 01777);
    ::chmod((dir / "root").c_str(), 0700);
    run_program({"cp", busybox.string(), (dir / "bin/busybox").string()});
    std::string list = run_program({busybox.string(), "--list-full"});
    size_t pos = 0;
    while (pos < list.size()) {
      size_t nl = list.find('\n', pos);
      if (nl == std::string::npos) nl = list.size();
      std::string applet = list.substr(pos, nl - pos);
      pos = nl + 1;
      if (applet.empty() || applet == "bin/busybox" || applet.find("..") != std::string::npos)
        continue;
      auto link = dir / applet;
      make_dirs(link.parent_path(), 0755);
      if (::symlink("/bin/busybox", link.c_str()) != 0 && errno != EEXIST)
        throw sys_error("symlink " + link.string());
    }
    write_text(dir / "etc/passwd",
               "root:x:0:0:root:/root:/bin/sh\n"
               "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    write_text(dir / "etc/group", "root:x:0:\ndaemon:x:1:\nusers:x:100:\nnogroup:x:65534:\n");
    write_text(dir / "etc/hostname", "coppice\n");
    write_text(dir / "etc/hosts", "127.0.0.1 localhost\n::1 localhost\n");
    write_text(dir / "etc/os-release",
               "NAME=\"BusyBox\"\nID=busybox\nPRETTY_NAME=\"BusyBox (Coppice base image)\"\n");
    shift_ownership(dir, opt.uid_shift);
    return register_layer(meta, layers, dir, opt);
  } catch (...) {
    remove_tree(dir);
    throw;
  }
}

store::ImageRecord bootstrap_debian(store::MetaStore& meta, store::LayerStore& layers,
                                    const BaseImageOptions& opt) {
  auto dir = layers.tmp_path("debian-" + new_uuid());
  try {
    run_program(
        {"mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", "bookworm", dir.string()});
    shift_ownership(dir, opt.uid_shift);
    return register_layer(meta, layers, dir, opt);
  } catch (...) {
    remove_tree(dir);
    throw;
  }
}

}  // namespace coppice::engine
