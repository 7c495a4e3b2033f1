#!/usr/bin/env bash
# The root image every project image starts from when no public image registry is reachable: Debian
# bookworm from Debian's own package archive (debootstrap), imported with `docker import`. Bookworm ships
# CPython 3.11 and OpenJDK 17, the versions the project runs.
#
#   deploy/docker/rootfs.sh            prints the image name (fraud-tfx-rootfs:bookworm-<hash>) on stdout
#   deploy/docker/rootfs.sh --force    rebuilds it even when an image of the same inputs exists
#
# Cached: the tag is a hash of this script and the mirrors, so the image is rebuilt only when they change
# (about 2-3 minutes here). Needs root, debootstrap and a running Docker engine (scripts/install-docker.sh).
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR override the archive (default: deb.debian.org over http, which is
# what apt on the build machine uses; packages are verified against Debian's archive keyring either way).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# What the images need from the root: python3 with venv (the project's venvs), ca-certificates (TLS to
# package indexes), bash (entrypoints). Everything else is installed by the Dockerfiles with apt-get.
packages=python3,python3-venv,ca-certificates
name=fraud-tfx-rootfs
digest="$(printf '%s\n' "$suite" "$mirror" "$security" "$packages" | cat - "$here/rootfs.sh" | sha256sum | cut -c1-12)"
image="$name:$suite-$digest"

if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }

start=$(date +%s)
work="$(mktemp -d /var/tmp/fraud-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
log="$work/debootstrap.log"
echo "rootfs: debootstrap $suite from $mirror (log $log) ..." >&2
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "rootfs: debootstrap failed" >&2
  exit 1
fi

# The archive the images' apt-get uses: the release, its updates and security fixes.
rm -f "$root/etc/apt/sources.list"
cat > "$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# As Debian's own container images: no recommends, no docs/man pages/translations, no package cache kept.
cat > "$root/etc/apt/apt.conf.d/90fraud-container" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT
cat > "$root/etc/dpkg/dpkg.cfg.d/90fraud-container" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
  "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/dev/* "$root"/proc/* "$root"/sys/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# The build machine's identity stays out of the image (Docker provides these at run time).
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: > "$root/etc/machine-id"

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase --include=$packages $suite $mirror" \
  - "$image" >/dev/null
echo "rootfs: $image in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
echo "$image"
