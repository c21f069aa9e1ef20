"""The documents' commands work as written: in README.md, README_CN.md and docs/*.md, every command shown (fenced
```bash blocks, and inline `python ...` / `bash ...` / `eval.py --flag` spans) names a script that exists, and every
--flag is an option of that script (of its subcommand, for retrieve.py) or, for the entry scripts, a config key."""
import argparse
import functools
import glob
import importlib
import os
import re
import shlex
from unittest import mock

import pytest
import yaml

from tests.paths import ROOT

READMES = ("README.md", "README_CN.md")
DOCS = tuple(sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))))
DOCUMENTS = READMES + DOCS
SETUP_COMMANDS = ["bash scripts/run_demo.sh", "bash scripts/run_tests.sh"]
# Entry scripts whose leftover --key value arguments are config overrides (src.runtime.cli.overrides_from_extra).
CONFIG_SCRIPTS = ("train.py", "eval.py", "export.py", "preprocess.py", "retrieve.py")
ENTRY_SCRIPTS = CONFIG_SCRIPTS + ("postprocess.py",)
_FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ANY_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
# An inline span that is a command: `python ...`, `bash ...` (after VAR=value words), or `eval.py --flag ...`.
_ENTRY = "|".join(re.escape(name) for name in ENTRY_SCRIPTS)
_INLINE_COMMAND = re.compile(rf"^(?:[A-Za-z_][A-Za-z0-9_]*=\S* )*(?:python3?|bash) \S|^(?:{_ENTRY})(?: |$)")


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def bash_blocks(text):
    """The contents of the fenced ```bash blocks, in order."""
    return _FENCE.findall(text)


def inline_commands(text):
    """The inline code spans outside fenced blocks that are commands, whitespace collapsed; `eval.py --ci` is read
    as `python eval.py --ci`."""
    spans = (" ".join(span.split()) for span in _INLINE_CODE.findall(_ANY_FENCE.sub("", text)))
    return [span if re.match(r"^\S+=|^python|^bash", span) else "python " + span
            for span in spans if _INLINE_COMMAND.match(span)]


def block_commands(block):
    """Commands of a bash block: continuation lines joined, comments dropped, split at ; && || |, leading
    VAR=value assignments dropped (the command they prefix is checked)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command = []
        for word in words + [";"]:
            if not command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
                continue
            if word in (";", "&&", "||", "|"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def document_commands(name):
    text = read(name)
    return [command for block in bash_blocks(text) + inline_commands(text) for command in block_commands(block)]


def config_keys():
    keys = set()
    for path in glob.glob(os.path.join(ROOT, "src", "configs", "*.yaml")):
        with open(path, encoding="utf-8") as f:
            keys |= set(yaml.safe_load(f) or {}) - {"device_overrides"}
    return keys


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


@functools.cache
def script_options(module_name, subcommand=None):
    """Option strings of the parser a script builds (what its --help lists; caught before it parses anything, once
    per script and subcommand in a session); of its subcommand's parser when `subcommand` names one
    (retrieve.py index ...)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    module = importlib.import_module(module_name)
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        try:
            (module.parse_args if hasattr(module, "parse_args") else module.main)([])
        except _Captured as captured:
            parser = captured.parser
            for action in parser._subparsers._group_actions if parser._subparsers else ():
                if subcommand in action.choices:
                    parser = action.choices[subcommand]
            return frozenset(parser._option_string_actions)
    raise AssertionError(f"{module_name} built no argument parser")


def flags(command):
    """The --flags of a command (the part before '=' of --key=value)."""
    return [word[2:].split("=", 1)[0] for word in command if word.startswith("--") and len(word) > 2]


def command_problems(command, keys):
    """What is wrong with one command (empty list: nothing)."""
    program = os.path.basename(command[0])
    if program == "bash":
        script = command[1]
        return [] if os.path.isfile(os.path.join(ROOT, script)) else [f"{script} does not exist"]
    if not re.fullmatch(r"python(3(\.\d+)?)?", program):
        return []
    if command[1] == "-m":
        module, path = command[2], os.path.join(ROOT, *command[2].split(".")) + ".py"
        rest = command[3:]
    else:
        path = os.path.join(ROOT, command[1])
        module, rest = os.path.splitext(command[1])[0].replace("/", "."), command[2:]
    if not os.path.isfile(path):
        return [f"{os.path.relpath(path, ROOT)} does not exist"]
    if not flags(rest):
        return []
    options = script_options(module, rest[0] if rest and not rest[0].startswith("-") else None)
    takes_keys = os.path.relpath(path, ROOT) in CONFIG_SCRIPTS
    what = "neither an option nor a config key" if takes_keys else "not an option"
    return [f"{' '.join(command[:2])}: --{flag} is {what}"
            for flag in flags(rest) if f"--{flag}" not in options and not (takes_keys and flag in keys)]


@pytest.mark.parametrize("readme", READMES)
def test_setup_commands_are_exactly_the_two(readme):
    first = bash_blocks(read(readme))[0]
    assert [" ".join(c) for c in block_commands(first)] == SETUP_COMMANDS


def test_docs_are_found():
    assert {"docs/learning.md", "docs/speed.md", "docs/parity.md", "docs/retrieval.md", "docs/devices.md"} <= set(DOCS)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_command_names_existing_scripts_and_options(document):
    commands = document_commands(document)
    programs = {c[1] for c in commands if os.path.basename(c[0]).startswith("python")}
    # the check reaches what each document is about (not vacuous)
    if document in READMES:
        assert {"train.py", "eval.py", "export.py", "retrieve.py"} <= programs, programs
        assert sum(c[0] == "bash" for c in commands) >= 8
    keys = config_keys()
    problems = [p for command in commands for p in command_problems(command, keys)]
    assert problems == []


def test_docs_show_the_commands_of_their_measurements():
    programs = {c[1] for document in DOCS for c in document_commands(document)}
    assert {"bench/bench_learning.py", "bench/bench_losses.py", "bench/bench_train.py", "bench/parity_torch.py",
            "bench/bench_metrics.py", "bench/bench_retrieval.py", "bench/bench_serve.py"} <= programs, programs


def test_checker_catches_wrong_commands():
    block = ("bash scripts/no_such_script.sh X   # comment --not_a_flag\n"
             "python eval.py --dataset_path d --ckpt_path c \\\n    --no_such_option 1 --image_size=64\n"
             "python train.py --loss_name triplet --epoch_size 2 && python postprocess.py --image_size 64\n"
             "BACKEND=openvino bash scripts/run_infer_cpu.sh M D\n"
             "python retrieve.py search --index_dir i q.jpg --top_k 3 --image_dir d\n"
             "python bench/bench_train.py --rounds 2 --no-such-bench-flag\n")
    commands = block_commands(block)
    assert [c[:2] for c in commands] == [["bash", "scripts/no_such_script.sh"], ["python", "eval.py"],
                                         ["python", "train.py"], ["python", "postprocess.py"],
                                         ["bash", "scripts/run_infer_cpu.sh"], ["python", "retrieve.py"],
                                         ["python", "bench/bench_train.py"]]
    problems = [p for c in commands for p in command_problems(c, config_keys())]
    assert problems == ["scripts/no_such_script.sh does not exist",
                        "python eval.py: --no_such_option is neither an option nor a config key",
                        "python postprocess.py: --image_size is not an option",  # no config keys there
                        # a subcommand's own options: --image_dir is index's, not search's
                        "python retrieve.py: --image_dir is neither an option nor a config key",
                        "python bench/bench_train.py: --no-such-bench-flag is not an option"]


def test_inline_commands_are_checked_too():
    text = ("Run `python bench/bench_metrics.py --no-such\n--flag-here` or `eval.py --made_up`; `--ci` alone and\n"
            "`src/evaluation/metrics.py` are not commands, nor is a fenced block's span:\n"
            "```text\n`python eval.py --inside_a_fence`\n```\n"
            "`DEMO_SEED=2 bash scripts/run_demo.sh out`, `retrieve.py index --ann auto`.\n")
    commands = [c for span in inline_commands(text) for c in block_commands(span)]
    assert [c[:2] for c in commands] == [["python", "bench/bench_metrics.py"], ["python", "eval.py"],
                                         ["bash", "scripts/run_demo.sh"], ["python", "retrieve.py"]]
    problems = [p for c in commands for p in command_problems(c, config_keys())]
    assert problems == ["python bench/bench_metrics.py: --no-such is not an option",
                        "python bench/bench_metrics.py: --flag-here is not an option",
                        "python eval.py: --made_up is neither an option nor a config key"]
