package guest

import (
	"fmt"
	"io"
	"net"
)

// EchoServer is the network test workload (`/init echo-server :7` in the
// guest): a TCP server that sends back every byte it receives, on every
// connection, until killed. The network scenarios keep a connection to it
// open while the guest migrates, and count what comes back.
func EchoServer(args []string, out io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(out, "usage: echo-server [HOST]:PORT")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintf(out, "echo-server: %v\n", err)
		return 1
	}
	fmt.Fprintf(out, "echo-server: listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintf(out, "echo-server: %v\n", err)
			return 1
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}
