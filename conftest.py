"""Settings shared by every package's tests."""

from hypothesis import settings

# Property tests check behaviour; speed is measured by bench/ scripts, and a per-example deadline
# only turns a loaded machine into a failure.
settings.register_profile("project", deadline=None)
settings.load_profile("project")
