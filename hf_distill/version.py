"""The package version: a leaf module, so every module can import it without importing the package ``__init__``."""

__version__ = "0.1.0"
