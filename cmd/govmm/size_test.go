package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"512M": 512 << 20, "512": 512 << 20, "2G": 2 << 30, "1g": 1 << 30,
		"64K": 64 << 10, "1024MiB": 1 << 30, "1T": 1 << 40,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "abc", "-1M", "1.5G", "99999999999G"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}
