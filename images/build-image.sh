#!/bin/bash
# Build the "debian-busybox" guest image from Debian packages only.
#
#   images/build-image.sh [OUTDIR]        (default: images/build)
#
# Output in OUTDIR: vmlinuz, initrd.img, disk.qcow2, image.json (+ build-info.txt).
# See images/README.md for what the guest does and the console markers it prints.
#
# Why it is built this way:
# - The only thing reachable from these machines is the package registries, so
#   the kernel and busybox come from Debian .debs (apt-get download, cached in
#   images/.cache/), unpacked with dpkg-deb -x and never installed on the host.
# - No loop devices or mounts (they need privileges CI may lack and leave state
#   behind on failure): the root filesystem is made by `mkfs.ext4 -d DIR`.
# - Tests call this often, so a second run with unchanged sources is a no-op,
#   and outputs appear atomically (built in a temp dir, image.json last), so a
#   half-finished build never passes for a finished one.
#
# Environment overrides:
#   KERNEL_META  meta package whose dependency names the kernel
#                (default linux-image-cloud-amd64; linux-image-amd64 also works)
#   KERNEL_PKG   exact kernel package, skips the meta-package lookup
#   FORCE=1      rebuild even if the outputs look fresh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
ROOTFS_SRC="$HERE/rootfs"
CACHE="$HERE/.cache"
OUT=${1:-$HERE/build}
KERNEL_META=${KERNEL_META:-linux-image-cloud-amd64}
KERNEL_PKG=${KERNEL_PKG:-}
FORCE=${FORCE:-0}
DISK_SIZE_MB=512   # must stay <= 1 GiB so the image fits the smallest flavor

# Modules needed before the root disk can be mounted (go in the initramfs), and
# the rest (loaded by the root disk's init). Dependencies are added
# automatically; crc32c_generic is listed because ext4 only soft-depends on
# "crc32c" through the crypto API, which would need modprobe to resolve.
# Anything built into the kernel is skipped.
INITRD_MODULES="virtio_pci virtio_blk crc32c_generic ext4"
# virtio_mem: memory plugged live (a scale-up) comes from a virtio-mem device;
# the cmdline's memhp_default_state=online_movable onlines it as it comes (the
# kernel does not by itself, and there is no udev), movable so that it can be
# unplugged again, and swiotlb=2048 keeps the guest from reserving 64 MiB of
# bounce buffers because the device's range lies above 4 GiB.
ROOT_MODULES="virtio_net virtio_balloon virtio_mem evdev button"
# The config drive: an ISO 9660 cdrom on the "pc" machine's PIIX IDE controller
# (the cloud kernel has no AHCI, so no SATA). ata_piix pulls in libata and
# scsi_mod; sr_mod gives /dev/sr0; isofs (after cdrom) reads it. They get their
# own list, which the init loads in the background: probing IDE must not delay
# the network.
CDROM_MODULES="ata_piix sr_mod isofs"

log() { echo "build-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)

outputs_fresh() {
	local f
	for f in vmlinuz initrd.img disk.qcow2 image.json; do
		[ -e "$OUT/$f" ] || return 1
	done
	# image.json is written last, so it is the build's timestamp.
	[ -z "$(find "$SCRIPT" "$ROOTFS_SRC" -newer "$OUT/image.json" -print -quit)" ]
}

if [ "$FORCE" != 1 ] && outputs_fresh; then
	log "up to date: $OUT"
	exit 0
fi

# Concurrent test runs may call this at once; one builds, the others then see
# fresh outputs.
exec 9> "$OUT/.lock"
flock 9
if [ "$FORCE" != 1 ] && outputs_fresh; then
	log "up to date: $OUT (built by a concurrent run)"
	exit 0
fi
# Leftovers of a build that was killed (under the lock, so none is running).
rm -rf "$OUT"/.work.*

# --- host tools ---------------------------------------------------------------
# Installed only when missing, so a prepared machine never touches apt.
# What the build runs (dpkg-deb, mkfs.ext4, qemu-img, cpio, xz, zstd, ...) comes
# from the project's one list of programs; this is a no-op once installed.
"$HERE/../scripts/install-deps.sh" --groups image

# --- packages -------------------------------------------------------------------
APT_UPDATED=0
apt_candidate() { # print the candidate version of package $1, or nothing
	apt-cache policy "$1" 2> /dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}
apt_ensure_lists() { # run apt-get update once if apt knows nothing about $1
	if [ -z "$(apt_candidate "$1")" ] && [ "$APT_UPDATED" = 0 ]; then
		log "apt has no candidate for $1; running apt-get update"
		apt-get update > /dev/null || true
		APT_UPDATED=1
	fi
}

# fetch PACKAGE: print the path of its cached .deb, downloading it if needed.
# When apt cannot resolve the package (no lists, offline) a cached .deb of any
# version is used, so a machine that built once keeps building.
fetch() {
	local pkg=$1 ver file
	apt_ensure_lists "$pkg"
	ver=$(apt_candidate "$pkg")
	if [ -z "$ver" ]; then
		file=$(ls -1 "$CACHE/${pkg}"_*.deb 2> /dev/null | sort -V | tail -n 1 || true)
		[ -n "$file" ] || die "package $pkg: not known to apt and not cached"
		log "apt does not know $pkg; using cached $(basename "$file")"
		echo "$file"
		return
	fi
	# apt-get download names files NAME_VERSION_ARCH.deb with ':' escaped as %3a.
	file=$(ls -1 "$CACHE/${pkg}_${ver//:/%3a}"_*.deb 2> /dev/null | head -n 1 || true)
	if [ -z "$file" ]; then
		log "downloading $pkg $ver"
		# The sandbox user _apt cannot write to an arbitrary directory; we
		# only unpack the file, so fetching as the current user is fine.
		(cd "$CACHE" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$pkg=$ver" > /dev/null) \
			|| die "apt-get download $pkg=$ver failed"
		file=$(ls -1 "$CACHE/${pkg}_${ver//:/%3a}"_*.deb | head -n 1)
	fi
	echo "$file"
}

if [ -z "$KERNEL_PKG" ]; then
	apt_ensure_lists "$KERNEL_META"
	# The meta package depends on exactly one versioned image package, e.g.
	# linux-image-6.1.0-NN-cloud-amd64; that is the one with the files.
	KERNEL_PKG=$(apt-cache depends "$KERNEL_META" 2> /dev/null \
		| awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true)
	if [ -z "$KERNEL_PKG" ]; then
		# Offline and no apt lists: reuse whatever kernel was cached.
		flavour=${KERNEL_META#linux-image-}
		KERNEL_PKG=$(ls -1 "$CACHE"/linux-image-[0-9]*-"${flavour}"_*.deb 2> /dev/null \
			| sort -V | tail -n 1 | xargs -r basename | cut -d_ -f1 || true)
		[ -n "$KERNEL_PKG" ] || die "cannot resolve the kernel package of $KERNEL_META"
	fi
fi
KERNEL_DEB=$(fetch "$KERNEL_PKG")
BUSYBOX_DEB=$(fetch busybox-static)

# --- work area ---------------------------------------------------------------------
# Inside OUTDIR so the final renames are atomic (same filesystem).
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "unpacking $(basename "$KERNEL_DEB")"
dpkg-deb -x "$KERNEL_DEB" "$WORK/kpkg"
dpkg-deb -x "$BUSYBOX_DEB" "$WORK/bbpkg"
BUSYBOX="$WORK/bbpkg/bin/busybox"
[ -x "$BUSYBOX" ] || die "busybox-static package has no bin/busybox"

KVER=$(ls -1 "$WORK/kpkg/lib/modules" | head -n 1)
[ -n "$KVER" ] || die "no lib/modules/<version> in $KERNEL_PKG"
VMLINUZ="$WORK/kpkg/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no boot/vmlinuz-$KVER in $KERNEL_PKG"
MODROOT="$WORK/kpkg/lib/modules/$KVER"

# --- module resolution -------------------------------------------------------------
# The package ships no modules.dep (depmod runs at install time, which we skip),
# so dependencies are read from each module's .modinfo "depends=" field (what
# `modinfo -F depends` prints; read directly so kmod is not needed) and the
# modules are ordered so that each one comes after everything it depends on.
# Module names use '_' where file names may use '-' (crc32c-intel.ko is
# crc32c_intel); the maps are keyed by module name. (Parameter expansion, not
# basename, because a fork per module makes this loop take seconds.)
declare -A MOD_PATH=() BUILTIN=() SEEN=()
norm() { echo "${1//-/_}"; }
while IFS= read -r f; do
	b=${f##*/}
	b=${b%%.ko*}
	MOD_PATH[${b//-/_}]=$f
done < <(find "$MODROOT/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
if [ -f "$MODROOT/modules.builtin" ]; then
	while IFS= read -r f; do
		b=${f##*/}
		b=${b%%.ko*}
		BUILTIN[${b//-/_}]=1
	done < "$MODROOT/modules.builtin"
fi

# Plain .ko files, because busybox insmod cannot decompress .ko.xz/.ko.zst.
stage_module() { # stage_module NAME DESTDIR -> DESTDIR/<file base>.ko
	local src=${MOD_PATH[$1]} base
	base=$(basename "$src")
	base=${base%%.ko*}
	case "$src" in
	*.ko) cp "$src" "$2/$base.ko" ;;
	*.ko.xz) xz -dc "$src" > "$2/$base.ko" ;;
	*.ko.zst) zstd -qdc "$src" > "$2/$base.ko" ;;
	*.ko.gz) gzip -dc "$src" > "$2/$base.ko" ;;
	esac
	echo "$base"
}

module_depends() { # module_depends FILE.ko -> dependency names, one per line
	tr '\0' '\n' < "$1" | sed -n 's/^depends=//p' | head -n 1 | tr ',' '\n' | sed '/^$/d'
}

# resolve NAME DESTDIR LIST: stage NAME after its dependencies, appending file
# bases to LIST. Returns 2 when the module is neither a file nor built in.
BUILTIN_USED=()
resolve() {
	local name dest=$2 list=$3 base dep
	name=$(norm "$1")
	[ -z "${SEEN[$name]:-}" ] || return 0
	SEEN[$name]=1
	if [ -n "${MOD_PATH[$name]:-}" ]; then
		base=$(stage_module "$name" "$dest")
		for dep in $(module_depends "$dest/$base.ko"); do
			resolve "$dep" "$dest" "$list" || return $?
		done
		echo "$base" >> "$list"
	elif [ -n "${BUILTIN[$name]:-}" ]; then
		BUILTIN_USED+=("$name")
	else
		return 2
	fi
}

# --- initramfs ------------------------------------------------------------------------
install_busybox() { # install_busybox ROOT [SKIP...]: busybox + applet symlinks
	local root=$1 p
	shift
	mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
	cp "$BUSYBOX" "$root/bin/busybox"
	for p in $("$BUSYBOX" --list-full); do
		case " $* " in *" /$p "*) continue ;; esac
		[ -e "$root/$p" ] || ln -s /bin/busybox "$root/$p"
	done
}

INITRD_DIR="$WORK/initrd"
mkdir -p "$INITRD_DIR"/{dev,proc,sys,newroot,lib/modules}
install_busybox "$INITRD_DIR"
: > "$INITRD_DIR/lib/modules/load.list"
for m in $INITRD_MODULES; do
	resolve "$m" "$INITRD_DIR/lib/modules" "$INITRD_DIR/lib/modules/load.list" \
		|| die "module $m (needed to mount the root disk) is neither in $KERNEL_PKG nor built in"
done
# The kernel's built-in initramfs already provides /dev/console; making it here
# too (root only) keeps early output working if that ever changes.
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$INITRD_DIR/dev/console" c 5 1; fi

cat > "$INITRD_DIR/init" << 'EOF'
#!/bin/sh
# initramfs init: load the storage modules, mount the root disk, hand over.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec < /dev/console > /dev/console 2>&1

fail() {
	echo
	echo "CLOUD-BOOT-FAIL stage=initramfs reason=$*"
	echo "initramfs: dropping to a shell"
	while :; do setsid cttyhack sh; sleep 1; done
}

ROOT=/dev/vda ROOTFSTYPE=ext4 MODE=rw INIT=/sbin/init
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=/dev/*) ROOT=${arg#root=} ;;
	rootfstype=?*) ROOTFSTYPE=${arg#rootfstype=} ;;
	init=?*) INIT=${arg#init=} ;;
	ro) MODE=ro ;;
	rw) MODE=rw ;;
	esac
done

# The kernel package has no modules.dep; the build wrote this list in
# dependency order.
while read -r m; do
	[ -n "$m" ] && { insmod "/lib/modules/$m.ko" || echo "initramfs: insmod $m failed"; }
done < /lib/modules/load.list

# The disk node appears once virtio_blk has probed the device: allow 10 s.
i=0
while [ ! -b "$ROOT" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
[ -b "$ROOT" ] || fail "no-root-device root=$ROOT"
mount -t "$ROOTFSTYPE" -o "$MODE" "$ROOT" /newroot || fail "mount-failed root=$ROOT"
[ -x "/newroot$INIT" ] || fail "no-init init=$INIT"

# Hand the pseudo filesystems over so the real init finds them mounted.
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot "$INIT"
EOF
chmod 755 "$INITRD_DIR/init"

log "packing initrd.img"
(cd "$INITRD_DIR" && find . -mindepth 1 | LC_ALL=C sort \
	| cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n > "$WORK/initrd.img"

# --- root filesystem ----------------------------------------------------------------------
ROOT_DIR="$WORK/rootfs"
mkdir -p "$ROOT_DIR"
cp -a "$ROOTFS_SRC/." "$ROOT_DIR/"
mkdir -p "$ROOT_DIR"/{dev,proc,sys,run,tmp,root,etc,var/log,mnt}
chmod 1777 "$ROOT_DIR/tmp"
chmod 700 "$ROOT_DIR/root"
# Our own /sbin/init replaces busybox's init applet.
[ -f "$ROOT_DIR/sbin/init" ] || die "images/rootfs/sbin/init is missing"
# Scripts must be executable even if the checkout lost the mode bits.
chmod 755 "$ROOT_DIR/sbin/init" "$ROOT_DIR/usr/share/udhcpc/default.script" "$ROOT_DIR"/etc/acpi/*
install_busybox "$ROOT_DIR" /sbin/init /linuxrc
ln -sf /proc/mounts "$ROOT_DIR/etc/mtab"

ROOT_MODDIR="$ROOT_DIR/lib/modules/$KVER"
mkdir -p "$ROOT_MODDIR"
: > "$ROOT_MODDIR/load.list"
# SEEN still holds the initramfs modules, so this list gets only what the
# initramfs did not load (virtio_net needs virtio, already loaded there).
MISSING_ROOT=()
for m in $ROOT_MODULES; do
	resolve "$m" "$ROOT_MODDIR" "$ROOT_MODDIR/load.list" || MISSING_ROOT+=("$m")
done
: > "$ROOT_MODDIR/cdrom.list"
for m in $CDROM_MODULES; do
	resolve "$m" "$ROOT_MODDIR" "$ROOT_MODDIR/cdrom.list" || MISSING_ROOT+=("$m")
done
[ ${#MISSING_ROOT[@]} -eq 0 ] || log "warning: modules not available: ${MISSING_ROOT[*]}"

log "making disk.qcow2 (ext4, ${DISK_SIZE_MB} MiB virtual)"
truncate -s "${DISK_SIZE_MB}M" "$WORK/disk.raw"
mkfs.ext4 -q -F -L root -m 0 -E root_owner=0:0 -d "$ROOT_DIR" "$WORK/disk.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"
rm -f "$WORK/disk.raw"

cp "$VMLINUZ" "$WORK/vmlinuz"

cat > "$WORK/image.json.new" << 'EOF'
{
  "name": "debian-busybox",
  "os": "linux",
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "disk": "disk.qcow2",
  "cmdline": "console=ttyS0 root=/dev/vda rw quiet memhp_default_state=online_movable swiotlb=2048",
  "min_disk_gb": 1,
  "min_ram_mb": 128
}
EOF

{
	echo "kernel_package=$(dpkg-deb -f "$KERNEL_DEB" Package) $(dpkg-deb -f "$KERNEL_DEB" Version)"
	echo "kernel_release=$KVER"
	echo "busybox_package=busybox-static $(dpkg-deb -f "$BUSYBOX_DEB" Version)"
	echo "initrd_modules=$(tr '\n' ' ' < "$INITRD_DIR/lib/modules/load.list")"
	echo "root_modules=$(tr '\n' ' ' < "$ROOT_MODDIR/load.list")"
	echo "cdrom_modules=$(tr '\n' ' ' < "$ROOT_MODDIR/cdrom.list")"
	echo "builtin=${BUILTIN_USED[*]:-}"
	echo "missing=${MISSING_ROOT[*]:-}"
} > "$WORK/build-info.txt"

# Publish: the data files first, image.json last (it marks a complete build).
rm -f "$OUT/image.json"
for f in vmlinuz initrd.img disk.qcow2 build-info.txt; do
	mv -f "$WORK/$f" "$OUT/$f"
done
mv -f "$WORK/image.json.new" "$OUT/image.json"

log "built $OUT ($KERNEL_PKG, kernel $KVER)"
sed 's/^/build-image:   /' "$OUT/build-info.txt" >&2
