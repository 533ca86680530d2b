#!/bin/sh
# fetch-kernel.sh [cloud|generic] — download a stock Debian kernel package and
# unpack it into the govmm cache, then print the unpacked root directory.
#
# The root contains boot/vmlinuz-<kver> (a bzImage, see the kernel's
# Documentation/arch/x86/boot.rst) and lib/modules/<kver>/ (modules.dep and
# the .ko files). It is used as the guest kernel by `make run` and as both
# the test-host kernel and the guest kernel by tests/testhost:
#
#     K=$(tests/fetch-kernel.sh cloud)
#     govmm run --modules $K/lib/modules/* $K/boot/vmlinuz-*
#
# Flavours:
#   cloud    linux-image-cloud-amd64 (small, KVM-oriented; no 9p)   [default]
#   generic  linux-image-amd64, as the -unsigned package (has 9p, more drivers)
#
# Nothing is installed on the machine: `apt-get download` fetches the .deb
# into the cache and `dpkg -x` unpacks it there. Running it again for the
# same package version only prints the path. The cache directory is
# ${GOVMM_CACHE:-$HOME/.cache/govmm}; remove its kernel/ subdirectory to
# force a fresh download.
set -eu

die() {
	echo "fetch-kernel.sh: $*" >&2
	exit 1
}

flavour=${1:-cloud}
case $flavour in
cloud) meta=linux-image-cloud-amd64 ;;
generic) meta=linux-image-amd64 ;;
-h | --help)
	sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown flavour '$flavour' (want cloud or generic)" ;;
esac

for tool in apt-cache apt-get dpkg; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "'$tool' not found: this script needs a Debian-based machine"
done
# depmod often lives in /sbin, which is not on every user's PATH.
depmod=$(PATH=$PATH:/sbin:/usr/sbin command -v depmod 2>/dev/null) ||
	die "'depmod' not found: install it with 'apt-get install kmod'"

cache=${GOVMM_CACHE:-${HOME:?HOME is not set}/.cache/govmm}/kernel

# The metapackage depends on exactly one versioned image package, e.g.
# linux-image-cloud-amd64 -> linux-image-6.1.0-56-cloud-amd64.
pkg=$(apt-cache depends "$meta" 2>/dev/null |
	sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
[ -n "$pkg" ] || die "cannot resolve $meta to a versioned package (run 'apt-get update'?)"
case $flavour in
# The generic image package is signed for Secure Boot; the -unsigned one has
# the same kernel and modules without the signature wrapper.
generic) pkg=$pkg-unsigned ;;
esac

version=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] ||
	die "no installable version of $pkg (run 'apt-get update'?)"

root=$cache/${pkg}_$version
if [ -f "$root/.complete" ]; then
	echo "$root"
	exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# As root, apt drops to the _apt user to download and warns that it cannot
# write into our private temporary directory; tell it not to bother.
sandbox=
[ "$(id -u)" -ne 0 ] || sandbox="-o APT::Sandbox::User=root"

echo "fetch-kernel.sh: downloading $pkg=$version" >&2
# shellcheck disable=SC2086 # $sandbox is empty or two words on purpose
(cd "$tmp" && apt-get download -q $sandbox "$pkg=$version" >&2) ||
	die "apt-get download $pkg=$version failed"
deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "apt-get download produced no .deb for $pkg"

mkdir "$tmp/root"
dpkg -x "$deb" "$tmp/root" || die "dpkg -x $deb failed"
ls "$tmp"/root/boot/vmlinuz-* >/dev/null 2>&1 || die "$deb has no boot/vmlinuz-*"
kver=$(ls "$tmp/root/lib/modules" 2>/dev/null | head -n 1)
[ -n "$kver" ] || die "$deb has no lib/modules/*"
# The package ships no modules.dep: Debian's postinst creates it with depmod
# when the package is installed. We unpack without installing, so run
# depmod on the unpacked tree; loaders (govmm's initramfs, modprobe) need it.
"$depmod" -b "$tmp/root" "$kver" || die "depmod -b ... $kver failed"
touch "$tmp/root/.complete"

# Publish with one rename so an interrupted run never leaves a half-unpacked
# root behind the final name. If a concurrent run got there first, its copy
# is complete and stays (ours is dropped with $tmp).
if ! mv -T "$tmp/root" "$root" 2>/dev/null; then
	[ -f "$root/.complete" ] || die "cannot move the unpacked kernel to $root"
fi
echo "$root"
