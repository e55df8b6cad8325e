#!/usr/bin/env bash
# Debian packages the lab and the tests need. Installs only what is missing; safe to run twice.
set -euo pipefail
# ceph-* and radosgw: the lab's Ceph cluster (seafbackup_lab/ceph.py); python3-rados: librados for the agent's
# Ceph backend; rclone: what the object-storage benchmarks compare with. debootstrap and systemd-container: the
# hosts lab (seafbackup_lab/hosts.py). galera-4: the cluster lab (seafbackup_lab/cluster.py).
packages=(mariadb-server mariadb-client rsync openssh-server openssh-client python3-venv prometheus iproute2
          ceph-mon ceph-mgr ceph-osd ceph-common radosgw python3-rados rclone debootstrap systemd-container galera-4)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
# policy-rc.d keeps the packages' own services from starting: the lab runs its own servers.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
