"""Shared pytest setup."""

# torchvision (through torch._dynamo) imports triton, and importing triton after TensorFlow
# segfaults the process (their bundled native libraries clash; the reverse order is fine). Tests
# import TensorFlow early, so the test-only torch stack is imported first, when it is installed.
try:
  import torchvision  # noqa: F401
except ImportError:
  pass
