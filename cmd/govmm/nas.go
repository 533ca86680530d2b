package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"govmm/devices/disk"
	"govmm/devices/disk/nbd"
)

// `govmm nas serve`: a small network-attached storage server, so that two
// govmm (the ends of a migration) can share a disk. It serves one image
// file over NBD (package devices/disk/nbd) to any NBD client: `govmm run
// --disk nbd://...`, qemu, nbd-client.

func nasCommand() *cli.Command {
	return &cli.Command{
		Name:  "nas",
		Usage: "network-attached storage: serve disk images over NBD",
		Subcommands: []*cli.Command{{
			Name:      "serve",
			Usage:     "serve a raw image file (or block device) over NBD until interrupted",
			ArgsUsage: "IMAGE",
			Description: "Serves IMAGE as an NBD export. Guests use it with\n" +
				"  govmm run --disk nbd://HOST:PORT/EXPORT   (or nbd+unix:///EXPORT?socket=PATH)\n" +
				"The image is not locked: serve it to one guest at a time (or read-only).",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "HOST:PORT to listen on, or unix:PATH for a unix socket"},
				&cli.StringFlag{Name: "export", Usage: "export name (default \"\", the server's default export)"},
				&cli.BoolFlag{Name: "readonly", Usage: "refuse writes"},
			},
			Action: func(c *cli.Context) error {
				if err := parseFlagsAfterArgs(c); err != nil {
					return err
				}
				if c.NArg() == 0 {
					return fmt.Errorf("nas serve needs exactly one argument, the image; see govmm nas serve --help")
				}
				return nasServe(c.Args().First(), c.String("listen"), c.String("export"), c.Bool("readonly"))
			},
		}},
	}
}

// parseFlagsAfterArgs reads the flags written after the arguments, as in
// `govmm nas serve IMAGE --listen ...`: urfave/cli, like Go's flag package,
// stops at the first argument and leaves the rest in c.Args(). The rest is
// parsed with the command's own flags and the values set on c; what remains
// are the arguments.
func parseFlagsAfterArgs(c *cli.Context) error {
	if c.NArg() < 2 {
		return nil
	}
	set := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
	set.SetOutput(io.Discard)
	for _, fl := range c.Command.Flags {
		if err := fl.Apply(set); err != nil {
			return err
		}
	}
	if err := set.Parse(c.Args().Tail()); err != nil {
		return fmt.Errorf("nas serve: %w", err)
	}
	var err error
	set.Visit(func(f *flag.Flag) {
		if err == nil {
			err = c.Set(f.Name, f.Value.String())
		}
	})
	if err != nil {
		return err
	}
	if set.NArg() > 0 {
		return fmt.Errorf("nas serve takes one argument, the image; unexpected %q", set.Args())
	}
	return nil
}

// nasServe serves image until SIGINT or SIGTERM.
func nasServe(image, listen, export string, readOnly bool) error {
	network, address := "tcp", listen
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		network, address = "unix", path
	}
	if len(export) > 4096 {
		return fmt.Errorf("--export: a name of %d bytes is longer than NBD allows (4096)", len(export))
	}
	f, err := disk.OpenFile(image, readOnly)
	if err != nil {
		return err
	}
	defer f.Close()

	ln, err := net.Listen(network, address)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	// The URI to give to clients: the listener's address, which has the
	// real port when --listen asked for port 0.
	spec := disk.Spec{Kind: disk.KindNBD, Network: network, Address: ln.Addr().String(), Export: export, ReadOnly: readOnly}
	mode := ""
	if readOnly {
		mode = ", read-only"
	}
	fmt.Fprintf(os.Stderr, "govmm nas: serving %s (%s%s) as %s\n", image, humanSize(f.Size()), mode, spec)

	srv := &nbd.Server{
		Exports: map[string]nbd.Export{export: f},
		Log:     func(format string, args ...any) { fmt.Fprintf(os.Stderr, "govmm nas: "+format+"\n", args...) },
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		fmt.Fprintf(os.Stderr, "govmm nas: stopping\n")
	case err := <-served:
		srv.Close()
		return err
	}
	srv.Close() // closes ln too, which removes a unix socket's file
	<-served
	if err := f.Flush(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("flushing %s: %w", image, err)
	}
	return nil
}

// humanSize prints a size in binary units with one decimal: 1.0 GiB.
func humanSize(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}
