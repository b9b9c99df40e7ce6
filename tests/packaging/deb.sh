#!/usr/bin/env bash
# The .deb as a Debian admin gets it: builds it with cargo-deb, checks its contents (debug
# symbols only in busylamp-dbgsym, man pages, changelog, copyright, modes), runs lintian (no
# errors allowed), the unit's `systemd-analyze security` exposure, then installs it into a
# clean Debian root (debootstrap minbase, chroot): the service user, the modes, `users add`
# without --config (the packaged config's realm and data dir), check-config and a short
# `serve` as the service user, a reinstall that keeps the admin's mode, and a purge that keeps
# the system user.
#
# Needs root (chroot, mount) and a Debian mirror (DEB_MIRROR, default deb.debian.org).
#   tests/packaging/deb.sh [--no-build]
# DEB_ROOT_CACHE=DIR: a minbase root made before is copied from DIR (made there when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
MIRROR=${DEB_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEB_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
WORK=$(mktemp -d /tmp/busylamp-deb.XXXXXX)
ROOT=$WORK/root
SERVE_PID=

cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
    umount "$ROOT/proc" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# Runs a command inside the installed root with a clean environment.
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# owner:group mode of a path inside the root.
mode_of() { in_root stat -c '%U:%G %a' "$1"; }

echo "== tools"
missing=()
for tool in lintian:lintian debootstrap:debootstrap objcopy:binutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked

echo "== build"
if [ $BUILD = 1 ]; then cargo deb; else cargo deb --no-build; fi
DEB=$(ls -t target/debian/busylamp_*.deb | head -1)
DBGSYM=$(ls -t target/debian/busylamp-dbgsym_*.ddeb | head -1)

echo "== package contents ($DEB)"
dpkg-deb -c "$DEB" | awk '{print $1, $2, $6}' >"$WORK/contents"
has() { grep -qxF -- "$1" "$WORK/contents" || fail "$DEB lacks '$1'"; }
has "-rwxr-xr-x 0/0 ./usr/bin/busylamp"
has "-rw-r----- 0/0 ./etc/busylamp/busylamp.toml"
has "-rw-r--r-- 0/0 ./usr/lib/systemd/system/busylamp.service"
has "-rw-r--r-- 0/0 ./usr/share/doc/busylamp/copyright"
has "-rw-r--r-- 0/0 ./usr/share/doc/busylamp/changelog.Debian.gz"
for page in busylamp busylamp-serve busylamp-check-config busylamp-users busylamp-users-add; do
    has "-rw-r--r-- 0/0 ./usr/share/man/man1/$page.1.gz"
done
! grep -q "usr/lib/debug" "$WORK/contents" || fail "debug symbols in the main package"
dpkg-deb -c "$DBGSYM" | grep -q '/usr/lib/debug/.build-id/.*\.debug$' || fail "no debug file in $DBGSYM"
dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/bin/busylamp >"$WORK/busylamp"
! readelf -S "$WORK/busylamp" | grep -q '\.debug_info' || fail "/usr/bin/busylamp is not stripped"
readelf -n "$WORK/busylamp" | grep -q "Build ID" || fail "no build id to find the dbgsym by"
dpkg-deb -f "$DEB" Maintainer | grep -q '<.*@.*>' || fail "Maintainer without an email"
SIZE=$(dpkg-deb -f "$DEB" Installed-Size)
echo "Installed-Size: $SIZE KiB (busylamp), $(dpkg-deb -f "$DBGSYM" Installed-Size) KiB (busylamp-dbgsym)"
[ "$SIZE" -lt 15000 ] || fail "main package installs $SIZE KiB"
ok "contents, stripped binary, dbgsym"

echo "== lintian"
lintian --fail-on error "$DEB" || fail "lintian errors in $DEB"
# The .ddeb is a regular .deb by another name; lintian wants the name to say so. cargo-deb
# writes it without the doc files and with Priority: extra, and without the control field
# (Auto-Built-Package) by which lintian spares Debian's own dbgsym packages those tags: they
# are the only ones allowed.
cp "$DBGSYM" "$WORK/$(basename "${DBGSYM%.ddeb}").deb"
lintian --fail-on error --suppress-tags no-changelog,no-copyright-file,unknown-priority \
    "$WORK"/busylamp-dbgsym_*.deb || fail "lintian errors in $DBGSYM"
ok "lintian: no errors"

if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
    echo "== systemd-analyze security (offline)"
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/lib/systemd/system/busylamp.service >"$WORK/busylamp.service"
    exposure=$(systemd-analyze security --offline=yes "$WORK/busylamp.service" 2>&1 |
        sed -n 's/.*Overall exposure level for busylamp.service: \([0-9.]*\).*/\1/p')
    echo "exposure $exposure"
    [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e < 3.0) }' ||
        fail "unit exposure ${exposure:-unknown}, want below 3.0"
    ok "unit exposure $exposure"
fi

echo "== clean root ($SUITE)"
if [ -n "${DEB_ROOT_CACHE:-}" ] && [ -x "$DEB_ROOT_CACHE/bin/sh" ]; then
    cp -a "$DEB_ROOT_CACHE" "$ROOT"
else
    debootstrap --variant=minbase --include=adduser "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    if [ -n "${DEB_ROOT_CACHE:-}" ]; then rm -rf "$DEB_ROOT_CACHE" && cp -a "$ROOT" "$DEB_ROOT_CACHE"; fi
fi
mount -t proc proc "$ROOT/proc"
cp "$DEB" "$ROOT/tmp/busylamp.deb"

echo "== install"
in_root dpkg -i /tmp/busylamp.deb
in_root getent passwd busylamp >/dev/null || fail "no system user busylamp"
[ "$(mode_of /etc/busylamp/busylamp.toml)" = "root:busylamp 640" ] || fail "config $(mode_of /etc/busylamp/busylamp.toml)"
[ "$(mode_of /var/lib/busylamp)" = "busylamp:busylamp 750" ] || fail "data dir $(mode_of /var/lib/busylamp)"
in_root dpkg-statoverride --list /etc/busylamp/busylamp.toml | grep -qx "root busylamp 640 /etc/busylamp/busylamp.toml" || fail "no statoverride"
in_root test -f /usr/share/man/man1/busylamp.1.gz || fail "man page not installed"
ok "user, modes"

# A fresh install has no user: check-config says so, with the fix.
out=$(in_root busylamp check-config 2>&1) || fail "check-config of the shipped config: $out"
echo "$out"
grep -q "0 in /var/lib/busylamp/users" <<<"$out" || fail "check-config does not count the users file"
grep -q "warning: no users.*busylamp users add" <<<"$out" || fail "no warning about no users"
# What the README says: no --config; the packaged config's realm and data dir.
out=$(in_root busylamp users add 1001 --password secret-1001 2>&1) || fail "users add: $out"
echo "$out"
grep -q "realm pbx.example.com" <<<"$out" && grep -q "config: /etc/busylamp/busylamp.toml" <<<"$out" ||
    fail "users add did not use the packaged config"
[ "$(mode_of /var/lib/busylamp/users)" = "busylamp:busylamp 600" ] || fail "users file $(mode_of /var/lib/busylamp/users)"
out=$(in_root runuser -u busylamp -- busylamp check-config /etc/busylamp/busylamp.toml 2>&1) ||
    fail "check-config as the service user (ExecStartPre): $out"
echo "$out"
grep -q "1 in /var/lib/busylamp/users" <<<"$out" && ! grep -q "warning" <<<"$out" ||
    fail "check-config as busylamp: $out"
ok "users add without --config, check-config as the service user"

# serve as the service user on the packaged config (loopback, a free port): it opens its
# data dir, reads the users file and comes up without a warning.
port=$((40000 + RANDOM % 20000))
sed "s|^listen = .*|listen = [\"udp:127.0.0.1:$port\"]|" "$ROOT/etc/busylamp/busylamp.toml" >"$ROOT/tmp/serve.toml"
chmod 0644 "$ROOT/tmp/serve.toml"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin runuser -u busylamp -- \
    busylamp serve --config /tmp/serve.toml >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
    grep -q "busylamp ready" "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
done
kill "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" || true
SERVE_PID=
cat "$WORK/serve.log"
grep -q "busylamp ready" "$WORK/serve.log" || fail "serve as busylamp did not come up"
! grep -q "WARN" "$WORK/serve.log" || fail "serve warned"
ok "serve as the service user"

echo "== reinstall keeps the admin's choices"
# The admin tightens the config by hand (postinst used to chmod it back on every configure).
in_root chmod 0600 /etc/busylamp/busylamp.toml
in_root dpkg -i /tmp/busylamp.deb
[ "$(mode_of /etc/busylamp/busylamp.toml)" = "root:busylamp 600" ] || fail "reinstall reset the config to $(mode_of /etc/busylamp/busylamp.toml)"
in_root busylamp users list | grep -q "^1001	pbx.example.com	" || fail "users lost on reinstall"
ok "reinstall"

echo "== purge"
uid=$(in_root id -u busylamp)
in_root dpkg --purge busylamp
in_root test ! -e /var/lib/busylamp || fail "purge left /var/lib/busylamp"
in_root test ! -e /etc/busylamp/busylamp.toml || fail "purge left the config"
[ "$(in_root id -u busylamp)" = "$uid" ] || fail "purge removed the system user"
! in_root dpkg-statoverride --list /etc/busylamp/busylamp.toml >/dev/null || fail "purge left the statoverride"
ok "purge (system user kept)"
echo "deb.sh: all checks passed"
