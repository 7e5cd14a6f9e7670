// Command gvmm is a virtual machine monitor for Linux guests on KVM.
//
// It is the only package that wires the others together: the KVM binding
// (kvm), the machine model (vmm), and the trust, device and migration
// packages as they arrive. Each subcommand lives in its own file and is
// listed in the command table in main.go.
package main
