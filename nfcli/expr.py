"""Energy expressions: untrusted text → SymPy tree → a differentiable torch function.

The text is never given to eval, sympify or parse_expr (all of which run Python code). It is parsed
by Python's ``ast`` module, every node is checked against a whitelist of operators, functions and
names, and the SymPy tree is built from that. The tree is rewritten for stability (ln Σ exp → a
log-sum-exp, ln σ(a) → −softplus(−a)), common subexpressions are shared, and the result is compiled
to a chain of torch calls that maps a batch z of shape (N, D) to energies of shape (N,).
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sympy as sp
import torch
from sympy.core.logic import fuzzy_and
from torch import Tensor

from nfcli.errors import NfcliError

MAX_LENGTH = 20_000
MAX_NODES = 5_000
MAX_DEPTH = 60  # nested calls, powers, signs; a long sum or product is one level, brackets none
MAX_CONSTANT_LOG10 = 300  # constants beyond 1e300 are refused before they are computed
MAX_EXPONENT = 1_000  # |p| in base**p for a number p: beyond it, SymPy's exact arithmetic explodes
MAX_EXACT_BITS = 4_096  # numerator and denominator of an exact fraction SymPy is left to carry
SHOWN = 100  # characters of a long expression quoted in a message
HEAVY_NODES = 20  # a constant with more nodes than this is carried as a Float (see _heavy)


def _real_values(args: Sequence[sp.Basic]) -> list[float] | None:
    """The arguments as floats, if all are real numbers (so that a function of them can be
    evaluated at once, stably, in double precision, as torch will), else None."""
    if not all(a.is_number for a in args):
        return None
    try:
        values = [complex(a.evalf(17)) for a in args]
    except (TypeError, ValueError, ArithmeticError):
        return None
    if any(v.imag != 0 or not math.isfinite(v.real) for v in values):
        return None
    return [v.real for v in values]


class sigmoid(sp.Function):  # noqa: N801  (SymPy names functions in lower case)
    """σ(a) = 1/(1 + e^{−a}), compiled to torch.sigmoid."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Float | None:
        values = _real_values([a])
        if values is None:
            return None
        (v,) = values
        return sp.Float(1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)))

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_extended_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None


class softplus(sp.Function):  # noqa: N801
    """softplus(a) = ln(1 + e^{a}), compiled to torch.nn.functional.softplus."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Float | None:
        values = _real_values([a])
        if values is None:
            return None
        (v,) = values
        return sp.Float(v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)))

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_extended_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None


class logsumexp(sp.Function):  # noqa: N801
    """ln Σ_i e^{a_i}, produced by the stability rewrite and compiled to torch.logsumexp."""

    @classmethod
    def eval(cls, *args: sp.Basic) -> sp.Float | None:
        values = _real_values(args)
        if values is None:
            return None
        m = max(values)  # of numbers within ±1e300, as the builder checks: no overflow
        return sp.Float(m + math.log(sum(math.exp(v - m) for v in values)))

    def _eval_is_extended_real(self) -> bool | None:
        return fuzzy_and(a.is_extended_real for a in self.args)


# name → (SymPy callable, allowed argument counts); None means any count ≥ 1
FUNCTIONS: dict[str, tuple[Callable[..., sp.Basic], tuple[int, ...] | None]] = {
    "exp": (sp.exp, (1,)),
    "log": (sp.log, (1, 2)),
    "ln": (sp.log, (1,)),
    "sqrt": (sp.sqrt, (1,)),
    "sin": (sp.sin, (1,)),
    "cos": (sp.cos, (1,)),
    "tan": (sp.tan, (1,)),
    "asin": (sp.asin, (1,)),
    "acos": (sp.acos, (1,)),
    "atan": (sp.atan, (1,)),
    "atan2": (sp.atan2, (2,)),
    "sinh": (sp.sinh, (1,)),
    "cosh": (sp.cosh, (1,)),
    "tanh": (sp.tanh, (1,)),
    "erf": (sp.erf, (1,)),
    "erfc": (sp.erfc, (1,)),
    "sigmoid": (sigmoid, (1,)),
    "softplus": (softplus, (1,)),
    "logsumexp": (logsumexp, None),
    "Abs": (sp.Abs, (1,)),
    "abs": (sp.Abs, (1,)),
    "Max": (sp.Max, None),
    "Min": (sp.Min, None),
    "Piecewise": (sp.Piecewise, None),
}
CONSTANTS: dict[str, sp.Basic] = {"pi": sp.pi, "E": sp.E}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div)  # built as flat sums and products
_CONDITION = (
    sp.core.relational.Relational,
    sp.logic.boolalg.BooleanFunction,
    sp.logic.boolalg.BooleanAtom,
)
_COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge, ast.Eq: sp.Eq}


@dataclass(frozen=True)
class Expression:
    """A parsed energy: its text, its SymPy tree and the variable names in column order."""

    text: str
    tree: sp.Expr
    names: tuple[str, ...]

    def compile(self) -> Callable[[Tensor], Tensor]:
        return compile_expression(self.tree, self.names)


def improper_variables(expr: Expression) -> list[tuple[str, str]]:
    """The variables along which exp(−U) cannot integrate: ("v", "absent") where U does not
    depend on v, ("v", "linear") where ∂U/∂v ≠ 0 is free of v (U = a·v + b, a and b free of v).
    A derivative SymPy cannot take, or one that takes too long to matter, counts as fine."""
    found = []
    terms = [(t, t.free_symbols) for t in sp.Add.make_args(expr.tree)]  # a sum: term by term
    for n in expr.names:
        v = sp.Symbol(n, real=True)
        with_v = [t for t, free in terms if v in free]
        if not with_v:
            found.append((n, "absent"))
            continue
        try:
            d = sp.diff(sp.Add(*with_v), v)
        except Exception:  # SymPy's own failure is not the user's: the fit's checks remain
            continue
        if d != 0 and v not in d.free_symbols:
            found.append((n, "linear"))
    return found


def natural_key(name: str) -> tuple[str, int, str]:
    """Sort key so that x < y < z and x1 < x2 < … < x10: the stem, then the numeric suffix
    (compared by length, then digits: no int() of what may be thousands of digits)."""
    m = re.fullmatch(r"(.*?)(\d*)", name)
    assert m is not None
    stem, digits = m.groups()
    number = digits.lstrip("0") or ("0" if digits else "")
    return stem, len(number) if digits else -1, number


def check_constants(
    constants: Mapping[str, float], text: str, names: Sequence[str] | None = None
) -> None:
    """Constants bound by the user are names the text uses, not --vars, and finite numbers."""
    for n, v in constants.items():
        if not _NAME.match(n) or n in FUNCTIONS or n in CONSTANTS:
            raise NfcliError(
                f"{n}={v} cannot be bound: {n!r} is not a name that can stand for a number in an "
                f"expression (it must start with a letter and not be a function or pi/E)."
            )
        if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_(])", text):
            raise NfcliError(
                f"{n}={v} binds a constant that the expression {_quoted(text)} does not use. "
                "Check the spelling, or leave it out."
            )
        if names is not None and n in names:
            raise NfcliError(
                f"{n} is both bound as a constant ({n}={v}) and listed in --vars; it is one or "
                "the other. Leave it out of --vars to fix it at the value."
            )
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise NfcliError(f"{n}={v!r}: a constant must be a finite number, e.g. {n}=3.")


def parse(
    text: str,
    names: Sequence[str] | None = None,
    constants: Mapping[str, float] | None = None,
) -> Expression:
    """Parse an energy U(z) written in SymPy syntax; variables ordered naturally unless ``names``.

    ``names`` (the ``--vars`` option) may add variables the expression does not use, but must
    include every variable it does use. ``constants`` binds names to numbers (``nu=3`` on the
    command line): each must occur in the text, and is then a number, not a variable.
    """
    constants = dict(constants or {})
    check_constants(constants, text, names)
    if len(text) > MAX_LENGTH:
        raise NfcliError(
            f"The expression is {len(text)} characters long; the limit is {MAX_LENGTH}. "
            "Write a long energy as a Python file with an energy(z) function instead."
        )
    stripped = text.strip()
    source = stripped.replace("^", "**")  # as SymPy's convert_xor: ^ is a power, not xor
    try:
        with warnings.catch_warnings():  # Python's own, e.g. "invalid decimal literal" for 1or x
            warnings.simplefilter("ignore")
            module = ast.parse(source, mode="eval")
    except SyntaxError as e:
        if e.offset:
            col = _original_column(stripped, _offset(source, e.lineno or 1, e.offset - 1))
        else:  # Python gives no column when the text ends too early ("x**2 + y*")
            col = len(stripped)
        what = e.msg if e.offset else f"{e.msg}: it ends too early"
        if "integer string conversion" in what:  # Python's limit on decimal literals
            what = "a number with thousands of digits; numbers must stay below 1e300"
        raise NfcliError(
            f"The expression is not valid syntax ({what}) at column {col + 1}:\n"
            f"{_pointer(stripped, col)}\n"
            "Check brackets and operators; powers are written ** or ^, products need an explicit *."
        ) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise NfcliError(
            f"The expression is too large or too deeply nested for Python's parser "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). "
            f"The limits are {MAX_NODES} syntax nodes and {MAX_DEPTH} levels of nesting; write a "
            "large energy as a Python file with an energy(z) function instead."
        ) from None
    count = sum(1 for _ in ast.walk(module))
    if count > MAX_NODES:
        raise NfcliError(
            f"The expression has {count} syntax nodes; the limit is {MAX_NODES}. "
            "Write a large energy as a Python file with an energy(z) function instead."
        )
    tree = _Builder(text, source, constants).build(module.body, 0)
    if not isinstance(tree, sp.Expr) or isinstance(tree, _CONDITION):
        raise NfcliError(
            f"The expression {_quoted(text)} is a condition, not a number-valued energy. "
            "Use the condition inside Piecewise((value, condition), (other value, True))."
        )
    _check_real(tree, text)
    used = sorted((s.name for s in tree.free_symbols), key=natural_key)
    if not used:
        bound = f" once {', '.join(constants)} are bound to numbers" if constants else ""
        raise NfcliError(
            f"The expression {_quoted(text)} has no variables{bound}, so it defines no density. "
            "Write it in terms of variables such as x, y (or x1, x2, …)."
        )
    if "e" in used and (names is None or "e" not in names):
        raise NfcliError(
            f"The expression {_quoted(text)} uses e, which nfcli reads as a variable, not Euler's "
            "number: it would fit a density over e as well. Write Euler's number as E or use "
            "exp(x) for e**x; if e really is a variable, list it with --vars "
            f"(--vars {','.join(used)}); if it is a constant, bind it (e=2.5)."
        )
    if names is None:
        return Expression(text, tree, tuple(used))
    names = tuple(names)
    bad = [n for n in names if not _NAME.match(n) or n in FUNCTIONS or n in CONSTANTS]
    if bad or len(set(names)) != len(names):
        raise NfcliError(
            f"--vars {','.join(names)} is not a list of distinct variable names "
            f"(problem: {', '.join(bad) or 'a repeated name'}). Give names such as --vars x,y."
        )
    missing = [n for n in used if n not in names]
    if missing:
        raise NfcliError(
            f"--vars {','.join(names)} leaves out {', '.join(missing)}, which the expression uses. "
            f"List every variable, e.g. --vars {','.join(used)}."
        )
    return Expression(text, tree, names)


def _original_column(text: str, col: int) -> int:
    """Map a column of the text with ^ → ** back to the user's text."""
    i = j = 0
    while i < len(text) and j < col:
        j += 2 if text[i] == "^" else 1
        i += 1
    return i


def _offset(source: str, lineno: int, col: int) -> int:
    """The index in ``source`` of (1-based line, 0-based character column), as Python counts
    lines: an expression in brackets may span several."""
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", source)]
    return starts[min(max(lineno, 1), len(starts)) - 1] + col


def _pointer(text: str, col: int) -> str:
    """Two lines: the text (or, if long, the part around ``col``) and a caret under ``col``."""
    shown = re.sub(r"\s", " ", text)  # one line, same columns
    if len(shown) > SHOWN:
        start = min(max(0, col - SHOWN // 2), len(shown) - SHOWN)
        end = start + SHOWN
        head, tail = ("…" if start > 0 else ""), ("…" if end < len(shown) else "")
        shown, col = head + shown[start:end] + tail, col - start + len(head)
    return f"  {shown}\n  {' ' * col}^"


def _quoted(text: str) -> str:
    """The expression in quotes for a message, shortened if long."""
    text = text.strip()
    return repr(text) if len(text) <= SHOWN else repr(text[:SHOWN]) + "…"


def _check_real(tree: sp.Expr, text: str) -> None:
    bad = [a for a in (sp.I, sp.zoo, sp.oo, sp.nan) if tree.has(a)]
    if bad:
        what = (
            "a complex number" if bad[0] is sp.I else f"an infinite or undefined value ({bad[0]})"
        )
        raise NfcliError(
            f"The expression {_quoted(text)} evaluates to {what}: for example sqrt(-1), log(-1), I "
            "or a division by zero among its constants. An energy must be real and finite."
        )


def _numeric(value: sp.Expr) -> complex | None:
    """A constant's value in double precision, or None where it has none (zoo, nan, or beyond
    float64). Only called on constants whose parts are already checked, so evalf stays cheap."""
    try:
        c = complex(value.evalf(17))
    except (TypeError, ValueError, ArithmeticError):  # OverflowError, decimal.InvalidOperation
        return None
    return c if math.isfinite(c.real) and math.isfinite(c.imag) else None


_UNDEFINED = (
    "an infinite or undefined constant (a division by zero? log(0)?)",
    "An energy must be finite: divide only by nonzero numbers, take log only of positive ones.",
)
_COMPLEX = (
    "a constant that is a complex number (e.g. sqrt(-1), log(-1), acos(2))",
    "An energy must be real: keep sqrt, log, asin and acos to arguments in their real domain.",
)
_HUGE = (
    f"a constant whose value exceeds 1e{MAX_CONSTANT_LOG10}",
    "Rewrite it (e.g. use exp and log) so that every constant stays finite.",
)
_UNEVALUATED = (
    "a constant that cannot be evaluated to a number",
    "Rewrite this part with plain numbers.",
)


def _evaluate_constant(value: sp.Expr) -> sp.Float | tuple[str, str]:
    """A constant's value as a real Float, or (what is wrong with it, how to fix it)."""
    try:
        v = value.evalf(17)
        if v.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            return _UNDEFINED
        re_part, im_part = v.as_real_imag()
        if not (re_part.is_Number and im_part.is_Number):
            return _UNEVALUATED
        if im_part != 0:
            return _COMPLEX
        if abs(float(re_part)) > 10.0**MAX_CONSTANT_LOG10:  # float(): inf when beyond float64
            return _HUGE
    except (TypeError, ValueError, ArithmeticError):  # OverflowError, decimal.InvalidOperation
        return _HUGE
    return sp.Float(re_part, 17)


def _heavy(value: sp.Expr) -> bool:
    """Whether a constant is better carried as a Float: of more than HEAVY_NODES nodes (each
    level of nesting would evaluate all below it again), holding a number beyond 1e15, or a
    fraction whose denominator exceeds 1e6 (sqrt(10**(26999999/27000000)) had SymPy expanding
    roots for minutes)."""
    for count, sub in enumerate(sp.preorder_traversal(value), start=1):
        if count > HEAVY_NODES or (sub.is_Number and abs(sub) > 10**15):
            return True
        if sub.is_Rational and sub.q > 10**6:
            return True
    return False


def _too_exact(value: sp.Expr) -> bool:
    """Whether an exact fraction in ``value`` has a numerator or denominator of more than
    MAX_EXACT_BITS bits (SymPy would go on computing with it exactly, ever more slowly)."""
    numbers = [value] if isinstance(value, sp.Rational) else value.atoms(sp.Rational)
    return any(max(abs(r.p), r.q).bit_length() > MAX_EXACT_BITS for r in numbers)


class _Builder:
    """Turns a whitelisted Python ``ast`` into a SymPy tree, refusing everything else.

    Every constant is checked as soon as it is formed (real, finite, at most 1e300, exact
    fractions of bounded size), so that no later step, SymPy's or ours, computes with a number
    that is huge, complex or of thousands of digits: ``exp(exp(exp(exp(exp(1)))))`` is refused at
    its fourth exp from the inside (e^3.8e6), in a millisecond, instead of costing mpmath minutes.
    """

    def __init__(self, text: str, source: str, constants: Mapping[str, float]) -> None:
        self.text = text
        self.source = source  # the stripped text with ^ → **, which ``ast`` parsed
        self.constants = constants  # names bound to numbers by the user (nu=3)
        self.symbols: dict[str, sp.Symbol] = {}

    def fail(self, node: ast.AST, what: str, fix: str) -> NfcliError:
        col = _original_column(self.text.strip(), self.offset(node))
        return NfcliError(
            f"The expression contains {what} at column {col + 1}:\n"
            f"{_pointer(self.text.strip(), col)}\n{fix}"
        )

    def offset(self, node: ast.AST) -> int:
        """The node's index in the parsed source (``ast`` counts columns in UTF-8 bytes)."""
        lineno, col = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        start = _offset(self.source, lineno, 0)
        line = self.source[start:].splitlines()[0] if self.source[start:] else ""
        return start + len(line.encode()[:col].decode(errors="ignore"))

    def build(self, node: ast.AST, depth: int) -> sp.Basic:
        if depth > MAX_DEPTH:
            raise self.fail(
                node,
                f"nesting deeper than {MAX_DEPTH} levels",
                "Flatten it, or write the energy as a Python file.",
            )
        try:
            value = self.dispatch(node, depth + 1)
        except NfcliError:
            raise
        except Exception as e:  # SymPy refusing an operation, or failing at one (it has bugs)
            raise self.fail(
                node,
                f"an operation SymPy cannot carry out ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'})",
                "Rewrite this part so that every value is a finite real number.",
            ) from None
        if isinstance(value, sp.Expr) and not isinstance(value, _CONDITION):
            value = self.checked(node, value)
        return value

    def dispatch(self, node: ast.AST, d: int) -> sp.Basic:
        """Build one node; ``d`` is the depth of its children."""
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.expr(node.operand, d)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return sp.Not(self.condition(node.operand, d))
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                return self.power(node, self.expr(node.left, d), self.expr(node.right, d))
            if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                both = self.condition(node.left, d), self.condition(node.right, d)
                return sp.And(*both) if isinstance(node.op, ast.BitAnd) else sp.Or(*both)
            if not isinstance(node.op, _ARITHMETIC):
                raise self.fail(
                    node,
                    f"the operator {type(node.op).__name__}",
                    "Use only + - * / and ** (or ^) between numbers and variables.",
                )
            return self.chain(node, d)
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v, d) for v in node.values]
            return sp.And(*parts) if isinstance(node.op, ast.And) else sp.Or(*parts)
        if isinstance(node, ast.Compare):
            return self.compare(node, d)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        kind = type(node).__name__
        raise self.fail(
            node,
            f"a Python {kind} construct, which energies may not use",
            "An energy is a formula of numbers, variables, + - * / **, comparisons inside "
            "Piecewise, and the functions " + ", ".join(FUNCTIONS) + ".",
        )

    def chain(self, node: ast.BinOp, d: int) -> sp.Expr:
        """a ± b ± c … (or a */ b */ c …), which Python nests one level per operator, built as
        one flat sum (product), iteratively: a sum of 1000 terms is long, not deep."""
        group = (
            (ast.Add, ast.Sub) if isinstance(node.op, (ast.Add, ast.Sub)) else (ast.Mult, ast.Div)
        )
        rights: list[tuple[ast.operator, ast.AST]] = []
        left: ast.AST = node
        while isinstance(left, ast.BinOp) and isinstance(left.op, group):
            rights.append((left.op, left.right))
            left = left.left
        terms = [self.expr(left, d)]
        for op, right in reversed(rights):
            value = self.expr(right, d)
            if isinstance(op, ast.Sub):
                value = -value
            elif isinstance(op, ast.Div):
                value = sp.Pow(value, -1)
            terms.append(value)
        return sp.Add(*terms) if group[0] is ast.Add else sp.Mul(*terms)

    def checked(self, node: ast.AST, value: sp.Expr) -> sp.Expr:
        """Refuse a constant (or a number SymPy folded into a sum or product) that is complex,
        infinite, above 1e300 or an exact fraction of thousands of digits. A heavy constant
        (see _heavy) is replaced by its value as a Float, so that SymPy goes on with
        floating-point arithmetic, not exact reasoning about it, which can take seconds
        (asin(sin(10**300)) compares 10**300 − k·π with π) or fail. Light ones stay exact, so
        that tan(pi/2) is still zoo and sin(2*pi) still 0."""
        numbers = [value] if value.is_number else [a for a in value.args if a.is_Number]
        for number in numbers:
            if _too_exact(number):
                raise self.fail(
                    node,
                    f"an exact fraction of more than {MAX_EXACT_BITS} bits",
                    "Write such a constant as a decimal number (e.g. 1.0000001) instead.",
                )
            evaluated = _evaluate_constant(number)
            if isinstance(evaluated, tuple):
                raise self.fail(node, *evaluated)
            if number is value and not value.is_Atom and _heavy(value):
                return evaluated
        return value

    def expr(self, node: ast.AST, depth: int) -> sp.Expr:
        value = self.build(node, depth)
        if isinstance(value, _CONDITION):
            raise self.fail(
                node,
                "a condition where a number is needed",
                "Conditions (<, >, and, or) belong only inside Piecewise((value, condition), …).",
            )
        return value

    def condition(self, node: ast.AST, depth: int) -> sp.Basic:
        value = self.build(node, depth)
        if not isinstance(value, _CONDITION):
            raise self.fail(
                node,
                "a number where a condition is needed",
                "Write a comparison such as x < 0.",
            )
        return value

    def constant(self, node: ast.Constant) -> sp.Basic:
        v = node.value
        if isinstance(v, bool):
            return sp.true if v else sp.false
        if isinstance(v, int):
            if abs(v) > 10**MAX_CONSTANT_LOG10:
                raise self.fail(node, "a number above 1e300", "Energies need finite float values.")
            return sp.Integer(v)
        if isinstance(v, float):
            if not math.isfinite(v):
                raise self.fail(node, "a number that overflows", "Energies need finite values.")
            return sp.Float(v)
        if isinstance(v, complex):
            raise self.fail(node, "a complex number", "An energy must be real-valued.")
        raise self.fail(
            node,
            f"a {type(v).__name__} literal",
            "Energies contain only numbers, not strings.",
        )

    def name(self, node: ast.Name) -> sp.Basic:
        n = node.id
        if n in self.constants:
            return sp.Float(self.constants[n])
        if n in CONSTANTS:
            return CONSTANTS[n]
        if n in ("True", "False"):
            return sp.true if n == "True" else sp.false
        if n in FUNCTIONS:
            raise self.fail(node, f"the function {n} without arguments", f"Call it, as in {n}(x).")
        if n == "I":
            raise self.fail(
                node,
                "the imaginary unit I",
                "An energy must be real; rename the variable.",
            )
        if not _NAME.match(n):
            raise self.fail(
                node,
                f"the name {n!r}",
                "Variable names start with a letter and contain only letters, digits and _; "
                "names beginning with _ are not allowed.",
            )
        if n not in self.symbols:
            self.symbols[n] = sp.Symbol(n, real=True)
        return self.symbols[n]

    def power(self, node: ast.BinOp, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
        if exponent.is_number:  # checked: a finite real number
            if base.is_number:
                self.constant_power(node, base, exponent, "a constant power")
            e = complex(exponent.evalf(17)).real
            if abs(e) > MAX_EXPONENT:
                raise self.fail(
                    node,
                    f"an exponent above {MAX_EXPONENT} (here {e:.6g})",
                    "Such a power overflows or vanishes unless its base is within a hair of ±1; "
                    "rescale the base, or rewrite the power with exp and log.",
                )
        elif base.is_number:
            # SymPy splits b**(c + t) into b**c·b**t where it sees fit (Min and Max do, through
            # as_content_primitive), computing b**c exactly: (-4)**(10**300 + z) ran for ever
            term = exponent.as_coeff_Add()[0]
            if term != 0:
                what = "the constant part b**c of a power b**(c + …),"
                self.constant_power(node, base, term, what)
        return base**exponent

    def constant_power(self, node: ast.BinOp, base: sp.Expr, exponent: sp.Expr, what: str) -> None:
        """Refuse base**exponent (checked numbers both) before SymPy computes it, if its value
        exceeds 1e300, its exponent 1000, or it is an exact fraction of too many bits."""
        b, e = abs(complex(base.evalf(17))), complex(exponent.evalf(17)).real
        if b != 0 and abs(e) * math.log10(b) > MAX_CONSTANT_LOG10:
            raise self.fail(
                node,
                f"{what} whose value exceeds 1e{MAX_CONSTANT_LOG10}",
                "Rewrite it (e.g. use exp and log) so that every constant stays finite.",
            )
        if abs(e) > MAX_EXPONENT:
            raise self.fail(
                node,
                f"{what} with an exponent above {MAX_EXPONENT} (here {e:.6g})",
                "Such a power overflows or vanishes unless its base is within a hair of ±1; "
                "rescale the base, or rewrite the power with exp and log.",
            )
        # e.g. (1 + 1/10**20)**999: an exact fraction of 20,000 digits, near 1
        exact = isinstance(base, sp.Rational) and isinstance(exponent, sp.Rational)
        if exact and max(abs(base.p), base.q).bit_length() * abs(e) > MAX_EXACT_BITS:
            raise self.fail(
                node,
                f"{what} that is an exact fraction of more than {MAX_EXACT_BITS} bits",
                "Write the base as a decimal number (e.g. 1.0000001) instead.",
            )

    def compare(self, node: ast.Compare, depth: int) -> sp.Basic:
        left = self.expr(node.left, depth)
        parts = []
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.expr(right_node, depth)
            if isinstance(op, ast.NotEq):
                parts.append(sp.Ne(left, right))
            elif type(op) in _COMPARE:
                parts.append(_COMPARE[type(op)](left, right))
            else:
                raise self.fail(
                    node,
                    f"the comparison {type(op).__name__}",
                    "Use <, <=, >, >=, == or !=.",
                )
            left = right
        return sp.And(*parts)

    def call(self, node: ast.Call, depth: int) -> sp.Basic:
        if not isinstance(node.func, ast.Name):
            raise self.fail(
                node,
                "a call of something other than a plain function name (attribute access?)",
                "Call one of the supported functions by name: " + ", ".join(FUNCTIONS) + ".",
            )
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.fail(
                node,
                f"the unknown function {name!r}",
                "Supported functions: " + ", ".join(FUNCTIONS) + ".",
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(
                node,
                f"keyword or * arguments to {name}",
                f"Pass the arguments of {name} by position only.",
            )
        fn, arity = FUNCTIONS[name]
        n = len(node.args)
        if (arity is None and n == 0) or (arity is not None and n not in arity):
            want = "at least 1" if arity is None else " or ".join(map(str, arity))
            raise self.fail(node, f"{name} with {n} arguments", f"{name} takes {want} argument(s).")
        if name == "Piecewise":
            return sp.Piecewise(*(self.piece(a, depth + 1) for a in node.args))
        return fn(*(self.expr(a, depth + 1) for a in node.args))

    def piece(self, node: ast.AST, depth: int) -> tuple[sp.Expr, sp.Basic]:
        if not (isinstance(node, ast.Tuple) and len(node.elts) == 2):
            raise self.fail(
                node,
                "a Piecewise argument that is not a (value, condition) pair",
                "Write Piecewise((value1, condition1), (value2, True)).",
            )
        return self.expr(node.elts[0], depth), self.condition(node.elts[1], depth)


# --- stability rewrite ---


def stabilise(e: sp.Basic) -> sp.Basic:
    """Rewrite ln(Σ c_i·e^{a_i} + c_0) (c_i > 0) as logsumexp(a_i + ln c_i, ln c_0) and ln σ(a) as
    −softplus(−a), bottom up, so that float32 neither overflows nor loses gradients (x = 40)."""
    if not e.args:
        return e
    e = e.func(*(stabilise(a) for a in e.args))
    if isinstance(e, sp.log) and len(e.args) == 1:
        inner = e.args[0]
        if isinstance(inner, sigmoid):
            return -softplus(-inner.args[0])
        terms = sp.Add.make_args(inner)
        logs = [_log_of_term(t) for t in terms]
        if len(terms) > 1 and all(x is not None for x in logs) and inner.has(sp.exp):
            return logsumexp(*logs)
    return e


def _log_of_term(t: sp.Expr) -> sp.Expr | None:
    """ln t for t = c·e^{a} or t = c with a positive number c; None for any other term."""
    c, rest = t.as_coeff_Mul()
    if not (c.is_number and c.is_positive):
        return None
    if rest == 1:
        return sp.log(c)
    if isinstance(rest, sp.exp):
        return rest.args[0] + sp.log(c)
    return None


# --- compilation to torch ------------------------------------------------------------------------

Value = Tensor | float
Node = Callable[[list[Tensor]], Value]

_UNARY: dict[type, Callable[[Tensor], Tensor]] = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.tan: torch.tan,
    sp.asin: torch.asin,
    sp.acos: torch.acos,
    sp.atan: torch.atan,
    sp.sinh: torch.sinh,
    sp.cosh: torch.cosh,
    sp.tanh: torch.tanh,
    sp.erf: torch.erf,
    sp.erfc: torch.erfc,
    sp.Abs: torch.abs,
    sigmoid: torch.sigmoid,
    softplus: torch.nn.functional.softplus,
}
_RELATIONAL = {sp.Lt: torch.lt, sp.Le: torch.le, sp.Gt: torch.gt, sp.Ge: torch.ge}


def compile_expression(tree: sp.Expr, names: Sequence[str]) -> Callable[[Tensor], Tensor]:
    """Compile a SymPy energy to f(z: (N, D)) → (N,), column i of z being variable ``names[i]``."""
    slots: dict[sp.Basic, int] = {sp.Symbol(n, real=True): i for i, n in enumerate(names)}
    try:
        replacements, (reduced,) = sp.cse(stabilise(tree), symbols=sp.numbered_symbols("_cse"))
        steps: list[Node] = []
        for sym, sub in replacements:
            steps.append(_compile_node(sub, slots))
            slots[sym] = len(names) + len(steps) - 1
        final = _compile_node(reduced, slots)
    except RecursionError:
        raise NfcliError(
            "The energy is nested too deeply to compile. Simplify it, or write it as a Python "
            "file with an energy(z) function."
        ) from None

    def energy(z: Tensor) -> Tensor:
        values: list[Tensor] = list(z.unbind(-1))
        for step in steps:  # a shared constant (e.g. exp(2)) is a tensor too, for torch.pow etc.
            values.append(_tensor(step(values), values))
        return torch.as_tensor(final(values), dtype=z.dtype, device=z.device).expand(z.shape[:-1])

    return energy


def _shown(e: sp.Basic) -> str:
    """A SymPy expression for a message: shortened, and safe for numbers of thousands of digits
    (which str() refuses past Python's int_max_str_digits)."""
    try:
        text = str(e)
    except ValueError:
        return "(a number of thousands of digits)"
    return text if len(text) <= 80 else text[:80] + "…"


def _tensor(value: Value, env: list[Tensor]) -> Tensor:
    """A constant as a tensor of z's dtype and device (env[0] is z's first column)."""
    if isinstance(value, Tensor):
        return value
    return torch.as_tensor(value, dtype=env[0].dtype, device=env[0].device)


def _compile_node(e: sp.Basic, slots: dict[sp.Basic, int]) -> Node:
    if e in slots:
        i = slots[e]
        return lambda v: v[i]
    if isinstance(e, sp.Expr) and not e.free_symbols:
        c = _numeric(e)
        if c is None or c.imag != 0 or not math.isfinite(c.real):
            raise NfcliError(
                f"The constant {_shown(e)} in the energy is not a finite real number. Rewrite the "
                "expression so that every constant, once multiplied out, stays below 1e300."
            )
        return lambda v, c=c.real: c
    if isinstance(e, sp.Symbol):
        raise NfcliError(f"The variable {e} is not among the variables {list(slots)}.")
    if isinstance(e, sp.Piecewise):
        return _compile_piecewise(e, slots)
    args = [_compile_node(a, slots) for a in e.args]
    if isinstance(e, sp.Add):
        return lambda v: functools.reduce(operator.add, [a(v) for a in args])
    if isinstance(e, sp.Mul):
        return lambda v: functools.reduce(operator.mul, [a(v) for a in args])
    if isinstance(e, sp.Pow):
        return _compile_pow(e, args)
    if type(e) in _UNARY and len(args) == 1:
        fn, (a,) = _UNARY[type(e)], args
        return lambda v: fn(a(v))
    if isinstance(e, logsumexp):
        return lambda v: torch.logsumexp(torch.stack(torch.broadcast_tensors(*_all(args, v))), 0)
    if isinstance(e, sp.atan2):
        return lambda v: torch.atan2(*_all(args, v))
    if isinstance(e, (sp.Max, sp.Min)):
        pick = torch.maximum if isinstance(e, sp.Max) else torch.minimum
        return lambda v: functools.reduce(pick, _all(args, v))
    if type(e) in _RELATIONAL:
        cmp, (a, b) = _RELATIONAL[type(e)], args
        return lambda v: cmp(*_all([a, b], v))
    if isinstance(e, (sp.Eq, sp.Ne)):
        cmp = torch.eq if isinstance(e, sp.Eq) else torch.ne
        a, b = args
        return lambda v: cmp(*_all([a, b], v))
    if isinstance(e, (sp.And, sp.Or)):
        join = torch.logical_and if isinstance(e, sp.And) else torch.logical_or
        return lambda v: functools.reduce(join, [a(v) for a in args])
    if isinstance(e, sp.Not):
        (a,) = args
        return lambda v: torch.logical_not(a(v))
    raise NfcliError(
        f"The energy contains {type(e).__name__} ({_shown(e)}), which nfcli cannot compile to "
        "torch. "
        "Rewrite it with the supported functions: " + ", ".join(FUNCTIONS) + "."
    )


def _all(args: Sequence[Node], v: list[Tensor]) -> list[Tensor]:
    """Evaluate nodes and make constants tensors like the others (torch.maximum etc. need them)."""
    return [_tensor(a(v), v) for a in args]


def _compile_pow(e: sp.Pow, args: list[Node]) -> Node:
    base, exponent = args
    p = e.args[1]
    if p.is_number:
        q = float(p)
        if q == 2:
            return lambda v: torch.square(base(v))
        if q == 0.5:
            return lambda v: torch.sqrt(base(v))
        if q == -1:
            return lambda v: torch.reciprocal(base(v))
        if q == -0.5:
            return lambda v: torch.rsqrt(base(v))
        # an integer exponent stays an int (exact for negative bases) while torch can hold it;
        # x**(10**300), which SymPy makes of exp(10**300*log(x)), is a float power
        exp_value: float | int = int(q) if q.is_integer() and abs(q) < 2**62 else q
        return lambda v: torch.pow(base(v), exp_value)
    if e.args[0].is_number:
        b = float(e.args[0])
        return lambda v: torch.pow(b, exponent(v))
    return lambda v: torch.pow(base(v), exponent(v))


def _compile_piecewise(e: sp.Piecewise, slots: dict[sp.Basic, int]) -> Node:
    """First matching (value, condition) wins; NaN where no condition holds (as in SymPy)."""
    values = [_compile_node(x, slots) for x, _ in e.args]
    conds = [None if c == sp.true else _compile_node(c, slots) for _, c in e.args]

    def piecewise(v: list[Tensor]) -> Tensor:
        out = _tensor(math.nan, v)
        for x, c in zip(reversed(values), reversed(conds), strict=True):
            out = _tensor(x(v), v) if c is None else torch.where(c(v), _tensor(x(v), v), out)
        return out

    return piecewise
