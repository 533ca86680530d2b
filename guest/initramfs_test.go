package guest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

const testRelease = "6.1.0-test-amd64"

// fakeModules creates a /lib/modules/<release> tree under root and returns
// that directory. It has dependency chains, compressed modules in all
// three formats, a built-in module (virtio_mmio), a module neither present
// nor built in (virtio_pci_legacy_dev), and one listed in modules.dep whose
// file is missing (virtio_blk).
func fakeModules(t *testing.T, root string) string {
	dir := filepath.Join(root, "lib/modules", testRelease)
	dep := `kernel/drivers/misc/pvpanic/pvpanic.ko:
kernel/drivers/misc/pvpanic/pvpanic-mmio.ko: kernel/drivers/misc/pvpanic/pvpanic.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko.gz:
kernel/drivers/net/net_failover.ko.zst: kernel/net/core/failover.ko.gz
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.zst kernel/net/core/failover.ko.gz kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/unrelated.ko:
`
	writeFile(t, filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_mmio.ko\n"), 0o644)
	for _, rel := range []string{
		"kernel/drivers/misc/pvpanic/pvpanic.ko",
		"kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/fs/unrelated.ko",
	} {
		writeFile(t, filepath.Join(dir, rel), []byte("module "+path.Base(rel)), 0o644)
	}
	var gz, xzb, zst bytes.Buffer
	gw := gzip.NewWriter(&gz)
	io.WriteString(gw, "module failover.ko")
	must(t, gw.Close())
	xw, err := xz.NewWriter(&xzb)
	must(t, err)
	io.WriteString(xw, "module virtio_net.ko")
	must(t, xw.Close())
	zw, err := zstd.NewWriter(&zst)
	must(t, err)
	io.WriteString(zw, "module net_failover.ko")
	must(t, zw.Close())
	writeFile(t, filepath.Join(dir, "kernel/net/core/failover.ko.gz"), gz.Bytes(), 0o644)
	writeFile(t, filepath.Join(dir, "kernel/drivers/net/virtio_net.ko.xz"), xzb.Bytes(), 0o644)
	writeFile(t, filepath.Join(dir, "kernel/drivers/net/net_failover.ko.zst"), zst.Bytes(), 0o644)
	return dir
}

// readArchive parses a newc archive back, checks that every record's
// directory came before it (the kernel's unpacker needs that), and returns
// the records by name.
func readArchive(t *testing.T, data []byte) map[string]cpio.Record {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(data)))
	if err != nil {
		t.Fatalf("reading the archive back: %v", err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		if _, dup := byName[r.Name]; dup {
			t.Errorf("%s twice in the archive", r.Name)
		}
		if dir := path.Dir(r.Name); dir != "." {
			if d, ok := byName[dir]; !ok || d.Mode&cpio.S_IFMT != cpio.S_IFDIR {
				t.Errorf("%s comes before its directory %s", r.Name, dir)
			}
		}
		byName[r.Name] = r
	}
	return byName
}

func content(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testBins writes a static init and a static fake busybox into dir.
func testBins(t *testing.T, dir string) (initPath, bbPath string, initELF []byte) {
	initELF = makeELF(t, elf.EM_X86_64, "", "init\n")
	initPath = writeFile(t, filepath.Join(dir, "govmm"), initELF, 0o755)
	bbPath = writeFile(t, filepath.Join(dir, "busybox"), makeELF(t, elf.EM_X86_64, "", fakeBusyboxOutput), 0o755)
	return initPath, bbPath, initELF
}

func TestBuildInitramfs(t *testing.T) {
	tmp := t.TempDir()
	initPath, bbPath, initELF := testBins(t, tmp)
	fakeModules(t, tmp)

	data, warnings, err := BuildInitramfs(InitramfsOptions{
		InitPath:      initPath,
		KernelVersion: testRelease + " (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC",
		ModulesDir:    tmp, // a root tree: lib/modules/<release> is found inside
		BusyboxPath:   bbPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	recs := readArchive(t, data)

	// /init is our executable, byte for byte, and executable.
	ini, ok := recs["init"]
	if !ok || ini.Mode != cpio.S_IFREG|0o755 || content(t, ini) != string(initELF) {
		t.Errorf("init record wrong: %v", ini.Info)
	}
	// Device nodes for the early console.
	for name, want := range map[string][2]uint64{"dev/console": {5, 1}, "dev/null": {1, 3}} {
		r, ok := recs[name]
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != want[0] || r.Rminor != want[1] {
			t.Errorf("%s: %v, want char %d:%d", name, r.Info, want[0], want[1])
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "root", "etc", "bin", "sbin", "usr/bin", "run", "mnt"} {
		if r, ok := recs[d]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("directory %s missing", d)
		}
	}
	if recs["tmp"].Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o, want 1777", recs["tmp"].Mode&0o7777)
	}

	// busybox and its applets.
	if r, ok := recs["bin/busybox"]; !ok || r.Mode != cpio.S_IFREG|0o755 {
		t.Errorf("bin/busybox missing or not executable")
	}
	wantLinks := []string{"bin/sh"}
	if runtime.GOARCH == "amd64" {
		// The fake busybox runs here and lists its applets.
		wantLinks = append(wantLinks, "bin/ls", "sbin/poweroff", "usr/bin/awk")
		if _, ok := recs["linuxrc"]; ok {
			t.Errorf("linuxrc applet should be left out")
		}
	}
	for _, l := range wantLinks {
		r, ok := recs[l]
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK || content(t, r) != "/bin/busybox" {
			t.Errorf("applet link %s missing or wrong: %v", l, r.Info)
		}
	}

	// Modules: at their relative path, decompressed, unrelated ones left out.
	mdir := "lib/modules/" + testRelease + "/"
	for rel, want := range map[string]string{
		"kernel/drivers/misc/pvpanic/pvpanic.ko": "module pvpanic.ko",
		"kernel/drivers/virtio/virtio_pci.ko":    "module virtio_pci.ko",
		"kernel/net/core/failover.ko":            "module failover.ko",
		"kernel/drivers/net/net_failover.ko":     "module net_failover.ko",
		"kernel/drivers/net/virtio_net.ko":       "module virtio_net.ko",
	} {
		r, ok := recs[mdir+rel]
		if !ok || content(t, r) != want {
			t.Errorf("module %s missing or wrong", rel)
		}
	}
	for _, absent := range []string{"kernel/fs/unrelated.ko", "kernel/drivers/net/virtio_net.ko.xz"} {
		if _, ok := recs[mdir+absent]; ok {
			t.Errorf("%s should not be in the archive", absent)
		}
	}

	// The load order: DefaultModules order, each after its dependencies.
	loadRec, ok := recs[strings.TrimPrefix(LoadListPath, "/")]
	if !ok {
		t.Fatalf("%s missing", LoadListPath)
	}
	var order []string
	for _, l := range strings.Split(content(t, loadRec), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			order = append(order, strings.TrimPrefix(l, "/"+mdir))
		}
	}
	wantOrder := []string{
		"kernel/drivers/misc/pvpanic/pvpanic.ko",
		"kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/net/virtio_net.ko",
	}
	if !reflect.DeepEqual(order, wantOrder) {
		t.Errorf("load order\n%q\nwant\n%q", order, wantOrder)
	}

	// The guest's modules.dep names the decompressed files.
	gdep := content(t, recs[mdir+"modules.dep"])
	if !strings.Contains(gdep, "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n") ||
		strings.Contains(gdep, "virtio_blk") || strings.Contains(gdep, "unrelated") {
		t.Errorf("guest modules.dep:\n%s", gdep)
	}

	// Warnings: the absent module and the missing file, not the built-in one.
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"virtio_pci_legacy_dev", "virtio_blk.ko"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning about %s in %q", want, warnings)
		}
	}
	if strings.Contains(all, "virtio_mmio") {
		t.Errorf("warning about built-in virtio_mmio: %q", warnings)
	}
	if len(warnings) != 2 {
		t.Errorf("warnings = %q, want exactly 2", warnings)
	}

	if p := content(t, recs["etc/profile"]); !strings.Contains(p, "PS1=") || !strings.Contains(p, "PATH=") {
		t.Errorf("etc/profile = %q", p)
	}
	if !strings.HasPrefix(content(t, recs["etc/passwd"]), "root:x:0:0:") {
		t.Errorf("etc/passwd wrong")
	}
}

func TestBuildInitramfsModulesDirForms(t *testing.T) {
	tmp := t.TempDir()
	initPath, bbPath, _ := testBins(t, tmp)
	dir := fakeModules(t, tmp)
	base := InitramfsOptions{InitPath: initPath, BusyboxPath: bbPath}

	// The /lib/modules/<release> directory itself, with no kernel version
	// given: the release is the directory's name.
	opts := base
	opts.ModulesDir = dir
	data, _, err := BuildInitramfs(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := readArchive(t, data)["lib/modules/"+testRelease+"/kernel/drivers/virtio/virtio.ko"]; !ok {
		t.Errorf("modules not found through the release directory")
	}

	// A directory named differently from the kernel: placed under the
	// kernel's release (where modprobe looks), with a warning.
	opts.KernelVersion = "6.1.0-other"
	data, warnings, err := BuildInitramfs(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := readArchive(t, data)["lib/modules/6.1.0-other/kernel/drivers/virtio/virtio.ko"]; !ok {
		t.Errorf("modules not placed under the kernel's release")
	}
	if !strings.Contains(strings.Join(warnings, "\n"), "not named after the kernel release") {
		t.Errorf("no mismatch warning: %q", warnings)
	}

	// An explicit directory that has no modules.dep is an error.
	opts = base
	opts.ModulesDir = filepath.Join(tmp, "nothing-here")
	if _, _, err := BuildInitramfs(opts); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("bad --modules dir: err = %v", err)
	}

	// The default directory of an unknown release: a warning, no modules,
	// an empty load list.
	opts = base
	opts.KernelVersion = "0.0.0-govmm-test-none"
	data, warnings, err = BuildInitramfs(opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "no kernel modules") {
		t.Errorf("warnings = %q", warnings)
	}
	recs := readArchive(t, data)
	if c := content(t, recs[strings.TrimPrefix(LoadListPath, "/")]); strings.Contains(c, ".ko") {
		t.Errorf("load list not empty: %q", c)
	}
}

func TestBuildInitramfsRefuses(t *testing.T) {
	tmp := t.TempDir()
	initPath, bbPath, _ := testBins(t, tmp)
	dyn := writeFile(t, filepath.Join(tmp, "dyn"), makeELF(t, elf.EM_X86_64, "/lib64/ld-linux-x86-64.so.2", "x"), 0o755)
	script := writeFile(t, filepath.Join(tmp, "script"), []byte("#!/bin/sh\n"), 0o755)

	for _, tc := range []struct {
		name string
		opts InitramfsOptions
		want string
	}{
		{"dynamic init", InitramfsOptions{InitPath: dyn, BusyboxPath: bbPath}, "CGO_ENABLED=0"},
		{"script init", InitramfsOptions{InitPath: script, BusyboxPath: bbPath}, "not an ELF"},
		{"missing init", InitramfsOptions{InitPath: filepath.Join(tmp, "nope"), BusyboxPath: bbPath}, "guest init"},
		{"dynamic busybox", InitramfsOptions{InitPath: initPath, BusyboxPath: dyn}, "apt-get install busybox-static"},
		{"missing busybox", InitramfsOptions{InitPath: initPath, BusyboxPath: filepath.Join(tmp, "nope")}, "busybox"},
	} {
		_, _, err := BuildInitramfs(tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", tc.name, err, tc.want)
		}
	}

	// No busybox anywhere on the search path.
	saved := busyboxSearchPath
	busyboxSearchPath = []string{filepath.Join(tmp, "no/busybox")}
	defer func() { busyboxSearchPath = saved }()
	_, _, err := BuildInitramfs(InitramfsOptions{InitPath: initPath})
	if err == nil || !strings.Contains(err.Error(), "busybox-static") || !strings.Contains(err.Error(), "--initrd") {
		t.Errorf("no busybox: err = %v", err)
	}
}

func TestParseAppletList(t *testing.T) {
	got := parseAppletList("bin/ash\nlinuxrc\nusr/sbin/chroot\n../etc/x\nbin/../x\nbin/busybox\nsbin/\nusr/lib/x\n\nsbin/halt\n")
	want := []string{"bin/ash", "usr/sbin/chroot", "sbin/halt"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseAppletList = %q, want %q", got, want)
	}
}

// TestBuildInitramfsHostBusybox uses the host's real busybox, when it is a
// static one, and the real applet list.
func TestBuildInitramfsHostBusybox(t *testing.T) {
	bb, err := findBusybox("")
	if err != nil {
		t.Skip(err)
	}
	f, err := os.Open(bb)
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	if err := checkStaticELF(f); err != nil {
		t.Skipf("host busybox %s: %v", bb, err)
	}
	tmp := t.TempDir()
	initPath, _, _ := testBins(t, tmp)
	data, warnings, err := BuildInitramfs(InitramfsOptions{InitPath: initPath, KernelVersion: "0.0.0-govmm-test-none"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 { // only "no kernel modules"
		t.Errorf("warnings = %q", warnings)
	}
	recs := readArchive(t, data)
	for _, l := range []string{"bin/sh", "bin/ash", "bin/ls", "sbin/poweroff", "bin/mount"} {
		if r, ok := recs[l]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
			t.Errorf("applet %s missing", l)
		}
	}
}
