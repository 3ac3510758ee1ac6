"""The training and evaluation iterators: seeded streams, exactly resumable at any step.

Repeated augmentation lays its views out by `repeated.layout` (that module says how and why).
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from incres import configs
from incres.data import loading, placement, preprocess, repeated, sources, tfdata, unreadable

# Examples in the shuffle buffer of streamed datasets (encoded images: ~1 GB on ImageNet).
STREAM_SHUFFLE_BUFFER = 10_000


def _local_batch(global_batch: int, what: str) -> int:
  """Rows per process, checked to split evenly over processes and local devices."""
  processes, devices = jax.process_count(), jax.local_device_count()
  if global_batch % (processes * devices):
    raise ValueError(
        f"{what}={global_batch} must be divisible by the number of devices "
        f"({processes} processes × {devices} local devices)."
    )
  return global_batch // processes


def _base_seed(config, stream: int) -> tf.Tensor:
  """A stateless seed for one random stream (permutation, augmentation, ...) of the run."""
  return tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0], tf.int64), stream)


_PERMUTATION, _AUGMENT, _STREAM, _SPARE = 1, 2, 3, 4


def create_train_iter(
    config, *, start_step: int = 0, where: placement.Placement | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 [B_local, S, S, 3], 'label': int32 [B_local]} forever; where the
  train step finishes the augmentation (`device_preprocess(config)`), 'image' is its input:
  the undistorted [0, 1] image plus 'photometric' float32 [B_local, 8]
  (`photometric_on_device(config)`), or the crops' windows, uint8 [B_local, N]
  (N = `crops.device_buffer_bytes(S)`), plus 'resample' float32 [B_local, 3 + 2·S + 3] (ResNet)
  or 'resize' [B_local, 5 + 2·(2·S + 2)] and 'photometric' (GoogLeNet) where
  `resample_on_device(config)`.

  B_local = config.batch_size // jax.process_count(). The batch at step k depends only on
  (config, k) (and, for streamed tfds datasets, the process count), so
  `create_train_iter(config, start_step=k)` yields what an uninterrupted iterator yields from its
  k-th batch on. Process p gets the p-th slice of each global batch. With
  `config.repeated_augmentation` = r > 1 each global batch holds batch_size / r images, r views of
  each, laid out by `repeated.layout`, and an epoch is about as many views as the split has images.

  Unreadable images (a truncated JPEG, an empty file, text named `.png`) are skipped, counted in
  the iterator's `skipped` attribute and the first few named in the log. In random-access
  datasets a batch with unreadable images takes the first readable rows of its own and the next
  SPARE_BATCHES batches' rows of this process (so a few images appear twice that epoch, with
  other augmentations); since that only depends on the files, resuming stays exact. Streamed
  datasets drop unreadable records and fill the epoch from the records beyond its last whole batch;
  a resumed streamed run is exact only if no record before the resume step was unreadable in its
  epoch (the resume skips raw records without decoding them).

  `where` (default `decide_placement(config)`) says which part the train step finishes.
  """
  local = _local_batch(config.batch_size, "batch_size")
  repeats = configs.check_repeated_augmentation(config, jax.process_count())
  source = sources.source(config, config.train_split)
  train_fn = preprocess.train_fn(config, where)
  if isinstance(source, sources.StreamSource):
    return _stream_train_iter(config, source, train_fn, local, start_step, repeats)

  n, global_batch = len(source), config.batch_size
  if n == 0:
    raise sources.DatasetError(
        f"Training split {config.train_split!r} of {config.dataset!r} is empty."
    )
  lo = jax.process_index() * local
  perm_seed, aug_seed = _base_seed(config, _PERMUTATION), _base_seed(config, _AUGMENT)
  spare_seed = _base_seed(config, _SPARE)
  load = loading.loader(
      source, decode=False
  )  # The augmentation decodes (of a JPEG, only its crop).

  def permutation(e):
    # A fresh permutation per epoch from a stateless RNG: epoch e's order is a function of e.
    keys = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(perm_seed, e))
    return tf.cast(tf.argsort(keys), tf.int64)

  def epoch(e):
    positions = e * n + tf.range(n, dtype=tf.int64)  # Position in the infinite training stream.
    return tf.data.Dataset.from_tensor_slices((positions, permutation(e)))

  # Repeated augmentation: the images of an epoch (the first of its permutation) and of a batch,
  # and the image (of the batch's) behind each of this process's rows.
  images_per_epoch, images_per_batch = max(1, n // repeats), global_batch // repeats
  image_of_row = tf.constant(repeated.layout(global_batch, repeats)[0][lo : lo + local])

  def epoch_images(e):
    return tf.data.Dataset.from_tensor_slices(permutation(e)[:images_per_epoch])

  def rows(step):
    """(stream position, example index) of this process's rows from global batch `step` on."""
    if repeats > 1:
      return repeated_rows(step)
    start = step * global_batch
    ds = tf.data.Dataset.range(start // n, 2**62).flat_map(epoch).skip(start % n)
    # Keep this process's rows of each global batch; integers only, so cheap for every process.
    return ds.filter(lambda g, i: (g % global_batch >= lo) & (g % global_batch < lo + local))

  def repeated_rows(step):
    """`rows` with repeated augmentation: each view seeded by its own row's stream position."""
    first = step * images_per_batch  # Images drawn before global batch `step`.
    images = tf.data.Dataset.range(first // images_per_epoch, 2**62).flat_map(epoch_images)
    images = images.skip(first % images_per_epoch).batch(images_per_batch, drop_remainder=True)

    def batch_rows(s, batch_images):
      g = s * global_batch + lo + tf.range(local, dtype=tf.int64)
      return tf.data.Dataset.from_tensor_slices((g, tf.gather(batch_images, image_of_row)))

    return tf.data.Dataset.zip((tf.data.Dataset.range(step, 2**62), images)).flat_map(batch_rows)

  def example(g, index, seed=aug_seed):
    image, label = load(index)
    return preprocess.as_example(
        train_fn(image, tf.random.experimental.stateless_fold_in(seed, g)), label
    )

  def batches(step):
    ds = (
        rows(step)
        .map(example, num_parallel_calls=tfdata.AUTOTUNE)
        .batch(local, drop_remainder=True)
    )
    return tfdata.options(ds.prefetch(tfdata.AUTOTUNE)).as_numpy_iterator()

  def repair(step):
    """Batch `step` made of the first `local` readable candidates: its rows, then spares (with
    repeated augmentation the spares are the next rows, whatever image or view they hold, so a
    repaired batch need not hold whole images)."""
    candidates = rows(step).take((1 + unreadable.SPARE_BATCHES) * local)
    indices = [int(i) for _, i in tfdata.options(candidates).as_numpy_iterator()]

    def candidate(c, row):
      # A spare is also a row of a later batch: another augmentation seed gives another view.
      g, index = row
      return c, example(g, index, tf.where(c < local, aug_seed, spare_seed))

    ds = candidates.enumerate().map(candidate, num_parallel_calls=tfdata.AUTOTUNE).ignore_errors()
    good = list(tfdata.options(ds.take(local)).as_numpy_iterator())
    used = {int(c) for c, _ in good}
    last = max(used) if len(good) == local else len(indices) - 1
    bad = [indices[c] for c in range(last + 1) if c not in used]
    if repeats > 1:  # An image's views fail together: count and name it once.
      bad = list(dict.fromkeys(bad))
    if any(loading.decodes(load, i) for i in bad):
      # An image that decodes failed later (its augmentation, say): not unreadable, a real error,
      # which the caller raises as it is.
      return None, []
    if len(good) < local:
      named = bad[: unreadable.MAX_NAMED_BAD_IMAGES]
      names = ", ".join(unreadable.example_name(config, source, i) for i in named)
      raise sources.DatasetError(
          f"Training batch {step} of {config.dataset!r} cannot be filled: {len(bad)} of the "
          f"{len(indices)} images tried are unreadable ({names}, ...). Remove or replace them "
          f"(`python -m incres.data check {config.dataset}` lists every unreadable file)."
      )
    batch = {k: np.stack([ex[k] for _, ex in good]) for k in good[0][1]}
    return batch, bad

  named = unreadable.named_images(config)

  def report(bad, step):
    named.report(config, source, bad, f"training batch {step}")

  return unreadable.SkippingBatches(batches, repair, start_step, report)


def _stream_train_iter(
    config, source: sources.StreamSource, train_fn, local: int, start_step: int, repeats: int
):
  """Streamed tfds training data: per-process sub-splits, epochs of whole batches (of `repeats`
  views of `local // repeats` records each with repeated augmentation)."""
  processes = jax.process_count()
  split = source.split
  if processes > 1:  # Equal shares (the remainder is dropped): every process has n // P examples.
    split = tfds.split_for_jax_process(source.split, drop_remainder=True)
  n = sources.source_size(source) // processes
  steps_per_epoch = n // local  # With repeated augmentation too: an epoch is n views.
  records_per_batch = local // repeats
  if steps_per_epoch == 0:
    raise sources.DatasetError(
        f"{config.dataset!r} {config.train_split!r} has fewer examples than a batch."
    )
  aug_seed = tf.random.experimental.stateless_fold_in(
      _base_seed(config, _STREAM), jax.process_index()
  )

  def epoch_batches(e, skip_steps):
    seed = int(tf.random.experimental.stateless_fold_in(aug_seed, e).numpy()[0]) & 0x7FFFFFFF
    ds = source.builder.as_dataset(
        split=split,
        shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    ds = ds.shuffle(STREAM_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
    # Resume: skip the consumed records before decoding, so skipping costs reads, not decodes.
    ds = ds.enumerate().skip(skip_steps * records_per_batch)

    def example(i, ex):
      out = train_fn(ex["image"], tf.random.experimental.stateless_fold_in(aug_seed, e * n + i))
      return {**preprocess.as_example(out, tf.cast(ex["label"], tf.int32)), "record": i}

    def views(i, ex):
      """The record's views, [repeats, ...] each; view j seeded by (e·n + i)·repeats + j."""
      label = tf.cast(ex["label"], tf.int32)
      per_view = [
          preprocess.as_example(
              train_fn(
                  ex["image"],
                  tf.random.experimental.stateless_fold_in(aug_seed, (e * n + i) * repeats + j),
              ),
              label,
          )
          for j in range(repeats)
      ]
      return {**{k: tf.stack([v[k] for v in per_view]) for k in per_view[0]}, "record": i}

    def view_major(batch):
      """[records, repeats, ...] -> [repeats · records, ...]: `repeated.layout`'s rows."""
      out = {"record": batch["record"]}  # One per record: what `CountingBatches` counts.
      for k, v in batch.items():
        if k != "record":
          v = tf.transpose(v, [1, 0, *range(2, v.shape.rank)])
          out[k] = tf.reshape(v, tf.concat([[local], tf.shape(v)[2:]], 0))
      return out

    # Unreadable records are dropped; the records past the epoch's last whole batch stand in.
    if repeats == 1:
      ds = ds.map(example, num_parallel_calls=tfdata.AUTOTUNE).ignore_errors()
      ds = ds.take((steps_per_epoch - skip_steps) * local).batch(local, drop_remainder=True)
    else:
      ds = ds.map(views, num_parallel_calls=tfdata.AUTOTUNE).ignore_errors()
      ds = ds.take((steps_per_epoch - skip_steps) * records_per_batch)
      ds = ds.batch(records_per_batch, drop_remainder=True).map(view_major)
    return tfdata.options(ds.prefetch(tfdata.AUTOTUNE)).as_numpy_iterator()

  def epochs():
    e, skip = divmod(start_step, steps_per_epoch)
    while True:
      where = f"{config.dataset} {config.train_split} in epoch {e}"
      yield epoch_batches(e, skip), skip * records_per_batch, where
      e, skip = e + 1, 0

  return unreadable.CountingBatches(epochs())


def create_eval_iter(config) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image', 'label', 'mask'} batches covering the eval split exactly once.

  'image' is float32 [B_local, E, E, 3], E = `eval_image_size(config)` (`eval_crop_size` for a
  FixRes-style view, else `image_size`). Every batch has config.eval_batch_size // process_count()
  rows; the last is padded with mask 0 (mask is float32, 1 for real examples). All processes yield
  the same number of batches. Unreadable images get mask 0 (they are not counted), are counted in
  the iterator's `skipped` attribute and named in the log.
  """
  local = _local_batch(config.eval_batch_size, "eval_batch_size")
  source = sources.source(config, config.eval_split)
  eval_fn = preprocess.eval_fn(config)
  if isinstance(source, sources.StreamSource):
    return _stream_eval_iter(config, source, eval_fn, local)

  n, global_batch = len(source), config.eval_batch_size
  num_batches = -(-n // global_batch)
  lo = jax.process_index() * local
  # Row r of global batch b is example b * global_batch + r; indices past the end are padding.
  rows = np.arange(num_batches)[:, None] * global_batch + lo + np.arange(local)[None, :]
  rows = rows.reshape(-1).astype(np.int64)
  load = loading.loader(source, decode=False)  # The view decodes (of a JPEG, only its crop).

  def example(index):
    valid = index < n
    image, label = load(tf.where(valid, index, 0))
    return {
        "image": eval_fn(image),
        "label": tf.where(valid, label, 0),
        "mask": tf.cast(valid, tf.float32),
    }

  def batches(b):
    ds = tf.data.Dataset.from_tensor_slices(rows[b * local :])
    ds = ds.map(example, num_parallel_calls=tfdata.AUTOTUNE).batch(local).prefetch(tfdata.AUTOTUNE)
    return tfdata.options(ds).as_numpy_iterator()

  def repair(b):
    """Batch `b` with its unreadable rows zeroed and masked out."""
    chunk = rows[b * local : (b + 1) * local]
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(chunk)), chunk))
    ds = ds.map(lambda r, i: (r, example(i)), num_parallel_calls=tfdata.AUTOTUNE).ignore_errors()
    s = preprocess.eval_image_size(config)
    batch = {
        "image": np.zeros((len(chunk), s, s, 3), np.float32),
        "label": np.zeros(len(chunk), np.int32),
        "mask": np.zeros(len(chunk), np.float32),
    }
    loaded = set()
    for r, ex in tfdata.options(ds).as_numpy_iterator():
      loaded.add(int(r))
      for key in batch:
        batch[key][r] = ex[key]
    # A failed padding row (it loads example 0) is masked out anyway: not an unreadable image.
    bad = [int(i) for r, i in enumerate(chunk) if r not in loaded and i < n]
    if any(loading.decodes(load, i) for i in bad):
      return None, []  # A readable image failed later: a real error, raised as it is.
    return batch, bad

  named = unreadable.named_images(config)

  def report(bad, b):
    named.report(config, source, bad, f"evaluation batch {b} (masked out)")

  return unreadable.SkippingBatches(batches, repair, 0, report)


def _stream_eval_iter(config, source: sources.StreamSource, eval_fn, local: int):
  """Streamed eval: this process's even share, padded to the batch count all processes share."""
  processes = jax.process_count()
  split = tfds.split_for_jax_process(source.split) if processes > 1 else source.split
  # tfds' even splits differ by at most one example: every process pads to the largest share,
  # ceil(n / P), taking exactly num_batches * local rows of (its examples + padding).
  num_batches = -(-(-(-sources.source_size(source) // processes)) // local)
  s = preprocess.eval_image_size(config)
  ds = source.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().map(
      lambda i, ex: {
          "image": eval_fn(ex["image"]),
          "label": tf.cast(ex["label"], tf.int32),
          "mask": tf.constant(1.0),
          "record": i,
      },
      num_parallel_calls=tfdata.AUTOTUNE,
  )
  ds = ds.ignore_errors()  # Unreadable records are left out; the padding keeps the batch count.
  pad = {
      "image": tf.zeros([s, s, 3]),
      "label": tf.constant(0),
      "mask": tf.constant(0.0),
      "record": tf.constant(-1, tf.int64),
  }
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(num_batches * local)
  batches = tfdata.options(ds.batch(local).prefetch(tfdata.AUTOTUNE)).as_numpy_iterator()
  where = f"{config.dataset} {config.eval_split} in evaluation"
  return unreadable.CountingBatches([(batches, 0, where)])
