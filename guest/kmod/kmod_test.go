package kmod

import (
	"reflect"
	"strings"
	"testing"
)

const testDep = `# comment
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko

kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/misc/pvpanic/pvpanic-mmio.ko: kernel/drivers/misc/pvpanic/pvpanic.ko
kernel/drivers/misc/pvpanic/pvpanic.ko:
`

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/misc/pvpanic/pvpanic-mmio.ko": "pvpanic_mmio",
		"pvpanic-mmio":     "pvpanic_mmio",
		"virtio_net.ko.xz": "virtio_net",
		"a/b/c.ko.zst":     "c",
		"x.ko.gz":          "x",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
	if Compression("a.ko.zst") != ".zst" || Compression("a.ko") != "" {
		t.Errorf("Compression wrong")
	}
}

func TestResolveOrder(t *testing.T) {
	tab, err := ParseDep(strings.NewReader(testDep))
	if err != nil {
		t.Fatal(err)
	}
	res, err := tab.Resolve([]string{"pvpanic-mmio", "virtio_net", "virtio", "virtio_blk", "virtio_mmio"},
		map[string]bool{"virtio_mmio": true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/misc/pvpanic/pvpanic.ko",
		"kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
		"kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/net/virtio_net.ko.xz",
	}
	if !reflect.DeepEqual(res.Files, want) {
		t.Errorf("Files =\n%q\nwant\n%q", res.Files, want)
	}
	if !reflect.DeepEqual(res.Missing, []string{"virtio_blk"}) {
		t.Errorf("Missing = %q", res.Missing)
	}
	if !reflect.DeepEqual(res.Builtin, []string{"virtio_mmio"}) {
		t.Errorf("Builtin = %q", res.Builtin)
	}
}

func TestResolveCycle(t *testing.T) {
	tab, err := ParseDep(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Resolve([]string{"a"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("Resolve of a cycle: err = %v, want a cycle error", err)
	}
}

func TestParseDepRejects(t *testing.T) {
	for _, in := range []string{
		"no colon here\n",
		"../../etc/passwd.ko:\n",
		"/abs/x.ko:\n",
		"a.ko: ../b.ko\n",
	} {
		if _, err := ParseDep(strings.NewReader(in)); err == nil {
			t.Errorf("ParseDep(%q) accepted a bad line", in)
		}
	}
}

func TestParseBuiltin(t *testing.T) {
	set, err := ParseBuiltin(strings.NewReader("kernel/drivers/virtio/virtio.ko\n\nkernel/x/pvpanic-pci.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !set["virtio"] || !set["pvpanic_pci"] || len(set) != 2 {
		t.Errorf("ParseBuiltin = %v", set)
	}
}

func TestReadLoadList(t *testing.T) {
	got, err := ReadLoadList(strings.NewReader("# order\n/lib/modules/6.1/a.ko\n\n /lib/modules/6.1/b.ko \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/modules/6.1/a.ko", "/lib/modules/6.1/b.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadLoadList = %q, want %q", got, want)
	}
}
