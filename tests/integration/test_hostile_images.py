"""Hostile images and hostile tenants against the store and the runtimes (issue #12 items 1, 2,
5 and 9): device nodes in layers, layer entries ordered to write outside the layer, file
injection onto things that are not regular files, decompression bombs, and a shared layer
whose content must not depend on the project that imported it first.

The images are OCI archives built here by hand (tarfile, no registry), uploaded as files and
imported through the API, so every test drives the real server end to end."""
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import stat
import tarfile
import tempfile

import pytest

from conftest import RUNTIMES, admin
from coppice_client import Client, Server, stdout_of

APPLETS = ["sh", "ls", "cat", "echo", "true", "stat", "touch", "mkdir", "id", "test", "wc",
           "ln", "mkfifo", "printf", "head", "od"]


# ------------------------------------------------------------------------------------------
# building OCI archives by hand

def _add(t, name, type_=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="",
         dev=(0, 0), size=None):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, ti.mtime = type_, mode, uid, gid, link, 1700000000
    ti.devmajor, ti.devminor = dev
    if type_ == tarfile.REGTYPE:
        ti.size = len(data) if size is None else size
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)


def layer(entries):
    """An uncompressed layer tar from a list of _add keyword dicts (in that order)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            _add(t, **e)
    return buf.getvalue()


def busybox_layer():
    with open("/bin/busybox", "rb") as f:
        bb = f.read()
    entries = [dict(name=d, type_=tarfile.DIRTYPE, mode=m) for d, m in
               (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700))]
    entries.append(dict(name="bin/busybox", data=bb, mode=0o755))
    entries += [dict(name=f"bin/{a}", type_=tarfile.SYMTYPE, link="busybox", mode=0o777)
                for a in APPLETS]
    return layer(entries)


def oci_archive(layer_tars, env=("PATH=/bin",), gzip_layers=True):
    """An oci-archive (bytes) holding one image made of `layer_tars` (bottom first)."""
    blobs, descs, diff_ids = {}, [], []
    for tar in layer_tars:
        blob = gzip.compress(tar, 1, mtime=0) if gzip_layers else tar
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        blobs[d] = blob
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" +
                      ("+gzip" if gzip_layers else ""), "digest": d, "size": len(blob)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": list(env)},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cd = "sha256:" + hashlib.sha256(config).hexdigest()
    blobs[cd] = config
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cd, "size": len(config)},
                           "layers": descs}).encode()
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blobs[md] = manifest
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
         "size": len(manifest)}]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _add(t, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
        _add(t, "index.json", data=index)
        for d, b in blobs.items():
            _add(t, "blobs/sha256/" + d.split(":", 1)[1], data=b)
    return buf.getvalue()


def import_archive(client, archive, tag, timeout=120):
    f = client.upload(archive)
    r = client.post("/v1/images/import", {"archive": {"file": f["uuid"]}, "tag": tag})
    assert r.status in (201, 202), r.body
    return client.wait(r.json()["uuid"], timeout)


def layer_dirs(server):
    return pathlib.Path(server.data_dir) / "layers"


def host_devices_below(path):
    """Every device node below `path` except the 0:0 whiteout."""
    found = []
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            st = os.lstat(os.path.join(dirpath, n))
            if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != 0:
                found.append(os.path.join(dirpath, n))
    return found


def leftovers(server):
    tmp = pathlib.Path(server.data_dir) / "tmp"
    return [p.name for p in tmp.iterdir()] if tmp.exists() else []


# ------------------------------------------------------------------------------------------
# item 1: device nodes never reach the store, and file injection writes only regular files

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_device_node_in_a_layer_is_skipped(server, client, runtime):
    # Reproduced on the old code: the layer kept `crw-rw-rw- 1,7` (/dev/full) as etc/app.conf,
    # and a gVisor run injecting /etc/app.conf wrote through it ("No space left on device").
    arc = oci_archive([busybox_layer(), layer([
        dict(name="etc/app.conf", type_=tarfile.CHRTYPE, mode=0o666, dev=(1, 7)),
        dict(name="etc/disk", type_=tarfile.BLKTYPE, mode=0o660, dev=(8, 0)),
        dict(name="etc/kept", data=b"kept\n"),
        dict(name=f"etc/{runtime}", data=b"a layer of its own")])])
    op = import_archive(client, arc, f"hostile/devices-{runtime}:1")
    assert op["status"] == "SUCCESS", op
    img = op["result_image_uuid"]
    notes = [e for e in client.events(op["uuid"]) if e["type"] == "skipped_entries"]
    assert len(notes) == 1 and notes[0]["data"]["count"] == 2, notes
    assert notes[0]["data"]["entries"] == ["/etc/app.conf (a character device)",
                                           "/etc/disk (a block device)"]
    assert host_devices_below(layer_dirs(server)) == []
    f = client.upload(b"uploaded\n")
    c = Client(server.url, server.token, runtime=runtime)
    done = c.run(img, "cat /etc/app.conf; stat -c '%F %u' /etc/app.conf; cat /etc/kept",
                 files={"/etc/app.conf": {"uuid": f["uuid"]}})
    assert done["status"] == "SUCCESS", done
    assert stdout_of(done) == "uploaded\nregular file 0\nkept\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_injected_parents_belong_to_sandbox_root(server, runtime):
    # The gVisor injector used to run as host root: the directories it made were owned by host
    # root, which sandbox root cannot write to (they showed as nobody).
    c = Client(server.url, server.token, runtime=runtime)
    busybox = c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]
    f = c.upload(b"x\n")
    done = c.run(busybox, "stat -c '%u %g %a' /new /new/sub; touch /new/sub/mine && echo wrote",
                 files={"/new/sub/f": {"uuid": f["uuid"], "uid": 5, "gid": 6}})
    assert done["status"] == "SUCCESS", done
    assert stdout_of(done) == "0 0 755\n0 0 755\nwrote\n"
    layer = layer_dirs(server) / done["result_image_uuid"]
    base = os.stat(layer / "new").st_uid
    assert base != 0 and os.stat(layer / "new/sub").st_uid == base
    assert os.stat(layer / "new/sub/f").st_uid == base + 5


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_injection_refuses_symlinks_fifos_and_directories(server, runtime):
    c = Client(server.url, server.token, runtime=runtime)
    busybox = c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]
    # Made by the namespace runtime (gVisor keeps fifos inside its own kernel); images serve
    # every runtime.
    ns = Client(server.url, server.token, runtime="namespace")
    img = ns.run(busybox, "echo keep > /tmp/target; ln -s /tmp/target /etc/link; "
                          "mkfifo /etc/fifo; mkdir /etc/dir")["result_image_uuid"]
    f = c.upload(b"forged\n")
    for path, why in (("/etc/link", "symlink"), ("/etc/fifo", "not a regular file"),
                      ("/etc/dir", "not a regular file")):
        done = c.run(img, "echo ran", files={path: {"uuid": f["uuid"]}}, timeout=20)
        assert done["status"] == "FAILED" and "injection" in done["error"], (path, done)
        assert why in done["error"], (path, done["error"])
    # Nothing was written through the symlink; symlinked parent directories still resolve
    # inside the image.
    img2 = c.run(img, "ln -s /tmp /etc/tmpdir")["result_image_uuid"]
    done = c.run(img2, "cat /tmp/target /tmp/new", files={"/etc/tmpdir/new": {"uuid": f["uuid"]}})
    assert done["status"] == "SUCCESS", done
    assert stdout_of(done) == "keep\nforged\n"


# ------------------------------------------------------------------------------------------
# item 2: entries ordered to write outside the layer

def test_layer_entries_cannot_write_through_a_later_symlink(server, client):
    # Reproduced on the old code: `a/.wh..wh.plnk` made "a" checked, `a -> TARGET` replaced it
    # with a symlink, and `a/x/.wh.y` made root create TARGET/x (mode and owner of a lower
    # directory) through it.
    target = pathlib.Path(tempfile.mkdtemp(prefix="coppice-it-target-", dir="/var/tmp"))
    try:
        for i, evil in enumerate((
                [dict(name="a/.wh..wh.plnk"), dict(name="a", type_=tarfile.SYMTYPE, link=str(target)),
                 dict(name="a/x/.wh.y")],
                [dict(name="a/s", type_=tarfile.FIFOTYPE),
                 dict(name="a", type_=tarfile.SYMTYPE, link=str(target)),
                 dict(name="a/x/f", data=b"evil")],
                [dict(name="a", type_=tarfile.DIRTYPE, mode=0o1777),
                 dict(name="a", type_=tarfile.SYMTYPE, link=str(target)),
                 dict(name="a/.wh..wh..opq")])):
            op = import_archive(client, oci_archive([busybox_layer(), layer(evil)]),
                                f"hostile/order-{i}:1")
            assert op["status"] == "FAILED", op
            assert "refusing layer" in op["error"], op["error"]
        assert list(target.iterdir()) == []
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
        assert os.listxattr(target) == []
        assert leftovers(server) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# item 9: a shared layer's content does not depend on who imported it first

def test_shared_layer_does_not_depend_on_its_first_importer(server, client, other):
    def base(mode, uid):
        return layer([dict(name="data", type_=tarfile.DIRTYPE, mode=mode, uid=uid, gid=uid),
                      dict(name="data/old", data=b"o")])
    # The same top layer blob (it changes /data without describing /data) on two bases.
    top = layer([dict(name="data/new", data=b"n")])
    bb = busybox_layer()
    a = import_archive(client, oci_archive([bb, base(0o750, 1000), top]), "shared/a:1")
    b = import_archive(other, oci_archive([bb, base(0o700, 2000), top]), "shared/b:1")
    assert a["status"] == "SUCCESS" and b["status"] == "SUCCESS", (a, b)
    ra = client.run(a["result_image_uuid"], "stat -c '%a %u' /data; cat /data/new")
    rb = other.run(b["result_image_uuid"], "stat -c '%a %u' /data; cat /data/new")
    assert stdout_of(ra) == "750 1000\nn"
    assert stdout_of(rb) == "700 2000\nn"  # the old code reused alpha's unpack: 750 1000
    # A layer that depends on nothing below is still stored once and shared.
    c = import_archive(other, oci_archive([bb, base(0o750, 1000)]), "shared/c:1")
    assert c["status"] == "SUCCESS" and c["metadata"]["layers_reused"] == 2, c


# ------------------------------------------------------------------------------------------
# item 5: decompression bombs

@pytest.fixture(scope="module")
def capped_server(coppiced_bin):
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-it-caps-", dir="/var/tmp"))
    srv = Server(coppiced_bin, data, extra_args=["--max-import-mb", "64",
                                                 "--max-import-entries", "5000"])
    srv.token = admin(data, "token", "create", "--project", "alpha")
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


def test_decompression_bombs_fail_and_leave_nothing(capped_server):
    c = Client(capped_server.url, capped_server.token)
    before = sorted(p.name for p in layer_dirs(capped_server).iterdir())
    # 1. A layer of 200 MiB of zeros (about 200 KiB compressed).
    zeros = layer([dict(name="zero", data=bytes(200 << 20))])
    op = import_archive(c, oci_archive([busybox_layer(), zeros]), "bomb/bytes:1")
    assert op["status"] == "FAILED" and "bytes" in op["error"], op
    del zeros
    # 2. A layer of 20,000 empty files.
    many = layer([dict(name=f"f{i}") for i in range(20000)])
    op = import_archive(c, oci_archive([busybox_layer(), many]), "bomb/entries:1")
    assert op["status"] == "FAILED" and "entries" in op["error"], op
    # 3. The archive itself: a gzip of a tar holding a 100 MiB blob.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _add(t, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
        _add(t, "blobs/sha256/" + "0" * 64, data=bytes(100 << 20))
    op = import_archive(c, gzip.compress(buf.getvalue(), 1, mtime=0), "bomb/archive:1")
    assert op["status"] == "FAILED" and "archive holds more than" in op["error"], op
    assert sorted(p.name for p in layer_dirs(capped_server).iterdir()) == before
    assert leftovers(capped_server) == []
    # Under the caps an import still works.
    op = import_archive(c, oci_archive([busybox_layer()]), "bomb/fine:1")
    assert op["status"] == "SUCCESS", op
