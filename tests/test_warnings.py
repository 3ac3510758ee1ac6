"""The suite's warning rules (setup.cfg): incres' own deprecations fail it, its dependencies' don't."""

import warnings

import jax
import pytest


def _warn_from(module: str, category: type[Warning]) -> None:
  """Issues a warning attributed to `module`, as a call from that module's code would be."""
  code = compile("warnings.warn('old API', category)", f"<{module}>", "exec")
  exec(code, {"__name__": module, "warnings": warnings, "category": category})  # pylint: disable=exec-used


@pytest.mark.parametrize("module", ["incres", "incres.train", "incres.models.resnet", "test_x"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning])
def test_a_deprecation_in_incres_or_the_tests_fails_the_suite(module, category):
  with pytest.raises(category):
    _warn_from(module, category)


@pytest.mark.parametrize("module", ["orbax.checkpoint", "tensorflow_datasets.core", "flax.linen"])
def test_a_deprecation_inside_a_dependency_does_not(module):
  with warnings.catch_warnings(record=True) as seen:
    _warn_from(module, DeprecationWarning)
  assert not seen  # Ignored by the `ignore::DeprecationWarning` rule, not merely recorded.


def test_incres_using_a_deprecated_jax_name_fails_the_suite():
  # jax 0.12 deprecates jax.sharding.SingleDeviceSharding (stacklevel=2: attributed to the caller),
  # which orbax 0.12.8 still imports; the same access from incres' code must fail the suite.
  if not hasattr(jax, "__version_info__") or jax.__version_info__ < (0, 12):
    pytest.skip(f"jax {jax.__version__} does not deprecate SingleDeviceSharding")
  # jax warns of a deprecated attribute at its first access in a process only (its module
  # __getattr__ is functools.cache'd): whoever touched it first (orbax, at import) took the warning.
  # So the rule catches incres' own use of a deprecated jax name only where incres comes first;
  # deprecated calls warn at every call. Forget the earlier accesses to see this one.
  jax.sharding.__getattr__.cache_clear()
  code = compile("jax.sharding.SingleDeviceSharding", "<incres.fake>", "exec")
  with pytest.raises(DeprecationWarning, match="SingleDeviceSharding"):
    exec(code, {"__name__": "incres.fake", "jax": jax})  # pylint: disable=exec-used
  code = compile("jax.sharding.SingleDeviceSharding", "<orbax.fake>", "exec")
  exec(code, {"__name__": "orbax.fake", "jax": jax})  # pylint: disable=exec-used
