package testhost

import (
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// fakeModules writes a small lib/modules/<kver> tree: virtio_net needs
// net_failover needs failover; kvm-amd needs kvm; other.ko is unrelated.
func fakeModules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": "kernel/net/core/failover.ko:\n" +
			"kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
			"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
			"kernel/drivers/virtio/virtio.ko:\n" +
			"kernel/drivers/virtio/virtio_ring.ko:\n" +
			"kernel/fs/other.ko:\n",
		"modules.order": "kernel/fs/other.ko\nkernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\n" +
			"kernel/drivers/net/virtio_net.ko\nkernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
		"modules.builtin":         "kernel/drivers/tty/serial/8250/8250.ko\n",
		"modules.builtin.modinfo": "8250.parameter=x\x00",
	}
	for _, m := range []string{"net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net",
		"drivers/virtio/virtio", "drivers/virtio/virtio_ring", "fs/other"} {
		files["kernel/"+m+".ko"] = "ELF " + m
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readArchive(t *testing.T, file string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		// The kernel's unpacker creates no missing parents
		// (init/initramfs.c), so every parent must come first.
		if dir := path.Dir(r.Name); dir != "." {
			if p, ok := byName[dir]; !ok || p.Mode&cpio.S_IFMT != cpio.S_IFDIR {
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

func TestTrimmedModules(t *testing.T) {
	src := fakeModules(t)
	a := &archive{}
	sel := []string{"kernel/drivers/net/virtio_net.ko", "kernel/drivers/virtio/"}
	if err := a.modules("guest/lib/modules/6.1.0-test", src, sel); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := a.write(out); err != nil {
		t.Fatal(err)
	}
	recs := readArchive(t, out)
	base := "guest/lib/modules/6.1.0-test/"
	wantDep := "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
		"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
		"kernel/drivers/virtio/virtio.ko:\n" +
		"kernel/drivers/virtio/virtio_ring.ko:\n"
	wantDep = "kernel/net/core/failover.ko:\n" + wantDep
	if got := content(t, recs[base+"modules.dep"]); got != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", got, wantDep)
	}
	if got := content(t, recs[base+"modules.order"]); strings.Contains(got, "other") || !strings.Contains(got, "virtio_ring") {
		t.Errorf("modules.order not trimmed to the selection: %q", got)
	}
	for _, m := range []string{"kernel/net/core/failover.ko", "kernel/drivers/virtio/virtio_ring.ko", "modules.builtin.modinfo"} {
		if _, ok := recs[base+m]; !ok {
			t.Errorf("archive lacks %s", base+m)
		}
	}
	if _, ok := recs[base+"kernel/fs/other.ko"]; ok {
		t.Error("archive has other.ko, which nothing selected")
	}

	if err := (&archive{}).modules("x", src, []string{"kernel/no/such.ko"}); err == nil {
		t.Error("selecting a module modules.dep lacks: no error")
	}
}

func TestBuildInitramfs(t *testing.T) {
	dir := t.TempDir()
	mods := fakeModules(t)
	// Give the fake tree the modules the test host loads.
	hostDep := "kernel/virt/lib/irqbypass.ko:\nkernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n" +
		"kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n" +
		"kernel/drivers/net/tun.ko:\nkernel/drivers/net/veth.ko:\nkernel/net/bridge/bridge.ko:\n" +
		"kernel/drivers/misc/pvpanic/pvpanic.ko:\nkernel/drivers/block/virtio_blk.ko:\n"
	dep, _ := os.ReadFile(filepath.Join(mods, "modules.dep"))
	os.WriteFile(filepath.Join(mods, "modules.dep"), append(dep, hostDep...), 0o644)
	for _, line := range strings.Split(hostDep, "\n") {
		if m, _, ok := strings.Cut(line, ":"); ok {
			os.MkdirAll(filepath.Join(mods, filepath.Dir(m)), 0o755)
			os.WriteFile(filepath.Join(mods, m), []byte("ELF"), 0o644)
		}
	}
	stub := filepath.Join(dir, "stub")
	os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755)
	h := &Host{
		Kernel:  Kernel{Version: "6.1.0-test", BzImage: stub, ModulesDir: mods},
		Generic: Kernel{Version: "6.1.0-gen", BzImage: stub, ModulesDir: mods},
		Govmm:   stub,
		Busybox: stub,
	}
	out := filepath.Join(dir, "initrd.cpio")
	if err := h.BuildInitramfs(out, []string{"/scenario/linux.test", "-test.run", "It's"}, map[string]string{"/scenario/linux.test": stub}); err != nil {
		t.Fatal(err)
	}
	recs := readArchive(t, out)
	if c := recs["dev/console"]; c.Mode&cpio.S_IFMT != cpio.S_IFCHR || c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console: %v, want char device 5,1", c)
	}
	for _, want := range []string{"bin/busybox", "bin/govmm", "scenario/linux.test", "guest/vmlinuz-6.1.0-test",
		"guest/lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko", "lib/modules/6.1.0-test/kernel/arch/x86/kvm/kvm-amd.ko",
		"guest-generic/vmlinuz-6.1.0-gen", "guest-generic/lib/modules/6.1.0-gen/kernel/drivers/net/virtio_net.ko"} {
		if _, ok := recs[want]; !ok {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	script := content(t, recs["init"])
	for _, want := range []string{
		`'/scenario/linux.test' '-test.run' 'It'\''s'`,
		"GOVMM_MODULES=/guest/lib/modules/6.1.0-test",
		"GOVMM_KERNEL=/guest/vmlinuz-6.1.0-test",
		"GOVMM_GENERIC_MODULES=/guest-generic/lib/modules/6.1.0-gen",
		"GOVMM_GENERIC_KERNEL=/guest-generic/vmlinuz-6.1.0-gen",
		`echo "TESTHOST-EXIT $status"`,
	} {
		if !strings.Contains(script, want) {
			t.Errorf("/init lacks %q:\n%s", want, script)
		}
	}

	// Without a generic kernel (Options.NoGeneric) nothing of it is packed
	// or announced.
	h.Generic = Kernel{}
	if err := h.BuildInitramfs(out, []string{"/bin/sh"}, nil); err != nil {
		t.Fatal(err)
	}
	recs = readArchive(t, out)
	if _, ok := recs["guest-generic"]; ok {
		t.Error("initramfs without a generic kernel has guest-generic/")
	}
	if script := content(t, recs["init"]); strings.Contains(script, "GOVMM_GENERIC") || !strings.Contains(script, "GOVMM_KERNEL=") {
		t.Errorf("/init without a generic kernel: want GOVMM_KERNEL and no GOVMM_GENERIC_*:\n%s", script)
	}
}

// TestShellJoin runs the quoted words through a real sh.
func TestShellJoin(t *testing.T) {
	args := []string{"plain", "with space", "it's", `$HOME "q" \n`, ""}
	out, err := exec.Command("/bin/sh", "-c", `for a in `+shellJoin(args)+`; do printf '<%s>' "$a"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := `<plain><with space><it's><$HOME "q" \n><>`; string(out) != want {
		t.Fatalf("sh saw %s, want %s", out, want)
	}
}
