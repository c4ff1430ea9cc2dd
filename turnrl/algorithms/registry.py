"""The algorithm registry: each algorithm declares what it is once, beside its math (docs/design.md, "Registries").

An entry names the algorithm's family (which trainer, and so which loss, runs it), the function that turns the
scored log into its training data, how tables name it, whether it is a baseline (not reward-weighted RL: a
candidate for "best baseline" in comparisons), the sections of ``algo`` that hold its parameters (each a small
dataclass beside the algorithm, e.g. ``algo.refit.shift_negative``) and, for weighted fine-tuning, which assistant
turns carry the weight by default. Each built-in algorithm is one module of this package:

    @register_algorithm("refit", family="weighted", display="Refit", paper="000 eq. 5", sections=("refit",))
    def refit_weights(trajectories, cfg, diag) -> list[float]: ...

The builder's signature is the family's: weighted ``(trajectories, cfg, diag) -> weights``; preference
``(trajectories, cfg, branches, stats) -> pairs or KTO examples``; distillation ``(trajectories, cfg) ->
(examples, diagnostics)``.

Algorithms outside turnrl register when their module is imported: from the command line with ``turnrl --import
MODULE ...``, or for an installed package through the entry-point group ``turnrl.algorithms``
(``[project.entry-points."turnrl.algorithms"] my-algo = "my_package.algos"``), loaded the first time the registry
is read. Their parameters come from ``algo.extra`` (a mapping any YAML file or ``--algo.extra '{...}'`` sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Literal

from turnrl.errors import ConfigError
from turnrl.registry import Registry

Family = Literal["weighted", "preference", "distillation"]
FAMILIES = ("weighted", "preference", "distillation")


@dataclass(frozen=True)
class Algorithm:
    name: str
    family: Family
    build: Callable
    """Turns the scored log into the family's training data (see the module docstring)."""
    display: str
    """How tables and plots name it (the papers' spelling)."""
    paper: str
    """Where its math is, e.g. "000 eq. 9"."""
    baseline: bool = False
    sections: tuple[str, ...] = ()
    """The sections of ``algo`` (fields of :class:`turnrl.algorithms.config.AlgoConfig`) it reads its parameters
    from, e.g. ("preference", "dpo"); model cards and the train record show these."""
    turns: Literal["all", "final"] = "all"
    """weighted: the assistant turns that carry the weight unless ``algo.trained_turns`` says otherwise."""
    needs_branches: bool = False
    """preference: trains on branch rollouts from every step of the log (StepDPO), a stage run before training."""
    unpaired: bool = False
    """preference: the data are desirable and undesirable examples (KTO's loss) instead of pairs (DPO's)."""


_REGISTRY: Registry[Algorithm] = Registry("algo.name")
_PLUGINS_LOADED = False
ENTRY_POINT_GROUP = "turnrl.algorithms"


def _load_plugins() -> None:
    """Import every module of the ``turnrl.algorithms`` entry-point group once (they register themselves)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 -- a broken plugin is named, not a traceback from deep inside
            raise ConfigError(f"the algorithm plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from exc


def register_algorithm(name: str, *, family: Family, display: str, paper: str, baseline: bool = False,
                       sections: tuple[str, ...] = (), turns: Literal["all", "final"] = "all",
                       needs_branches: bool = False, unpaired: bool = False) -> Callable:
    """Register the decorated function as the builder of algorithm ``name``; returns the function unchanged."""
    if family not in FAMILIES:
        raise ValueError(f"algorithm {name!r}: family {family!r}; expected one of {', '.join(FAMILIES)}")

    def decorate(build: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"algorithm {name!r} is registered twice ({_REGISTRY[name].build.__module__} and "
                             f"{build.__module__})")
        _REGISTRY[name] = Algorithm(name=name, family=family, build=build, display=display, paper=paper,
                                    baseline=baseline, sections=sections, turns=turns, needs_branches=needs_branches,
                                    unpaired=unpaired)
        return build

    return decorate


def unregister_algorithm(name: str) -> None:
    """Remove an entry (for tests and notebooks that register a temporary algorithm)."""
    _REGISTRY.pop(name, None)


def algorithms(family: Family | None = None) -> list[Algorithm]:
    """Every registered algorithm (of one family), baselines first, each group in registration order: the order
    of every results table. (Importing this module imports its package first, which registers the built-in
    algorithms.)"""
    _load_plugins()
    chosen = [a for a in _REGISTRY.values() if family is None or a.family == family]
    return [a for a in chosen if a.baseline] + [a for a in chosen if not a.baseline]


def get_algorithm(name: str, family: Family | None = None) -> Algorithm:
    """The entry of ``name``; a clear error naming the known ones if it is not registered (in that family)."""
    _load_plugins()
    entry = _REGISTRY.lookup(name)
    if family is not None and entry.family != family:
        raise ConfigError(f"algo.name: {name!r} is not a {family} algorithm; expected one of "
                          f"{', '.join(a.name for a in algorithms(family))}")
    return entry
