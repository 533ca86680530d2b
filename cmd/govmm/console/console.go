// Package console connects the user's terminal to the guest's serial port.
//
// Keystrokes flow terminal → Console.Run → (escape filter) → guest UART;
// the UART writes the guest's output straight to the terminal. The terminal
// is put in raw mode so that every key, Ctrl-C included, reaches the guest,
// and it is restored however govmm ends.
//
// Like QEMU's -serial mon:stdio, Ctrl-A is an escape key: Ctrl-A x quits,
// Ctrl-A h lists the keys, Ctrl-A a sends a literal Ctrl-A. The filter runs
// on its own goroutine, independent of the vCPUs, so Ctrl-A x works even
// when the guest has hung with interrupts off.
package console

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// EscapeKey is Ctrl-A, QEMU's default escape character.
const EscapeKey = 0x01

// Command is an action bound to Ctrl-A followed by a key. A command with a
// Prompt first reads a line from the user (echoed, Backspace works, Enter
// ends it, Ctrl-C or an empty line cancels) and passes it to RunLine.
type Command struct {
	Key     byte
	Help    string
	Run     func()
	Prompt  string
	RunLine func(line string)
}

// Console filters terminal input for escape sequences and forwards the rest
// to the guest.
type Console struct {
	in       io.Reader
	out      io.Writer // messages to the user (help text), not guest output
	guest    io.Writer // the UART's input
	commands map[byte]Command

	prompting *Command // reading a line for this command
	line      []byte
}

// New makes a console reading keys from in, forwarding to guest, writing its
// own messages to out. Ctrl-A x runs quit; Ctrl-A h and Ctrl-A a are built in.
func New(in io.Reader, out, guest io.Writer, quit func()) *Console {
	c := &Console{in: in, out: out, guest: guest, commands: map[byte]Command{}}
	c.Bind(Command{Key: 'x', Help: "quit govmm (the guest is stopped)", Run: quit})
	return c
}

// Bind adds an escape command; later issues bind migration this way.
func (c *Console) Bind(cmd Command) { c.commands[cmd.Key] = cmd }

// Help is the text Ctrl-A h prints.
func (c *Console) Help() string {
	var b strings.Builder
	b.WriteString("govmm console keys (press Ctrl-A, then the key):\r\n")
	keys := make([]int, 0, len(c.commands))
	for k := range c.commands {
		keys = append(keys, int(k))
	}
	sort.Ints(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  Ctrl-A %c   %s\r\n", k, c.commands[byte(k)].Help)
	}
	b.WriteString("  Ctrl-A h   show this help\r\n")
	b.WriteString("  Ctrl-A a   send Ctrl-A to the guest\r\n")
	return b.String()
}

// Run copies input to the guest until in reaches EOF or fails. An EOF on a
// non-terminal stdin (a script that has finished typing) leaves the guest
// running, as QEMU does.
func (c *Console) Run() error {
	buf := make([]byte, 256)
	escaped := false
	for {
		n, err := c.in.Read(buf)
		out := buf[:0]
		for _, b := range buf[:n] {
			switch {
			case c.prompting != nil:
				c.promptKey(b)
			case escaped:
				escaped = false
				out = c.flush(out)
				c.escape(b)
			case b == EscapeKey:
				escaped = true
			default:
				out = append(out, b)
			}
		}
		c.flush(out)
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func (c *Console) flush(out []byte) []byte {
	if len(out) > 0 {
		c.guest.Write(out)
	}
	return out[:0]
}

func (c *Console) escape(b byte) {
	switch b {
	case 'h', '?':
		io.WriteString(c.out, "\r\n"+c.Help())
	case 'a', EscapeKey:
		c.guest.Write([]byte{EscapeKey})
	default:
		cmd, ok := c.commands[b]
		switch {
		case !ok:
		case cmd.Prompt != "":
			c.prompting, c.line = &cmd, c.line[:0]
			io.WriteString(c.out, "\r\n"+cmd.Prompt)
		case cmd.Run != nil:
			cmd.Run()
		}
	}
}

// promptKey edits the line being read for a prompting command.
func (c *Console) promptKey(b byte) {
	switch b {
	case '\r', '\n':
		cmd, line := c.prompting, strings.TrimSpace(string(c.line))
		c.prompting = nil
		io.WriteString(c.out, "\r\n")
		if line != "" && cmd.RunLine != nil {
			cmd.RunLine(line)
		}
	case 0x03, 0x1b: // Ctrl-C, Esc
		c.prompting = nil
		io.WriteString(c.out, " (cancelled)\r\n")
	case 0x7f, 0x08: // Backspace
		if len(c.line) > 0 {
			c.line = c.line[:len(c.line)-1]
			io.WriteString(c.out, "\b \b")
		}
	default:
		if b >= 0x20 && b < 0x7f && len(c.line) < 256 {
			c.line = append(c.line, b)
			c.out.Write([]byte{b})
		}
	}
}

// MakeRaw puts the terminal f in raw mode if it is a terminal, and returns
// the function that restores it (safe to call more than once). On a pipe it
// does nothing. Raw mode is cfmakeraw(3): no line editing, no echo, no
// signals from Ctrl-C/Ctrl-Z, 8-bit characters, no output processing.
func MakeRaw(f *os.File) (restore func(), err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}, nil // not a terminal
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return func() {}, fmt.Errorf("setting terminal raw mode: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) })
	}, nil
}
