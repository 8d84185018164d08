"""Sphinx directives that generate reference pages from the code, so they cannot drift from it.

``.. recipe-schema:: train`` (``eval``): one row per field of :class:`resdense.config.TrainConfig` /
:class:`~resdense.config.EvalConfig`: key, type, default and the meaning from the class docstring's
``Attributes:`` section. An entry may name several fields (``epochs / iterations:``, ``batch_size, num_workers:``);
a field without an entry of its own is described by the entry that mentions it in double backquotes (``lr`` in
``optimizer``'s). A field described nowhere is a build warning, so ``make docs`` (warnings as errors) fails.

``.. cli-reference::``: every subcommand of :func:`resdense.cli.build_parser`: usage, description and arguments.

``public-names`` check: every name in the ``__all__`` of a module in ``resdense_public_modules`` must have a
docstring of its own (classes and functions) or be a constant; otherwise a build warning names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import typing

from docutils import nodes
from docutils.parsers.rst import Parser as RSTParser
from docutils.utils import new_document
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import resdense

logger = logging.getLogger(__name__)

_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w ,/]*?):\s(?P<text>.*)$")


def attribute_entries(doc: str) -> list[tuple[list[str], str]]:
    """The ``Attributes:`` section of a Google-style docstring as ``(names, text)`` entries, text unwrapped."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return []
    body = lines[start + 1:]
    indent = len(body[0]) - len(body[0].lstrip()) if body else 0
    entries: list[tuple[list[str], str]] = []
    for line in body:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break  # the section ended
        if line.strip() and len(line) - len(line.lstrip()) == indent and (m := _ENTRY.match(line.strip())):
            names = [n.strip() for n in re.split(r"[,/]", m["names"]) if n.strip()]
            entries.append((names, m["text"].strip()))
        elif entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
    return entries


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else inspect.formatannotation(tp)
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if value is None:
        return "``null``"
    if isinstance(value, bool):
        return f"``{str(value).lower()}``"
    if isinstance(value, tuple):
        value = list(value)
    return f"``{value!r}``".replace("'", "")


def schema_rows(cls: type, section: str) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every field of the dataclass ``cls``; warns for an undescribed one."""
    entries = attribute_entries(cls.__doc__ or "")
    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        own = [text for names, text in entries if field.name in names]
        if own:
            meaning = own[0]
        else:
            mention = re.compile(rf"``[^`]*\b{field.name}\b[^`]*``")
            shared = [(names, text) for names, text in entries if mention.search(text)]
            if not shared:
                logger.warning(f"recipe-schema: {cls.__name__}.{field.name} has no entry in the class docstring's "
                               f"Attributes section (add one)", type="resdense", subtype="schema")
                meaning = ""
            else:
                names, text = shared[0]
                meaning = f"See ``{section}.{names[0]}``: {text}"
        rows.append((f"``{section}.{field.name}``", f"``{_type_name(hints[field.name])}``", _default(field), meaning))
    return rows


def _list_table(header: tuple[str, ...], rows: list[tuple[str, ...]], widths: str) -> list[str]:
    out = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in (header, *rows):
        for i, cell in enumerate(row):
            out.append(f"   {'*' if i == 0 else ' '} - {cell or '-'}")
    return out


class _Generated(SphinxDirective):
    def render(self, lines: list[str]) -> list[nodes.Node]:
        """reStructuredText parsed as its own document (the page may be Markdown), as MyST's ``eval-rst`` does."""
        document = new_document(f"<generated in {self.env.docname}>", self.state.document.settings)
        document.reporter = self.state.document.reporter  # Sphinx's: docstring errors are build warnings too
        RSTParser().parse("\n".join(lines), document)
        return document.children


class RecipeSchema(_Generated):
    """``.. recipe-schema:: train`` or ``eval``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from resdense import config

        self.env.note_dependency(config.__file__)
        classes = {"train": config.TrainConfig, "eval": config.EvalConfig}
        section = self.arguments[0]
        if section not in classes:
            raise self.error(f"recipe-schema: unknown section {section!r}; one of {', '.join(classes)}")
        rows = schema_rows(classes[section], section)
        return self.render(_list_table(("key", "type", "default", "meaning"), rows, "18 14 12 56"))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def _argument_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    rows = []
    for action in parser._actions:  # argparse keeps its arguments only here
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            name = ", ".join(f"``{o}{metavar}``" for o in action.option_strings)
        else:
            name = f"``{action.metavar or action.dest}``"
        help_text = _escape(action.help or "")
        if action.choices:
            help_text += f" One of: {', '.join(f'``{c}``' for c in action.choices)}."
        default = action.default
        shown = "" if default in (None, False, [], argparse.SUPPRESS) or not action.option_strings else f"``{default}``"
        rows.append((name, shown, help_text))
    return rows


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class CliReference(_Generated):
    """``.. cli-reference::``: the whole ``resdense`` command line, from the parser the CLI runs."""

    def run(self) -> list[nodes.Node]:
        from resdense import cli

        parser = cli.build_parser()
        lines = _parser_lines(parser, "resdense", level=0)
        return self.render(lines)


_UNDERLINES = "-~^"


def _parser_lines(parser: argparse.ArgumentParser, prog: str, level: int) -> list[str]:
    lines: list[str] = []
    if level:
        title = f"``{prog}``"
        lines += [title, _UNDERLINES[level - 1] * len(title), ""]
    usage = parser.format_usage().replace("usage: ", "").strip()
    lines += ["::", "", *("   " + u for u in usage.splitlines()), ""]
    if parser.description:
        lines += [_escape(parser.description), ""]
    rows = _argument_rows(parser)
    if rows:
        lines += _list_table(("argument", "default", "meaning"), rows, "28 12 60") + [""]
    for name, sub in _subparsers(parser).items():
        lines += _parser_lines(sub, f"{prog} {name}", level + 1)
    return lines


def _public_names(module) -> list[str]:
    """``__all__``; for a module without one, the classes and functions it defines whose names lack a ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, obj in vars(module).items() if not n.startswith("_") and (inspect.isclass(obj) or
            inspect.isfunction(obj)) and obj.__module__ == module.__name__]


def _submodules(package) -> list[str]:
    import pkgutil

    if not hasattr(package, "__path__"):
        return []
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            full = f"{package.__name__}.{info.name}"
            names.append(full)
            names += _submodules(importlib.import_module(full)) if info.ispkg else []
    return names


class ApiPackage(_Generated):
    """``.. api-package:: resdense.heads``: the package's ``__all__``, then each public module under it with its
    docstring and the ``__all__`` names not documented yet. Each object is documented once per page, at its first
    (most public) place; every name is in some ``__all__`` or private."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        seen = self.env.temp_data.setdefault("resdense_api_seen", set())
        lines: list[str] = []
        package = importlib.import_module(self.arguments[0])
        for i, modname in enumerate([package.__name__, *_submodules(package)]):
            module = importlib.import_module(modname)
            self.env.note_dependency(module.__file__)
            public = [n for n in _public_names(module) if id(getattr(module, n)) not in seen]
            if i:
                title = f"``{modname}``"
                lines += [title, "^" * len(title), ""]
            lines += [f".. automodule:: {modname}"]
            lines += [f"   :members: {', '.join(public)}"] if public else ["   :no-members:"]
            parent, _, leaf = modname.rpartition(".")
            if not inspect.ismodule(getattr(importlib.import_module(parent), leaf, None)):
                lines += ["   :no-index:"]  # the package exports a function of the module's name (engine.evaluate)
            lines += [""]
            seen.update(id(getattr(module, n)) for n in public)
        return self.render(lines)


def check_public_names(app) -> None:
    """Warn for every public class or function (see :func:`_public_names`) without a docstring of its own."""
    seen: set[int] = set()
    for package in app.config.resdense_public_modules:
        for modname in [package, *_submodules(importlib.import_module(package))]:
            module = importlib.import_module(modname)
            for name in _public_names(module):
                obj = getattr(module, name)
                if id(obj) in seen or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue  # constants and tables are described by their module
                seen.add(id(obj))
                if not (obj.__doc__ or "").strip() or (inspect.isclass(obj) and "__doc__" not in vars(obj)):
                    logger.warning(f"public name {modname}.{name} has no docstring", type="resdense",
                                   subtype="public")


class ApiFacade(_Generated):
    """``.. api-facade::``: the table of what ``import resdense`` offers (``resdense._EXPORTS``), each name linked
    to where it is documented."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(resdense.__file__)
        rows = [(f"``resdense.{name}``", f":py:obj:`{module}.{attr}`")
                for name, (module, attr) in resdense._EXPORTS.items()]
        rows.append(("``resdense.__version__``", "the version string"))
        return self.render(_list_table(("name", "is"), rows, "40 60"))


def resolve_resdense_reference(app, env, node, contnode):
    """A reference to ``resdense.a.b.Name`` where ``Name`` is documented under a package that re-exports it
    (``resdense.a.Name``), or to a facade name (``resdense.load_config``): link to where it is documented.
    Re-exports are how the package presents its API (``__all__``)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("resdense."):
        return None
    domain = env.get_domain("py")
    facade = resdense._EXPORTS.get(target.partition(".")[2])
    if facade is not None:  # resdense.load_config -> resdense.engine.load_config, then as any other target
        target = ".".join(facade)
        node = _retarget(node, target)
        if target in domain.objects:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)
    parts = target.split(".")
    try:
        wanted = _import(target)
    except (ImportError, AttributeError):
        return None
    candidates = [".".join(parts[:cut] + parts[-1:]) for cut in range(len(parts) - 2, 0, -1)]
    # then the same object documented under another package that re-exports it (resdense.backbones re-exports
    # resdense.registry.register_backbone)
    candidates += sorted(n for n in domain.objects if n.startswith("resdense.") and n.endswith("." + parts[-1]))
    for candidate in candidates:
        if candidate in domain.objects and _import(candidate) is wanted:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"] if node["reftype"] != "mod"
                                       else "obj", candidate, node, contnode)
    return None


def _retarget(node, target: str):
    node = node.deepcopy()
    node["reftarget"] = target
    return node


def _import(path: str):
    """The object a dotted path names (a module, or an attribute of one)."""
    module, _, attr = path.rpartition(".")
    try:  # an attribute first: resdense.engine.evaluate is a function that shadows its module
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def setup(app):
    app.add_config_value("resdense_public_modules", [], "env")
    app.add_directive("recipe-schema", RecipeSchema)
    app.add_directive("cli-reference", CliReference)
    app.add_directive("api-package", ApiPackage)
    app.add_directive("api-facade", ApiFacade)
    app.connect("builder-inited", check_public_names)
    app.connect("missing-reference", resolve_resdense_reference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
