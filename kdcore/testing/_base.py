"""What every contract class shares: finding the component, building it, opting out of tests.

The classes are plain (no fixtures, no pytest import) so they also run under ``unittest`` and
can be called by hand; a skipped test raises :class:`unittest.SkipTest`, which pytest reports
as a skip.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import unittest
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn

import torch

from ..errors import UserError, did_you_mean
from ..plugins import Plugins, get_plugins
from ..registry import RESERVED_PARAMS, accepted_params, build, lookup
from ..specs import Registered


def fail(message: str) -> NoReturn:
    """Raise the assertion error a contract test reports (``assert`` vanishes under ``-O``)."""
    raise AssertionError(message)


def skip(reason: str) -> NoReturn:
    """Skip the running test: with pytest's own skip when pytest runs (better report lines),
    else :class:`unittest.SkipTest`, which pytest and unittest both treat as a skip."""
    pytest = sys.modules.get("pytest")
    if pytest is not None:
        pytest.skip(reason)
    raise unittest.SkipTest(reason)


def check(condition: Any, message: str) -> None:
    if not condition:
        fail(message)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with the global torch RNG seeded, restoring the caller's RNG state afterwards."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, with ``None``, remove) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def num(value: Any) -> float:
    """A scalar tensor as a float for messages (no autograd warning)."""
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def is_finite_scalar(value: Any) -> bool:
    return torch.is_tensor(value) and value.dim() == 0 and bool(torch.isfinite(value.detach()))


def describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


class OptOut:
    """``tests_to_skip = {"reason": ["test_name", ...]}`` skips single tests with a reason (the
    conda ``SolverTests`` shape). A listed name that is not a test of the class is an error."""

    tests_to_skip: ClassVar[dict[str, list[str]]] = {}

    #: torch threads during each test: tiny tensors run fastest on one thread.
    threads: ClassVar[int | None] = 1

    def setup_method(self, method: Any) -> None:
        """Skip the tests listed in ``tests_to_skip`` (pytest calls this before each test), then
        switch torch to ``threads`` threads until :meth:`teardown_method`."""
        name = getattr(method, "__name__", str(method))
        tests = {n for n in dir(type(self)) if n.startswith("test_")}
        for reason, names in self.tests_to_skip.items():
            for listed in names:
                if listed not in tests:
                    fail(f"tests_to_skip[{reason!r}] names {listed!r}, which is not a test of "
                         f"{type(self).__name__}{did_you_mean(listed, tests)}")
            if name in names:
                skip(reason)
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def teardown_method(self, method: Any) -> None:
        torch.set_num_threads(getattr(self, "_saved_threads", torch.get_num_threads()))


class ContractBase(OptOut):
    """Base of the per-kind contract classes.

    Set ``component`` (short name or ``plugin:name`` id) and, as needed, ``params`` (the YAML
    parameters to build with) and ``context`` (extra context values the core would pass).
    ``tests_to_skip = {"reason": ["test_name", ...]}`` opts out of single tests with a reason;
    a name that is not a test of the class is an error, so a typo cannot silently skip nothing.
    """

    #: component kind, set by each subclass of this module.
    kind: ClassVar[str] = ""
    component: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    context: ClassVar[dict[str, Any]] = {}
    seed: ClassVar[int] = 0

    def plugin_set(self) -> Plugins:
        """The plugins to look the component up in: by default the installed ones. Override to
        test against :func:`kdcore.testing.isolated_plugins` before installing."""
        return get_plugins()

    def where(self) -> str:
        return f"{self.kind} {self.component!r}"

    def registered(self) -> Registered:
        check(self.component, f"{type(self).__name__}: set component = '<name>' (or "
                              f"'<plugin>:<name>') to the {self.kind} under test")
        try:
            return lookup(self.kind, self.component, self.plugin_set())
        except UserError as exc:
            fail(f"{self.kind} {self.component!r} is not available: {exc}. Is the plugin installed "
                 f"(pip install -e .) and listed by 'kdcore plugins'?")

    def base_context(self) -> dict[str, Any]:
        """The context values the core passes to this kind's factory; ``context`` overrides."""
        return {}

    def build(self, *, params: dict[str, Any] | None = None, **context: Any) -> Any:
        """Build the component as the core would, with ``params`` (default: ``self.params``)."""
        full = {**self.base_context(), **dict(self.context), **context}
        return build(self.kind, self.component, plugins=self.plugin_set(), where=self.where(),
                     context=full, **dict(self.params if params is None else params))

    def build_defaults(self) -> Any:
        """Build with no user parameters (``{type: NAME}`` in a config)."""
        return self.build(params={})

    def build_seeded(self, **context: Any) -> Any:
        with seeded(self.seed):
            return self.build(**context)

    # -- tests every kind shares --------------------------------------------------------------

    def test_component_is_registered(self) -> None:
        reg = self.registered()
        check(reg.kind == self.kind, f"{self.component!r} is registered as a {reg.kind}, "
                                     f"not a {self.kind}")
        check(reg.component.summary.strip(),
              f"{reg.id}: give the Component a one-line summary; 'kdcore list {self.kind}' shows it")

    def test_factory_resolves(self) -> None:
        reg = self.registered()
        try:
            factory = reg.component.resolve()
        except Exception as exc:  # an import error in the factory module, a wrong attr name
            fail(f"{reg.id}: factory {reg.component.factory!r} does not resolve: "
                 f"{type(exc).__name__}: {exc}")
        check(callable(factory), f"{reg.id}: factory resolves to {describe(factory)}, "
                                 f"which is not callable")

    def test_params_are_accepted(self) -> None:
        """Every key of ``params`` is a keyword of the factory: the config schema is the
        factory's signature, and context names are not user parameters."""
        factory = self.registered().component.resolve()
        names, var_kw = accepted_params(factory)
        context_names = set(self.base_context()) | set(self.context)
        reserved = sorted(names & RESERVED_PARAMS)
        check(not reserved, f"{self.where()}: the factory takes {', '.join(map(repr, reserved))}, "
                            f"names kdcore.build keeps for itself; rename the parameter")
        for key in self.params:
            check(var_kw or key in names,
                  f"params[{key!r}] is not a parameter of the factory{did_you_mean(key, names)}")
            check(key not in context_names,
                  f"params[{key!r}] is a context value the core passes; put it in context")

    def test_builds_with_defaults(self) -> None:
        """``{type: NAME}`` with no other keys builds: every user parameter has a default."""
        try:
            self.build_defaults()
        except UserError as exc:
            fail(f"{self.where()} does not build without parameters ({exc}); give every "
                 f"factory parameter a default, or list this test in tests_to_skip")

    def test_global_state_untouched(self) -> None:
        """Building and using the component leaves torch's global switches as they were."""
        before = (torch.is_grad_enabled(), torch.get_default_dtype(),
                  torch.are_deterministic_algorithms_enabled(), torch.is_anomaly_enabled())
        self.exercise()
        after = (torch.is_grad_enabled(), torch.get_default_dtype(),
                 torch.are_deterministic_algorithms_enabled(), torch.is_anomaly_enabled())
        check(before == after, f"{self.where()} changed torch global state "
                               f"(grad mode, default dtype, determinism, anomaly) from {before} to "
                               f"{after}; restore what you change")

    def exercise(self) -> None:
        """Build and run the component once (used by the global-state test)."""
        self.build_seeded()


def backward_if_graph(value: Any) -> None:
    """Backpropagate when ``value`` has autograd history (a teacher-side output may not)."""
    if torch.is_tensor(value) and value.requires_grad:
        value.backward()


def max_abs_diff(a: Any, b: Any) -> float:
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape:
            return math.inf
        return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
    return 0.0 if a == b else math.inf
