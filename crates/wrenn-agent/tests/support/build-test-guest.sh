#!/usr/bin/env bash
# Builds the tiny guest the VMM tests boot: Debian's cloud kernel plus a busybox initramfs
# whose /init follows `wrenn.test=<mode>` on the kernel command line. Only Debian packages.
# Usage: build-test-guest.sh OUT_DIR  (writes OUT_DIR/vmlinuz and OUT_DIR/initrd.img)
set -euo pipefail
out="$1"
[[ -s "$out/vmlinuz" && -s "$out/initrd.img" ]] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download runs as _apt
cd "$work"

kpkg="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
if [[ -z "$kpkg" ]]; then
    apt-get update -qq
    kpkg="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
fi
[[ -n "$kpkg" ]] || { echo "cannot resolve the versioned cloud kernel package" >&2; exit 1; }
apt-get download -qq "$kpkg" busybox-static >/dev/null
dpkg-deb -x "$kpkg"_*.deb k
dpkg-deb -x busybox-static_*.deb bb

kver="${kpkg#linux-image-}"
mods="k/lib/modules/$kver/kernel"
mkdir -p root/bin root/lib/modules root/proc root/sys root/dev
cp bb/bin/busybox root/bin/busybox
# Load order matters: each module needs the ones before it.
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
         drivers/block/virtio_blk; do
    cp "$mods/$m.ko" root/lib/modules/
done
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo WRENN-TEST-INIT
for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /lib/modules/$m.ko; done
mode=idle
for arg in $(cat /proc/cmdline); do
    case "$arg" in wrenn.test=*) mode="${arg#wrenn.test=}" ;; esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] && echo WRENN-TEST-DISK-OK || echo WRENN-TEST-DISK-MISSING
case "$mode" in
    write)
        # 8 MiB of non-zero data at the start of the disk, then power off.
        dd if=/dev/urandom of=/dev/vda bs=1M count=8 conv=fsync 2>/dev/null \
            && echo WRENN-TEST-WRITE-OK || echo WRENN-TEST-WRITE-FAILED
        poweroff -f ;;
    fill)
        # Write until the host runs out of space; QEMU must report, not pause silently.
        dd if=/dev/urandom of=/dev/vda bs=1M oflag=direct 2>/dev/null
        echo WRENN-TEST-FILL-DONE
        while true; do sleep 1; done ;;
    count)
        # A counter that lives only in memory: a restored VM must go on from where it was.
        n=0
        while true; do n=$((n + 1)); echo "WRENN-TEST-COUNT $n"; sleep 0.2; done ;;
    *)
        echo WRENN-TEST-IDLE
        while true; do sleep 1; done ;;
esac
INIT
chmod 755 root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img

mkdir -p "$out"
cp "k/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
cp initrd.img "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
