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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy as sp
import torch
from torch import Tensor

from nfcli.errors import NfcliError

MAX_LENGTH = 20_000
MAX_NODES = 5_000
MAX_DEPTH = 60
MAX_CONSTANT_LOG10 = 300  # constants beyond 1e300 are refused before they are computed


class sigmoid(sp.Function):  # noqa: N801  (SymPy names functions in lower case)
    """σ(a) = 1/(1 + e^{−a}), compiled to torch.sigmoid."""

    nargs = 1


class softplus(sp.Function):  # noqa: N801
    """softplus(a) = ln(1 + e^{a}), compiled to torch.nn.functional.softplus."""

    nargs = 1


class logsumexp(sp.Function):  # noqa: N801
    """ln Σ_i e^{a_i}, produced by the stability rewrite and compiled to torch.logsumexp."""


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
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
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


def natural_key(name: str) -> tuple[str, int]:
    """Sort key so that x < y < z and x1 < x2 < … < x10: the stem, then the numeric suffix."""
    m = re.fullmatch(r"(.*?)(\d*)", name)
    assert m is not None
    stem, digits = m.groups()
    return stem, int(digits) if digits else -1


def parse(text: str, names: Sequence[str] | None = None) -> Expression:
    """Parse an energy U(z) written in SymPy syntax; variables ordered naturally unless ``names``.

    ``names`` (the ``--vars`` option) may add variables the expression does not use, but must
    include every variable it does use.
    """
    if len(text) > MAX_LENGTH:
        raise NfcliError(
            f"The expression is {len(text)} characters long; the limit is {MAX_LENGTH}. "
            "Write a long energy as a Python file with an energy(z) function instead."
        )
    source = text.strip().replace("^", "**")  # as SymPy's convert_xor: ^ is a power, not xor
    try:
        module = ast.parse(source, mode="eval")
    except SyntaxError as e:
        col = _original_column(text.strip(), (e.offset or 1) - 1)
        raise NfcliError(
            f"The expression is not valid syntax ({e.msg}) at column {col + 1}:\n"
            f"  {text.strip()}\n  {' ' * col}^\n"
            "Check brackets and operators; powers are written ** or ^, products need an explicit *."
        ) from None
    count = sum(1 for _ in ast.walk(module))
    if count > MAX_NODES:
        raise NfcliError(
            f"The expression has {count} syntax nodes; the limit is {MAX_NODES}. "
            "Write a large energy as a Python file with an energy(z) function instead."
        )
    tree = _Builder(text).build(module.body, 0)
    if not isinstance(tree, sp.Expr) or isinstance(tree, _CONDITION):
        raise NfcliError(f"The expression {text!r} is a condition, not a number-valued energy.")
    _check_real(tree, text)
    used = sorted((s.name for s in tree.free_symbols), key=natural_key)
    if not used:
        raise NfcliError(
            f"The expression {text!r} has no variables, so it defines no density. "
            "Write it in terms of variables such as x, y (or x1, x2, …)."
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


def _check_real(tree: sp.Expr, text: str) -> None:
    bad = [a for a in (sp.I, sp.zoo, sp.oo, sp.nan) if tree.has(a)]
    if bad:
        what = (
            "a complex number" if bad[0] is sp.I else f"an infinite or undefined value ({bad[0]})"
        )
        raise NfcliError(
            f"The expression {text!r} evaluates to {what}: for example sqrt(-1), log(-1), I or a "
            "division by zero among its constants. An energy must be real and finite."
        )


class _Builder:
    """Turns a whitelisted Python ``ast`` into a SymPy tree, refusing everything else."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.symbols: dict[str, sp.Symbol] = {}

    def fail(self, node: ast.AST, what: str, fix: str) -> NfcliError:
        col = _original_column(self.text.strip(), getattr(node, "col_offset", 0))
        return NfcliError(
            f"The expression contains {what} at column {col + 1}:\n  {self.text.strip()}\n"
            f"  {' ' * col}^\n{fix}"
        )

    def build(self, node: ast.AST, depth: int) -> sp.Basic:
        if depth > MAX_DEPTH:
            raise self.fail(
                node,
                f"nesting deeper than {MAX_DEPTH} levels",
                "Flatten it, or write the energy as a Python file.",
            )
        d = depth + 1
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
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(
                    node,
                    f"the operator {type(node.op).__name__}",
                    "Use only + - * / and ** (or ^) between numbers and variables.",
                )
            return op(self.expr(node.left, d), self.expr(node.right, d))
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
        if base.is_number and exponent.is_number:
            b, e = complex(base.evalf(15)), complex(exponent.evalf(15))
            if b != 0 and abs(e.real) * math.log10(abs(b)) > MAX_CONSTANT_LOG10:
                raise self.fail(
                    node,
                    "a constant power whose value exceeds 1e300",
                    "Rewrite it (e.g. use exp and log) so that every constant stays finite.",
                )
        elif exponent.is_number and abs(complex(exponent.evalf(15))) > 1e6:
            raise self.fail(
                node, "an exponent above 1e6", "Such a power overflows for any |x| ≠ 1."
            )
        return base**exponent

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
    replacements, (reduced,) = sp.cse(stabilise(tree), symbols=sp.numbered_symbols("_cse"))
    steps: list[Node] = []
    for sym, sub in replacements:
        steps.append(_compile_node(sub, slots))
        slots[sym] = len(names) + len(steps) - 1
    final = _compile_node(reduced, slots)

    def energy(z: Tensor) -> Tensor:
        values: list[Tensor] = list(z.unbind(-1))
        for step in steps:
            values.append(step(values))  # type: ignore[arg-type]
        return torch.as_tensor(final(values), dtype=z.dtype, device=z.device).expand(z.shape[:-1])

    return energy


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
        c = complex(e.evalf(17))
        if c.imag != 0 or not math.isfinite(c.real):
            raise NfcliError(f"The constant {e} in the energy is not a finite real number.")
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
        f"The energy contains {type(e).__name__} ({e}), which nfcli cannot compile to torch. "
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
        exp_value: float | int = int(q) if q.is_integer() else q
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
