package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/gvmm/gvmm/api"
)

// env is what every subcommand gets from main: its streams and logger.
// Nothing in this package keeps global mutable state; it lives here.
type env struct {
	stdin  *os.File
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
	// procs is GOMAXPROCS as the runtime chose it, before addVCPUProcs.
	procs int
}

// command is one entry of the command table.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// commands is the command table. Each entry's run function lives in its own
// file (cmd_<name>.go).
func commands() []command {
	return []command{
		{"run", "boot a Linux guest (bzImage, initrd, command line) on KVM", runCmd},
		{"status", "show a running VM's state (through its --api-socket)", apiCmd("status", (*api.Client).Status)},
		{"pause", "pause a running VM's vCPUs (through its --api-socket)", apiCmd("pause", (*api.Client).Pause)},
		{"resume", "resume a paused VM (through its --api-socket)", apiCmd("resume", (*api.Client).Resume)},
		{"measure", "measure a running VM's protected memory now, optionally adding a guest-physical range (through its --api-socket)", measureCmd},
		{"snapshot", "write a running VM's complete state to a file (through its --api-socket)", snapshotCmd},
		{"migrate", "live-migrate a running VM to gvmm receive on another host", migrateCmd},
		{"receive", "wait for one incoming migration, then run the VM", receiveCmd},
		{"host", "host trust base: init, info, approve (offline key), open (unseal the store)", hostCmd},
		{"enroll", "enroll a host with a verifier: challenge, activate (in the TPM), finish", enrollCmd},
		{"attest", "measure gvmm and produce TPM evidence for a verifier's nonce", attestCmd},
		{"verify", "check TPM evidence against golden values and an enrolled host", verifyCmd},
		{"policy", "users, hosts, signed VM and host policies, the sealed policy state and audit log", policyCmd},
	}
}

// exitError carries a specific exit status up to main without printing
// anything more than its message (which may be empty).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is an error in how gvmm was called: exit status 2.
func usageError(format string, a ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, a...)}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// realMain runs gvmm with the given arguments and streams and returns the
// exit status.
func realMain(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, procs: runtime.GOMAXPROCS(0)}
	e.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel()}))

	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == args[0] {
			c := c
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(e.stderr, "gvmm: unknown command %q (see gvmm --help)\n", args[0])
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, e, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(e.stderr, "gvmm %s: %s\n", cmd.name, ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(e.stderr, "gvmm %s: %v\n", cmd.name, err)
	return 1
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `gvmm - a virtual machine monitor on Linux KVM with secure live migration

Usage:
  gvmm <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run "gvmm <command> --help" for the flags of a command.
Set GVMM_LOG=debug for verbose logs on stderr.
`)
}

func logLevel() slog.Level {
	switch os.Getenv("GVMM_LOG") {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "error":
		return slog.LevelError
	}
	return slog.LevelWarn
}

// newFlagSet returns a flag set that reports errors as one line and prints
// help text to stdout when asked.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("gvmm "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fs.SetOutput(e.stdout)
		fmt.Fprintf(e.stdout, "Usage: gvmm %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parseFlags parses args and turns a flag error into a one-line usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return err
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
