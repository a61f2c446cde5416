"""``gh.fix``: probe, apply the remedies the findings call for, re-probe, prove it.

Rounds: probe -> plan -> apply -> re-probe, until the model is healthy, nothing more can
be done, or ``max_rounds`` is reached. A healthy model is returned untouched; a failing
remedy rolls every edit back (``Transaction``) and raises; ``dry_run`` returns the first
round's plan and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradhealth import fixes
from gradhealth._probe import probe
from gradhealth.errors import ConfigError, GradHealthError
from gradhealth.fixes.change import Change
from gradhealth.fixes.plan import CATEGORIES, Action, plan
from gradhealth.fixes.transaction import Transaction
from gradhealth.measure import catalog
from gradhealth.measure.loss import LossFn
from gradhealth.report.report import Report


@dataclass
class FixResult:
    before: Report
    after: Report
    changes: list[Change] = field(default_factory=list)
    plan: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds: int = 0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when the model is (now) healthy."""
        return self.after.ok

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def __rich_console__(self, console, options):  # pragma: no cover - via to_text
        from gradhealth.report.fix import render_fix

        yield from render_fix(self)

    def __str__(self) -> str:
        from gradhealth.report.fix import fix_text

        return fix_text(self)


def fix(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    *,
    loss_fn: LossFn | None = None,
    allow: Iterable[str] = CATEGORIES,
    dry_run: bool = False,
    max_rounds: int = 3,
) -> FixResult:
    """Diagnose ``model`` and apply remedies until the re-probe is clean.

    ``allow`` restricts the kinds of change: ``"init"`` (re-initialise weights),
    ``"activation"`` (swap activation modules), ``"norm"`` (insert BatchNorm); e.g.
    ``allow=("init",)`` never changes the architecture. Create the optimizer after
    ``fix`` (a swap or a BatchNorm adds parameters; the changes say so).
    """
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ConfigError(f"max_rounds expects an int >= 1 (rounds of fix and re-probe), got "
                          f"{max_rounds!r}")
    allow = tuple(allow)
    unknown = set(allow) - set(CATEGORIES)
    if unknown:
        raise ConfigError(f"expected allow to hold some of {CATEGORIES}, got {sorted(unknown)}")
    before = probe(model, inputs, targets, loss_fn=loss_fn)
    result = FixResult(before=before, after=before, dry_run=dry_run)
    current = before
    for round_ in range(max_rounds):
        if current.ok:
            break
        actions, notes = plan(current, allow, round_)
        result.notes += [n for n in notes if n not in result.notes]
        repeated = [a for a in actions if a in result.plan]
        actions = [a for a in actions if a not in result.plan]
        result.notes += [f"{a.reason} persisted after {a.remedy}; not repeating it"
                         for a in repeated]
        result.plan += actions
        if dry_run or not actions:
            break
        transaction = Transaction(model)
        try:
            for action in actions:
                result.changes += apply(model, action, inputs)
        except GradHealthError:
            transaction.rollback()
            raise
        except Exception as err:
            transaction.rollback()
            raise GradHealthError(
                f"applying {action} failed ({type(err).__name__}: {err}); every change was "
                f"rolled back and the model is as it was") from err
        result.rounds = round_ + 1
        current = probe(model, inputs, targets, loss_fn=loss_fn)
    result.after = current
    return result


def apply(model: nn.Module, action: Action, inputs: Any) -> list[Change]:
    """Apply one planned action with the remedies of ``gradhealth.fixes``."""
    names = list(action.names) if action.names is not None else None
    if action.remedy == "he":
        return fixes.he_normal_(model, names=names, example_inputs=inputs)
    if action.remedy == "glorot":
        return fixes.glorot_normal_(model, names=names, example_inputs=inputs)
    if action.remedy == "lecun":
        return fixes.lecun_normal_(model, names=names)
    if action.remedy == "lsuv":
        return fixes.lsuv_(model, inputs, names=names)
    if action.remedy == "orthogonal":
        modules = dict(model.named_modules())
        relu_rnns = [n for n in names or [] if isinstance(modules.get(n), nn.RNN)
                     and modules[n].nonlinearity == "relu"]
        others = [n for n in names or [] if n not in relu_rnns]
        changes = fixes.identity_recurrent_(model, names=relu_rnns) if relu_rnns else []
        if others:
            changes += fixes.orthogonal_(model, names=others, example_inputs=inputs)
        return changes
    if action.remedy == "swap_selu":  # swap_activations_ gives the feeding layers LeCun init
        return fixes.swap_activations_(model, "selu", from_=("sigmoid", "hardsigmoid"),
                                       names=names, example_inputs=inputs)
    if action.remedy == "swap_leaky":  # the units that can die: ReLU and ReLU6
        return fixes.swap_activations_(model, "leaky_relu", from_=catalog.RECTIFIERS, slope=0.2,
                                       names=names, example_inputs=inputs)
    if action.remedy == "insert_bn":
        return fixes.insert_batchnorm_(model, names=names, example_inputs=inputs)
    raise ConfigError(f"unknown remedy {action.remedy!r}")
