"""The machinery behind ``gh.watch`` and ``gh.guard`` (private: use the verbs).

``watch`` wires the hooks; ``recorder`` and ``stepbuffer`` keep each step's numbers on
device; ``sampler`` arms the taps on one step every K; ``window`` merges sampled steps;
``journal`` turns a flush window into store rows and asks ``gradhealth.rules`` for
verdicts; ``guard`` withholds a step's gradients; ``replay`` re-runs a batch to find a
NaN's producer; ``closure`` and ``scaler`` adapt LBFGS-style closures and GradScaler;
``options`` checks the options and opens the store.
"""
