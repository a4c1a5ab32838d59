"""Griffe extension for the API reference: gradflow's docstrings use Sphinx roles, rendered here as links.

gradflow's docstrings are written as plain text with a few reST habits: cross-references such as
``:func:`gradflow.simulate_flow```, ``:class:`~gradflow.FlowResult``` or ``:data:`TAU_STEPS```.
Markdown has no roles, so mkdocstrings would print the colons and backticks as they are. This
extension rewrites each role, in the docstrings only (the library's files are not touched), into an
*optional* mkdocs-autorefs cross-reference: a link when the target is rendered somewhere in the site,
plain code otherwise (no warning, since private helpers are not in the reference). ``~`` keeps only
the last component as the text, as in Sphinx. A target without a package prefix is looked up
relative to the documented object's module (``:data:`TAU_STEPS``` in ``gradflow.sliding`` is
``gradflow.sliding.TAU_STEPS``).

It also checks the ``Args:`` of every function against its signature. gradflow documents related
parameters together (``rtol, atol: tolerances of ...``), which griffe's Google parser takes for one
unknown parameter named "rtol, atol"; mkdocs.yml turns griffe's own check off, and this extension
checks each name instead, warning (so failing the strict build) on any name the signature lacks,
and renders such an entry as one row per name, with that name's type and default.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|mod|meth|data|attr|obj|exc|const):`(~?)([^`]+?)`")
PACKAGES = ("gradflow", "jax", "jaxlib", "numpy", "scipy", "diffrax", "equinox", "optax", "lineax", "optimistix",
            "flax", "sklearn", "matplotlib", "builtins", "typing")


def convert(text: str, module: str) -> str:
    """Every role in ``text`` as an optional autoref (``module``: the documented object's module path)."""

    def one(match: re.Match) -> str:
        short, target = match.group(2) == "~", match.group(3).strip().rstrip("()")
        shown = target.rsplit(".", 1)[-1] if short else target
        if match.group(1) in ("func", "meth"):
            shown += "()"
        identifier = target if target.split(".", 1)[0] in PACKAGES else f"{module}.{target}"
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(shown)}</code></autoref>")

    return ROLE.sub(one, text)


def unknown_parameters(function: griffe.Function) -> list[tuple[str, int | None]]:
    """Names in the ``Args:`` of ``function``'s docstring that its signature does not have."""
    if function.docstring is None:
        return []
    names = {p.name for p in function.parameters}
    kinds = {p.kind for p in function.parameters}
    if griffe.ParameterKind.var_keyword in kinds:
        return []  # **kwargs: any name may be documented
    missing = []
    sections = griffe.parse_google(function.docstring, warn_unknown_params=False, warn_missing_types=False,
                                   warnings=False)
    for section in sections:
        if section.kind is griffe.DocstringSectionKind.parameters:
            for param in section.value:
                for name in param.name.split(","):
                    name = name.strip().lstrip("*")
                    if name and name not in names:
                        missing.append((name, function.docstring.lineno))
    return missing


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads and checks the documented parameter names."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            module = obj.module.path if not obj.is_module else obj.path
            obj.docstring.value = convert(obj.docstring.value, module)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for function in _functions(pkg):
            for name, lineno in unknown_parameters(function):
                griffe.logger.warning(f"{function.relative_filepath}:{lineno}: {function.path} documents "
                                      f"parameter {name!r}, which is not in its signature")
            split_parameters(function)


def split_parameters(function: griffe.Function) -> None:
    """Render ``rtol, atol: text`` as two rows, each with its own type and default from the signature.

    The docstring is parsed here with the parser and options mkdocstrings gave griffe, and the result
    stored as the docstring's (cached) parsed sections, which the templates render."""
    doc = function.docstring
    if doc is None or doc.parser is None or "," not in doc.value:
        return
    signature = {p.name: p for p in function.parameters}
    sections = doc.parse()
    changed = False
    for section in sections:
        if section.kind is not griffe.DocstringSectionKind.parameters:
            continue
        rows = []
        for param in section.value:
            names = [n.strip() for n in param.name.split(",")]
            if len(names) > 1 and all(n in signature for n in names):
                rows += [griffe.DocstringParameter(n, description=param.description, annotation=signature[n].annotation,
                                                   value=signature[n].default) for n in names]
                changed = True
            else:
                rows.append(param)
        section.value = rows
    if changed:
        doc.__dict__["parsed"] = sections  # griffe.Docstring.parsed is a cached_property


def _functions(obj: griffe.Object):
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_function:
            yield member
        elif member.is_class or member.is_module:
            yield from _functions(member)
