package policy

import "errors"

// Errors. Every failure wraps one of them; callers test with errors.Is.
var (
	// ErrInvalid: a document, directory or request is malformed,
	// oversized or not in canonical form.
	ErrInvalid = errors.New("invalid policy input")
	// ErrSignature: a signature does not verify, or its signer may not
	// sign this document.
	ErrSignature = errors.New("signature rejected")
	// ErrUnknownPrincipal: a key or certificate names no principal in
	// the directory (or one of the wrong kind).
	ErrUnknownPrincipal = errors.New("unknown principal")
	// ErrReplay: a signed request was seen before.
	ErrReplay = errors.New("request replayed")
	// ErrStale: a signed request is too old or from the future.
	ErrStale = errors.New("request outside its validity window")
	// ErrRollback: a policy is not newer than the one installed.
	ErrRollback = errors.New("policy version not newer than installed")
	// ErrForbidden: the requester may not make this change.
	ErrForbidden = errors.New("forbidden")
	// ErrBusy: the replay cache is full of unexpired entries.
	ErrBusy = errors.New("replay cache full")
)
