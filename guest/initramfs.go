package guest

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"govmm/guest/kmod"
)

// LoadListPath is the load-order file in the initramfs: one absolute module
// path per line, dependencies first. BuildInitramfs writes it; Init reads
// it. It sits outside /lib/modules/<release> so that init finds it without
// knowing the kernel release.
const LoadListPath = "/lib/modules/govmm.load"

// DefaultModules returns the modules the default initramfs carries when
// InitramfsOptions.Modules is nil: the virtio transports and devices govmm
// emulates, and pvpanic. pvpanic comes first so that it is loaded first
// (the load order follows this list): from then on a guest kernel panic is
// reported to the VMM instead of leaving a silent, spinning guest.
func DefaultModules() []string {
	return []string{
		"pvpanic", "pvpanic-mmio",
		"virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
		"virtio_pci", "virtio_mmio", "virtio_blk",
		"failover", "net_failover", "virtio_net",
		// ext4 for the disks init mounts (MountDisks), and the crc32c
		// it needs for metadata checksums: a soft dependency, which
		// modules.dep does not list.
		"crc32c_generic", "ext4",
	}
}

// InitramfsOptions says what goes into the default initramfs. The zero
// value is usable: every empty field has the default given with it.
type InitramfsOptions struct {
	// InitPath is the executable that becomes /init. Default
	// "/proc/self/exe": the running govmm, so the guest's init is always
	// the same build as the VMM. It must be a static x86-64 ELF.
	InitPath string
	// KernelVersion is the guest kernel's release, as found in the bzImage
	// header (e.g. "6.1.0-18-amd64 (debian-kernel@...) #1 SMP ..."; only
	// the first word is used). It selects the default modules directory
	// and the directory name in the guest. May be empty: see ModulesDir.
	KernelVersion string
	// ModulesDir is the host directory holding modules.dep for that kernel,
	// i.e. a /lib/modules/<release> directory. A directory containing
	// lib/modules/<release>/modules.dep (an unpacked root tree) is
	// accepted too. Default "/lib/modules/<KernelVersion>"; if that does
	// not exist, the initramfs carries no modules and BuildInitramfs says
	// so in a warning (fine for a kernel with virtio built in). A
	// ModulesDir given explicitly must exist.
	ModulesDir string
	// BusyboxPath is the busybox binary that provides /bin/sh and the
	// other commands. Default: the first of /bin/busybox, /usr/bin/busybox,
	// /sbin/busybox, /usr/sbin/busybox, /usr/lib/busybox/busybox. It must
	// be statically linked (Debian: apt-get install busybox-static):
	// the initramfs has no C library, and govmm does not copy one.
	BusyboxPath string
	// Modules are the module names to include with their dependencies.
	// nil means DefaultModules(). Names may use '-' or '_'.
	Modules []string
}

// BuildInitramfs returns the default initramfs as an uncompressed newc cpio
// archive, which the kernel unpacks into its rootfs before running /init
// (Documentation/driver-api/early-userspace/buffer-format.rst). warnings
// are things the user should know that do not stop the boot (a missing
// module, no modules directory); err is for what makes the archive useless.
func BuildInitramfs(opts InitramfsOptions) (archive []byte, warnings []string, err error) {
	var buf bytes.Buffer
	warnings, err = WriteInitramfs(&buf, opts)
	if err != nil {
		return nil, warnings, err
	}
	return buf.Bytes(), warnings, nil
}

// WriteInitramfs is BuildInitramfs writing to w. On error, w may hold a
// partial archive.
func WriteInitramfs(w io.Writer, opts InitramfsOptions) (warnings []string, err error) {
	b := &builder{w: cpio.Newc.Writer(w), dirs: map[string]bool{}}
	if err := b.build(opts); err != nil {
		return b.warnings, err
	}
	return b.warnings, nil
}

// builder writes cpio records, creating parent directories first: the
// kernel's unpacker (init/initramfs.c) does not create missing parents, it
// fails to create the file instead.
type builder struct {
	w        cpio.RecordWriter
	dirs     map[string]bool
	warnings []string
}

func (b *builder) warnf(format string, args ...any) {
	b.warnings = append(b.warnings, fmt.Sprintf(format, args...))
}

// mkdirAll writes a directory record for name and each missing parent.
// Names are relative to the archive root ("usr/bin").
func (b *builder) mkdirAll(name string, mode uint64) error {
	if name == "." || name == "" || b.dirs[name] {
		return nil
	}
	if err := b.mkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	b.dirs[name] = true
	rec := cpio.Directory(name, mode)
	rec.NLink = 2
	return b.w.WriteRecord(rec)
}

// add writes rec after making sure its directory exists.
func (b *builder) add(rec cpio.Record) error {
	rec.Name = strings.TrimPrefix(rec.Name, "/")
	if err := b.mkdirAll(path.Dir(rec.Name), 0o755); err != nil {
		return err
	}
	if rec.NLink == 0 {
		rec.NLink = 1
	}
	if err := b.w.WriteRecord(rec); err != nil {
		return fmt.Errorf("writing %s to the initramfs: %w", rec.Name, err)
	}
	return nil
}

func (b *builder) file(name string, content []byte, perm uint64) error {
	return b.add(cpio.StaticRecord(content, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm}))
}

// Files of /etc. PS1 and PATH are also set by init in the shell's
// environment; /etc/profile repeats them for shells started later (su -,
// a login shell started by hand).
const (
	etcPasswd  = "root:x:0:0:root:/root:/bin/sh\n"
	etcGroup   = "root:x:0:\ntty:x:5:\n"
	etcProfile = "export PATH=" + shellPATH + "\nexport PS1='" + shellPS1 + "'\nexport HOME=/root\n"
)

func (b *builder) build(opts InitramfsOptions) error {
	// 1. The directory skeleton. /tmp is sticky and world-writable like on
	// any Unix; /root is root's home.
	for _, d := range []struct {
		name string
		mode uint64
	}{
		{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"tmp", 0o1777},
		{"root", 0o700}, {"etc", 0o755}, {"bin", 0o755}, {"sbin", 0o755},
		{"usr/bin", 0o755}, {"usr/sbin", 0o755}, {"run", 0o755}, {"mnt", 0o755},
		{"lib/modules", 0o755},
	} {
		if err := b.mkdirAll(d.name, d.mode); err != nil {
			return err
		}
	}

	// 2. Device nodes that must exist before devtmpfs is mounted: the
	// kernel opens /dev/console as init's stdin, stdout and stderr
	// (init/main.c console_on_rootfs) before running /init, and prints
	// "Warning: unable to open an initial console" if it is missing.
	// Numbers from Documentation/admin-guide/devices.txt.
	if err := b.add(cpio.CharDev("dev/console", 0o600, 5, 1)); err != nil {
		return err
	}
	if err := b.add(cpio.CharDev("dev/null", 0o666, 1, 3)); err != nil {
		return err
	}

	// 3. /init: govmm itself.
	initPath := opts.InitPath
	if initPath == "" {
		initPath = "/proc/self/exe"
	}
	initELF, err := os.ReadFile(initPath)
	if err != nil {
		return fmt.Errorf("reading the guest init %s: %w", initPath, err)
	}
	if err := checkStaticELF(bytes.NewReader(initELF)); err != nil {
		if errors.Is(err, errDynamic) {
			return fmt.Errorf("guest init %s is %v: govmm must be built with CGO_ENABLED=0 to serve as the guest init", initPath, err)
		}
		return fmt.Errorf("guest init %s: %w", initPath, err)
	}
	if err := b.file("init", initELF, 0o755); err != nil {
		return err
	}

	// 4. busybox and one symlink per applet.
	if err := b.addBusybox(opts.BusyboxPath); err != nil {
		return err
	}

	// 5. /etc.
	for _, f := range []struct{ name, content string }{
		{"etc/passwd", etcPasswd}, {"etc/group", etcGroup},
		{"etc/profile", etcProfile}, {"etc/hostname", Hostname + "\n"},
	} {
		if err := b.file(f.name, []byte(f.content), 0o644); err != nil {
			return err
		}
	}

	// 6. Kernel modules and the load-order file.
	if err := b.addModules(opts); err != nil {
		return err
	}
	return cpio.WriteTrailer(b.w)
}

func (b *builder) addBusybox(explicit string) error {
	bbPath, err := findBusybox(explicit)
	if err != nil {
		return err
	}
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	if err := checkStaticELF(bytes.NewReader(bb)); err != nil {
		if errors.Is(err, errDynamic) {
			return fmt.Errorf("busybox %s is %v, and the guest initramfs has no C library: "+
				"install a static busybox (apt-get install busybox-static), or boot your own with --initrd", bbPath, err)
		}
		return fmt.Errorf("busybox %s: %w", bbPath, err)
	}
	if err := b.file("bin/busybox", bb, 0o755); err != nil {
		return err
	}
	links, warning := busyboxApplets(bbPath)
	if warning != "" {
		b.warnf("%s", warning)
	}
	// init starts /bin/sh; make sure it exists whatever the list says.
	links = append([]string{"bin/sh"}, links...)
	done := map[string]bool{}
	for _, l := range links {
		if done[l] {
			continue
		}
		done[l] = true
		if err := b.add(cpio.Symlink(l, "/bin/busybox")); err != nil {
			return err
		}
	}
	return nil
}

// exists reports whether p exists (following symlinks).
func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// modulesSource finds the modules.dep directory and the release name to
// use in the guest. dir == "" with a nil error means: no modules, the
// reason already given as a warning.
func (b *builder) modulesSource(opts InitramfsOptions) (dir, release string, err error) {
	kver, _, _ := strings.Cut(strings.TrimSpace(opts.KernelVersion), " ")
	if opts.ModulesDir == "" {
		if kver == "" {
			b.warnf("kernel version unknown: the initramfs carries no kernel modules (give --modules DIR if the kernel needs some)")
			return "", "", nil
		}
		dir = filepath.Join("/lib/modules", kver)
		if !exists(filepath.Join(dir, "modules.dep")) {
			b.warnf("no %s on this host: the initramfs carries no kernel modules; "+
				"fine if the kernel has virtio built in, otherwise give --modules DIR", filepath.Join(dir, "modules.dep"))
			return "", "", nil
		}
		return dir, kver, nil
	}

	dir = opts.ModulesDir
	switch {
	case exists(filepath.Join(dir, "modules.dep")):
	case kver != "" && exists(filepath.Join(dir, "lib/modules", kver, "modules.dep")):
		dir = filepath.Join(dir, "lib/modules", kver)
	default:
		// A root tree with exactly one kernel's modules.
		found, _ := filepath.Glob(filepath.Join(dir, "lib/modules/*/modules.dep"))
		if len(found) != 1 {
			return "", "", fmt.Errorf("modules directory %s: no modules.dep in it (nor in %s/lib/modules/<release>); "+
				"give the /lib/modules/<release> directory of the guest kernel", opts.ModulesDir, opts.ModulesDir)
		}
		dir = filepath.Dir(found[0])
	}
	release = filepath.Base(filepath.Clean(dir))
	if kver != "" && release != kver {
		b.warnf("modules directory %s is not named after the kernel release %s: "+
			"if its modules were built for another kernel, the guest will refuse them", dir, kver)
		release = kver
	}
	return dir, release, nil
}

func (b *builder) addModules(opts InitramfsOptions) error {
	var loadList strings.Builder
	loadList.WriteString("# Written by govmm: modules loaded by init, in this order (dependencies first).\n")
	dir, release, err := b.modulesSource(opts)
	if err != nil {
		return err
	}
	if dir != "" {
		if err := b.copyModules(opts, dir, release, &loadList); err != nil {
			return err
		}
	}
	return b.file(LoadListPath, []byte(loadList.String()), 0o644)
}

// copyModules copies the wanted modules of dir with their dependencies to
// lib/modules/<release>/ at the same relative paths, stored decompressed,
// and writes a modules.dep restricted to them (so that busybox modprobe
// works in the guest shell).
func (b *builder) copyModules(opts InitramfsOptions, dir, release string, loadList *strings.Builder) error {
	depFile, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return err
	}
	table, err := kmod.ParseDep(depFile)
	depFile.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	var builtin map[string]bool
	builtinText, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err == nil {
		if builtin, err = kmod.ParseBuiltin(bytes.NewReader(builtinText)); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}

	wanted := opts.Modules
	if wanted == nil {
		wanted = DefaultModules()
	}
	res, err := table.Resolve(wanted, builtin)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if len(res.Missing) > 0 {
		b.warnf("%d of the guest's modules are neither in %s/modules.dep nor built into the kernel, so the guest will not have them: %s",
			len(res.Missing), dir, strings.Join(res.Missing, ", "))
	}

	guestDir := path.Join("lib/modules", release)
	included := map[string]string{} // host relative path -> guest relative path
	for _, rel := range res.Files {
		data, err := readModule(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			b.warnf("module file %s: %v; skipped", rel, err)
			continue
		}
		plain := strings.TrimSuffix(rel, kmod.Compression(rel))
		if err := b.file(path.Join(guestDir, plain), data, 0o644); err != nil {
			return err
		}
		included[rel] = plain
		fmt.Fprintf(loadList, "/%s/%s\n", guestDir, plain)
	}

	var dep strings.Builder
	for _, rel := range res.Files {
		plain, ok := included[rel]
		if !ok {
			continue
		}
		dep.WriteString(plain + ":")
		for _, d := range table.Deps[rel] {
			if p, ok := included[d]; ok {
				dep.WriteString(" " + p)
			}
		}
		dep.WriteString("\n")
	}
	if err := b.file(path.Join(guestDir, "modules.dep"), []byte(dep.String()), 0o644); err != nil {
		return err
	}
	if builtinText != nil {
		if err := b.file(path.Join(guestDir, "modules.builtin"), builtinText, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// maxModuleSize bounds a decompressed module; the largest in a Debian
// kernel are a few MiB.
const maxModuleSize = 256 << 20

// readModule returns the module file's ELF bytes, decompressing .ko.gz,
// .ko.xz and .ko.zst so that any guest kernel can load them (in-kernel
// decompression needs Linux >= 6.4 and CONFIG_MODULE_DECOMPRESS).
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch kmod.Compression(p) {
	case ".gz":
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = zr
	case ".xz":
		zr, err := xz.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = zr
	case ".zst":
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	}
	data, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("decompressing: %w", err)
	}
	if len(data) > maxModuleSize {
		return nil, fmt.Errorf("larger than %d bytes", maxModuleSize)
	}
	return data, nil
}
