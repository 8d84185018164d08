"""The version of resdense: one source, read by ``pyproject.toml`` (statically), the package facade
(``resdense.__version__``) and the files that record which version wrote them (a package's ``resdense.json``)."""

VERSION = "0.1.0"
__version__ = VERSION
