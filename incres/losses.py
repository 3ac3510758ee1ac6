"""The training losses, per example: softmax cross-entropy and binary cross-entropy (RSB).

Each takes the logits and float (B, K) targets (one-hot, smoothed or mixed by `incres.mixing`) and
returns (B,) float32 losses; `LOSSES` maps `config.loss` to them (`configs.LOSSES` lists the same
names without importing JAX). The evaluation loss is `cross_entropy` on integer labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def one_hot_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """(B, K) float32 one-hot targets, label-smoothed: `(1 - s) * one_hot + s / K`."""
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return targets


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
  targets = one_hot_targets(labels, logits.shape[-1], label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, target_threshold: float | None = None
) -> jax.Array:
  """Per-example binary cross-entropy of each class's sigmoid, averaged over the classes.

  ResNet strikes back's loss (Wightman et al. 2021, timm's `BinaryCrossEntropy`): every logit is
  an independent yes/no against its soft target (mixed, smoothed); with `target_threshold`, the
  targets above it become 1 and the rest 0 (timm's `target_threshold`, RSB's 0.2). The mean of
  these over the batch is timm's loss, whose default reduction averages over batch x classes.
  """
  if target_threshold is not None:
    targets = (targets > target_threshold).astype(targets.dtype)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(-1)


def soft_cross_entropy(
    logits: jax.Array, targets: jax.Array, target_threshold: float | None = None
) -> jax.Array:
  """Per-example softmax cross-entropy against soft (B, K) targets: smoothed, mixed or one-hot."""
  del target_threshold  # BCE's only.
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


# config.loss -> per-example loss of (logits, soft targets, bce_target_threshold).
LOSSES = {"softmax_ce": soft_cross_entropy, "bce": binary_cross_entropy}
