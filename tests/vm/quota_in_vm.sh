#!/usr/bin/env bash
# Runs the project-quota unit tests inside a QEMU guest booting Debian's cloud kernel, which has
# CONFIG_XFS_QUOTA, for hosts whose own kernel lacks it (the dev and CI machines: their XFS
# mounts without quota support, so the test skips there): ProjectQuota.* (XFS prjquota,
# PROJINHERIT, the limit through overlayfs with a copy-up, the rename into layers/, clearing).
# The guest's /var/tmp is an XFS prjquota mount too, for SandboxTest.WriteLimit* on hosts that
# can run it; this guest's 6.1 kernel cannot (the sandbox mounts its overlay with `lowerdir+`,
# Linux 6.8), so that one is left out here. Prints the test's output; exits 0
# when it passed, 1 when it failed, 77 when this host cannot boot the guest.
# Usage: tests/vm/quota_in_vm.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$kernel" ] && command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null &&
  command -v mkfs.xfs >/dev/null || { echo "needs qemu, cpio, mkfs.xfs and a cloud kernel"; exit 77; }
kver=${kernel#/boot/vmlinuz-}
mods=/lib/modules/$kver
work=$(mktemp -d /var/tmp/quota-vm-XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,var/tmp,mods,lib64}
cp /bin/busybox "$root/bin/busybox"
for a in sh mount umount truncate insmod poweroff cat mkdir rm dmesg; do ln -s busybox "$root/bin/$a"; done
# the test binary and mkfs.xfs with their shared libraries
cp "$build/coppice_unit_tests" "$build/coppice-sandbox-init" "$root/bin/"
cp "$(command -v mkfs.xfs)" "$root/sbin/mkfs.xfs"
for b in "$build/coppice_unit_tests" "$(command -v mkfs.xfs)"; do
  ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
# modules, dependencies first
for m in kernel/lib/libcrc32c.ko kernel/arch/x86/crypto/crc32c-intel.ko kernel/fs/xfs/xfs.ko \
         kernel/drivers/block/loop.ko kernel/fs/overlayfs/overlay.ko; do
  [ -e "$mods/$m" ] && cp "$mods/$m" "$root/mods/"
done
cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in libcrc32c crc32c-intel xfs loop overlay; do
  [ -e /mods/$m.ko ] && insmod /mods/$m.ko
done
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp
export PATH=/bin:/sbin
truncate -s 1G /tmp/var.img && mkfs.xfs -q /tmp/var.img && mount -o loop,prjquota /tmp/var.img /var/tmp
chmod 1777 /var/tmp
echo "=== test start"
/bin/coppice_unit_tests --gtest_filter='ProjectQuota.*' --gtest_color=no 2>&1
echo "=== test exit $?"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd"
bios=()
[ -e /usr/share/qemu/qboot.rom ] && bios=(-bios /usr/share/qemu/qboot.rom)
timeout 300 qemu-system-x86_64 "${bios[@]}" -M q35 -accel tcg -cpu max -m 2048 -smp 1 \
  -no-user-config -display none -monitor none -no-reboot -nic none -kernel "$kernel" \
  -initrd "$work/initrd" -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
  -serial "file:$work/console.log" || true
sed -n '/=== test start/,/=== test exit/p' "$work/console.log"
grep -q "=== test exit 0" "$work/console.log" && grep -q "\[  PASSED  \] 1 test" "$work/console.log" &&
  ! grep -q "SKIPPED" "$work/console.log"
