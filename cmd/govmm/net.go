package main

import (
	"errors"
	"fmt"
	"hash/fnv"
	stdnet "net"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"govmm/devices/tap"
	"govmm/devices/virtio"
	"govmm/devices/virtio/net"
	"govmm/guest"
)

// netSpec is a --net argument: tap:NAME[,mac=XX:XX:XX:XX:XX:XX].
type netSpec struct {
	TAP string
	MAC stdnet.HardwareAddr
}

// parseNetSpec reads a --net argument. Without mac=, the MAC is derived
// from the TAP's name (QEMU's 52:54:00 prefix, locally administered), so a
// guest keeps its address across reboots and, since the spec travels with
// a migration, on the destination.
func parseNetSpec(s string) (netSpec, error) {
	parts := strings.Split(s, ",")
	name, ok := strings.CutPrefix(parts[0], "tap:")
	if !ok || name == "" {
		return netSpec{}, fmt.Errorf("%q: want tap:NAME[,mac=XX:XX:XX:XX:XX:XX]", s)
	}
	if len(name) >= 16 { // IFNAMSIZ, with its NUL
		return netSpec{}, fmt.Errorf("%q: interface name %q is longer than 15 characters", s, name)
	}
	spec := netSpec{TAP: name}
	for _, opt := range parts[1:] {
		key, val, _ := strings.Cut(opt, "=")
		switch key {
		case "mac":
			mac, err := net.ParseMAC(val)
			if err != nil {
				return netSpec{}, fmt.Errorf("%q: %w", s, err)
			}
			spec.MAC = mac
		default:
			return netSpec{}, fmt.Errorf("%q: unknown option %q (want mac=)", s, opt)
		}
	}
	if spec.MAC == nil {
		h := fnv.New32a()
		h.Write([]byte(name))
		sum := h.Sum32()
		spec.MAC = stdnet.HardwareAddr{0x52, 0x54, 0x00, byte(sum >> 16), byte(sum >> 8), byte(sum)}
	}
	return spec, nil
}

// String gives the spec back in full, MAC included.
func (s netSpec) String() string { return "tap:" + s.TAP + ",mac=" + s.MAC.String() }

// newNIC opens the TAP and wraps it in a virtio-net device. detached opens
// the TAP's queue without attaching it (a migration destination, which
// attaches when the guest resumes here).
func newNIC(specText string, logf func(format string, args ...any), detached bool) (virtio.Device, error) {
	spec, err := parseNetSpec(specText)
	if err != nil {
		return nil, err
	}
	var opts []tap.Option
	if detached {
		opts = append(opts, tap.Detached())
	}
	t, err := tap.Open(spec.TAP, opts...)
	if err != nil {
		return nil, err
	}
	return net.New(net.Config{Backend: t, MAC: spec.MAC, Log: logf}), nil
}

// echoServerCommand is `govmm echo-server [HOST]:PORT`, the TCP echo
// server the network scenarios run inside the guest (guest.EchoServer).
func echoServerCommand() *cli.Command {
	return &cli.Command{
		Name:            "echo-server",
		Usage:           "TCP echo server (network test workload, run inside the guest)",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if code := guest.EchoServer(c.Args().Slice(), os.Stdout); code != 0 {
				return &exitError{code: code, err: errors.New("")}
			}
			return nil
		},
	}
}
