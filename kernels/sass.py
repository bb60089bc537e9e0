"""What a compiled kernel's SASS says: its instructions with the source lines they come from, its loops, the
width of its global loads and the kind of its matrix multiplies.

The cubin of an ahead-of-time compile (kernels/aot.py) is disassembled by the nvdisasm that ships with
triton, with the line table (inlined calls included), so every instruction knows the source lines it was
compiled from. A loop is a backward branch and the instructions from its target to it; a loop belongs to
the innermost source `for` whose body holds most of its own instructions' lines, which names it by the
function that holds that `for` (a kernel's loops each live in their own @triton.jit function).
"""

import ast
import functools
import linecache
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import triton

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_LINE = re.compile(r'File "([^"]+)", line (\d+)')
_INSTRUCTION = re.compile(r"/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")

# Global loads: LDG into registers, LDGSTS (cp.async) straight into shared memory, UTMALDG (TMA) whole tiles.
GLOBAL_LOADS = ("LDG", "LDGSTS", "UTMALDG")
_WIDTHS = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}  # bytes; no suffix: 4
MMA_KINDS = {"HGMMA": "wgmma", "HMMA": "mma.sync", "FFMA": "fma"}  # fastest first


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: 'LDG.E.128', 'HGMMA.64x32x16.F32.BF16'
    operands: str
    lines: tuple  # the (file, line) pairs it was compiled from, innermost first, then the calls it was inlined through

    @property
    def name(self):
        return self.opcode.split(".")[0]


@dataclass
class Loop:
    """A SASS loop: the instructions from a branch target to the branch back to it."""

    body: list  # its instructions, nested loops' included
    own: list = field(default_factory=list)  # those outside any nested loop
    function: str = ""  # the @triton.jit function holding its source `for`


def disassemble(cubin):
    """The SASS of a cubin with its line table, as nvdisasm prints it."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        command = [os.path.join(_BIN, "nvdisasm"), "-c", "-gi", f.name]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def parse(sass):
    """(instructions, {label: index of the instruction it marks}) of nvdisasm's output."""
    instructions, labels, lines, fresh = [], {}, (), False
    for text in sass.splitlines():
        if text.lstrip().startswith("//##"):  # 'line A inlined at line B', then 'line B inlined at C', ...
            found = tuple((file, int(line)) for file, line in _LINE.findall(text))
            lines = tuple(dict.fromkeys((lines if fresh else ()) + found))
            fresh = True
        elif label := _LABEL.match(text.strip()):
            labels[label.group(1)] = len(instructions)
        elif match := _INSTRUCTION.search(text):
            address, _, opcode, operands = match.groups()
            instructions.append(Instruction(int(address, 16), opcode, operands.strip(), lines))
            fresh = False
    return instructions, labels


@dataclass
class Listing:
    """A kernel's SASS, read: its instructions and its loops (innermost first, each named by its function)."""

    instructions: list
    loops: list

    @property
    def straight_line(self):
        """The instructions outside every loop."""
        inside = {ins.address for loop in self.loops for ins in loop.body}
        return [ins for ins in self.instructions if ins.address not in inside]


def read(sass):
    """The Listing of nvdisasm's output."""
    instructions, labels = parse(sass)
    spans = []
    for i, instruction in enumerate(instructions):
        target = _TARGET.search(instruction.operands)
        if instruction.name == "BRA" and target and labels.get(target.group(1), i) < i:  # not a trap's self-loop
            spans.append((labels[target.group(1)], i))
    spans.sort(key=lambda span: span[1] - span[0])
    found = []
    for start, end in spans:
        inner = [(s, e) for s, e in spans if start <= s and e <= end and (s, e) != (start, end)]
        nested = {j for s, e in inner for j in range(s, e + 1)}
        own = [ins for j, ins in enumerate(instructions[start : end + 1], start) if j not in nested]
        found.append(Loop(instructions[start : end + 1], own, _source_function(own)))
    return Listing(instructions, found)


def _source_function(instructions):
    """The function holding the source `for` that most of the instructions come from, each from the innermost
    `for` around it: in the innermost function of its inline chain that has one, the tightest there."""
    votes = Counter(filter(None, map(_innermost_for, instructions)))
    return votes.most_common(1)[0][0][0] if votes else ""


def _innermost_for(instruction):
    for file, line in instruction.lines:
        around = [loop for loop in _spans(file)[1] if loop[1] <= line <= loop[2]]
        if around:
            return min(around, key=lambda loop: loop[2] - loop[1])
    return None


def functions_of(instruction):
    """The names of the source functions an instruction was compiled from, those it was inlined through too."""
    return _functions(instruction.lines)


@functools.cache
def _functions(lines):
    return frozenset(name for file, line in lines for name, first, last in _spans(file)[0] if first <= line <= last)


@functools.cache
def _spans(file):
    """([(function, first line, last line)], [(function, first, last line of a `for` body in it)]) of a file."""
    if not os.path.exists(file):
        return (), ()
    with open(file) as f:
        tree = ast.parse(f.read())
    functions, loops = [], []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            functions.append((function.name, function.lineno, function.end_lineno))
            for node in ast.walk(function):
                if isinstance(node, ast.For):
                    loops.append((function.name, node.body[0].lineno, node.end_lineno))
    return tuple(functions), tuple(loops)


# --- what instructions do --------------------------------------------------------------------------


def load_bytes(instruction):
    """Bytes per thread of a global load instruction (LDG.E.128: 16), or None for any other instruction."""
    if instruction.name not in GLOBAL_LOADS:
        return None
    if instruction.name == "UTMALDG":
        return 16  # a bulk tensor copy moves whole lines
    modifiers = instruction.opcode.split(".")[1:]
    return next((_WIDTHS[m] for m in modifiers if m in _WIDTHS), 4)


_LOAD_CALL = re.compile(r"tl\.load\(\s*(\w+)")


def loaded_pointer(instruction):
    """The pointer argument's name in the source `tl.load(NAME + ...)` a global load comes from (None if its
    lines hold no such call)."""
    for file, line in instruction.lines:
        if found := _LOAD_CALL.search(linecache.getline(file, line)):
            return found.group(1)
    return None


def main_loops(listing):
    """[{"function", "mma", "loads": {pointer: [bytes of each of its global loads]}}] of the loops that
    multiply (wgmma, mma.sync or FMA)."""
    found = []
    for loop in listing.loops:
        if kind := mma_kind(loop.own):
            loads = {}
            for ins in loop.own:
                if (width := load_bytes(ins)) is not None:
                    loads.setdefault(loaded_pointer(ins), []).append(width)
            found.append({"function": loop.function, "mma": kind, "loads": loads})
    return found


def mma_kind(instructions):
    """'wgmma', 'mma.sync' or 'fma': the fastest kind of multiply-accumulate among the instructions (None)."""
    names = {ins.name for ins in instructions}
    return next((kind for name, kind in MMA_KINDS.items() if name in names), None)


def macs_per_warp(instruction):
    """Multiply-accumulates one warp's instruction contributes: HMMA.16816 16*8*16, HGMMA.64x32x16 a quarter
    of 64*32*16 (a warpgroup of 4 warps issues it), FFMA 32; 0 for other instructions."""
    modifiers = instruction.opcode.split(".")
    if instruction.name == "HGMMA":
        m, n, k = (int(d) for d in modifiers[1].split("x"))
        return m * n * k // 4
    if instruction.name == "HMMA":
        shape = modifiers[1]  # m and n one or two digits each: '16816' = 16, 8, 16; '1688' = 16, 8, 8
        return 16 * 8 * int(shape[3:])
    return 32 if instruction.name == "FFMA" else 0
