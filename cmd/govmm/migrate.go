package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"govmm/guest"
	"govmm/migration"
	"govmm/vmm/control"
	"govmm/vmm/machine"
)

// `govmm receive` and `govmm migrate`: the two ends of a live migration as
// a user drives it from two terminals. The protocol itself is package
// migration; read migration/doc.go for the sequence diagram.

func receiveCommand() *cli.Command {
	return &cli.Command{
		Name:  "receive",
		Usage: "wait for a VM migrated from another govmm, then run it with its console here",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Required: true, Usage: "address to accept the migration on, e.g. 127.0.0.1:4444"},
			&cli.StringFlag{Name: "api", Usage: "control socket once the VM runs here (default govmm-PID.sock)"},
			&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device"},
			&cli.StringFlag{Name: "json", Usage: "write the receive report as JSON to this file"},
		},
		Action: func(c *cli.Context) error {
			return receive(c.String("listen"), c.String("api"), c.String("kvm"), c.String("json"))
		},
	}
}

func receive(listen, apiPath, kvmDevice, jsonPath string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	fmt.Fprintf(os.Stderr, "govmm: waiting for a migration on %s\n", ln.Addr())
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(os.Stderr, "govmm: receiving a VM from %s\n", conn.RemoteAddr())

	dst := machine.NewDestination(machine.Config{
		NumVCPUs: 1, SerialOut: os.Stdout, KVMDevice: kvmDevice,
		Log: logToTerminal, Devices: deviceFactory(logToTerminal, true),
	})
	rep, err := migration.Receive(context.Background(), conn, dst, migration.ReceiveOptions{})
	if jsonPath != "" && rep != nil {
		writeJSONFile(jsonPath, rep)
	}
	m := dst.Machine()
	if err != nil {
		if m != nil {
			m.Close()
		}
		return fmt.Errorf("migration from %s failed: %w", conn.RemoteAddr(), err)
	}
	defer m.Close()
	fmt.Fprintf(os.Stderr, "govmm: the VM runs here now (%d MiB in %d rounds, %.1f MiB on the wire, %v in all)\n",
		rep.GuestRAM>>20, rep.Rounds, float64(rep.WireBytes)/(1<<20), rep.TotalTime.Round(time.Millisecond))
	return attach(m, apiPath, "", func() machine.Exit { return <-dst.Exit() })
}

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "live-migrate a running VM to a `govmm receive`",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Required: true, Usage: "host:port of the destination's govmm receive"},
			&cli.StringFlag{Name: "api", Usage: "control socket of the VM to migrate (default: the only running govmm)"},
			&cli.StringFlag{Name: "max-bandwidth", Value: "128M", Usage: "bytes per second during pre-copy (K, M, G; 0 or unlimited)"},
			&cli.DurationFlag{Name: "downtime-limit", Value: migration.DefaultDowntimeLimit, Usage: "stop iterating when the estimated downtime is below this"},
			&cli.IntFlag{Name: "max-rounds", Value: migration.DefaultMaxRounds, Usage: "most rounds, the final stop-and-copy included"},
			&cli.BoolFlag{Name: "adaptive", Usage: "Xen's adaptive rate: start at 100 Mbit/s, then dirty rate + 50 Mbit/s per round"},
			&cli.StringFlag{Name: "json", Usage: "write the migration report as JSON to this file (- for stdout)"},
			&cli.BoolFlag{Name: "verify", Usage: "have the destination compare guest RAM with the source's, page by page, before it resumes the guest (costs downtime; for debugging)"},
		},
		Action: func(c *cli.Context) error {
			req, err := migrateRequest(c.String("to"), c.String("max-bandwidth"), c.Duration("downtime-limit"), c.Int("max-rounds"), c.Bool("adaptive"))
			if err != nil {
				return err
			}
			req.Verify = c.Bool("verify")
			api := c.String("api")
			if api == "" {
				if api, err = findAPI(); err != nil {
					return err
				}
			}
			fmt.Fprintf(os.Stderr, "govmm: migrating the VM of %s to %s\n", api, req.To)
			rep, err := control.Dial(api).Migrate(req, func(r migration.Round) { fmt.Fprintln(os.Stderr, roundLine(r)) })
			if rep != nil {
				fmt.Fprint(os.Stderr, summary(rep))
				if path := c.String("json"); path != "" {
					writeJSONFile(path, rep)
				}
			}
			return err
		},
	}
}

func migrateRequest(to, bandwidth string, downtime time.Duration, rounds int, adaptive bool) (control.MigrateRequest, error) {
	req := control.MigrateRequest{To: to, DowntimeLimitMS: downtime.Milliseconds(), MaxRounds: rounds, Adaptive: adaptive}
	switch strings.ToLower(bandwidth) {
	case "0", "unlimited":
		req.MaxBandwidth = migration.Unlimited
	default:
		// parseSize reads a bare number as MiB, like QEMU's -m; a
		// bandwidth is the same kind of quantity per second.
		b, err := parseSize(bandwidth)
		if err != nil {
			return req, fmt.Errorf("--max-bandwidth: %w", err)
		}
		req.MaxBandwidth = int64(b)
	}
	if downtime <= 0 || rounds < 1 {
		return req, errors.New("--downtime-limit must be positive and --max-rounds at least 1")
	}
	return req, nil
}

// migrateFromConsole is Ctrl-A m: the same migration, driven from the
// VM's own terminal, with progress on it.
func migrateFromConsole(vm *liveVM, to string) {
	fmt.Fprintf(os.Stderr, "govmm: migrating to %s (Ctrl-A x still quits)\r\n", to)
	req := control.MigrateRequest{To: to}
	rep, err := vm.Migrate(context.Background(), req, func(r migration.Round) {
		fmt.Fprint(os.Stderr, roundLine(r)+"\r\n")
	})
	if rep != nil {
		fmt.Fprint(os.Stderr, strings.ReplaceAll(summary(rep), "\n", "\r\n"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "govmm: %v\r\n", err)
	}
}

const mib = 1 << 20

// roundLine is the live progress line of one round.
func roundLine(r migration.Round) string {
	kind := "round"
	if r.Final {
		kind = "final"
	}
	return fmt.Sprintf("govmm: %s %d: sent %d pages (%d zero, %d skipped) %.1f MiB in %v at %.1f MiB/s; dirtied %d pages (%.1f MiB/s); estimated downtime %v",
		kind, r.Number, r.PagesSent, r.ZeroPages, r.PagesSkipped, float64(r.Bytes)/mib, r.Duration.Round(time.Millisecond),
		r.Bandwidth/mib, r.PagesDirtied, r.DirtyRate/mib, r.EstimatedDowntime.Round(time.Millisecond))
}

// summary is the table printed when a migration ends.
func summary(rep *migration.Report) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "round\tpages\tzero\tskipped\tdirtied\tMiB\ttime\tMiB/s\tdirty MiB/s\t")
	for _, r := range rep.Rounds {
		n := fmt.Sprint(r.Number)
		if r.Final {
			n += " (final)"
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%.1f\t%v\t%.1f\t%.1f\t\n", n, r.PagesSent, r.ZeroPages, r.PagesSkipped,
			r.PagesDirtied, float64(r.Bytes)/mib, r.Duration.Round(time.Millisecond), r.Bandwidth/mib, r.DirtyRate/mib)
	}
	w.Flush()
	ratio := 0.0
	if rep.GuestRAM > 0 {
		ratio = float64(rep.WireBytes) / float64(rep.GuestRAM)
	}
	fmt.Fprintf(&b, "total %v, downtime %v, %.1f MiB on the wire for %d MiB of guest RAM (%.2fx), stopped iterating: %s\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Millisecond), float64(rep.WireBytes)/mib,
		rep.GuestRAM/mib, ratio, rep.StopReason)
	if rep.Verified {
		fmt.Fprintln(&b, "verified: the destination's RAM matched the source's, page by page")
	}
	return b.String()
}

func writeJSONFile(path string, v any) {
	var w io.Writer = os.Stdout
	if path != "-" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "govmm: --json: %v\n", err)
			return
		}
		defer f.Close()
		w = f
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// dirtierCommand runs the migration-test workload (package guest). It is
// meant for inside a guest, where the default initramfs's /init is govmm:
// `/init dirtier --mib 64 &`.
func dirtierCommand() *cli.Command {
	return &cli.Command{
		Name:            "dirtier",
		Usage:           "migration-test workload: rewrite every page of a memory region and check it (run inside the guest)",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if code := guest.Dirtier(c.Args().Slice(), os.Stdout); code != 0 {
				return &exitError{code: code, err: errors.New("")}
			}
			return nil
		},
	}
}
