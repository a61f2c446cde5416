"""``gh.fix``: probe, apply the remedies the findings call for, re-probe, prove it.

Rounds: probe -> plan -> apply -> re-probe, until the model is healthy, nothing more can
be done, or ``max_rounds`` is reached. All or nothing, over every round: a healthy model
is returned untouched; a model the rounds healed is returned with the changes; a failing
remedy, or rounds that changed the model without healing it, roll every edit of every
round back (one ``Transaction``) and raise (``FixIncompleteError`` carries the attempt);
findings no remedy applies to (non-finite values from the model's code, or remedies
``allow`` leaves out) raise ``FixRefusedError`` with the model untouched and the attempt
in ``.result``. ``dry_run`` returns the first round's plan and changes
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradhealth import fixes
from gradhealth._probe import probe
from gradhealth.errors import ConfigError, FixIncompleteError, FixRefusedError, GradHealthError
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
    # One transaction over every round: a fix heals the model or leaves it bit-identical.
    transaction = Transaction(model)
    try:
        _rounds(model, inputs, targets, loss_fn, allow, dry_run, max_rounds, result)
    except BaseException as err:
        transaction.rollback()
        if isinstance(err, GradHealthError) or not isinstance(err, Exception):
            raise
        raise GradHealthError(
            f"the fix failed ({type(err).__name__}: {err}); every change of every round "
            f"was rolled back and the model is as it was") from err
    if result.changes and not result.after.ok:
        transaction.rollback()
        left = [f"{f.kind} in `{f.module}`" for f in result.after.findings
                if f.severity != "info"]
        raise FixIncompleteError(
            f"Expected the re-probe to be healthy after {result.rounds} round(s) of "
            f"{', '.join(a.remedy for a in result.plan)}, got {', '.join(left[:4])} still; "
            f"every change of every round ({len(result.changes)}) was rolled back and the "
            f"model is bit-identical to before. The attempt is in this error's .result; "
            f"try allow=(...) with more kinds of change, max_rounds, or the finding's "
            f"remedy by hand.", result=result)
    if not dry_run and not result.changes and not result.after.ok:
        left = [f"{f.kind} in `{f.module}`" if f.module else f.kind
                for f in result.after.findings if f.severity != "info"]
        why = " ".join(result.notes) or "no remedy in allow= applies to these findings."
        raise FixRefusedError(
            f"Expected findings gh.fix can repair, got {', '.join(left[:4])}, which none of "
            f"its changes ({', '.join(allow)}) repairs: {why} The model is unchanged; apply "
            f"each finding's remedy by hand (print(result.before) on this error's .result "
            f"shows them).", result=result)
    return result


def _rounds(model, inputs, targets, loss_fn, allow, dry_run, max_rounds,
            result: FixResult) -> None:
    """Probe -> plan -> apply -> re-probe until healthy, nothing left to do or max_rounds."""
    current = result.before
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
        for action in actions:
            try:
                result.changes += apply(model, action, inputs)
            except GradHealthError as err:
                if not result.changes:
                    raise
                # an earlier round's edits are undone with this one's: say so
                said = str(err).replace(" The model is unchanged.", "").replace(
                    " Model unchanged.", "")
                raise FixIncompleteError(
                    f"round {round_ + 1}'s {action.remedy} was refused: {said} The "
                    f"{len(result.changes)} change(s) made before it were rolled back "
                    f"too: the model is bit-identical to before. The attempt is in "
                    f"this error's .result.", result=result) from err
            except Exception as err:
                raise GradHealthError(
                    f"applying {action} failed ({type(err).__name__}: {err}); every change "
                    f"of every round was rolled back and the model is as it was") from err
        result.rounds = round_ + 1
        current = probe(model, inputs, targets, loss_fn=loss_fn)
        result.after = current


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
    if action.remedy == "forget_bias" and action.forget_bias is not None:
        return fixes.forget_bias_(model, action.forget_bias, names=names)
    if action.remedy == "swap_selu":  # swap_activations_ gives the feeding layers LeCun init
        return fixes.swap_activations_(model, "selu", from_=("sigmoid", "hardsigmoid"),
                                       names=names, example_inputs=inputs)
    if action.remedy == "swap_leaky":  # the units that can die: ReLU and ReLU6
        return fixes.swap_activations_(model, "leaky_relu", from_=catalog.RECTIFIERS, slope=0.2,
                                       names=names, example_inputs=inputs)
    if action.remedy == "insert_bn":
        return fixes.insert_batchnorm_(model, names=names, example_inputs=inputs)
    raise ConfigError(f"unknown remedy {action.remedy!r}")
