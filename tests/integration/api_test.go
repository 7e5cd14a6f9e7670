package integration

import (
	"context"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/gvmm/gvmm/api"
)

// TestPauseResume pauses a running Linux guest through the control API:
// while paused the guest answers nothing typed on its console; after
// resume it answers, and carries on to power off normally.
func TestPauseResume(t *testing.T) {
	env := requireKVM(t, true)
	sock := filepath.Join(t.TempDir(), "api.sock")
	v := startVM(t, env.bin, "--kernel", env.kernel, "--initrd", env.initrd, "--memory", "256M", "--cpus", "2",
		"--cmdline", testCmdline, "--api-socket", sock)
	_, off := v.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
	c := api.NewClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.State != "running" || st.CPUs != 2 || st.MemoryBytes != 256<<20 {
		t.Fatalf("status %+v, %v", st, err)
	}
	if st, err = c.Pause(ctx); err != nil || st.State != "paused" {
		t.Fatalf("pause: %+v, %v", st, err)
	}
	v.send("echo PAUSE\"D\"-CHECK\n")
	time.Sleep(3 * time.Second)
	if regexp.MustCompile(`PAUSED-CHECK`).MatchString(v.console()[off:]) {
		t.Fatal("the guest answered while paused")
	}
	if st, err = c.Resume(ctx); err != nil || st.State != "running" {
		t.Fatalf("resume: %+v, %v", st, err)
	}
	_, off = v.waitFor(regexp.MustCompile(`PAUSED-CHECK`), off, commandTimeout)
	if got, _ := v.ask(off, "expr 2 + 3"); got != "5" {
		t.Fatalf("guest answered %q after resume", got)
	}
	v.send("poweroff\n")
	if code := v.wait(exitTimeout); code != 0 {
		t.Fatalf("gvmm exited with %d", code)
	}
}
