"""The HTTP client of the imgq API and the ``imgq`` command line built on it."""
