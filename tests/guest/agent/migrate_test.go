package main

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"
)

func TestMigrateCommandsRefuseBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func([]string) error
		args []string
	}{
		{"heartbeat none", heartbeat, nil},
		{"heartbeat zero", heartbeat, []string{"0"}},
		{"heartbeat word", heartbeat, []string{"fast"}},
		{"dirty one arg", dirty, []string{"8"}},
		{"dirty zero MiB", dirty, []string{"0", "10"}},
		{"dirty negative rate", dirty, []string{"8", "-1"}},
		{"tcpecho none", tcpEcho, nil},
	} {
		if err := tc.f(tc.args); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestTCPEcho(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() { done <- tcpEcho([]string{ln.Addr().String()}) }()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(c, "ping %d\n", i)
		got, err := br.ReadString('\n')
		if want := fmt.Sprintf("echo ping %d\n", i); err != nil || got != want {
			t.Fatalf("answer %q, %v; want %q", got, err, want)
		}
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("tcpecho after the peer closed: %v", err)
	}
}
