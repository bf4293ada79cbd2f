/*
 * nodemaint lab guest: a ~200-byte multiboot (a.out kludge) kernel for tiny lab VMs.
 *  - dirties one dword in every 4 KiB page from 2 MiB up to the top of RAM - 1 MiB, so a live
 *    migration moves real bytes (throttled migrations take time, as with a real guest);
 *  - then idles with HLT, woken ~10 Hz by the local APIC timer (legacy PICs masked), so an idle
 *    guest costs ~0% CPU;
 *  - with `dirty=N` on its command line (libvirt <cmdline>), keeps writing N MiB/s: on each
 *    timer tick it dirties N*256/10 pages, cycling through its working set (`wss=M` MiB from
 *    2 MiB, default all of RAM), as a busy tenant VM does (issue 17 §1: migrations that must escalate to converge);
 *  - on each wake-up polls ACPI PM1a_STS (PIIX4/ICH9 PM base 0x600) for the power button and
 *    answers it with S5 (SLP_TYP 0 | SLP_EN), so `virsh shutdown` powers it off gracefully.
 * Build: as --32 guest.S -o guest.o && ld -m elf_i386 -Ttext=0x100000 --oformat=binary guest.o -o guest.bin
 */
        .code32
        .text
        .globl _start
_start:
header:
        .long 0x1BADB002                  /* magic */
        .long 0x00010000                  /* flags: addresses below are valid (a.out kludge) */
        .long -(0x1BADB002 + 0x00010000)  /* checksum */
        .long header                      /* header_addr */
        .long header                      /* load_addr */
        .long 0                           /* load_end_addr: whole file */
        .long bss_end                     /* bss_end_addr */
        .long entry                       /* entry_addr */
entry:
        cli
        movl    $stack_top, %esp
        /* first of all enable the ACPI power button event (PM1a_EN bit 8): QEMU drops a
         * power-button press while it is disabled */
        movw    $0x602, %dx
        movw    $0x0100, %ax
        outw    %ax, %dx
        /* command line (multiboot flags bit 2, string at +16): "dirty=N" MiB/s, "wss=M" MiB */
        movl    $0, rate
        movl    $0, wss
        testl   $4, (%ebx)
        jz      8f
        movl    16(%ebx), %esi
4:      cmpb    $0, (%esi)
        je      8f
        cmpl    $0x74726964, (%esi)       /* "dirt" */
        jne     5f
        cmpw    $0x3d79, 4(%esi)          /* "y=" */
        jne     5f
        addl    $6, %esi
        call    number
        shll    $8, %eax                  /* MiB/s -> pages/s, / 10 ticks per second */
        xorl    %edx, %edx
        movl    $10, %ecx
        divl    %ecx
        movl    %eax, rate
        jmp     4b
5:      cmpl    $0x3d737377, (%esi)       /* "wss=" */
        jne     6f
        addl    $4, %esi
        call    number
        shll    $20, %eax                 /* MiB -> bytes */
        movl    %eax, wss
        jmp     4b
6:      incl    %esi
        jmp     4b
8:
        /* dirty RAM: EBX = multiboot info, mem_upper (KiB above 1 MiB) at +8 */
        movl    8(%ebx), %ecx
        shll    $10, %ecx                 /* = top of RAM - 1 MiB */
        movl    %ecx, top
        /* the dirtied range: the working set from 2 MiB, capped at the top */
        movl    wss, %eax
        testl   %eax, %eax
        jz      12f
        addl    $0x200000, %eax
        cmpl    %ecx, %eax
        jae     12f
        movl    %eax, top
12:     movl    $0x200000, cursor
        movl    $0x200000, %edi
1:      cmpl    %ecx, %edi
        jae     2f
        movl    %edi, (%edi)
        addl    $4096, %edi
        jmp     1b
2:      /* IDT: every vector -> isr (32-bit interrupt gate, current CS) */
        movw    %cs, %ax
        movl    $idt, %edi
        movl    $256, %ecx
        movl    $isr, %edx
        movl    %edx, %esi
        shrl    $16, %esi
3:      movw    %dx, (%edi)
        movw    %ax, 2(%edi)
        movw    $0x8E00, 4(%edi)
        movw    %si, 6(%edi)
        addl    $8, %edi
        loop    3b
        lidt    idt_desc
        /* mask both 8259 PICs */
        movb    $0xFF, %al
        outb    %al, $0x21
        outb    %al, $0xA1
        /* local APIC: enable, periodic timer vector 0x40, divide by 128, ~0.1 s at 1 GHz */
        movl    $0xFEE00000, %ebx
        movl    $0x1FF, 0xF0(%ebx)
        movl    $0x0A, 0x3E0(%ebx)
        movl    $0x20040, 0x320(%ebx)
        movl    $781250, 0x380(%ebx)
idle:   sti
        hlt
        cli
poll:   movl    rate, %ecx                /* keep dirtying: `rate` pages per tick */
        jecxz   10f
        movl    cursor, %edi
9:      cmpl    top, %edi
        jb      11f
        movl    $0x200000, %edi
11:     incl    (%edi)
        addl    $4096, %edi
        loop    9b
        movl    %edi, cursor
10:     movw    $0x600, %dx               /* PM1a_STS */
        inw     %dx, %ax
        testw   $0x0100, %ax              /* PWRBTN_STS */
        jz      idle
        movw    $0x604, %dx               /* PM1a_CNT: SLP_TYP=0 (S5), SLP_EN */
        movw    $0x2000, %ax
        outw    %ax, %dx
        jmp     idle
/* number: decimal digits at ESI -> EAX; ESI left at the first non-digit */
number: xorl    %eax, %eax
13:     movzbl  (%esi), %ecx
        subl    $0x30, %ecx
        cmpl    $9, %ecx
        ja      14f                       /* not a digit (unsigned compare) */
        imull   $10, %eax, %eax
        addl    %ecx, %eax
        incl    %esi
        jmp     13b
14:     ret
/* Interrupts never return with IRET: KVM's instruction emulator (which runs this guest when the
 * host's KVM is a software nested one, e.g. PVM) only emulates IRET in real mode. The handler
 * acknowledges, resets the stack and polls again; IF stays clear until the next `sti; hlt`. */
isr:
        movl    $0, 0xFEE000B0            /* APIC EOI */
        movl    $stack_top, %esp
        jmp     poll
        .p2align 3
idt_desc:
        .word   256 * 8 - 1
        .long   idt
        .p2align 4
bss_start:
        .set    idt, bss_start
        .set    stack_top, bss_start + 256 * 8 + 1024
        .set    rate, stack_top
        .set    cursor, stack_top + 4
        .set    top, stack_top + 8
        .set    wss, stack_top + 12
        .set    bss_end, stack_top + 16
