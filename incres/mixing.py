"""Mixup and CutMix of a whole batch, in the train step (pure JAX: jit, any sharding).

Mixup (Zhang et al. 2018) blends every image with its partner, `lam * x + (1 - lam) * partner`;
CutMix (Yun et al. 2019) pastes the partner's pixels into a box of area about `(1 - lam)` of the
image. Either way the targets are blended with the same weight. The semantics are those of the
references' batch mode, timm's `Mixup(mode="batch")` (`timm/data/mixup.py`) and torchvision's
`transforms.v2.MixUp`/`CutMix` as its classification recipe chooses between them
(`references/classification/train.py`):

- one draw per batch: with probability `prob` the batch is mixed at all; then CutMix with
  probability `switch_prob` if both are on (else whichever is on), `lam ~ Beta(alpha, alpha)` of
  the chosen one (`mixup_alpha`, `cutmix_alpha`);
- CutMix's box: a centre uniform over the pixels, half-sides `floor(sqrt(1 - lam) * side) // 2`,
  clipped to the image; `lam` is then corrected to the share of the image left unpasted,
  `1 - box_area / (H * W)` (timm's `correct_lam=True`, torchvision's `lam_adjusted`: the label
  weights are the pixel shares);
- the targets are one-hot labels, label-smoothed first (timm's `mixup_target`: off-values
  `smoothing / num_classes`), then blended; torchvision's `CrossEntropyLoss(label_smoothing=...)`
  on the blended one-hot targets gives the same loss, as smoothing is linear.

The partner of example i is example i - 1 (example 0's is the last): torchvision's `roll(1, 0)`.
timm pairs i with B - 1 - i (`flip(0)`). The pairs are as random either way, since the batch is
shuffled; the roll is chosen because on a batch sharded over devices it moves one example per
device to the next device (a collective permute), where the flip moves every example to the
mirror device. It is applied to the global batch: pairs cross devices, and 1 device and 8 give the
same pixels.

The draws come from the key `step_key(dropout_key)`, a function of the train state's `rng` and
the step only, so a resumed run mixes its batches exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Folded into the step's dropout key: the mixing draws' own stream (the dropout keys the model
# derives from that key are unchanged, so runs with mixing off are bitwise those without it).
STREAM = 0x6D6978  # "mix"


@dataclasses.dataclass(frozen=True)
class Mixing:
  """Mixup/CutMix settings (config keys `mixup_alpha`, `cutmix_alpha`, `mix_prob`,
  `mix_switch_prob`); an alpha of 0 turns that one off."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0  # Probability that a batch is mixed at all.
  switch_prob: float = 0.5  # Probability of CutMix rather than mixup when both are on.

  def __post_init__(self):
    if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
      raise ValueError(f"{self}: the alphas must be 0 (off) or positive.")
    if not (0.0 <= self.prob <= 1.0 and 0.0 <= self.switch_prob <= 1.0):
      raise ValueError(f"{self}: prob and switch_prob are probabilities, in [0, 1].")

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def from_config(config: Any) -> Mixing | None:
  """The config's `Mixing`, or None when both alphas are 0 (the train step is then unchanged)."""
  mixing = Mixing(
      mixup_alpha=float(config.get("mixup_alpha", 0.0)),
      cutmix_alpha=float(config.get("cutmix_alpha", 0.0)),
      prob=float(config.get("mix_prob", 1.0)),
      switch_prob=float(config.get("mix_switch_prob", 0.5)),
  )
  return mixing if mixing.enabled else None


class Draw(NamedTuple):
  """One batch's draw: the weight of each example's own image and target, and CutMix's box."""

  lam: jax.Array  # float32 scalar; 1 when the batch is not mixed; CutMix's is corrected.
  mixed: jax.Array  # bool scalar: the batch is mixed at all (probability `prob`).
  cutmix: jax.Array  # bool scalar: by pasting a box (else by blending whole images).
  box: jax.Array  # int32 (4,): y0, y1, x0, x1, the pasted window [y0, y1) x [x0, x1).


def step_key(dropout_key: jax.Array) -> jax.Array:
  """The mixing key of a step, from its dropout key `fold_in(state.rng, step)`."""
  return jax.random.fold_in(dropout_key, STREAM)


def cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int, width: int) -> jax.Array:
  """The box `(y0, y1, x0, x1)` of area about `(1 - lam) * H * W` centred on pixel (cy, cx),
  clipped to the image (timm's `rand_bbox`, torchvision's `CutMix.make_params`)."""
  ratio = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
  return jnp.stack(
      [
          jnp.clip(cy - half_h, 0, height),
          jnp.clip(cy + half_h, 0, height),
          jnp.clip(cx - half_w, 0, width),
          jnp.clip(cx + half_w, 0, width),
      ]
  ).astype(jnp.int32)


def draw(key: jax.Array, mixing: Mixing, height: int, width: int) -> Draw:
  """The batch's draw from `key` (each decision from its own subkey)."""
  k_apply, k_switch, k_beta, k_cy, k_cx = jax.random.split(key, 5)
  apply = jax.random.uniform(k_apply) < mixing.prob
  if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < mixing.switch_prob
  else:
    use_cutmix = jnp.asarray(mixing.cutmix_alpha > 0)
  # Beta(a, a) = G1 / (G1 + G2) = sigmoid(log G1 - log G2) for independent Gamma(a) draws: both
  # weights from one vectorised log-gamma sampler (jax.random.beta would compile four; the log
  # keeps small alphas' gammas from underflowing). An alpha of 0 (off) draws a dummy Gamma(1).
  alphas = [mixing.mixup_alpha or 1.0] * 2 + [mixing.cutmix_alpha or 1.0] * 2
  log_gammas = jax.random.loggamma(k_beta, jnp.asarray(alphas, jnp.float32))
  lam_mixup = jax.nn.sigmoid(log_gammas[0] - log_gammas[1])
  lam_cutmix = jax.nn.sigmoid(log_gammas[2] - log_gammas[3])
  cy = jax.random.randint(k_cy, (), 0, height)
  cx = jax.random.randint(k_cx, (), 0, width)
  box = cutmix_box(lam_cutmix, cy, cx, height, width)
  area = (box[1] - box[0]) * (box[3] - box[2])
  lam_box = 1.0 - area.astype(jnp.float32) / (height * width)
  cutmix = apply & use_cutmix
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mixup), 1.0).astype(jnp.float32)
  box = jnp.where(cutmix, box, jnp.zeros_like(box))  # Mixup and no mixing: an empty box.
  return Draw(lam=lam, mixed=apply, cutmix=cutmix, box=box)


def partner(x: jax.Array) -> jax.Array:
  """Each example's partner along the batch axis: example i - 1 (torchvision's `roll(1, 0)`)."""
  return jnp.roll(x, 1, axis=0)


def mix_images(images: jax.Array, d: Draw) -> jax.Array:
  """`images` (B, H, W, C) mixed as drawn: blended with weight `lam`, or the box pasted in."""
  height, width = images.shape[1:3]
  ys, xs = jnp.arange(height), jnp.arange(width)
  in_box = ((ys >= d.box[0]) & (ys < d.box[1]))[:, None] & ((xs >= d.box[2]) & (xs < d.box[3]))
  # Per pixel, the weight of the example's own image: 0 or 1 for CutMix (exact copies), lam for
  # mixup, 1 when the batch is not mixed (the images unchanged, bit for bit).
  own = jnp.where(d.cutmix, jnp.where(in_box, 0.0, 1.0), d.lam).astype(images.dtype)
  own = own[None, :, :, None]
  return images * own + partner(images) * (1 - own)


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
  """Soft targets (B, K) blended as the images: `lam * own + (1 - lam) * partner's`."""
  lam = lam.astype(targets.dtype)
  return targets * lam + partner(targets) * (1 - lam)


def mix_batch(
    key: jax.Array, images: jax.Array, targets: jax.Array, mixing: Mixing
) -> tuple[jax.Array, jax.Array, Draw]:
  """Mixup or CutMix of a batch, as drawn from `key`: (images, targets, the draw)."""
  d = draw(key, mixing, images.shape[1], images.shape[2])
  return mix_images(images, d), mix_targets(targets, d.lam), d
