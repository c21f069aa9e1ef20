"""The READMEs' commands work as written: scripts exist, and every --flag is an option or a config key."""
import argparse
import glob
import importlib
import os
import re
import shlex

import pytest
import yaml

from tests.paths import ROOT

READMES = ("README.md", "README_CN.md")
SETUP_COMMANDS = ["bash scripts/run_demo.sh", "bash scripts/run_tests.sh"]
# Entry scripts whose leftover --key value arguments are config overrides (src.runtime.cli.overrides_from_extra).
CONFIG_SCRIPTS = ("train.py", "eval.py", "export.py", "preprocess.py", "retrieve.py")
_FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def bash_blocks(text):
    """The contents of the fenced ```bash blocks, in order."""
    return _FENCE.findall(text)


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


def readme_commands(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        text = f.read()
    return [command for block in bash_blocks(text) for command in block_commands(block)]


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


def script_options(module_name, monkeypatch, rest=()):
    """Option strings of the parser an entry point builds (caught before it parses anything); of its subcommand's
    parser when the command's first word `rest[0]` names one (retrieve.py index ...)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    module = importlib.import_module(module_name)
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        try:
            (module.parse_args if hasattr(module, "parse_args") else module.main)([])
        except _Captured as captured:
            parser = captured.parser
            for action in parser._subparsers._group_actions if parser._subparsers else ():
                if rest and rest[0] in action.choices:
                    parser = action.choices[rest[0]]
            return set(parser._option_string_actions)
    raise AssertionError(f"{module_name} built no argument parser")


def flags(command):
    """The --flags of a command (the part before '=' of --key=value)."""
    return [word[2:].split("=", 1)[0] for word in command if word.startswith("--") and len(word) > 2]


def command_problems(command, monkeypatch, keys):
    """What is wrong with one README command (empty list: nothing)."""
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
    options = script_options(module, monkeypatch, rest)
    takes_keys = os.path.basename(path) in CONFIG_SCRIPTS
    what = "neither an option nor a config key" if takes_keys else "not an option"
    return [f"{' '.join(command[:2])}: --{flag} is {what}"
            for flag in flags(rest) if f"--{flag}" not in options and not (takes_keys and flag in keys)]


@pytest.mark.parametrize("readme", READMES)
def test_setup_commands_are_exactly_the_two(readme):
    with open(os.path.join(ROOT, readme), encoding="utf-8") as f:
        first = bash_blocks(f.read())[0]
    assert [" ".join(c) for c in block_commands(first)] == SETUP_COMMANDS


@pytest.mark.parametrize("readme", READMES)
def test_every_command_names_existing_scripts_and_options(readme, monkeypatch):
    commands = readme_commands(readme)
    programs = {c[1] for c in commands if os.path.basename(c[0]).startswith("python")}
    # the check reaches the entry scripts (not vacuous)
    assert {"train.py", "eval.py", "export.py"} <= programs, programs
    assert sum(c[0] == "bash" for c in commands) >= 8
    keys = config_keys()
    problems = [p for command in commands for p in command_problems(command, monkeypatch, keys)]
    assert problems == []


def test_checker_catches_wrong_commands(monkeypatch):
    block = ("bash scripts/no_such_script.sh X   # comment --not_a_flag\n"
             "python eval.py --dataset_path d --ckpt_path c \\\n    --no_such_option 1 --image_size=64\n"
             "python train.py --loss_name triplet --epoch_size 2 && python postprocess.py --image_size 64\n"
             "BACKEND=openvino bash scripts/run_infer_cpu.sh M D\n"
             "python retrieve.py search --index_dir i q.jpg --top_k 3 --image_dir d\n")
    commands = block_commands(block)
    assert [c[:2] for c in commands] == [["bash", "scripts/no_such_script.sh"], ["python", "eval.py"],
                                         ["python", "train.py"], ["python", "postprocess.py"],
                                         ["bash", "scripts/run_infer_cpu.sh"], ["python", "retrieve.py"]]
    problems = [p for c in commands for p in command_problems(c, monkeypatch, config_keys())]
    assert problems == ["scripts/no_such_script.sh does not exist",
                        "python eval.py: --no_such_option is neither an option nor a config key",
                        "python postprocess.py: --image_size is not an option",  # no config keys there
                        # a subcommand's own options: --image_dir is index's, not search's
                        "python retrieve.py: --image_dir is neither an option nor a config key"]
