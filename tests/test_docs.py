"""The documents hold together: every relative link and image in README.md, README_CN.md and docs/*.md resolves (file,
and #anchor to a heading), README.md stays short, and README_CN.md mirrors README.md section for section (heading
levels, fenced blocks byte for byte, the numbers, the link targets)."""
import collections
import os
import re

import pytest

from tests.paths import ROOT
from tests.test_readme import DOCUMENTS, read

README_MAX_LINES = 500
_FENCE_LINE = re.compile(r"^[ \t]*```")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_INLINE_CODE = re.compile(r"(?<!`)`[^`]+`(?!`)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:[ \t]+\"[^\"]*\")?\)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)

Section = collections.namedtuple("Section", "level title text code_blocks")


def sections(text):
    """The document cut at its headings (outside fenced blocks): each heading's level, title, the section's text
    (heading line included) and its fenced blocks (fence lines included). Text before the first heading is a level-0
    section."""
    found, lines, blocks, block, level, title = [], [], [], None, 0, ""
    for line in text.splitlines():
        if block is not None:
            block.append(line)
            if _FENCE_LINE.match(line):
                blocks.append("\n".join(block))
                block = None
            lines.append(line)
            continue
        if _FENCE_LINE.match(line):
            block = [line]
            lines.append(line)
            continue
        heading = _HEADING.match(line)
        if heading:
            if lines or found:
                found.append(Section(level, title, "\n".join(lines), blocks))
            level, title, lines, blocks = len(heading.group(1)), heading.group(2), [], []
        lines.append(line)
    found.append(Section(level, title, "\n".join(lines), blocks))
    return [section for section in found if section.level or section.text.strip()]


def prose(text):
    """The text without its fenced blocks and inline code spans (where a link is not a link)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if _FENCE_LINE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return _INLINE_CODE.sub("", "\n".join(kept))


def links(text):
    """Link and image targets of the text, in order."""
    return _LINK.findall(prose(text))


def slug(title):
    """The anchor GitHub gives a heading: markdown marks and punctuation dropped, lower case, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text):
    """Every heading's anchor, in order (a repeated one gets -1, -2, ... as on GitHub)."""
    seen, found = collections.Counter(), []
    for section in sections(text):
        if section.level:
            base = slug(section.title)
            found.append(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def link_problems(name, read_text=read):
    """What is wrong with the relative links of document `name` (a path relative to the repository)."""
    problems = []
    for target in links(read_text(name)):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
        if resolved.startswith(".."):
            problems.append(f"{name}: {target} leaves the repository")
        elif path and not os.path.exists(os.path.join(ROOT, resolved)):
            problems.append(f"{name}: {target} does not exist")
        elif anchor and not (resolved.endswith(".md") and anchor in anchors(read_text(resolved))):
            problems.append(f"{name}: {target} names no heading of {resolved}")
    return problems


def mirror_problems(english, chinese):
    """How the Chinese document differs from the English one in what must not differ: the heading levels; per
    section, its fenced blocks, the numbers it states, its links to files and pages, and the headings its #anchors
    lead to (by position: the titles are translated)."""
    en, cn = sections(english), sections(chinese)
    if [s.level for s in en] != [s.level for s in cn]:
        return [f"heading levels differ: {[s.level for s in en]} != {[s.level for s in cn]}"]
    en_anchors, cn_anchors = anchors(english), anchors(chinese)

    def targets(section, own_anchors):
        found = []
        for target in links(section.text):
            if target.startswith("#"):
                found.append(own_anchors.index(target[1:]) if target[1:] in own_anchors else target)
            else:
                found.append(target)
        return found

    problems = []
    for e, c in zip(en, cn, strict=True):
        where = f"section {e.title!r} / {c.title!r}"
        if e.code_blocks != c.code_blocks:
            problems.append(f"{where}: fenced blocks differ")
        e_numbers, c_numbers = (collections.Counter(_NUMBER.findall(s.text)) for s in (e, c))
        if e_numbers != c_numbers:
            problems.append(f"{where}: numbers only in English {sorted((e_numbers - c_numbers).elements())}, "
                            f"only in Chinese {sorted((c_numbers - e_numbers).elements())}")
        if targets(e, en_anchors) != targets(c, cn_anchors):
            problems.append(f"{where}: links differ: {targets(e, en_anchors)} != {targets(c, cn_anchors)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    assert links(read(document)), f"{document} links nothing"
    assert link_problems(document) == []


def test_readme_is_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert sum(1 for _ in f) <= README_MAX_LINES


def test_readme_cn_mirrors_readme():
    assert mirror_problems(read("README.md"), read("README_CN.md")) == []


EN = """# Title

Intro, 2 cores. See [Usage](#usage) and [speed](docs/speed.md#cpu-dispatch).

## Usage

```bash
python eval.py --ckpt_path c
```

Takes 5 min 42 s on 2026-12-07 (`--threads 2`), Recall@1 0.4246.
"""
CN = """# 标题

简介，2 个核。见[用法](#用法)和[速度](docs/speed.md#cpu-dispatch)。

## 用法

```bash
python eval.py --ckpt_path c
```

用时 5 分 42 秒，2026-12-07（`--threads 2`），Recall@1 0.4246。
"""


def test_mirror_check_passes_a_faithful_translation_and_catches_drift():
    assert mirror_problems(EN, CN) == []
    assert mirror_problems(EN, CN.replace("0.4246", "0.4247")) == [
        "section 'Usage' / '用法': numbers only in English ['0.4246'], only in Chinese ['0.4247']"]
    assert mirror_problems(EN, CN.replace("--ckpt_path c", "--ckpt_path d")) == [
        "section 'Usage' / '用法': fenced blocks differ"]
    assert mirror_problems(EN, CN.replace("## 用法", "### 用法")) == ["heading levels differ: [1, 2] != [1, 3]"]
    assert mirror_problems(EN + "\n## More\n\nText.\n", CN) == ["heading levels differ: [1, 2, 2] != [1, 2]"]
    assert mirror_problems(EN, CN.replace("(#用法)", "(#标题)")) == [
        "section 'Title' / '标题': links differ: "
        "[1, 'docs/speed.md#cpu-dispatch'] != [0, 'docs/speed.md#cpu-dispatch']"]


def test_link_check_catches_missing_files_and_anchors():
    pages = {"docs/a.md": "# A page\n\n## The CPU demo (2 cores)\n\n[up](../README.md) [b](b.md)"
                          " [demo](#the-cpu-demo-2-cores) [bad](#no-such-heading) [other](../README.md#no-such-heading)"
                          " [web](https://example.com/x) `[code](not-a-link.md)` ![img](../scripts/no_such.png)\n"}
    problems = link_problems("docs/a.md", lambda name: pages.get(name) or read(name))
    assert problems == ["docs/a.md: b.md does not exist",
                        "docs/a.md: #no-such-heading names no heading of docs/a.md",
                        "docs/a.md: ../README.md#no-such-heading names no heading of README.md",
                        "docs/a.md: ../scripts/no_such.png does not exist"]


def test_anchors_are_githubs():
    assert anchors("# A\n## Quick start (two commands, Python 3.11)\n## Losses\n## Losses\n"
                   "### `--backend`: engines\n## 快速开始（两条命令，只需 Python 3.11）\n") == [
        "a", "quick-start-two-commands-python-311", "losses", "losses-1", "--backend-engines",
        "快速开始两条命令只需-python-311"]
