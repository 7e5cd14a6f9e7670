#include "textflag.h"

// func call(op uint32, rbx, rcx, rsi, rdi uint64) (rax, obx, ocx, osi, odi uint64)
//
// One request to gvmm: OUT %eax, %dx with DX = 0x520 and the arguments in
// RBX, RCX, RSI, RDI; gvmm leaves the results in the same registers.
TEXT ·call(SB), NOSPLIT, $0-80
	MOVL op+0(FP), AX
	MOVQ rbx+8(FP), BX
	MOVQ rcx+16(FP), CX
	MOVQ rsi+24(FP), SI
	MOVQ rdi+32(FP), DI
	MOVL $0x520, DX
	OUTL
	MOVQ AX, rax+40(FP)
	MOVQ BX, obx+48(FP)
	MOVQ CX, ocx+56(FP)
	MOVQ SI, osi+64(FP)
	MOVQ DI, odi+72(FP)
	RET
