"""A language whose next token needs attention: sequences from one of a few Markov chains.

Each sequence is drawn from one of ``chains`` first-order Markov chains over ``vocab``
tokens (chosen uniformly, hidden), each chain's rows drawn from a Dirichlet(``alpha``):
small alpha makes transitions peaked. The current token alone gives the mixture's bigram;
which chain is speaking can only be inferred from the whole prefix, so a model beats the
bigram only by attending broadly over the context (a softmax over many keys), which is
exactly what collapsed, one-hot attention loses. The Bayes-optimal loss (posterior over
the chains given the prefix) is computed exactly and is the floor of the learning curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Chains", "synthetic_chains"]


@dataclass(frozen=True)
class Chains:
    """``tokens`` (n, T + 1) int64; the mean next-token loss (nats, positions 1..T) of the
    Bayes-optimal predictor (``bayes``), of the chains' mixture bigram (``bigram``), and of
    the unigram (``unigram``)."""

    tokens: torch.Tensor
    bayes: float
    bigram: float
    unigram: float


def synthetic_chains(n: int, T: int, *, vocab: int, chains: int, alpha: float,
                     seed: int) -> Chains:
    """``n`` sequences of ``T + 1`` tokens (see the module docstring), from ``seed``."""
    for label, value, low in (("n", n, 1), ("T", T, 2), ("vocab", vocab, 2),
                              ("chains", chains, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}; got {value!r}.")
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(vocab, alpha), size=(chains, vocab))  # (chain, from, to)
    P = np.maximum(P, 1e-12)
    P /= P.sum(axis=2, keepdims=True)
    which = rng.integers(0, chains, size=n)
    tokens = np.empty((n, T + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=n)
    cumulative = np.cumsum(P, axis=2)
    for t in range(1, T + 1):
        rows = cumulative[which, tokens[:, t - 1]]  # (n, vocab)
        draw = rng.random((n, 1))
        tokens[:, t] = np.minimum((rows < draw).sum(axis=1), vocab - 1)
    logP = np.log(P)
    log_post = np.zeros((n, chains))  # log p(chain | prefix), up to a constant
    bayes = 0.0
    for t in range(1, T + 1):
        post = log_post - log_post.max(axis=1, keepdims=True)
        post = np.exp(post) / np.exp(post).sum(axis=1, keepdims=True)
        step = logP[:, tokens[:, t - 1], tokens[:, t]].T  # (n, chain)
        bayes -= np.log((post * np.exp(step)).sum(axis=1)).mean()
        log_post += step
    mixture = P.mean(axis=0)
    bigram = -np.log(mixture[tokens[:, :-1], tokens[:, 1:]]).mean()
    counts = np.bincount(tokens[:, 1:].ravel(), minlength=vocab) / tokens[:, 1:].size
    unigram = -np.log(np.maximum(counts, 1e-12))[tokens[:, 1:]].mean()
    return Chains(torch.from_numpy(tokens), float(bayes / T), float(bigram), float(unigram))
