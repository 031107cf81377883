"""Energy expressions: untrusted text → SymPy tree → a differentiable torch function.

The text is never given to eval, sympify or parse_expr (all of which run Python code). It is parsed
by Python's ``ast`` module, every node is checked against a whitelist of operators, functions and
names, and the SymPy tree is built from that. The tree is rewritten for stability in float32 (see
``stabilise``: ln Σ exp → log-sum-exp, ln(1 + erf(t)) and the normal CDF → log_ndtr, ln(1 − e^{−t})
→ log1mexp, ln(1 + t) → log1p, e^{t} − 1 → expm1, ln Γ → lgamma, ln I_0 → ln i0e + |a|, the log of
a product of nonnegative factors → a sum of their logs, …), common subexpressions are shared, and
the result is compiled to a chain of torch calls that maps a batch z of shape (N, D) to energies of
shape (N,).

Functions beyond elementary ones, for textbook log-densities: log1p, expm1, logit, ndtr (= Phi,
the normal CDF), log_ndtr, gamma, lgamma (= loggamma, ln|Γ|), digamma, beta, besseli(ν, x) for
ν = 0, 1, sigmoid, softplus, logsumexp. Their values at numbers are computed at once (mpmath), so
that constants such as lgamma(2.5) or log_ndtr(-40) stay finite and exact. Those added after
sigmoid, softplus and logsumexp (CALLED_ONLY) are functions only where called: beta alone is a
variable or a bound constant (beta=2), as it was before, and beta*x - log(beta(2, 3)) has both.
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

import mpmath
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


def _evaluated(
    args: Sequence[sp.Basic],
    value: Callable[..., object],
    fallback: Callable[..., sp.Basic],
) -> sp.Basic | None:
    """A function of numbers as a Float, computed by ``value`` (floats in, an mpmath or Python
    number out, at 30 digits); None if the arguments are not all real numbers. Where ``value``
    has no real finite answer (it returns None or raises), ``fallback`` of the arguments: the
    SymPy form of the function, whose log(0) or sqrt(-1) the builder then refuses by name."""
    values = _real_values(args)
    if values is None:
        return None
    try:
        with mpmath.workdps(30):
            v = value(*values)
    except (ValueError, ZeroDivisionError, OverflowError):
        v = None
    if v is None or not isinstance(v, (int, float, mpmath.mpf)) or not mpmath.isfinite(v):
        return fallback(*args)
    return sp.Float(v, 17)


class _AlwaysReal(sp.Function):
    """A function that is (extended) real wherever all its arguments are."""

    def _eval_is_extended_real(self) -> bool | None:
        return fuzzy_and(a.is_extended_real for a in self.args)


class sigmoid(_AlwaysReal):  # noqa: N801  (SymPy names functions in lower case)
    """σ(a) = 1/(1 + e^{−a}), compiled to torch.sigmoid."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Float | None:
        values = _real_values([a])
        if values is None:
            return None
        (v,) = values
        return sp.Float(1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)))

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return self * (1 - self)

    def _eval_is_extended_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None


class softplus(_AlwaysReal):  # noqa: N801
    """softplus(a) = ln(1 + e^{a}), compiled to torch.logaddexp(a, 0) (exact for large a in
    float64 too, where torch.nn.functional.softplus returns a itself above a = 20)."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Float | None:
        values = _real_values([a])
        if values is None:
            return None
        (v,) = values
        return sp.Float(v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)))

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    def _eval_is_extended_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None


class logsumexp(_AlwaysReal):  # noqa: N801
    """ln Σ_i e^{a_i}, produced by the stability rewrite and compiled to torch.logsumexp."""

    @classmethod
    def eval(cls, *args: sp.Basic) -> sp.Float | None:
        values = _real_values(args)
        if values is None:
            return None
        m = max(values)  # of numbers within ±1e300, as the builder checks: no overflow
        return sp.Float(m + math.log(sum(math.exp(v - m) for v in values)))

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.exp(self.args[argindex - 1] - self)


class log1p(sp.Function):  # noqa: N801
    """ln(1 + a), compiled to torch.log1p: exact for small a, where 1 + a rounds to 1."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated(
            [a], lambda v: mpmath.log1p(v) if v > -1 else None, lambda a: sp.log(1 + a)
        )

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return 1 / (1 + self.args[0])


class expm1(_AlwaysReal):  # noqa: N801
    """e^{a} − 1, compiled to torch.expm1: exact for small a, where e^{a} rounds to 1."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated([a], mpmath.expm1, lambda a: sp.exp(a) - 1)

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.exp(self.args[0])


class log1mexp(sp.Function):  # noqa: N801
    """ln(1 − e^{−a}) for a > 0 (NaN below, −∞ at 0), produced by the stability rewrite of
    ln(1 − e^{−a}) and ln(−expm1(−a)); compiled to ln(−expm1(−a)) for a ≤ ln 2 and
    ln1p(−e^{−a}) above (Mächler 2012), each exact where the other loses digits."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated(
            [a],
            lambda v: mpmath.log(-mpmath.expm1(-v)) if v > 0 else None,
            lambda a: sp.log(1 - sp.exp(-a)),
        )

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return 1 / expm1(self.args[0])


class logit(sp.Function):  # noqa: N801
    """logit(p) = ln(p/(1 − p)) for 0 < p < 1, compiled to torch.logit."""

    nargs = 1

    @classmethod
    def eval(cls, p: sp.Basic) -> sp.Basic | None:
        return _evaluated(
            [p],
            lambda v: mpmath.log(v / (1 - v)) if 0 < v < 1 else None,
            lambda p: sp.log(p / (1 - p)),
        )

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        p = self.args[0]
        return 1 / (p * (1 - p))


class ndtr(_AlwaysReal):  # noqa: N801
    """Φ(a) = erfc(−a/√2)/2, the standard normal CDF, compiled to that (torch.special.ndtr is
    0.5·(1 + erf) on CPU: 4% off at a = −5 in float32, 0 at a = −10 in float64). Produced by
    the stability rewrite of c·(1 ± erf(t)) and c·erfc(t) forms; the user's ndtr and Phi are the
    erfc form, which SymPy keeps exact for exact numbers (1 − Phi(10) stays 7.6e-24)."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated([a], mpmath.ncdf, lambda a: sp.erfc(-a / sp.sqrt(2)) / 2)

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.exp(-(self.args[0] ** 2) / 2) / sp.sqrt(2 * sp.pi)

    def _eval_is_extended_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None


def _log_ndtr_value(v: float) -> object:
    """ln Φ(v) at 30 digits; below v = −1000 (where mpmath's erfc overflows for huge v) the
    asymptotic series −v²/2 − ln(−v) − ln √(2π) + ln(1 − v⁻² + 3v⁻⁴), exact to 1e-22 there."""
    if v > -1000:
        return mpmath.log(mpmath.ncdf(v))
    w = mpmath.mpf(v) ** -2
    return (
        -(mpmath.mpf(v) ** 2) / 2
        - mpmath.log(-v)
        - mpmath.log(2 * mpmath.pi) / 2
        + mpmath.log1p(-w + 3 * w**2)
    )


class log_ndtr(_AlwaysReal):  # noqa: N801
    """ln Φ(a), compiled to torch.special.log_ndtr: finite, with gradient ≈ −a, far into the
    lower tail (a = −30 in float32), where Φ(a) itself underflows to 0."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated([a], _log_ndtr_value, lambda a: sp.log(ndtr(a)))

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        a = self.args[0]
        return sp.exp(-(a**2) / 2) / (sp.sqrt(2 * sp.pi) * ndtr(a))


class logerf(sp.Function):  # noqa: N801
    """ln erf(a) for a > 0, produced by the stability rewrite of ln erf(a): compiled to
    ln erf(a) below a = 1/2 and ln1p(−erfc(a)) above (exact where erf(a) rounds to 1)."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated(
            [a], lambda v: mpmath.log(mpmath.erf(v)) if v > 0 else None, lambda a: sp.log(sp.erf(a))
        )

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        a = self.args[0]
        return 2 * sp.exp(-(a**2)) / (sp.sqrt(sp.pi) * sp.erf(a))


class lgamma(_AlwaysReal):  # noqa: N801
    """ln |Γ(a)|, compiled to torch.lgamma (ln Γ(a) for a > 0; +∞ at the poles a = 0, −1, …)."""

    nargs = 1

    @classmethod
    def eval(cls, a: sp.Basic) -> sp.Basic | None:
        return _evaluated([a], math.lgamma, lambda a: sp.oo)

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.polygamma(0, self.args[0])


class besselie(_AlwaysReal):  # noqa: N801
    """e^{−|a|}·I_ν(a) for ν = 0, 1 (the exponentially scaled modified Bessel function), produced
    by the stability rewrite ln I_ν(a) = ln besselie(ν, a) + |a|; compiled to torch.special.i0e,
    i1e. I_0 overflows float32 above a ≈ 90, its scaled form never."""

    nargs = 2

    @classmethod
    def eval(cls, nu: sp.Basic, a: sp.Basic) -> sp.Basic | None:
        return _evaluated(
            [nu, a],
            lambda n, v: mpmath.besseli(n, v) * mpmath.exp(-abs(v)),
            lambda nu, a: sp.besseli(nu, a) * sp.exp(-sp.Abs(a)),
        )

    def fdiff(self, argindex: int = 2) -> sp.Expr:
        if argindex != 2:
            raise sp.ArgumentIndexError(self, argindex)
        nu, a = self.args
        if nu == 0:  # (e^{−|a|} I_0)' = e^{−|a|}(I_1 − sign(a) I_0)
            return besselie(1, a) - sp.sign(a) * besselie(0, a)
        # (e^{−|a|} I_1)' = e^{−|a|}(I_0 − I_1/a − sign(a) I_1)
        return besselie(0, a) - besselie(1, a) / a - sp.sign(a) * besselie(1, a)


def _normal_cdf(a: sp.Expr) -> sp.Expr:
    """Φ(a) as the user writes ndtr(a) or Phi(a): erfc(−a/√2)/2, which SymPy keeps exact for
    exact numbers and the stability rewrite turns into ndtr(a) for variables."""
    return sp.erfc(-a / sp.sqrt(2)) / 2


def _float_if_large(fn: Callable[..., sp.Basic]) -> Callable[..., sp.Basic]:
    """fn with exact numbers beyond ±100 passed as Floats: SymPy's gamma, digamma and beta of an
    exact 10**300 compute (10**300 − 1)! or a harmonic number exactly, for ever; of a Float,
    a Float at once (which the builder then refuses if beyond 1e300)."""

    @functools.wraps(fn)
    def wrapped(*args: sp.Expr) -> sp.Basic:
        floats = [sp.Float(a, 17) if a.is_Rational and abs(a) > 100 else a for a in args]
        return fn(*floats)

    return wrapped


def _besseli(nu: sp.Expr, a: sp.Expr) -> sp.Expr:
    """I_ν(a); the builder has checked that ν is 0 or ±1 (what torch computes)."""
    return sp.besseli(nu, a)


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
    "log1p": (log1p, (1,)),
    "expm1": (expm1, (1,)),
    "logit": (logit, (1,)),
    "ndtr": (_normal_cdf, (1,)),
    "Phi": (_normal_cdf, (1,)),
    "log_ndtr": (log_ndtr, (1,)),
    "gamma": (_float_if_large(sp.gamma), (1,)),
    "lgamma": (lgamma, (1,)),
    "loggamma": (lgamma, (1,)),
    "digamma": (_float_if_large(sp.digamma), (1,)),
    "beta": (_float_if_large(sp.beta), (2,)),
    "besseli": (_besseli, (2,)),
    "Abs": (sp.Abs, (1,)),
    "abs": (sp.Abs, (1,)),
    "Max": (sp.Max, None),
    "Min": (sp.Min, None),
    "Piecewise": (sp.Piecewise, None),
}
# Functions that are functions only where called, as in beta(a, b): uncalled, each name is a
# variable, or a constant the user binds (beta=2), as it was before these functions were added;
# alpha, beta and gamma are common parameter names in statistics. beta*x - log(beta(2, 3)) has
# both. The other functions' names are reserved: exp alone is refused, not read as a variable.
CALLED_ONLY: frozenset[str] = frozenset(
    {"log1p", "expm1", "logit", "ndtr", "Phi", "log_ndtr", "gamma", "lgamma", "loggamma"}
    | {"digamma", "beta", "besseli"}
)
CONSTANTS: dict[str, sp.Basic] = {"pi": sp.pi, "E": sp.E}


def _reserved(name: str) -> bool:
    """Whether a name can never stand for a number: pi, E, or a function not in CALLED_ONLY."""
    return name in CONSTANTS or (name in FUNCTIONS and name not in CALLED_ONLY)


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
    """Constants bound by the user are names the text uses uncalled (beta=2 with beta(2, 3)
    alone binds nothing), not --vars, not reserved (exp, pi), and finite numbers."""
    for n, v in constants.items():
        if not _NAME.match(n) or _reserved(n):
            raise NfcliError(
                f"{n}={v} cannot be bound: {n!r} is not a name that can stand for a number in an "
                f"expression (it must start with a letter and not be a function or pi/E)."
            )
        # a use is the name not called: beta(2, 3) (or beta (2, 3)) is the function, not beta
        if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])(?!\s*\()", text):
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
    bad = [n for n in names if not _NAME.match(n) or _reserved(n)]
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
        if n in FUNCTIONS and n not in CALLED_ONLY:  # uncalled, beta or gamma is a variable
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
        args = [self.expr(a, depth + 1) for a in node.args]
        if name == "besseli" and args[0] not in (0, 1, -1):
            raise self.fail(
                node,
                f"besseli of order {_shown(args[0])}",
                "nfcli computes the modified Bessel function I_nu(x) for nu = 0 and 1 only "
                "(torch.special.i0, i1): write besseli(0, x) or besseli(1, x).",
            )
        return fn(*args)

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
    """Rewrite the tree bottom up into forms that neither overflow nor lose their gradients in
    float32, each equal to the original wherever the original is finite:

    sums   c − c·e^{a} → −c·expm1(a);  c ± c·erf(t), c·(2 − erfc(t)) → 2c·ndtr(±√2·t);
           c − c·σ(t) → c·σ(−t)
    logs   ln e^{a} → a;  ln σ(a) → −softplus(−a);  ln Φ(a) → log_ndtr(a);
           ln erfc(t) → ln 2 + log_ndtr(−√2·t);  ln erf(t) → logerf(t);
           ln Γ(a) → lgamma(a);  ln B(a, b) → lgamma(a) + lgamma(b) − lgamma(a + b);
           ln I_ν(a) → ln besselie(ν, a) + |a|;  ln expm1(a) → a + log1mexp(a);
           ln(−expm1(a)) → log1mexp(−a);  ln(c₀ − c₁e^{a}) → ln c₀ + log1mexp(ln(c₀/c₁) − a);
           ln Σ c_i·e^{a_i} (+ c₀) → logsumexp(a_i + ln c_i, ln c₀), of two terms one of them
           constant: ln c₀ + softplus(a − ln c₀);  ln(1 + t) → log1p(t);
           ln b^{p} → p·ln b (b ≥ 0, or p a non-integer number: b^{p} is NaN for b < 0);
           ln b^{2n} → 2n·ln|b|;
           ln(c·Π f_i·Π g_j) → ln c + Σ ln f_i + ln Π g_j, the f_i known ≥ 0, each rewritten.

    The product rule needs every factor but one group known ≥ 0: then, where the product is
    positive, each f_i is, and so is the rest. Constants are left to SymPy (exact, evaluated at
    compile time). Gradients: see the compiled forms in _UNARY."""
    if not e.args:
        return e
    e = e.func(*(stabilise(a) for a in e.args))
    if not e.free_symbols:
        return e
    if isinstance(e, sp.log) and len(e.args) == 1:
        return _stable_log(e.args[0])
    if isinstance(e, sp.Add):
        return _stable_sum(e)
    return e


_ULPS = 1e-15  # |c₁ − c₀| ≤ this·|c₀|: two constants the rules treat as equal (4.5 float64 ulps)


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    """Whether two numbers are equal (to a few float64 ulps: 0.5 and 1/2 are)."""
    x, y = float(a), float(b)
    return abs(x - y) <= _ULPS * max(abs(x), abs(y))


def _stable_sum(e: sp.Add) -> sp.Expr:
    """c₀ + Σ k_i·f_i(t_i) + rest, each f_i one of e^{t}, erf(t), erfc(t), σ(t): the part c_i of
    c₀ with which c_i + k_i·f_i has a stable form (−k·expm1, 2|k|·Φ, |k|·σ(−t)) is taken from
    c₀, term by term, while c₀ has it (same sign, no larger): 2 − erfc(x)/2 − erfc(y)/2 (two
    Φ's) is Φ(√2x) + Φ(√2y). e itself if no term matches."""
    c0, rest = e.as_coeff_Add()
    if c0 == 0:
        return e
    out, changed = [], False
    for term in sp.Add.make_args(rest):
        k, f = term.as_coeff_Mul()
        c = _constant_needed(k, f)
        if c is not None and c0 != 0 and c * c0 > 0 and (abs(c) <= abs(c0) or _same(c, c0)):
            out.append(_stable_pair(c, k, f))
            c0 = sp.Integer(0) if _same(c, c0) else c0 - c
            changed = True
        else:
            out.append(term)
    return sp.Add(c0, *out) if changed else e


def _constant_needed(k: sp.Expr, f: sp.Expr) -> sp.Expr | None:
    """The number c for which c + k·f has a stable form (_stable_pair), or None."""
    if isinstance(f, sp.exp):  # −k + k·e^{t} = k·expm1(t)
        return -k
    if isinstance(f, sigmoid) and k < 0:  # |k|·(1 − σ(t)) = |k|·σ(−t)
        return -k
    if isinstance(f, sp.erf):  # |k| ± |k|·erf(t) = 2|k|·Φ(±√2·t)
        return abs(k)
    if isinstance(f, sp.erfc) and k < 0:  # |k|·(2 − erfc(t)) = |k|·(1 + erf(t)) = 2|k|·Φ(√2·t)
        return -2 * k
    return None


def _stable_pair(c: sp.Expr, k: sp.Expr, f: sp.Expr) -> sp.Expr:
    """The stable form of c + k·f, c as _constant_needed gives it."""
    (t,) = f.args
    if isinstance(f, sp.exp):
        return k * expm1(t)
    if isinstance(f, sigmoid):
        return c * sigmoid(-t)
    if isinstance(f, sp.erf):
        return 2 * c * ndtr(sp.sign(k) * sp.sqrt(2) * t)
    return c * ndtr(sp.sqrt(2) * t)  # erfc


def _stable_log(inner: sp.Expr) -> sp.Expr:
    """ln(inner), inner already stabilised: the product rule, then _stable_log_factor."""
    if not inner.free_symbols:
        return sp.log(inner)
    c, rest = inner.as_coeff_Mul()
    factors = sp.Mul.make_args(rest)
    known = [f for f in factors if _nonnegative(f)]
    if rest == 1 or not known or (len(factors) == 1 and c == 1):
        return _stable_log_factor(inner)
    unknown = sp.Mul(*(f for f in factors if not _nonnegative(f)))
    if c < 0 and unknown == 1:  # ln of a negative number times nonnegative factors: NaN anyway
        return sp.log(inner)
    logs = [_stable_log_factor(f) for f in known]
    if c > 0:
        logs.append(sp.log(c))
        c = sp.Integer(1)
    if unknown != 1:
        logs.append(_stable_log(c * unknown))
    return sp.Add(*logs)


def _stable_log_factor(f: sp.Expr) -> sp.Expr:
    """ln f for one factor (or a product no rule splits), by the rules of ``stabilise``."""
    if not f.free_symbols:
        return sp.log(f)
    if isinstance(f, sp.exp):
        return f.args[0]
    if isinstance(f, sigmoid):
        return -softplus(-f.args[0])
    if isinstance(f, ndtr):
        return log_ndtr(f.args[0])
    if isinstance(f, sp.erfc):
        return sp.log(2) + log_ndtr(-sp.sqrt(2) * f.args[0])
    if isinstance(f, sp.erf):
        return logerf(f.args[0])
    if isinstance(f, sp.gamma):
        return lgamma(f.args[0])
    if isinstance(f, sp.beta):
        a, b = f.args
        return lgamma(a) + lgamma(b) - lgamma(a + b)
    if isinstance(f, sp.besseli) and f.args[0] in (0, 1):
        nu, a = f.args
        return sp.log(besselie(nu, a)) + sp.Abs(a)
    if isinstance(f, expm1):  # ln(e^{a} − 1) = a + ln(1 − e^{−a})
        return f.args[0] + log1mexp(f.args[0])
    k, g = f.as_coeff_Mul()
    if isinstance(g, expm1) and k < 0:  # ln(|k|·(1 − e^{a}))
        return sp.log(-k) + log1mexp(-g.args[0])
    if isinstance(f, sp.Pow):
        b, p = f.args
        if _nonnegative(b) or (p.is_number and p.is_real and not float(p).is_integer()):
            return p * _stable_log(b)  # b ≥ 0 wherever b^{p} is real (torch: NaN for b < 0)
        if p.is_number and p.is_real and float(p) % 2 == 0:  # ln b^{2n} = 2n·ln|b|
            return p * _stable_log(sp.Abs(b))
    if isinstance(f, sp.Add):
        return _stable_log_sum(f)
    return sp.log(f)


def _stable_log_sum(f: sp.Add) -> sp.Expr:
    """ln of a sum: of exponentials (log-sum-exp or softplus), c₀ − c₁·e^{a} (log1mexp),
    1 + t (log1p); else ln f."""
    terms = sp.Add.make_args(f)
    logs = [_log_of_term(t) for t in terms]
    if all(x is not None for x in logs) and f.has(sp.exp):
        constants = [x for x in logs if not x.free_symbols]
        if len(logs) == 2 and len(constants) == 1:  # ln(c₀ + e^{a}) = ln c₀ + softplus(a − ln c₀)
            (l0,) = constants
            (a,) = [x for x in logs if x.free_symbols]
            return l0 + softplus(a - l0)
        return logsumexp(*logs)
    c0, rest = f.as_coeff_Add()
    if len(terms) == 2 and c0 > 0:
        c1, g = rest.as_coeff_Mul()
        if isinstance(g, sp.exp) and c1 < 0:  # ln(c₀ − |c₁|·e^{a})
            return sp.log(c0) + log1mexp(sp.log(c0 / -c1) - g.args[0])
    if _same(c0, 1):
        return log1p(rest)
    return sp.log(f)


def _nonnegative(f: sp.Expr) -> bool:
    """Whether f ≥ 0 wherever it is real: by SymPy's assumptions, or by form (erfc, Γ and B of
    positive arguments, I_0, powers of such, b^{p} for a non-integer number p, which is NaN
    for b < 0 as torch computes it)."""
    if f.is_nonnegative:
        return True
    if isinstance(f, (sp.exp, sp.erfc, sigmoid, softplus, ndtr)):
        return True
    if isinstance(f, sp.besseli):
        return f.args[0] == 0
    if isinstance(f, (sp.gamma, sp.beta)):
        return all(a.is_positive for a in f.args)
    if isinstance(f, sp.Pow):
        p = f.exp
        if p.is_number and p.is_real and not float(p).is_integer():
            return True
        return bool(p.is_real) and _nonnegative(f.base)
    if isinstance(f, (sp.Mul, sp.Add)):
        return all(_nonnegative(a) for a in f.args)
    return False


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

LN2 = math.log(2)


def _softplus(a: Tensor) -> Tensor:
    """ln(1 + e^{a}) = logaddexp(a, 0): exact in float64 too, gradient σ(a)."""
    return torch.logaddexp(a, torch.zeros_like(a))


def _ndtr(a: Tensor) -> Tensor:
    """Φ(a) = erfc(−a/√2)/2: exact in the lower tail, where 1 + erf cancels."""
    return 0.5 * torch.erfc(-a * math.sqrt(0.5))


def _log1mexp(a: Tensor) -> Tensor:
    """ln(1 − e^{−a}): ln(−expm1(−a)) for a ≤ ln 2, ln1p(−e^{−a}) above. Each branch is fed a
    safe stand-in (ln 2) where it is not used, so that its gradient there is not NaN (torch.where
    passes 0·NaN = NaN back otherwise). NaN for a < 0 and −∞ at 0, as the original."""
    small = a <= LN2
    low = torch.where(small, a, LN2)
    high = torch.where(small, LN2, a)
    return torch.where(small, torch.log(-torch.expm1(-low)), torch.log1p(-torch.exp(-high)))


def _logerf(a: Tensor) -> Tensor:
    """ln erf(a): ln erf(a) for a ≤ 1/2, ln1p(−erfc(a)) above (erf(a) rounds to 1 in float32
    from a ≈ 3.9, erfc(a) keeps its digits); stand-ins 1/2 and 1 keep unused gradients finite."""
    small = a <= 0.5
    low = torch.where(small, a, 0.5)
    high = torch.where(small, 1.0, a)
    return torch.where(small, torch.log(torch.erf(low)), torch.log1p(-torch.erfc(high)))


def _gamma_sign(a: Tensor) -> Tensor:
    """The sign of Γ(a): +1 for a > 0; (−1)^k on (−k, −k + 1)."""
    even = torch.remainder(torch.floor(a), 2) == 0
    return torch.where((a > 0) | even, 1.0, -1.0).to(a.dtype)


def _gamma(a: Tensor) -> Tensor:
    """Γ(a) = sign·e^{lgamma(a)} (torch has no Γ); ±∞ at the poles."""
    return _gamma_sign(a) * torch.exp(torch.lgamma(a))


def _beta(a: Tensor, b: Tensor) -> Tensor:
    """B(a, b) = Γ(a)Γ(b)/Γ(a + b) through lgamma, so that it neither overflows nor underflows
    before the ratio (Γ(40) already exceeds float32)."""
    sign = _gamma_sign(a) * _gamma_sign(b) * _gamma_sign(a + b)
    return sign * torch.exp(torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))


_BESSEL = {
    (sp.besseli, 0): torch.special.i0,
    (sp.besseli, 1): torch.special.i1,
    (besselie, 0): torch.special.i0e,
    (besselie, 1): torch.special.i1e,
}

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
    softplus: _softplus,
    log1p: torch.log1p,
    expm1: torch.expm1,
    log1mexp: _log1mexp,
    logit: torch.logit,
    ndtr: _ndtr,
    log_ndtr: torch.special.log_ndtr,
    logerf: _logerf,
    lgamma: torch.lgamma,
    sp.gamma: _gamma,
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
    if isinstance(e, sp.beta):
        return lambda v: _beta(*torch.broadcast_tensors(*_all(args, v)))
    if isinstance(e, (sp.besseli, besselie)) and (type(e), e.args[0]) in _BESSEL:
        bessel, x = _BESSEL[type(e), e.args[0]], args[1]
        return lambda v: bessel(_tensor(x(v), v))
    if isinstance(e, sp.polygamma) and e.args[0].is_Integer and e.args[0] >= 0:
        n, x = int(e.args[0]), args[1]
        return lambda v: torch.polygamma(n, _tensor(x(v), v))
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
