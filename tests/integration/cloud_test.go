package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// cloud is Tom's small personal cloud for the policy-and-attestation
// scenario (issue 6): hosts in their own network namespaces, each with its
// own TPM (a fixed-seed simulator, distinct per host) and sealed state, the
// users' keys, and the VM's signed policy. The CLI calls follow the
// contract in migration/gate/doc.go.
type cloud struct {
	t     *testing.T
	env   testEnv
	dir   string
	lan   *lan
	hosts map[string]*cloudHost
	users map[string]string // name -> key file
	ids   map[string]string // user or host name -> key id
	// approver is IT's offline approval key (PEM files) for PolicyAuthorize hosts.
	approverKey, approverPub string
}

type cloudHost struct {
	name  string
	ns    *nsHost
	state string
	tpm   string
	bin   string // the gvmm executable this host runs
}

// story logs one step of the scenario; make demo shows these lines.
func story(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("STORY: "+format, args...)
}

// gvmm runs a short gvmm command (no guest) on host h (nil: in the test's
// namespace with the default binary) and returns its output and status.
func (c *cloud) gvmm(h *cloudHost, args ...string) (string, int) {
	c.t.Helper()
	bin := c.env.bin
	if h != nil {
		bin = h.bin
	}
	cmd := exec.Command(bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	var err error
	if h != nil {
		err = h.ns.Start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		c.t.Fatalf("start gvmm %s: %v", args[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(6 * time.Minute):
		cmd.Process.Kill()
		<-done
		c.t.Fatalf("gvmm %s did not finish; output:\n%s", strings.Join(args, " "), out.String())
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// must runs a set-up command that has to succeed and returns its output.
func (c *cloud) must(h *cloudHost, args ...string) string {
	c.t.Helper()
	out, code := c.gvmm(h, args...)
	if code != 0 {
		c.t.Fatalf("gvmm %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// keyID finds the first 64-hex-digit key id in a command's output.
func keyID(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`[0-9a-f]{64}`).FindString(out)
	if m == "" {
		t.Fatalf("no key id in %q", out)
	}
	return m
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// newCloud sets up the hosts, users, directory, enrollments and policies.
// outdated names the one host that starts on a build the VM's policy does
// not accept (a copy of gvmm with bytes appended: another digest).
func newCloud(t *testing.T, env testEnv, outdated string, names ...string) *cloud {
	t.Helper()
	c := &cloud{t: t, env: env, dir: t.TempDir(), hosts: map[string]*cloudHost{}, users: map[string]string{}, ids: map[string]string{}}
	c.lan = newLAN(t, names...)
	c.approverKey, c.approverPub = c.writeApprover()

	for i, name := range names {
		h := &cloudHost{name: name, ns: c.lan.host(name), state: filepath.Join(c.dir, name, "state"),
			tpm: fmt.Sprintf("sim?insecure-fixed-seed=%d", 1000+i), bin: env.bin}
		if err := os.MkdirAll(filepath.Dir(h.state), 0o700); err != nil {
			t.Fatal(err)
		}
		init := []string{"host", "init", "--state", h.state, "--tpm", h.tpm}
		if name == outdated {
			h.bin = filepath.Join(c.dir, name, "gvmm")
			old, err := os.ReadFile(env.bin)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(h.bin, append(old, "\ngvmm outdated build\n"...), 0o755); err != nil {
				t.Fatal(err)
			}
			// IT approves builds for this host offline (PolicyAuthorize),
			// so an update it approves can still open the sealed store.
			init = append(init, "--approver", c.approverPub)
		}
		c.must(h, init...)
		if name == outdated {
			c.must(nil, "host", "approve", "--key", c.approverKey, "--state", h.state, "--executable", h.bin)
		}
		c.hosts[name] = h
	}

	for _, u := range []struct{ name, roles string }{{"Tom", "user"}, {"Bob", "user"}, {"IT", "admin"}} {
		key := filepath.Join(c.dir, strings.ToLower(u.name)+".key")
		c.must(nil, "policy", "keygen", "-out", key)
		c.users[u.name] = key
		c.ids[u.name] = keyID(t, c.must(nil, "policy", "id", "--key", key))
		c.must(nil, "policy", "principal", "--key", key, "--name", u.name, "--roles", u.roles,
			"--out", filepath.Join(c.dir, u.name+".principal.json"))
	}
	var principals []string
	for _, u := range []string{"Tom", "Bob", "IT"} {
		principals = append(principals, filepath.Join(c.dir, u+".principal.json"))
	}
	for _, name := range names {
		h := c.hosts[name]
		groups, owner := "tom-devices", c.ids["Tom"]
		switch name {
		case "bobpc":
			groups, owner = "bob-devices", c.ids["Bob"]
		case "office":
			groups, owner = "tom-devices,office", c.ids["IT"]
		}
		p := filepath.Join(c.dir, name+".principal.json")
		c.ids[name] = keyID(t, c.must(h, "policy", "--state", h.state, "--tpm", h.tpm, "hostkey",
			"--name", name, "--groups", groups, "--owner", owner, "--out", p))
		principals = append(principals, p)
	}
	dirFile := filepath.Join(c.dir, "directory.json")
	c.must(nil, append([]string{"policy", "directory", "--out", dirFile}, principals...)...)
	for _, name := range names {
		h := c.hosts[name]
		c.must(h, "policy", "--state", h.state, "--tpm", h.tpm, "init", "--directory", dirFile)
	}
	story(t, "hosts %s: each in its own network namespace with its own TPM and sealed store; users Tom, Bob and IT (admin)", strings.Join(names, ", "))

	// Every host enrolls every other (sources verify destinations).
	for _, a := range names {
		for _, b := range names {
			if a == b {
				continue
			}
			c.enroll(c.hosts[a], c.hosts[b])
		}
	}
	story(t, "every host enrolled every other host's TPM attestation key")
	return c
}

// writeApprover makes IT's offline approval key pair (ECDSA P-256, PEM).
func (c *cloud) writeApprover() (string, string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		c.t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		c.t.Fatal(err)
	}
	priv, pubf := filepath.Join(c.dir, "it-approver.pem"), filepath.Join(c.dir, "it-approver.pub.pem")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(pubf, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return priv, pubf
}

// enroll makes verifier a enroll host b.
func (c *cloud) enroll(a, b *cloudHost) {
	c.t.Helper()
	base := filepath.Join(c.dir, "enroll-"+a.name+"-"+b.name)
	if err := os.MkdirAll(filepath.Join(a.state, "enrolled"), 0o700); err != nil {
		c.t.Fatal(err)
	}
	c.must(a, "enroll", "challenge", "--verifier-dir", filepath.Join(a.state, "verifier"),
		"--host-identity", filepath.Join(b.state, "identity.json"), "--out", base+".challenge.json")
	c.must(b, "enroll", "activate", "--tpm", b.tpm, "--state", b.state,
		"--challenge", base+".challenge.json", "--out", base+".response.json")
	c.must(a, "enroll", "finish", "--verifier-dir", filepath.Join(a.state, "verifier"),
		"--response", base+".response.json", "--out", filepath.Join(a.state, "enrolled", b.name+".json"))
}

// request signs a request as user.
func (c *cloud) request(user, name string, args ...string) string {
	c.t.Helper()
	out := filepath.Join(c.dir, name+".request.json")
	c.must(nil, append([]string{"policy", "request", "-key", c.users[user], "-out", out}, args...)...)
	return out
}

// installVMPolicy signs Tom's VM policy (owner layer) and IT's enterprise
// layer and installs them on host h at Tom's request.
func (c *cloud) installVMPolicy(h *cloudHost, vmName string) {
	c.t.Helper()
	rules := map[string]any{
		"migrators":    []string{"role:owner"},
		"destinations": []string{"group:tom-devices"},
		"min_trust":    "software-tpm",
		"measurements": []map[string]string{{"executable_sha256": fileSHA256(c.t, c.env.bin), "version": "current"}},
	}
	owner := writeJSON(c.t, filepath.Join(c.dir, "owner.json"), map[string]any{"vm": vmName, "version": 1, "owner": c.ids["Tom"], "rules": rules})
	ent := writeJSON(c.t, filepath.Join(c.dir, "enterprise.json"), map[string]any{"vm": vmName, "version": 1, "rules": rules})
	c.must(nil, "policy", "sign", "-key", c.users["Tom"], "-type", "owner", "-in", owner, "-out", owner+".signed")
	c.must(nil, "policy", "sign", "-key", c.users["IT"], "-type", "enterprise", "-in", ent, "-out", ent+".signed")
	bundle := filepath.Join(c.dir, "vm-policy.json")
	c.must(nil, "policy", "bundle", "-owner", owner+".signed", "-enterprise", ent+".signed", "-out", bundle)
	req := c.request("Tom", "set-vm-policy-"+h.name, "-action", "set-vm-policy", "-audience", c.ids[h.name], "-vm", vmName, "-document", bundle)
	c.must(h, "policy", "--state", h.state, "--tpm", h.tpm, "set", "-request", req, "-policy", bundle)
	story(c.t, "Tom's policy for %s (signed by Tom, with IT's layer): only its owner may move it, only to Tom's devices, software TPM or better, gvmm build %s…", vmName, fileSHA256(c.t, c.env.bin)[:12])
}

// installHostPolicy lets host h accept Tom's VMs from Tom's devices,
// signed by the host's owner, with the extra rules given.
func (c *cloud) installHostPolicy(h *cloudHost, signer string, extra map[string]any) {
	c.t.Helper()
	doc := map[string]any{"host": c.ids[h.name], "version": 1, "accept_owners": []string{c.ids["Tom"]}, "accept_sources": []string{"group:tom-devices"}}
	for k, v := range extra {
		doc[k] = v
	}
	pol := writeJSON(c.t, filepath.Join(c.dir, h.name+"-hostpol.json"), doc)
	c.must(nil, "policy", "sign", "-key", c.users[signer], "-type", "host", "-in", pol, "-out", pol+".signed")
	req := c.request(signer, "set-host-policy-"+h.name, "-action", "set-host-policy", "-audience", c.ids[h.name], "-document", pol+".signed")
	c.must(h, "policy", "--state", h.state, "--tpm", h.tpm, "set", "-request", req, "-host-policy", pol+".signed")
}

// receive starts gvmm receive on h, listening on its LAN address.
func (c *cloud) receive(h *cloudHost, sock string, extra ...string) (*vm, string) {
	c.t.Helper()
	addr := h.ns.IP + ":7070"
	args := append([]string{"receive", "--listen", addr, "--state", h.state, "--tpm", h.tpm, "--api-socket", sock}, extra...)
	v := startGvmmOn(c.t, h.ns, h.bin, args...)
	waitListeningIn(c.t, addr, v)
	return v, addr
}

// migrate runs gvmm migrate on h for the VM behind sock.
func (c *cloud) migrate(h *cloudHost, sock, to, request string, extra ...string) (string, int) {
	c.t.Helper()
	args := append([]string{"migrate", "--api-socket", sock, "--to", to, "--state", h.state, "--tpm", h.tpm, "--request", request}, extra...)
	out, code := c.gvmm(h, args...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "gate:") || strings.HasPrefix(line, "migrated") {
			story(c.t, "  %s: %s", h.name, line)
		}
	}
	return out, code
}

// audit returns host h's audit log as gvmm prints it.
func (c *cloud) audit(h *cloudHost) string {
	c.t.Helper()
	return c.must(h, "policy", "--state", h.state, "audit")
}

// waitListeningIn waits until the gvmm process v listens on addr in its
// own network namespace (its /proc/PID/net/tcp).
func waitListeningIn(t *testing.T, addr string, v *vm) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	var p int
	fmt.Sscan(port, &p)
	var ip [4]int
	fmt.Sscanf(host, "%d.%d.%d.%d", &ip[0], &ip[1], &ip[2], &ip[3])
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-v.done:
			t.Fatalf("gvmm receive exited early (%v): %s", v.err, v.errors())
		default:
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", v.cmd.Process.Pid))
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && (f[1] == want || strings.HasSuffix(f[1], fmt.Sprintf(":%04X", p)) && strings.HasPrefix(f[1], "00000000")) && f[3] == "0A" {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("gvmm receive did not listen on %s", addr)
}

// TestPersonalCloud is issue 6's scenario under nested KVM with a real
// guest: Tom moves his VM from his laptop to his desktop; Bob's request to
// take it is refused (no role), so is Tom's own request to move it to Bob's
// machine (not one of Tom's devices); the office host runs an outdated
// gvmm, is refused and told what to update, updates, attests again and
// receives the VM. After every refusal the VM runs on where it was; after
// every migration its RAM and its background work carried on; each
// decision is in the audit logs. The desktop also requires the laptop to
// attest itself and the VM's kernel code, measured at run time, with the
// digest Tom took when it booted (issue 7's runtime measurement in the
// evidence).
func TestPersonalCloud(t *testing.T) {
	env := requireKVM(t, true)
	if os.Geteuid() != 0 {
		t.Fatal("needs root for network namespaces")
	}
	c := newCloud(t, env, "office", "laptop", "desktop", "office", "bobpc")
	laptop, desktop, office, bobpc := c.hosts["laptop"], c.hosts["desktop"], c.hosts["office"], c.hosts["bobpc"]
	c.installVMPolicy(laptop, "tom-vm")
	c.installHostPolicy(office, "IT", nil)
	story(t, "office (IT) accepts Tom's VMs from Tom's devices; bobpc has no migrate-in policy for them")

	dir := c.dir
	story(t, "Tom's VM boots on his laptop")
	src := startGvmmOn(t, laptop.ns, laptop.bin, "run", "--kernel", env.kernel, "--initrd", env.initrd,
		"--memory", "192M", "--cpus", "1", "--cmdline", testCmdline,
		"--api-socket", filepath.Join(dir, "laptop.sock"))
	_, off := src.waitFor(regexp.MustCompile(regexp.QuoteMeta(userspaceUp)), 0, bootTimeout)
	_, off = src.waitFor(regexp.MustCompile(`guest# `), off, commandTimeout)
	sum, off := src.ask(off, "dd if=/dev/urandom of=/tmp/blob bs=1M count=4 2>/dev/null; md5sum /tmp/blob | cut -d' ' -f1")
	src.send("(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; done) &\n")

	// Tom measures his VM's kernel code on the laptop, and the desktop
	// accepts it only from an attested laptop that measures the same.
	kcode, _ := src.ask(off, "grep 'Kernel code' /proc/iomem | tr -d ' ' | cut -d: -f1")
	var kstart, kend uint64
	if n, err := fmt.Sscanf(kcode, "%x-%x", &kstart, &kend); n != 2 || err != nil || kend <= kstart {
		t.Fatalf("kernel code range from /proc/iomem: %q", kcode)
	}
	mout := c.must(laptop, "measure", "--api-socket", filepath.Join(dir, "laptop.sock"), "--range", fmt.Sprintf("kernel-code=%#x+%#x", kstart, kend-kstart+1))
	km := regexp.MustCompile(`memguard range name=kernel-code gpa=0x[0-9a-f]+ size=\d+ digest=([0-9a-f]{64})`).FindStringSubmatch(mout)
	if km == nil {
		t.Fatalf("gvmm measure printed no kernel-code digest:\n%s", mout)
	}
	c.installHostPolicy(desktop, "Tom", map[string]any{"require_source_attestation": true, "require_source_runtime": true,
		"require_ranges": []map[string]string{{"name": "kernel-code", "sha256": km[1]}}})
	story(t, "Tom measured his VM's kernel code (%s…); desktop (Tom) accepts Tom's VMs from Tom's devices that attest themselves and that digest", km[1][:12])

	// 1. Tom: laptop -> desktop, allowed.
	story(t, "Tom asks to move his VM from laptop to desktop")
	dst, daddr := c.receive(desktop, filepath.Join(dir, "desktop.sock"))
	req := c.request("Tom", "tom-laptop-desktop", "-action", "migrate", "-audience", c.ids["laptop"], "-vm", "tom-vm", "-destination", c.ids["desktop"])
	out, code := c.migrate(laptop, filepath.Join(dir, "laptop.sock"), daddr, req)
	doff := handedOver(t, out, code, src, dst, "requester authenticated: Tom", "destination attested: desktop", "software-tpm", "key released", "handshake",
		"measured vm tom-vm at run time: 0 regions, 1 ranges")
	if e := dst.errors(); !strings.Contains(e, "source measured vm tom-vm at run time: 0 regions, 1 ranges") ||
		!strings.Contains(e, "require_ranges kernel-code") {
		t.Errorf("the desktop did not decide on the laptop's run-time measurement:\n%s", e)
	}
	doff = checkRAMAndCounter(t, dst, doff, sum)
	story(t, "the VM runs on the desktop: its RAM and its background loop carried on")

	// 2. Bob asks to take Tom's VM to his machine: he has no role on it.
	story(t, "Bob asks to move Tom's VM to his own machine")
	bob, baddr := c.receive(bobpc, filepath.Join(dir, "bobpc.sock"))
	req = c.request("Bob", "bob-desktop-bobpc", "-action", "migrate", "-audience", c.ids["desktop"], "-vm", "tom-vm", "-destination", c.ids["bobpc"])
	out, code = c.migrate(desktop, filepath.Join(dir, "desktop.sock"), baddr, req)
	if code != 3 || !strings.Contains(out, "refused") {
		t.Fatalf("Bob's request: exit %d, want 3 with a refusal:\n%s", code, out)
	}
	doff = stillRunning(t, dst, doff)

	// 3. Tom asks to move it to Bob's machine: not one of his devices.
	story(t, "Tom asks to move his VM to Bob's machine")
	req = c.request("Tom", "tom-desktop-bobpc", "-action", "migrate", "-audience", c.ids["desktop"], "-vm", "tom-vm", "-destination", c.ids["bobpc"])
	out, code = c.migrate(desktop, filepath.Join(dir, "desktop.sock"), baddr, req)
	if code != 3 || !strings.Contains(out, "refused") {
		t.Fatalf("Tom's request to Bob's machine: exit %d, want 3 with a refusal:\n%s", code, out)
	}
	doff = stillRunning(t, dst, doff)
	bob.cmd.Process.Kill()

	// 4. The office host runs an outdated gvmm: refused, told what to
	// update; it updates (IT's approved build), attests again, receives.
	story(t, "Tom asks to move his VM to the office host, which runs an outdated gvmm")
	update := filepath.Join(dir, "office-update.sh")
	script := fmt.Sprintf("#!/bin/sh\nset -e\ncp %s %s.new\nmv %s.new %s\n%s host approve --key %s --state %s --executable %s\n",
		env.bin, office.bin, office.bin, office.bin, env.bin, c.approverKey, office.state, office.bin)
	if err := os.WriteFile(update, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	off2, oaddr := c.receive(office, filepath.Join(dir, "office.sock"), "--update-cmd", update)
	req = c.request("Tom", "tom-desktop-office", "-action", "migrate", "-audience", c.ids["desktop"], "-vm", "tom-vm", "-destination", c.ids["office"])
	out, code = c.migrate(desktop, filepath.Join(dir, "desktop.sock"), oaddr, req, "--remediation-retries", "4", "--retry-delay", "5s")
	ooff := handedOver(t, out, code, dst, off2, "must update", "key released to office")
	if got := fileSHA256(t, office.bin); got != fileSHA256(t, env.bin) {
		t.Errorf("the office's gvmm was not updated")
	}
	ooff = checkRAMAndCounter(t, off2, ooff, sum)
	story(t, "the VM runs on the updated office host: its RAM and its background loop carried on")

	// The decisions are in the audit logs, with their reasons.
	da := c.audit(desktop)
	for _, want := range []string{"Bob", "deny", "allow"} {
		if !strings.Contains(strings.ToLower(da), strings.ToLower(want)) {
			t.Errorf("desktop's audit log lacks %q:\n%s", want, da)
		}
	}
	story(t, "desktop's audit log:\n%s", da)
	story(t, "office's audit log:\n%s", c.audit(office))
	powerOff(t, off2)
}

// stillRunning checks that the VM answers after a refused migration.
func stillRunning(t *testing.T, v *vm, off int) int {
	t.Helper()
	got, off := v.ask(off, "expr 6 \\* 7")
	if got != "42" {
		t.Fatalf("the VM after a refused migration answered %q", got)
	}
	story(t, "refused; the VM runs on where it was")
	return off
}
