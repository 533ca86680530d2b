package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ReadLoadList reads a load-order file: one absolute module file path per
// line, to be loaded top to bottom. Blank lines and '#' comments are skipped.
func ReadLoadList(r io.Reader) ([]string, error) {
	var files []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		files = append(files, line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return files, nil
}

// Load inserts one module file into the running kernel with finit_module(2)
// (C: finit_module(fd, "", flags)), without parameters. A module that is
// already loaded (EEXIST) counts as success, so loading twice is harmless.
//
// A compressed file (.ko.gz/.xz/.zst) is passed with
// MODULE_INIT_COMPRESSED_FILE, which asks the kernel to decompress it; that
// needs Linux >= 6.4 built with CONFIG_MODULE_DECOMPRESS. govmm's own
// initramfs never relies on it: the builder stores modules decompressed.
func Load(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if Compression(file) != "" {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finit_module %s: %w", file, err)
	}
	return nil
}
