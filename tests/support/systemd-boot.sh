#!/bin/sh
# PID 1 of fresh pid/mount/uts/ipc/cgroup namespaces (started by tests/support/systemd.rs
# through `unshare`): builds a root file system for a real systemd and execs it.
#
#   systemd-boot.sh BASE CONSOLE STAGE
#
# BASE     an empty directory; a tmpfs is mounted on it, holding the overlay's upper and
#          work directories, so every write systemd and the units make lands in RAM in this
#          mount namespace, never on the host.
# CONSOLE  the pseudo-terminal the harness reads (bound on /dev/console).
# STAGE    a host directory bound read-only on /ssmcv-stage (the .deb and the stand-ins).
#
# The boot target wants basic.target and journald only; host units that cannot work in a
# container or that the image happens to enable are masked, so the system reaches `running`.
set -eu
base=$1
console=$2
stage=$3

mount -t tmpfs -o mode=0755 ssmcv-overlay "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root

# A private /dev with only harmless devices of the host's, a new devpts, the console.
mount -t tmpfs -o mode=0755,nosuid dev "$r/dev"
for d in null zero full random urandom tty; do
    touch "$r/dev/$d"
    mount --bind "/dev/$d" "$r/dev/$d"
done
mkdir "$r/dev/pts" "$r/dev/shm"
chmod 1777 "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
touch "$r/dev/console"
mount --bind "$console" "$r/dev/console"

# sysfs read-only (no device management in here) and a cgroup2 rooted at the harness's
# cgroup (this cgroup namespace's root), so systemd sees a pure unified hierarchy.
mount -t sysfs -o ro sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"

mkdir -p "$r/ssmcv-stage"
mount --bind "$stage" "$r/ssmcv-stage"
mount -o remount,bind,ro "$r/ssmcv-stage"

units="$r/etc/systemd/system"
mkdir -p "$units"
cat >"$units/ssmcv-test.target" <<'EOF'
[Unit]
Description=ssm-cosmovisor real-systemd test
Wants=basic.target systemd-journald.socket
After=basic.target
EOF
for u in \
    systemd-timesyncd.service systemd-networkd.service systemd-networkd.socket \
    systemd-resolved.service systemd-logind.service \
    systemd-modules-load.service systemd-sysctl.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    systemd-random-seed.service systemd-pstore.service systemd-repart.service \
    systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
    systemd-tmpfiles-clean.timer systemd-udevd.service systemd-udev-trigger.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount modprobe@.service \
    timers.target getty.target remote-fs.target cron.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer man-db.timer \
    postgresql.service mysql.service mariadb.service redis-server.service \
    docker.service containerd.service ssh.service; do
    ln -sf /dev/null "$units/$u"
done

cd "$r"
mkdir -p oldroot
pivot_root . oldroot
# umount reads /proc/self/mountinfo.
mount -t proc proc /proc
umount -l /oldroot
rmdir /oldroot
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
# systemd makes / shared itself only outside containers; without it LoadCredential*= gives
# an empty credentials directory.
mount --make-rshared /
exec env -i container=ssmcv-test PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=ssmcv-test.target
