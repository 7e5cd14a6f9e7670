package main

import "testing"

func TestControlStanzas(t *testing.T) {
	out := "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\n" +
		"Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: Linux for\n 64-bit PCs: Version: no\n\n" +
		"Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\n\n"
	st := controlStanzas(out)
	if got := st["busybox-static"]["Version"]; got != "1:1.35.0-4+deb12u1+b1" {
		t.Errorf("busybox version %q", got)
	}
	if got := st["linux-image-amd64"]["Version"]; got != "6.1.192-2" {
		t.Errorf("metapackage version %q", got)
	}
	for dep, want := range map[string][2]string{
		"linux-image-6.1.0-56-amd64 (= 6.1.192-2)":      {"linux-image-6.1.0-56-amd64", "6.1.192-2"},
		"linux-image-6.1.0-56-amd64":                    {"linux-image-6.1.0-56-amd64", ""},
		"linux-image-6.12.9+bpo-amd64 (= 6.12.9-1~bpo)": {"linux-image-6.12.9+bpo-amd64", "6.12.9-1~bpo"},
	} {
		m := kernelDep.FindStringSubmatch(dep)
		if m == nil || m[1] != want[0] || m[2] != want[1] {
			t.Errorf("kernelDep(%q) = %q, want %q", dep, m, want)
		}
	}
}
