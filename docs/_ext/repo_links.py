"""Links from the docs to repository files outside ``docs/`` (results, JSONs, source folders).

The pages link to ``../benchmarks/results/cpu/report.md`` so that they work where GitHub renders them (and an
included file, such as ARCHITECTURE.md or the README, links relative to itself). Sphinx knows only the files
under ``docs/``, so this transform resolves every such link against the checkout: a path that exists becomes a
link to ``repo_links_url`` + the path (or, when that is empty, to the file in the checkout, relative to the
built page); a path that does not exist is left to MyST, which reports it as a ``myst.xref_missing`` warning,
an error under ``-W``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform


def _outside_target(srcdir: Path, docname: str, node: nodes.Element) -> tuple[str, str] | None:
    """The repository path (relative to the repo root) and #fragment a link names, when it lies outside
    ``docs/`` and exists; else None."""
    repo = srcdir.parent
    target = str(node.get("reftarget", ""))
    if node.get("refdomain") == "doc":  # MyST turned an existing .md outside docs/ into a docname (a path)
        if not (target.startswith("..") or target.startswith("/")):
            return None
        fragment = str(node.get("reftargetid") or "")
        candidates = [target + suffix for suffix in (".md", ".rst")]
    else:
        target, _, fragment = target.partition("#")
        candidates = [target]
    # A link is relative to the file it is written in, as on GitHub: an {include}d file (ARCHITECTURE.md,
    # the README) keeps its own directory; then the page's.
    bases = [Path(node.source).parent] if node.source and Path(node.source).is_file() else []
    bases.append(srcdir / posixpath.dirname(docname))
    for base in bases:
        for candidate in candidates:
            path = (base / candidate).resolve()  # an absolute candidate stays itself
            if path.exists() and not path.is_relative_to(srcdir) and path.is_relative_to(repo):
                relative = path.relative_to(repo).as_posix() + ("/" if path.is_dir() else "")
                return relative, fragment
    return None


class RepoLinks(SphinxTransform):
    """Rewrite MyST links to existing repository files outside ``docs/`` into plain references."""

    default_priority = 100

    def apply(self, **kwargs: Any) -> None:
        srcdir = Path(self.env.srcdir)
        docname = self.env.docname
        base = self.config.repo_links_url.rstrip("/")
        if not base:  # the checkout: <outdir>/<docname>.html -> the repository root
            up = "../" * docname.count("/")
            base = up + Path(os.path.relpath(srcdir.parent, self.app.outdir)).as_posix()
        for node in list(self.document.findall(addnodes.pending_xref)) + list(
            self.document.findall(addnodes.download_reference)
        ):
            if node.get("reftype") != "myst":
                continue
            found = _outside_target(srcdir, docname, node)
            if found is None:
                continue
            path, fragment = found
            uri = f"{base}/{path}" + (f"#{fragment}" if fragment else "")
            reference = nodes.reference("", "", *node.children, refuri=uri, internal=False)
            node.replace_self(reference)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("repo_links_url", "", "env")
    app.add_transform(RepoLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
