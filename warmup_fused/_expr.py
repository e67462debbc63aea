"""Expressions of the step that compile to the postfix code of csrc/schedule.h.

A schedule phase is written as a Python expression over ``STEP`` (the global step, in epochs),
``LOCAL`` (steps since the phase began) and ``BASE`` (the group's base LR), with operators that
keep the reference's evaluation order: ``BASE * (STEP / 10.0)`` and ``(BASE * STEP) / 10.0`` are
different programs, as they are different floats in Python. Constants are stored as float64.

Every operator is Python's float operator, bit for bit (``//`` and ``%`` included, for any operand,
inf and NaN too). Where Python raises (a zero divisor of ``/``, ``//``, ``%``; ``sqrt`` of a negative),
the device cannot: it yields NaN, and a constant zero divisor is refused when the schedule is compiled.
"""
from __future__ import annotations

import enum
import math
from typing import Union


class Op(enum.IntEnum):  # must match enum Op in csrc/schedule.h
    STEP = 0
    LOCAL = 1
    CONST = 2
    ADD = 3
    SUB = 4
    MUL = 5
    DIV = 6
    FLOORDIV = 7
    MOD = 8
    MAX = 9
    MIN = 10
    SQRT = 11
    REPEAT_MUL = 12
    COS = 13
    POW = 14
    EXP = 15
    LOG = 16
    TANH = 17
    ROUND_F32 = 18


TRANSCENDENTAL = frozenset({Op.COS, Op.POW, Op.EXP, Op.LOG, Op.TANH})
_STEP_LEAVES = frozenset({Op.STEP, Op.LOCAL})
_BASE = -1  # placeholder leaf, replaced by a group's base LR constant at compile time
_PLATEAU = -2  # leaf: the group's LR held in the schedule's ReduceLROnPlateau block (value: its settings)

Operand = Union["Expr", float, int]


class Expr:
    __slots__ = ("op", "args", "value")

    def __init__(self, op: int, args: tuple = (), value: float | None = None):
        self.op, self.args, self.value = op, args, value

    # Arithmetic, in Python's left-to-right order.
    def __add__(self, o: Operand) -> Expr: return Expr(Op.ADD, (self, lift(o)))
    def __radd__(self, o: Operand) -> Expr: return Expr(Op.ADD, (lift(o), self))
    def __sub__(self, o: Operand) -> Expr: return Expr(Op.SUB, (self, lift(o)))
    def __rsub__(self, o: Operand) -> Expr: return Expr(Op.SUB, (lift(o), self))
    def __mul__(self, o: Operand) -> Expr: return Expr(Op.MUL, (self, lift(o)))
    def __rmul__(self, o: Operand) -> Expr: return Expr(Op.MUL, (lift(o), self))
    def __truediv__(self, o: Operand) -> Expr: return Expr(Op.DIV, (self, lift(o)))
    def __rtruediv__(self, o: Operand) -> Expr: return Expr(Op.DIV, (lift(o), self))
    def __floordiv__(self, o: Operand) -> Expr: return Expr(Op.FLOORDIV, (self, lift(o)))
    def __mod__(self, o: Operand) -> Expr: return Expr(Op.MOD, (self, lift(o)))
    def __pow__(self, o: Operand) -> Expr: return Expr(Op.POW, (self, lift(o)))
    def __rpow__(self, o: Operand) -> Expr: return Expr(Op.POW, (lift(o), self))
    def __neg__(self) -> Expr: return Expr(Op.MUL, (self, lift(-1.0)))

    def uses(self, ops) -> bool:
        return self.op in ops or any(a.uses(ops) for a in self.args)

    @property
    def transcendental(self) -> bool:
        """True when the device's own libm would be used (so exact mode needs a table)."""
        return self.uses(TRANSCENDENTAL)

    def depth(self) -> int:
        """Stack slots the postfix code needs (repeat_mul keeps only its count on the stack)."""
        if self.op == Op.REPEAT_MUL:
            return self.args[2].depth()
        if not self.args:
            return 1
        return max(a.depth() + i for i, a in enumerate(self.args))

    def emit(self, base_lr: float | None, code: list, vals: list, blocks) -> None:
        """Appends postfix code words to ``code`` and constants to ``vals``.

        ``base_lr`` replaces BASE (None: BASE is refused). ``blocks.anchors(x, factor)`` returns the index in
        ``vals`` of the anchor block of ``repeat_mul(x, factor, ...)``, whose x and factor are step-free;
        ``blocks.plateau(settings)`` the index of the group's LR in the schedule's plateau block.
        """
        if self.op == Op.REPEAT_MUL:
            x, factor, times = self.args
            times.emit(base_lr, code, vals, blocks)
            code.append(int(Op.REPEAT_MUL) | (blocks.anchors(x, factor) << 8))
            return
        if self.op == _PLATEAU:
            code.append(int(Op.CONST) | (blocks.plateau(self.value) << 8))
            return
        if self.op in (Op.DIV, Op.FLOORDIV, Op.MOD) and self.args[1].op == Op.CONST and self.args[1].value == 0.0:
            raise ValueError(f"{self!r} divides by the constant 0.0 (Python raises ZeroDivisionError)")
        for a in self.args:
            a.emit(base_lr, code, vals, blocks)
        if self.op == _BASE and base_lr is None:
            raise ValueError("BASE has no value here (momentum phases hold absolute values)")
        if self.op in (Op.CONST, _BASE):
            vals.append(base_lr if self.op == _BASE else self.value)
            code.append(int(Op.CONST) | ((len(vals) - 1) << 8))
        else:
            code.append(int(self.op))

    def __repr__(self) -> str:
        names = {Op.STEP: "STEP", Op.LOCAL: "LOCAL", _BASE: "BASE", _PLATEAU: "PLATEAU_LR"}
        if self.op in names:
            return names[self.op]
        if self.op == Op.CONST:
            return repr(self.value)
        return f"{Op(self.op).name.lower()}({', '.join(map(repr, self.args))})"


def lift(x: Operand) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"schedule expressions take numbers, got {type(x).__name__}")
    return Expr(Op.CONST, value=float(x))


STEP = Expr(Op.STEP)
LOCAL = Expr(Op.LOCAL)
BASE = Expr(_BASE)
PI = lift(math.pi)


def pmax(a: Operand, b: Operand) -> Expr:
    """Python's ``max(a, b)``: ``b if b > a else a``."""
    return Expr(Op.MAX, (lift(a), lift(b)))


def pmin(a: Operand, b: Operand) -> Expr:
    """Python's ``min(a, b)``: ``b if b < a else a``."""
    return Expr(Op.MIN, (lift(a), lift(b)))


def sqrt(a: Operand) -> Expr: return Expr(Op.SQRT, (lift(a),))
def cos(a: Operand) -> Expr: return Expr(Op.COS, (lift(a),))
def exp(a: Operand) -> Expr: return Expr(Op.EXP, (lift(a),))
def log(a: Operand) -> Expr: return Expr(Op.LOG, (lift(a),))
def tanh(a: Operand) -> Expr: return Expr(Op.TANH, (lift(a),))


def round_f32(a: Operand) -> Expr:
    """``float(numpy.float32(a))``: rounds to the nearest float32 (exact on every device: a conversion)."""
    return Expr(Op.ROUND_F32, (lift(a),))


def repeat_mul(x: Operand, factor: Operand, times: Operand) -> Expr:
    """``x * factor * factor ...`` (``times`` multiplications, left to right), as a recursive scheduler does.

    ``x`` and ``factor`` must not depend on the step (BASE is fine) and ``factor`` must be >= 0: the compiler
    runs the product up to its fixed point (0, inf, or a rounding fixed point such as the smallest subnormal
    times 0.999; at most 2**26 multiplications, else it refuses) and stores every 256th value, so the device
    does at most 255 multiplications at any step. ``times < 0`` counts as 0 (Python's ``range``); a NaN or
    non-integral ``times`` gives NaN.
    """
    x, factor = lift(x), lift(factor)
    if x.uses(_STEP_LEAVES) or factor.uses(_STEP_LEAVES):
        raise ValueError("repeat_mul: x and factor must not depend on STEP or LOCAL (the product is anchored "
                         "when the schedule is compiled)")
    return Expr(Op.REPEAT_MUL, (x, factor, lift(times)))
