"""Docs match the code: every vpog command written in the README, a module docstring or a config comment
composes (its overrides name keys and options that exist; nothing is run), every `group=option` they
mention exists, and every script or source file they name is there.

Commands: `python -m vpog.X ...` and `torchrun ... -m vpog.X ...`, up to the end of the line (a `\\` at the
end continues it), a closing backtick or a `#` comment. Placeholders are not overrides; each kind the docs
use is listed below with why it is skipped, and anything else is checked.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("data", "model", "preset", "machine")

# module -> the config its command line is composed with (checked against the module's own source below)
CONFIG_OF = {
    "vpog.train": "train",
    "vpog.check": "train",
    "vpog.data.show": "show",
    "vpog.evaluate": "evaluate",
    "vpog.data.synthesize": "synthesize",
    "vpog.bop.predict": "bop_predict",
    "vpog.bop.templates": "bop_templates",
}
# modules with a command line of their own (no Hydra config): how their arguments are checked
FLAGS_OF = {"vpog.info": {"--json"}}
KEY_VALUE_PARSER_OF = {"vpog.bop.score": "vpog.bop.score:parse_args"}
FLAGS_EVERYWHERE = {"--help", "-h"}  # parse_cli prints the config and exits 0
# placeholders, skipped: (token, why)
PLACEHOLDERS = {
    "...": "stands for more arguments of the same kind",
    "[key=value ...]": "stands for any overrides",
    "key=value": "stands for any override",
    "[overrides]": "stands for any overrides",
    "[training overrides]": "stands for any training overrides",
}
_COMMAND = re.compile(r"(?:\bpython3? -m|\btorchrun\b[^`#\n]*?\s-m)\s+(vpog(?:\.\w+)+)")
_GROUP_OPTION = re.compile(r"(?<![\w.+~/-])(" + "|".join(GROUPS) + r")=([A-Za-z_][\w-]*)")
_PATH = re.compile(r"(?<![\w./-])((?:scripts|vpog|docs)/[\w./-]*\.(?:py|sh|sbatch|yaml|md))\b")


def doc_texts() -> dict[str, str]:
    """{source name: text} of the README, every vpog module docstring and every config file's comments."""
    out = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for path in sorted((ROOT / "vpog").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
        if doc:
            out[str(path.relative_to(ROOT))] = doc
    for path in sorted((ROOT / "vpog" / "config").rglob("*.yaml")):
        comments = [line.split("#", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if "#" in line]
        out[str(path.relative_to(ROOT))] = "\n".join(comments)
    return out


def _joined_lines(text: str) -> list[str]:
    """Lines with `\\` continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def extract_commands(text: str) -> list[tuple[str, list[str]]]:
    """[(module, argument tokens)] of every vpog command in `text`."""
    found = []
    for line in _joined_lines(text):
        for m in _COMMAND.finditer(line):
            rest = line[m.end():]
            for stop in ("`", " #", "\t#"):
                if stop in rest:
                    rest = rest[: rest.index(stop)]
            depth = 0
            for k, ch in enumerate(rest):  # a command inside parentheses ends at the closing one
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth < 0:
                    rest = rest[:k]
                    break
            rest = rest.strip()
            if rest.endswith((".", ";", ":", ",")) and not rest.endswith("..."):  # the end of a sentence
                rest = rest[:-1]
            found.append((m.group(1), _tokens(rest)))
    return found


def _tokens(rest: str) -> list[str]:
    """Arguments, with `[...]` groups kept whole (a placeholder, or optional overrides)."""
    tokens = []
    for part in re.split(r"(\[[^\]]*\])", rest):
        if part.startswith("["):
            tokens.append(part)
        elif part.strip():
            tokens.extend(shlex.split(part))
    return tokens


def overrides_of(tokens: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(overrides to compose, flags, placeholders skipped); optional `[a=b c=d]` groups are overrides."""
    overrides, flags, skipped = [], [], []
    for tok in tokens:
        if tok in PLACEHOLDERS:
            skipped.append(tok)
        elif tok.startswith("[") and tok.endswith("]"):
            overrides.extend(shlex.split(tok[1:-1]))
        elif tok.startswith("-"):
            flags.append(tok)
        else:
            overrides.append(tok)
    return overrides, flags, skipped


ALL = [(source, module, tokens) for source, text in doc_texts().items()
       for module, tokens in extract_commands(text)]


def test_the_extractor_finds_what_the_docs_say():
    text = ("```bash\n# comment\npython -m vpog.train machine.num_gpus=2   # two ranks\n"
            "torchrun --standalone --nproc-per-node=8 -m vpog.train preset=full \\\n    model=vpog_vitl\n```\n"
            "prose `python -m vpog.evaluate checkpoint=PATH [key=value ...]`: evaluation.\n"
            "`python -m vpog.bop.templates dataset=d out=o [template_level=1]`\n")
    cmds = extract_commands(text)
    assert cmds == [("vpog.train", ["machine.num_gpus=2"]), ("vpog.train", ["preset=full", "model=vpog_vitl"]),
                    ("vpog.evaluate", ["checkpoint=PATH", "[key=value ...]"]),
                    ("vpog.bop.templates", ["dataset=d", "out=o", "[template_level=1]"])]
    assert overrides_of(cmds[3][1]) == (["dataset=d", "out=o", "template_level=1"], [], [])
    assert overrides_of(cmds[2][1]) == (["checkpoint=PATH"], [], ["[key=value ...]"])
    # the README's main commands are among those checked
    readme = [(m, t) for s, m, t in ALL if s == "README.md"]
    assert ("vpog.train", []) in readme and ("vpog.check", ["preset=full", "data.data_root=datasets"]) in readme
    assert len(ALL) > 20


def test_every_module_named_has_a_rule_and_exists():
    for source, module, _ in ALL:
        assert importlib.util.find_spec(module) is not None, f"{source}: {module} does not exist"
        assert module in CONFIG_OF or module in FLAGS_OF or module in KEY_VALUE_PARSER_OF, (
            f"{source}: no rule for checking the arguments of {module}: add it to this test")
    for module, config in CONFIG_OF.items():  # the rule names the config the module really composes
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        assert f'("{config}"' in source, f"{module} does not compose config '{config}'"


def _unique_commands() -> list[tuple[str, str, tuple[str, ...]]]:
    """(sources, module, tokens) of each distinct command (composing costs about half a second)."""
    seen: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for source, module, tokens in ALL:
        seen.setdefault((module, tuple(tokens)), []).append(source)
    return [(", ".join(sorted(set(srcs))), module, tokens) for (module, tokens), srcs in seen.items()]


@pytest.mark.parametrize("source, module, tokens", _unique_commands(),
                         ids=[f"{m} {' '.join(t)[:50]}" for _, m, t in _unique_commands()])
def test_documented_command_composes(source, module, tokens):
    overrides, flags, _ = overrides_of(list(tokens))
    if module in CONFIG_OF:
        from vpog.cli import load_config

        assert set(flags) <= FLAGS_EVERYWHERE, f"{source}: {module} takes no flag {flags}"
        load_config(CONFIG_OF[module], overrides)  # raises ConfigError naming an unknown key or option
    elif module in FLAGS_OF:
        assert not overrides and set(flags) <= FLAGS_OF[module], f"{source}: {module} {tokens}"
    else:
        mod_name, func = KEY_VALUE_PARSER_OF[module].split(":")
        parse = getattr(importlib.import_module(mod_name), func)
        assert not flags, f"{source}: {module} takes no flag {flags}"
        parse(overrides)  # raises UsageError naming an unknown key


def _mentions(pattern: re.Pattern) -> list[tuple[str, tuple[str, ...]]]:
    texts = dict(doc_texts())
    for path in sorted((ROOT / "scripts").rglob("*")):
        if path.suffix in (".sh", ".sbatch", ".py") and "__pycache__" not in path.parts:
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    return [(source, m.groups()) for source, text in texts.items() for m in pattern.finditer(text)]


def test_every_group_option_mentioned_exists():
    from vpog.cli import config_groups

    groups = config_groups()
    bad = sorted({f"{source}: {group}={option}" for source, (group, option) in _mentions(_GROUP_OPTION)
                  if option not in groups[group]})
    assert not bad, "docs name config options that do not exist:\n" + "\n".join(bad)
    assert any(opt == ("machine", "slurm") for _, opt in _mentions(_GROUP_OPTION))


# A file named in a paragraph that cites another code base is that code base's file, not one of ours.
FOREIGN_MARKERS = ("References:", "bop_toolkit")


def _own_paths() -> list[tuple[str, str]]:
    texts = dict(doc_texts())
    for path in sorted((ROOT / "scripts").rglob("*")):
        if path.suffix in (".sh", ".sbatch", ".py") and "__pycache__" not in path.parts:
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    out = []
    for source, text in texts.items():
        for m in _PATH.finditer(text):
            paragraph = text[: m.start()].rsplit("\n\n", 1)[-1]
            if not any(marker in paragraph for marker in FOREIGN_MARKERS):
                out.append((source, m.group(1)))
    return out


def test_every_file_mentioned_exists():
    own = _own_paths()
    assert ("README.md", "scripts/slurm/train_multi_node.sbatch") in own
    bad = sorted({f"{source}: {path}" for source, path in own if not (ROOT / path).exists()})
    assert not bad, "docs name files that do not exist:\n" + "\n".join(bad)
