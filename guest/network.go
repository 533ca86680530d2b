package guest

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// Networking: govmm run --net gives the guest virtio-net NICs (eth0, ...).
// With no DHCP server on a TAP, init configures eth0 itself from the
// kernel command line:
//
//	govmm.ip=10.0.2.15/24           address and prefix length
//	govmm.ip=10.0.2.15/24,10.0.2.1  ... and a default gateway
//
// The loopback interface is always brought up.

// IPConfig is eth0's static configuration.
type IPConfig struct {
	Address netip.Prefix // the guest's address and its subnet
	Gateway netip.Addr   // default route; invalid for none
}

// ParseIPConfig reads the value of govmm.ip.
func ParseIPConfig(s string) (IPConfig, error) {
	addr, gw, hasGW := strings.Cut(s, ",")
	var c IPConfig
	var err error
	if c.Address, err = netip.ParsePrefix(addr); err != nil {
		return c, fmt.Errorf("govmm.ip=%s: want ADDRESS/PREFIX[,GATEWAY]: %v", s, err)
	}
	if hasGW {
		if c.Gateway, err = netip.ParseAddr(gw); err != nil {
			return c, fmt.Errorf("govmm.ip=%s: gateway: %v", s, err)
		}
	}
	return c, nil
}

// configureNetwork brings lo up and, if asked, configures eth0, with
// busybox's ip applet. Failures are reported and the boot goes on.
func configureNetwork(opts Options) {
	ip := func(args ...string) error {
		out, err := exec.Command("/bin/busybox", append([]string{"ip"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := ip("link", "set", "lo", "up"); err != nil {
		logf("%v", err)
	}
	if opts.IP == nil {
		return
	}
	steps := [][]string{
		{"link", "set", "eth0", "up"},
		{"addr", "add", opts.IP.Address.String(), "dev", "eth0"},
	}
	if opts.IP.Gateway.IsValid() {
		steps = append(steps, []string{"route", "add", "default", "via", opts.IP.Gateway.String()})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			logf("eth0: %v", err)
			return
		}
	}
	logf("eth0 configured: %s", opts.IP.Address)
}
