"""Admin commands run beside a live server: tokens and root filesystem imports."""
import os
import shutil
import subprocess
import tarfile
import tempfile

from conftest import admin
from coppice_client import Client, stdout_of


def make_rootfs(path, marker):
    os.makedirs(f"{path}/bin")
    os.makedirs(f"{path}/etc")
    shutil.copy("/bin/busybox", f"{path}/bin/busybox")
    os.symlink("busybox", f"{path}/bin/sh")
    os.symlink("busybox", f"{path}/bin/cat")
    with open(f"{path}/etc/marker", "w") as f:
        f.write(marker)
    os.chmod(f"{path}/etc/marker", 0o640)


def test_token_created_while_serving(server):
    token = admin(server.data_dir, "token", "create", "--project", "late")
    c = Client(server.url, token)
    assert c.get("/v1/whoami").json()["project"] == "late"


def test_import_rootfs_dir_and_tar_while_serving(server, client):
    tmp = tempfile.mkdtemp(dir="/var/tmp")
    try:
        make_rootfs(f"{tmp}/dir", "from-dir\n")
        uuid = admin(server.data_dir, "image", "import-rootfs", f"{tmp}/dir", "--tag", "imp:dir")
        op = client.run("tag:imp:dir", "cat /etc/marker; ls -ln /etc/marker")
        assert op["status"] == "SUCCESS"
        out = stdout_of(op)
        assert out.startswith("from-dir\n-rw-r-----")
        assert " 0 " in out  # root-owned inside, although shifted on the host
        assert client.get(f"/v1/inspect/{uuid}/list", params={"path": "/etc"}).json()[
            "files"][0]["uid"] == 0
        make_rootfs(f"{tmp}/t", "from-tar\n")
        with tarfile.open(f"{tmp}/root.tar.gz", "w:gz") as t:
            t.add(f"{tmp}/t", arcname=".")
        admin(server.data_dir, "image", "import-rootfs", f"{tmp}/root.tar.gz", "--tag", "imp:tar")
        assert stdout_of(client.run("tag:imp:tar", "cat /etc/marker")) == "from-tar\n"
        # a private import is visible to its project only
        admin(server.data_dir, "image", "import-rootfs", f"{tmp}/dir", "--tag", "imp:private",
              "--private", "--project", "beta")
        assert client.get("/v1/images", params={"tag": "imp:private"}).json()["images"] == []
        r = subprocess.run([server.binary, "image", "import-rootfs", f"{tmp}/missing",
                            "--data-dir", str(server.data_dir)], capture_output=True, text=True)
        assert r.returncode != 0 and "missing" in r.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
