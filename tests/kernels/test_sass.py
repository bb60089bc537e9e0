"""Reading SASS (kernels/sass.py) on a listing written by hand in nvdisasm's format, its line table pointing
into a source file of two functions with a loop each, the inner one inlined into the outer's loop."""

import textwrap

from kernels import sass

SOURCE = """\
def outer(n):
    total = 0
    for i in range(n):
        total += inner(i)
    return total


def inner(i):
    t = 0
    for j in range(i):
        t += j
    return t
"""

LISTING = """\
k:
        //## File "{src}", line 2
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_0:
        //## File "{src}", line 4
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   HGMMA.64x32x16.F32.BF16 R8, gdesc[UR8], R8 ;
.L_x_1:
        //## File "{src}", line 11 inlined at "{src}", line 4
        //## File "{src}", line 4
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R2.64] ;
        /*0040*/                   HMMA.16816.F32.BF16 R12, R4, R6, R12 ;
        /*0050*/                   LDG.E.U16 R7, desc[UR4][R2.64+0x2] ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        //## File "{src}", line 4
        /*0070*/                   FFMA R5, R5, R6, R7 ;
        /*0080*/               @!P0 BRA `(.L_x_0) ;
        //## File "{src}", line 5
        /*0090*/                   LDG.E R9, desc[UR4][R2.64] ;
        /*00a0*/                   EXIT ;
.L_x_2:
        /*00b0*/                   BRA `(.L_x_2);
"""


def listing(tmp_path):
    src = tmp_path / "source.py"
    src.write_text(SOURCE)
    return sass.read(textwrap.dedent(LISTING.format(src=src))), str(src)


def test_loops_are_found_innermost_first_and_named_by_their_source_function(tmp_path):
    read, _ = listing(tmp_path)
    assert len(read.instructions) == 12
    inner, outer = read.loops  # the trap's branch to itself is no loop
    assert (inner.function, [ins.address for ins in inner.body]) == ("inner", [0x30, 0x40, 0x50, 0x60])
    assert outer.function == "outer" and len(outer.body) == 8
    assert [ins.address for ins in outer.own] == [0x10, 0x20, 0x70, 0x80]  # the nested loop left out
    assert [ins.address for ins in read.straight_line] == [0x00, 0x90, 0xA0, 0xB0]


def test_instructions_know_their_source_lines_and_functions(tmp_path):
    read, src = listing(tmp_path)
    by_address = {ins.address: ins for ins in read.instructions}
    assert by_address[0x30].lines == ((src, 11), (src, 4))  # innermost first
    assert by_address[0x60].lines == ((src, 11), (src, 4))  # an instruction without comments keeps the last ones
    assert sass.functions_of(by_address[0x30]) == {"inner", "outer"}
    assert sass.functions_of(by_address[0x70]) == {"outer"}


def test_load_widths_and_multiply_kinds(tmp_path):
    read, _ = listing(tmp_path)
    widths = [sass.load_bytes(ins) for ins in read.instructions]
    assert widths == [None, 16, None, 16, None, 2, None, None, None, 4, None, None]
    inner, outer = read.loops
    assert sass.mma_kind(inner.own) == "mma.sync" and sass.mma_kind(outer.own) == "wgmma"
    assert sass.mma_kind(read.straight_line) is None
    macs = {ins.name: sass.macs_per_warp(ins) for ins in read.instructions if sass.macs_per_warp(ins)}
    assert macs == {"HGMMA": 64 * 32 * 16 // 4, "HMMA": 16 * 8 * 16, "FFMA": 32}
