package guest

import (
	"reflect"
	"strings"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(`console=ttyS0  govmm.x="a b" quiet` + "\n" + `-- govmm.shell=/nope`)
	want := []string{"console=ttyS0", "govmm.x=a b", "quiet"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SplitCmdline = %q, want %q", got, want)
	}
}

func TestParseCmdline(t *testing.T) {
	got := ParseCmdline("BOOT_IMAGE=/vmlinuz govmm.shell=/bin/ash govmm.debug govmm.= govmm.shell=/bin/sh2 notgovmm.x=1 govmm.ip=10.0.0.2/24\n")
	want := map[string]string{"shell": "/bin/sh2", "debug": "", "ip": "10.0.0.2/24"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseCmdline = %v, want %v", got, want)
	}
}

func TestOptionsFromCmdline(t *testing.T) {
	opts, unknown := OptionsFromCmdline("console=ttyS0 govmm.console=hvc0 govmm.zz=1 govmm.aa")
	if opts.Shell != DefaultShell || opts.Console != "/dev/hvc0" {
		t.Errorf("opts = %+v", opts)
	}
	if !reflect.DeepEqual(unknown, []string{"govmm.aa", "govmm.zz"}) {
		t.Errorf("unknown = %q", unknown)
	}
	opts, unknown = OptionsFromCmdline("govmm.shell=/bin/ash")
	if opts.Shell != "/bin/ash" || opts.Console != "" || opts.NoMount || unknown != nil {
		t.Errorf("opts = %+v, unknown = %q", opts, unknown)
	}
	opts, unknown = OptionsFromCmdline("govmm.mount=off")
	if !opts.NoMount || unknown != nil {
		t.Errorf("govmm.mount=off: opts = %+v, unknown = %q", opts, unknown)
	}
	opts, unknown = OptionsFromCmdline("govmm.ip=10.0.2.15/24,10.0.2.1")
	if opts.IP == nil || opts.IP.Address.String() != "10.0.2.15/24" || opts.IP.Gateway.String() != "10.0.2.1" || unknown != nil {
		t.Errorf("govmm.ip: opts = %+v, unknown = %q", opts, unknown)
	}
	opts, unknown = OptionsFromCmdline("govmm.ip=10.0.2.15")
	if opts.IP != nil || len(unknown) != 1 || !strings.Contains(unknown[0], "ADDRESS/PREFIX") {
		t.Errorf("govmm.ip without prefix: opts = %+v, unknown = %q", opts, unknown)
	}
	opts, unknown = OptionsFromCmdline("govmm.mount=maybe")
	if opts.NoMount || !reflect.DeepEqual(unknown, []string{"govmm.mount=maybe"}) {
		t.Errorf("govmm.mount=maybe: opts = %+v, unknown = %q", opts, unknown)
	}
}
