/*
 * Decoder of the guest instructions that touch the local APIC page.  An APIC-access VM
 * exit (SDM Vol. 3C 29.4; its exit qualification: SDM 28.2.1, the table "Exit
 * Qualification for APIC-Access VM Exits") gives the page offset and read/write, not
 * the value or the instruction length, so the hypervisor decodes the instruction (SDM
 * Vol. 2 chapter 2 "Instruction Format": ModR/M and SIB tables, 2.2.1 REX prefixes):
 *
 *   89 /r     MOV r/m32, r32       (write the register)
 *   8B /r     MOV r32, r/m32       (read into the register)
 *   C7 /0 id  MOV r/m32, imm32     (write the immediate)
 *   A1 mo     MOV EAX, moffs32     (read into EAX; moffs is the address size)
 *   A3 mo     MOV moffs32, EAX     (write EAX)
 *
 * with legacy prefixes 0x26/0x2E/0x36/0x3E/0x64/0x65 (segment; ignored, the address is
 * known), 0x67 (address size) and a REX prefix in 64-bit mode.  Operand size must be 32
 * bits (xAPIC registers are 32-bit): 0x66, REX.W and 16-bit code are refused.
 */
#include "minivisor.h"

#define MAX_INSN 15

const char *decode_mmio_mov(const uint8_t *code, uint32_t avail, uint32_t code_bits, struct mmio_insn *out)
{
    uint32_t pos = 0;
    bool opsize_prefix = false, addrsize_prefix = false;
    uint8_t rex = 0;
    uint32_t limit = avail < MAX_INSN ? avail : MAX_INSN;

    /* Prefixes (SDM Vol. 2 2.1.1); a REX prefix counts only right before the opcode. */
    for (;;) {
        if (pos >= limit)
            return "instruction bytes unavailable (prefixes)";
        uint8_t b = code[pos];
        if (b == 0x66) {
            opsize_prefix = true;
        } else if (b == 0x67) {
            addrsize_prefix = true;
        } else if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65) {
            /* segment override */
        } else if (b == 0xf0 || b == 0xf2 || b == 0xf3) {
            return "LOCK/REP prefix";
        } else if (code_bits == 64 && (b & 0xf0) == 0x40) {
            rex = b;
            pos++;
            break;
        } else {
            break;
        }
        rex = 0;
        pos++;
    }
    if (pos >= limit)
        return "instruction bytes unavailable (opcode)";

    /* Operand and address sizes (SDM Vol. 1 3.6, Vol. 2 2.2.1.2). */
    uint32_t opsize = code_bits == 16 ? (opsize_prefix ? 32 : 16) : (opsize_prefix ? 16 : 32);
    if (rex & 0x08)
        opsize = 64;
    uint32_t addrsize = code_bits == 64 ? (addrsize_prefix ? 32 : 64)
                        : code_bits == 32 ? (addrsize_prefix ? 16 : 32) : (addrsize_prefix ? 32 : 16);
    if (opsize != 32)
        return "operand size is not 32 bits";

    uint8_t opcode = code[pos++];
    if (opcode == 0xa1 || opcode == 0xa3) {
        pos += addrsize / 8;                    /* moffs: address-size bytes */
        if (pos > limit)
            return "instruction bytes unavailable (moffs)";
        out->length = pos;
        out->write = opcode == 0xa3;
        out->reg = GPR_RAX;
        out->imm = 0;
        return NULL;
    }
    if (opcode != 0x89 && opcode != 0x8b && opcode != 0xc7)
        return "opcode is not a MOV to or from memory";

    if (pos >= limit)
        return "instruction bytes unavailable (ModR/M)";
    uint8_t modrm = code[pos++];
    uint32_t mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
    if (mod == 3)
        return "ModR/M names a register, not memory";
    if (opcode == 0xc7 && reg != 0)
        return "C7 with ModR/M.reg != 0";

    uint32_t disp = 0;
    if (addrsize == 16) {                       /* SDM Vol. 2 Table 2-1 */
        if (mod == 0 && rm == 6)
            disp = 2;
        else if (mod == 1)
            disp = 1;
        else if (mod == 2)
            disp = 2;
    } else {                                    /* SDM Vol. 2 Tables 2-2 and 2-3 */
        if (rm == 4) {
            if (pos >= limit)
                return "instruction bytes unavailable (SIB)";
            uint8_t sib = code[pos++];
            if (mod == 0 && (sib & 7) == 5)
                disp = 4;
        }
        if (mod == 0 && rm == 5)
            disp = 4;                           /* disp32 (RIP-relative in 64-bit mode) */
        else if (mod == 1)
            disp = 1;
        else if (mod == 2)
            disp = 4;
    }
    pos += disp;
    uint32_t imm = 0;
    if (opcode == 0xc7) {
        if (pos + 4 > limit)
            return "instruction bytes unavailable (imm32)";
        memcpy(&imm, code + pos, 4);
        pos += 4;
    }
    if (pos > limit)
        return "instruction bytes unavailable";

    out->length = pos;
    out->write = opcode != 0x8b;
    out->reg = opcode == 0xc7 ? -1 : (int)(reg | ((rex & 0x04) ? 8 : 0));
    out->imm = imm;
    return NULL;
}
