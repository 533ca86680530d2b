package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize reads a memory size like QEMU's -m: a number with an optional
// K, M, G or T suffix (binary units); a bare number means MiB, as in QEMU.
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := uint64(1 << 20)
	switch suffix := strings.ToUpper(s[len(s)-1:]); suffix {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	num := strings.TrimRight(s, "kKmMgGtTiIbB")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (try 512M or 2G)", s)
	}
	if n > (1<<46)/mult {
		return 0, fmt.Errorf("%q is larger than govmm supports", s)
	}
	return n * mult, nil
}
