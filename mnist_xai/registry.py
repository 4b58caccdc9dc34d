"""The method registry: every method declares its facts once, where it is defined.

``@register("gradcam", title=..., family="cam", cost="fast", reference=..., paper=...,
options=(Option("layer", str, ...), ...))`` on the class puts a ``MethodSpec`` in ``SPECS``
and the class in ``METHODS``. The explorer, ``evaluate_xai``, the demos and every
``--methods`` flag read them from here: a new method appears everywhere once registered.

An option's default is read from the class's ``__init__`` signature (one place for it); the
``Option`` adds its type, range, a menu for pages and command lines, and a line of help.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: The families, in the order pages and tables show them.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("cam", "CAM (layer) methods"),
    ("gradient", "Gradient"),
    ("path", "Path / baseline"),
    ("perturbation", "Perturbation and surrogate"),
    ("propagation", "Propagation rules"),
)
#: Cost classes: "fast" is one forward and backward pass; "medium" tens of passes an image;
#: "slow" hundreds or more. Pages compute the fast ones first and stream the rest in.
COSTS = ("fast", "medium", "slow")

_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One option of a method: its type, its range, a menu, its help.

    ``kind``: int, float, bool or str; None for a value the method checks itself (a baseline
    image, a feature mask). ``low``/``high`` bound numbers (inclusive); ``choices``: a menu of
    sensible values for pages and command lines (``parse(v, menu=True)`` holds a value to it),
    or for str options the only values allowed. ``nullable``: None is a value (a layer chosen
    by the model, say). ``default`` comes from the method's ``__init__``.
    """

    name: str
    kind: type | None
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    default: Any = None

    def parse(self, value, menu: bool = False):
        """The value, checked (and converted: "32" -> 32 for a page's dropdown when ``menu``);
        one ``ValueError`` line naming the option otherwise."""
        if value is None and self.nullable:
            return None
        if self.kind is None:
            return value
        v = value
        if menu and isinstance(value, str) and self.kind in (int, float):
            try:
                v = self.kind(value)
            except ValueError:
                v = value
        if self.kind is bool:
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{self.name}: expected True or False, got {value!r}")
            return bool(v)
        if self.kind is str:
            if not isinstance(v, str) or (self.choices is not None and v not in self.choices):
                allowed = f"one of {', '.join(map(repr, self.choices))}" if self.choices else "a string"
                raise ValueError(f"{self.name}: expected {allowed}{' or None' if self.nullable else ''}, got {value!r}")
            return v
        if self.kind is int:
            ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        else:
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
                and math.isfinite(float(v))
        if ok:
            v = self.kind(v)
            ok = (self.low is None or v >= self.low) and (self.high is None or v <= self.high)
        if ok and menu and self.choices is not None:
            ok = v in self.choices
        if not ok:
            raise ValueError(f"{self.name}: expected {self.describe(menu)}, got {value!r}")
        return v

    def describe(self, menu: bool = False) -> str:
        """What the option takes, in words: "an integer in 1-1000", "one of 16, 32, 64"."""
        if menu and self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        what = {int: "an integer", float: "a finite number", bool: "True or False", str: "a string"}.get(
            self.kind, "a value")
        if self.low is not None and self.high is not None:
            what += f" in {self.low:g}-{self.high:g}" if self.kind is int else f" in [{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            what += f" >= {self.low:g}"
        elif self.high is not None:
            what += f" <= {self.high:g}"
        return what + (" or None" if self.nullable else "")


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: its name, title, family, sign, cost, options and reference."""

    name: str
    cls: type
    title: str
    family: str
    cost: str
    signed: bool
    options: tuple[Option, ...]
    reference: str
    paper: str
    random: bool = False
    #: the option that makes the map unsigned when True (Saliency's ``absolute``), if any
    unsigned_by: str | None = None
    defaults: dict = field(default_factory=dict)

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def is_signed(self, options: dict | None = None) -> bool:
        """Whether maps made with these options are signed (default options: ``signed``)."""
        if self.unsigned_by is None:
            return self.signed
        return not (options or {}).get(self.unsigned_by, self.defaults.get(self.unsigned_by))

    def parse_options(self, options: dict, menu: bool = False) -> dict:
        """``options`` checked: unknown names and bad values are one ValueError line each."""
        known = {o.name for o in self.options}
        unknown = sorted(set(options) - known - set(_PLUMBING))
        if unknown:
            raise ValueError(f"{self.name}: expected options among {', '.join(sorted(known | set(_PLUMBING)))}, "
                             f"got {', '.join(unknown)}")
        return {k: (self.option(k).parse(v, menu) if k in known else v) for k, v in options.items()}


#: Constructor arguments every method takes that are not options of the map.
_PLUMBING = ("chunk_size",)

METHODS: dict[str, type] = {}
SPECS: dict[str, MethodSpec] = {}


def register(name: str, *, title: str, family: str, cost: str, reference: str, paper: str,
             options: tuple[Option, ...] = (), signed: bool = False, random: bool = False,
             unsigned_by: str | None = None) -> Callable[[type], type]:
    """Class decorator: put the method in ``METHODS`` and its ``MethodSpec`` in ``SPECS``."""
    if family not in dict(FAMILIES):
        raise ValueError(f"family: expected one of {', '.join(dict(FAMILIES))}, got {family!r}")
    if cost not in COSTS:
        raise ValueError(f"cost: expected one of {', '.join(COSTS)}, got {cost!r}")

    def deco(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered already (by {METHODS[name].__name__})")
        params = inspect.signature(cls.__init__).parameters
        declared = []
        for o in options:
            if o.name not in params:
                raise TypeError(f"{cls.__name__}: option {o.name!r} is not an __init__ argument")
            default = params[o.name].default
            declared.append(Option(**{**o.__dict__, "default": None if default is inspect.Parameter.empty else default}))
        spec = MethodSpec(name=name, cls=cls, title=title, family=family, cost=cost, signed=signed,
                          options=tuple(declared), reference=reference, paper=paper, random=random,
                          unsigned_by=unsigned_by, defaults={o.name: o.default for o in declared})
        cls.spec = spec
        METHODS[name] = cls
        SPECS[name] = spec
        return cls

    return deco


def method_names(family: str | None = None, cost: str | None = None) -> list[str]:
    """Registered names, grouped by family in ``FAMILIES`` order (registration order within)."""
    order = [k for k, _ in FAMILIES]
    names = [n for n, s in SPECS.items() if (family is None or s.family == family) and (cost is None or s.cost == cost)]
    return sorted(names, key=lambda n: order.index(SPECS[n].family))


def spec(name: str) -> MethodSpec:
    if not isinstance(name, str) or name not in SPECS:
        raise ValueError(f"method: expected one of {', '.join(SPECS)}, got {name!r}")
    return SPECS[name]


def parse_method_list(text: str) -> list[str]:
    """"gradcam,saliency" (or "all", or a family name such as "cam") -> registered names;
    one ValueError line naming what is unknown."""
    names, unknown = [], []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part == "all":
            names += method_names()
        elif part in dict(FAMILIES):
            names += method_names(family=part)
        elif part in SPECS:
            names.append(part)
        else:
            unknown.append(part)
    if unknown or not names:
        raise ValueError(f"methods: expected names from {', '.join(SPECS)} (or 'all', or a family: "
                         f"{', '.join(dict(FAMILIES))}), got {', '.join(unknown) or 'none'}")
    return list(dict.fromkeys(names))


def make_explainer(name: str, model, **options):
    """Build a method by name (see ``METHODS``), its options checked against its spec."""
    s = spec(name)
    return s.cls(model, **s.parse_options(options))


def markdown_table() -> str:
    """Every registered method as a Markdown table, by family (docs/methods.md holds it)."""
    rows = ["| name | class | family | signed | cost | options (default) | reference | paper |",
            "|---|---|---|---|---|---|---|---|"]
    titles = dict(FAMILIES)
    for name in method_names():
        s = SPECS[name]
        opts = ", ".join(f"`{o.name}={o.default!r}`" for o in s.options) or "—"
        rows.append(f"| `{name}` | `{s.cls.__name__}` | {titles[s.family]} | {'yes' if s.signed else 'no'} | "
                    f"{s.cost} | {opts} | {s.reference} | {s.paper} |")
    return "\n".join(rows)

