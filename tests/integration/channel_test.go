package integration

import (
	"bufio"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestChannel carries a request and a reply between the host and the
// guest over --channel: a unix socket on the host, /dev/hvc0 in the guest
// (virtio-console), without the serial console.
func TestChannel(t *testing.T) {
	env := requireKVM(t, true)
	sock := filepath.Join(t.TempDir(), "chan.sock")
	v, off := bootVirtio(t, env, "--channel", sock)
	// The guest answers one line: upper-cased, behind a prefix. The tty
	// is held open on fd 3 so raw mode (no echo) lasts for the exchange;
	// the host writes only once the guest said raw mode is on (a line
	// sent before that is echoed back by the tty).
	v.send(`(exec 3<>/dev/hvc0; stty raw -echo <&3; echo CHANNEL-"READY"; head -n1 <&3 | tr a-z A-Z | sed 's/^/GUEST:/' >&3; echo CHANNEL-"DONE") &` + "\n")
	_, off = v.waitFor(regexp.MustCompile(`CHANNEL-READY`), off, commandTimeout)
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("dial channel: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(commandTimeout))
	if _, err := conn.Write([]byte("ping from the host\n")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read reply: %v (got %q)", err, reply)
	}
	if strings.TrimSpace(reply) != "GUEST:PING FROM THE HOST" {
		t.Fatalf("reply %q", reply)
	}
	_, off = v.waitFor(regexp.MustCompile(`CHANNEL-DONE`), off, commandTimeout)
	powerOff(t, v)
}
