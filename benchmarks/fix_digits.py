"""gh.fix on scikit-learn's digits: a 20-layer sigmoid MLP before and after the fix.

The same seed, data order and budget (200 SGD steps, batch 64) train both. Acceptance
(issue 4): the default-init sigmoid net stays near chance (10 classes: ~10%); after
``gh.fix`` it reaches at least 90% test accuracy.

Run: python benchmarks/fix_digits.py   (about 10 s on 2 CPU cores)
"""

from __future__ import annotations

import sys

from gradhealth import fix
from gradhealth.cli.demo import BATCH, DEPTH, LR, STEPS
from gradhealth.cli.demo import sick_network as build
from gradhealth.lab.classifier import train_classifier
from gradhealth.lab.data import load_digits


def run() -> tuple[float, float, object]:
    data = load_digits()
    before = train_classifier(build(data), data, steps=STEPS, lr=LR, batch=BATCH).accuracy
    model = build(data)
    result = fix(model, data.x_train[:256], data.y_train[:256])
    after = train_classifier(model, data, steps=STEPS, lr=LR, batch=BATCH).accuracy
    return before, after, result


def main() -> int:
    before, after, result = run()
    print(result)
    print(f"{DEPTH}-layer sigmoid MLP, PyTorch default init, {STEPS} SGD steps (lr {LR}, "
          f"batch {BATCH}) on digits")
    print(f"test accuracy before gh.fix: {before:.3f}   (chance 0.100)")
    print(f"test accuracy after  gh.fix: {after:.3f}   (target >= 0.90)")
    ok = before < 0.3 and after >= 0.9
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
