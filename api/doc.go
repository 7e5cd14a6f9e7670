// Package api is gvmm's control API: an HTTP/JSON server on a unix socket
// beside each running VM (gvmm run --api-socket PATH), as Firecracker and
// Cloud Hypervisor offer, and the client the gvmm subcommands use.
//
// It drives a small Machine interface and imports nothing of the VMM.
//
// Endpoints (version 1):
//
//	GET /v1/vm          the machine's status (state, vCPUs, memory, uptime)
//	PUT /v1/vm/pause    park every vCPU; returns the new status
//	PUT /v1/vm/resume   let them run again; returns the new status
//
// Errors come back as {"error": "..."} with a 4xx or 5xx status. Request
// bodies are not read (none of these takes one) and are capped anyway.
// The socket is created with mode 0600: whoever can open it controls the
// VM.
package api
