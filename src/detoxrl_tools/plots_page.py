"""An HTML template for `dvc plots show/diff` that works offline.

DVC's plot page loads Vega, Vega-Lite and Vega-Embed from a CDN (`<script src="https://cdn.jsdelivr.net/...">`),
so on a machine without that CDN the page stays blank. This module fetches the same three libraries, at the
versions DVC's renderer names, with `npm pack` (the npm registry's ordinary client, integrity-checked by npm) and
writes a template with their minified builds inlined. DVC fills the template's `{plot_divs}` placeholder; it has
no `{scripts}` placeholder, so the CDN tags are left out. The page is self-contained: it can be opened or mailed
anywhere, and `-o` may put it in any folder.

    detoxrl plots-template                     # writes .cache/plots-offline.html
    dvc plots show --html-template .cache/plots-offline.html
    dvc config --local plots.html_template ../.cache/plots-offline.html   # make it the default (make setup does)
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from detoxrl import DetoxError

# The versions dvc-render's VegaRenderer loads from the CDN (dvc_render/vega.py).
VEGA_PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
DEFAULT_OUT = Path(".cache/plots-offline.html")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
__LIBS__
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _npm_pack(workdir: Path) -> dict[str, Path]:
    """`npm pack` each package into workdir; returns name -> tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise DetoxError("npm not found: install Node.js/npm to build the offline plots template "
                         "(or use `dvc plots show` online, where the page loads Vega from its CDN)")
    specs = [f"{name}@{version}" for name, version in VEGA_PACKAGES.items()]
    proc = subprocess.run([npm, "pack", "--silent", *specs], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DetoxError(f"npm pack {' '.join(specs)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {name: workdir / f"{name}-{version}.tgz" for name, version in VEGA_PACKAGES.items()}


def _min_js(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"package/build/{name}.min.js")
        if member is None:
            raise DetoxError(f"{tarball.name} has no build/{name}.min.js")
        return member.read().decode("utf-8")


def render_template(libs: dict[str, str]) -> str:
    """The template with each library (name -> JS source, in load order) inlined as a classic script."""
    tags = []
    for name, js in libs.items():
        for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
            if placeholder in js:  # DVC fills placeholders with str.replace: a hit would corrupt the script
                raise DetoxError(f"{name} contains the DVC placeholder {placeholder}")
        js = js.replace("</script", "<\\/script")  # cannot close the tag early ("<\/" is "</" in JS)
        tags.append(f"    <!-- {name}@{VEGA_PACKAGES.get(name, '?')} (npm) -->\n    <script>\n{js}\n    </script>")
    return PAGE.replace("__LIBS__", "\n".join(tags))


def build_offline_template(out: Path = DEFAULT_OUT) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tarballs = _npm_pack(Path(tmp))
        libs = {name: _min_js(tarballs[name], name) for name in VEGA_PACKAGES}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(render_template(libs), encoding="utf-8")
    tmp_out.replace(out)
    return out
