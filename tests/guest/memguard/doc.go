// Command memguard-guest is the guest-side test program of gvmm's
// protected application memory (see main.go for its subcommands and
// package pvmem for the library it uses). Build it static for the guest:
//
//	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go build ./tests/guest/memguard
package main
